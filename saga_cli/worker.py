"""Process entry points that execute sagas: `saga worker` and `saga migrate`."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from workers.adapters.logs import setup_logging
from workers.config import Config, ConfigError, load_config

log = logging.getLogger("saga.worker")


def load_or_exit(path: str | None) -> Config:
    """The config, or one line on stderr and exit status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"saga: bad config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass


def run_worker(config_path: str | None) -> int:
    """Execute sagas only (no API) until SIGTERM: then stop claiming, let calls in flight
    finish and commit, and give back every lease still held."""
    config = load_or_exit(config_path)
    setup_logging()
    from workers.service.engine import Engine

    engine = Engine.from_config(config, execute=True)
    engine.start()
    assert engine.executor is not None
    log.info(
        "worker %s executing sagas (max_concurrent=%d, store=%s)",
        engine.executor.owner,
        config.saga.max_concurrent,
        "postgresql" if config.postgres_url else f"sqlite:{config.saga.sqlite_path}",
    )
    try:
        wait_for_signal()
    finally:
        engine.close(grace_secs=min(10.0, config.saga.lease_secs))
    log.info("worker stopped")
    return 0


def run_migrate(config_path: str | None) -> int:
    config = load_or_exit(config_path)
    setup_logging()
    url = config.postgres_url
    if url:
        from workers.adapters.store.migrate import migrate_postgres

        applied = migrate_postgres(url)
        print(
            f"postgresql: applied migrations {applied}"
            if applied
            else "postgresql: schema is up to date"
        )
        return 0
    from workers.adapters.store.sqlite import SqliteStore

    store = SqliteStore(config.saga.sqlite_path)
    print(f"sqlite {config.saga.sqlite_path}: migrations {store.applied_migrations()} applied")
    store.close()
    return 0
