"""How a server process starts and stops: the config or one line and exit status 2, and the
SIGTERM/SIGINT that ends it. Every process entry point (`saga serve`, `saga worker`,
`saga migrate`, `python -m saga_grpc`, gunicorn's workers) uses these, so they all start and
stop the same way. Nothing here knows what the process serves."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from workers.config import Config, ConfigError, load_config

log = logging.getLogger("saga.process")


def config_or_exit(path: str | None = None) -> Config:
    """The config (from `path`, else `CONFIG_PATH`, else the default file), or one line on
    stderr naming the file, the key and the problem, and exit status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"saga: bad config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM or SIGINT sets while the block runs (the handlers that were there
    before come back after it)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for(stop: threading.Event) -> None:
    """Block until `stop` is set; a timed wait, so the main thread wakes up to run the Python
    signal handlers."""
    while not stop.wait(0.5):
        pass
