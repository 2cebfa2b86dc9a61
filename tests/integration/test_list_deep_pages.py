"""A list page past the last saga is answered from the count alone: empty, the right
`total_count`, `has_next` false, and (on PostgreSQL) without running the OFFSET query."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from saga.model import Step, Workflow, new_saga
from tests.services import require_postgres
from workers.adapters.store.base import SagaFilter, SagaPage, Store
from workers.adapters.store.memory import MemoryStore
from workers.adapters.store.postgres import PostgresStore
from workers.adapters.store.sqlite import SqliteStore

WORKFLOW = Workflow("deep-pages", (Step("a", "svc", "Svc.A"),))
SAGAS = 30
FAR = 1_000_000  # page number far past the end


def fill(store: Store, n: int = SAGAS) -> None:
    workflow = store.register_workflow(WORKFLOW)
    start = datetime.now(UTC) - timedelta(hours=1)
    for i in range(n):
        store.create_saga(
            new_saga(
                saga_id=str(uuid.uuid4()),
                workflow=workflow,
                payload={"n": i},
                correlation_id=None,
                initiated_by=None,
                at=start + timedelta(seconds=i),
            )
        )


@pytest.fixture
def pg_url() -> str:
    return require_postgres()


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PostgresStore]:
    schema = f"t_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(pg_url, schema=schema)
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        store = SqliteStore(str(tmp_path / "saga.sqlite3"))
        try:
            yield store
        finally:
            store.close()
    else:
        yield request.getfixturevalue("pg_store")


def assert_empty_past_the_end(page: SagaPage, number: int, size: int, total: int) -> None:
    assert page.sagas == ()
    assert (page.total_count, page.page, page.page_size) == (total, number, size)
    assert page.has_next is False


def test_deep_page_is_empty_with_the_real_total(any_store: Store) -> None:
    """Every store answers a page past the end with no sagas, the true total and has_next false."""
    fill(any_store)
    for filters in (SagaFilter(), SagaFilter(workflow_name=WORKFLOW.name)):
        last = any_store.list_sagas(filters, 3, 10)
        assert len(last.sagas) == 10 and last.has_next is False
        assert_empty_past_the_end(any_store.list_sagas(filters, 4, 10), 4, 10, SAGAS)
        assert_empty_past_the_end(any_store.list_sagas(filters, FAR, 100), FAR, 100, SAGAS)
    assert_empty_past_the_end(
        any_store.list_sagas(SagaFilter(workflow_name="no-such-workflow"), 1, 20), 1, 20, 0
    )


def test_postgres_deep_page_does_not_read_saga_states(pg_store: PostgresStore, pg_url: str) -> None:
    """With saga_states locked by another session, a page past the end still answers at once
    (only the counters are read), while a page inside the range waits for the lock."""
    fill(pg_store)
    schema = pg_store.schema
    locker = psycopg.connect(pg_url)
    try:
        locker.execute(f"LOCK TABLE {schema}.saga_states IN ACCESS EXCLUSIVE MODE")
        answers: dict[int, SagaPage | BaseException] = {}

        def list_page(number: int) -> None:
            try:
                answers[number] = pg_store.list_sagas(
                    SagaFilter(workflow_name=WORKFLOW.name), number, 100
                )
            except BaseException as exc:  # reported by the assertions below
                answers[number] = exc

        deep = threading.Thread(target=list_page, args=(FAR,), daemon=True)
        deep.start()
        deep.join(timeout=5)
        finished_under_lock = not deep.is_alive()
        inside = threading.Thread(target=list_page, args=(1,), daemon=True)
        inside.start()
        inside.join(timeout=1)
        waited_for_the_lock = inside.is_alive()
    finally:
        locker.rollback()
        locker.close()
    deep.join(timeout=30)
    inside.join(timeout=30)
    assert finished_under_lock, "the deep page waited for saga_states: it ran the OFFSET query"
    page = answers[FAR]
    assert isinstance(page, SagaPage), page
    assert_empty_past_the_end(page, FAR, 100, SAGAS)
    assert waited_for_the_lock, "the lock did not hold saga_states (the check proves nothing)"
    first = answers[1]
    assert isinstance(first, SagaPage) and len(first.sagas) == SAGAS, first
