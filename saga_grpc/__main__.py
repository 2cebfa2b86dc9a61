"""`python -m saga_grpc`: the gRPC API (and, with `saga.execute`, saga execution) in one process,
configured from `config/config.yaml` or `CONFIG_PATH`."""

from __future__ import annotations

import sys

from workers.adapters.logs import setup_logging
from workers.lifecycle import config_or_exit


def main() -> int:
    """Load the config and serve until SIGTERM/SIGINT; a bad config exits 2 with one line."""
    setup_logging()
    config = config_or_exit()
    from saga_grpc.server import serve

    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
