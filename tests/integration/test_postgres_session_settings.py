"""The `database` section shapes every pooled PostgreSQL connection: `statement_timeout`
cancels a statement that runs too long, and `conn_max_lifetime` makes the pool replace old
connections. Both come from the config file, through the same path the server uses."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from saga.model import Step, Workflow
from tests.e2e.conftest import fresh_database
from tests.harness import free_port, fresh_saga, wait_until, write_config
from tests.services import require_postgres
from workers.adapters.store.postgres import PostgresStore
from workers.config import ConfigError, load_config
from workers.service.engine import open_store

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the test server, dropped at the end."""
    url, drop = fresh_database(require_postgres())
    try:
        yield url
    finally:
        drop()


def store_from_config(tmp_path: Path, url: str, app: str, **database: Any) -> PostgresStore:
    """`open_store` on a config file whose `database` section carries `database`, connecting
    with `application_name=app` so the test can find its backends."""
    path = write_config(
        tmp_path / "c.yaml",
        port=free_port(),
        database_url=url,
        extra={"database": {"max_open_conns": 2, "max_idle_conns": 1, **database}},
    )
    sep = "&" if "?" in url else "?"
    config = load_config(str(path), environ={"DATABASE_URL": f"{url}{sep}application_name={app}"})
    store = open_store(config)
    assert isinstance(store, PostgresStore)
    return store


def backends(url: str, app: str) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
    return {row[0] for row in rows}


def test_pooled_connections_carry_the_configured_statement_timeout(
    tmp_path: Path, pg_url: str
) -> None:
    """`database.statement_timeout: 1500ms` shows on pooled connections, and a longer
    statement through the pool is cancelled after about that long."""
    store = store_from_config(
        tmp_path, pg_url, f"saga-st-{uuid.uuid4().hex[:8]}", statement_timeout="1500ms"
    )
    try:
        with store._pool.connection() as conn:  # the store's own pool, as its queries use it
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1500ms",)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled), store._pool.connection() as conn:
            conn.execute("SELECT pg_sleep(10)")
        assert 1.2 < time.monotonic() - started < 5
    finally:
        store.close()


def test_statement_timeout_defaults_to_30s(tmp_path: Path, pg_url: str) -> None:
    """Without the key, pooled connections have a 30 s statement_timeout."""
    store = store_from_config(tmp_path, pg_url, f"saga-st-{uuid.uuid4().hex[:8]}")
    try:
        with store._pool.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
    finally:
        store.close()


def test_store_call_stuck_on_a_lock_is_cancelled(tmp_path: Path, pg_url: str) -> None:
    """A store read waiting on a table another session holds locked fails with QueryCanceled
    after statement_timeout, instead of holding its caller for as long as the lock lasts."""
    schema_store = store_from_config(
        tmp_path, pg_url, f"saga-st-{uuid.uuid4().hex[:8]}", statement_timeout="1s"
    )
    workflow = schema_store.register_workflow(
        Workflow(f"lock-{uuid.uuid4().hex[:8]}", (Step("a", "svc", "Svc.A"),))
    )
    saga = fresh_saga(workflow)
    schema_store.create_saga(saga)
    outcome: list[BaseException | object] = []
    locker = psycopg.connect(pg_url)
    try:
        locker.execute(f"LOCK TABLE {schema_store.schema}.saga_states IN ACCESS EXCLUSIVE MODE")

        def read() -> None:
            try:
                outcome.append(schema_store.get_saga(saga.saga_id))
            except BaseException as exc:  # checked below
                outcome.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        started = time.monotonic()
        reader.start()
        reader.join(timeout=8)
        elapsed = time.monotonic() - started
        cancelled_under_lock = not reader.is_alive()
    finally:
        locker.rollback()
        locker.close()
    reader.join(timeout=30)
    try:
        assert cancelled_under_lock, "the read waited for the lock past statement_timeout"
        assert isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
        assert elapsed < 5
        assert schema_store.get_saga(saga.saga_id) == saga  # the pool is fine afterwards
    finally:
        schema_store.close()


def test_conn_max_lifetime_makes_the_pool_replace_connections(tmp_path: Path, pg_url: str) -> None:
    """With `conn_max_lifetime: 1s`, the backends the pool started with are replaced by new
    ones within seconds of use (the old default kept them for an hour)."""
    app = f"saga-lt-{uuid.uuid4().hex[:8]}"
    store = store_from_config(tmp_path, pg_url, app, conn_max_lifetime="1s")
    try:
        first = backends(pg_url, app)
        assert first, "the pool opened no connection"

        def replaced() -> bool:
            store.ping()
            now = backends(pg_url, app)
            return bool(now) and not (now & first)

        wait_until(replaced, 15, interval=0.3, what="the pool to replace its first connections")
    finally:
        store.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("statement_timeout", "soon"),
        ("statement_timeout", "-5s"),
        ("conn_max_lifetime", "5 parsecs"),
        ("conn_max_lifetime", "m5"),
    ],
)
def test_bad_durations_are_refused_naming_the_key(tmp_path: Path, key: str, value: str) -> None:
    """A duration that does not parse stops the program with one line naming the key."""
    path = write_config(
        tmp_path / "c.yaml",
        port=free_port(),
        database_url="postgresql://saga:saga@127.0.0.1:5432/saga",
        extra={"database": {key: value}},
    )
    with pytest.raises(ConfigError, match=rf"database\.{key}: .*{value}"):
        load_config(str(path), environ={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0", 0.0), ("45", 45.0)],
)
def test_durations_read_like_the_original_config(text: str, seconds: float) -> None:
    """Durations are written as in the original design's config ("5m", "30s", "1h30m")."""
    from workers.config import duration_secs

    assert duration_secs(text) == seconds
