"""Figures 5 and 9 (REST/gRPC API load, outbox relay events/s): not measured yet.

`saga_http/` and `workers/relay.py` were still being written by other engineers while this
bench was built; these figures are listed in BENCHMARKS.md as not measured rather than
measured against code in flux.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common as c


def api(
    workdir: Path, part: c.Participant, pg_url: str, *, quick: bool, results: dict[str, Any]
) -> None:
    raise NotImplementedError(
        "REST/gRPC API load figures are not implemented in this bench yet (saga_http was in progress)"
    )


def events(
    workdir: Path,
    part: c.Participant,
    pg_url: str,
    kafka: str,
    *,
    quick: bool,
    results: dict[str, Any],
) -> None:
    raise NotImplementedError(
        "outbox relay events/s is not implemented in this bench yet (workers/relay.py was in progress)"
    )
