"""Process entry points that execute sagas: `saga worker` and `saga migrate`."""

from __future__ import annotations

import logging

from workers.adapters.logs import setup_logging
from workers.lifecycle import config_or_exit, stop_signals, wait_for

log = logging.getLogger("saga.worker")


def run_worker(config_path: str | None) -> int:
    """Execute sagas only (no API) until SIGTERM: then stop claiming, let calls in flight
    finish and commit, and give back every lease still held."""
    config = config_or_exit(config_path)
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
        with stop_signals() as stop:
            wait_for(stop)
    finally:
        engine.close(grace_secs=min(10.0, config.saga.lease_secs))
    log.info("worker stopped")
    return 0


def run_migrate(config_path: str | None) -> int:
    config = config_or_exit(config_path)
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
