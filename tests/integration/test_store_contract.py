"""The store contract (workers/adapters/store/base.py), checked the same way on every store.

Each test runs against the memory, SQLite and PostgreSQL stores. Commits are made by the real
core: a saga is created with `new_saga`, claimed, and driven by `decide`; every `Commit` it
emits goes to `store.commit` under the lease the claim gave, as the executor does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from saga.codec import format_timestamp
from saga.decide import Decision, decide
from saga.events import Commit, Event, Resume, StepFailed, StepSucceeded
from saga.model import (
    Action,
    Backoff,
    Compensation,
    EventType,
    RetryPolicy,
    SagaEvent,
    SagaState,
    SagaStatus,
    Step,
    StepLog,
    StepStatus,
    Workflow,
    new_saga,
)
from tests.services import require_postgres
from workers.adapters.store.base import (
    START_LEASE_TOKEN,
    Claimed,
    CommitRequest,
    CommitResult,
    SagaFilter,
    SagaPage,
    StartLease,
    Store,
)

STORE_KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DURABLE_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
LONG = 30.0  # a lease that does not expire during a test
SHORT = 0.2  # a lease that a test waits out
PAST_SHORT = 0.4  # sleep long enough for a SHORT lease to have expired

# ---------------------------------------------------------------- store fixtures


class StoreFactory:
    """Opens stores of one kind on one backing database (file / schema) and closes them all."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.opened: list[Store] = []
        self._memory: dict[bool, Store] = {}
        self._sqlite_path = str(tmp_path / "saga.sqlite3")
        self._pg_url: str | None = None
        self._pg_schema = f"t_{uuid.uuid4().hex[:8]}"
        if kind == "postgres":
            self._pg_url = require_postgres()

    def open(self, *, outbox: bool = False) -> Store:
        """A store on the shared backing database; for memory, the one instance (per outbox)."""
        store: Store
        if self.kind == "memory":
            if outbox in self._memory:
                return self._memory[outbox]
            from workers.adapters.store.memory import MemoryStore

            store = MemoryStore(outbox=outbox)
            self._memory[outbox] = store
        elif self.kind == "sqlite":
            from workers.adapters.store.sqlite import SqliteStore

            store = SqliteStore(self._sqlite_path, outbox=outbox)
        else:
            from workers.adapters.store.postgres import PostgresStore

            assert self._pg_url is not None
            store = PostgresStore(self._pg_url, schema=self._pg_schema, outbox=outbox)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()
        self.opened.clear()
        if self._pg_url is not None:
            import psycopg

            with psycopg.connect(self._pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self._pg_schema}" CASCADE')


@pytest.fixture(params=STORE_KINDS)
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    made = StoreFactory(request.param, tmp_path)
    try:
        yield made
    finally:
        made.close_all()


# The stores that keep data across instances (the memory store, by design, does not).
@pytest.fixture(params=DURABLE_KINDS)
def durable_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    made = StoreFactory(request.param, tmp_path)
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture
def store(factory: StoreFactory) -> Store:
    return factory.open(outbox=False)


@pytest.fixture
def outbox_store(factory: StoreFactory) -> Store:
    return factory.open(outbox=True)


# ---------------------------------------------------------------- helpers


class Clock:
    """Strictly increasing UTC times with microseconds, starting a little before now."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=5)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1, microseconds=7)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_workflow(name: str = "order", *, no_compensate_first: bool = False) -> Workflow:
    """Three steps: two with a compensation, the last without one."""
    first = Step(
        "reserve",
        "inventory",
        "Inventory.Reserve",
        compensate=None if no_compensate_first else "Inventory.Release",
    )
    return Workflow(
        name=name,
        steps=(
            first,
            Step("charge", "payment", "pay.v1.Payment.Charge", compensate="pay.v1.Payment.Refund"),
            Step("notify", "mail", "Mail.Send"),
        ),
    )


@pytest.fixture
def wf(store: Store) -> Workflow:
    return store.register_workflow(make_workflow())


def make_saga(
    store: Store,
    workflow: Workflow,
    at: datetime,
    *,
    payload: dict[str, Any] | None = None,
    correlation_id: str | None = None,
    initiated_by: str | None = None,
    saga_id: str | None = None,
    lease: StartLease | None = None,
) -> SagaState:
    state = new_saga(
        saga_id=saga_id or str(uuid.uuid4()),
        workflow=workflow,
        payload={"order_id": "o-1"} if payload is None else payload,
        correlation_id=correlation_id,
        initiated_by=initiated_by,
        at=at,
    )
    saved, _hash, created = store.create_saga(state, lease=lease)
    assert created
    assert saved == state
    return state


def claim_one(store: Store, owner: str, saga_id: str, lease_secs: float = LONG) -> Claimed:
    claimed = {c.state.saga_id: c for c in store.claim(owner, 100, lease_secs)}
    assert saga_id in claimed, f"{owner} could not claim {saga_id}"
    return claimed[saga_id]


def claimed_ids(store: Store, owner: str, limit: int = 100, lease_secs: float = LONG) -> list[str]:
    return [c.state.saga_id for c in store.claim(owner, limit, lease_secs)]


class Executor:
    """One executor instance: claims (all it can get) once and remembers every lease it got."""

    def __init__(self, store: Store, owner: str, clock: Clock, lease_secs: float = LONG) -> None:
        self.store, self.owner, self.clock, self.lease_secs = store, owner, clock, lease_secs
        self.held: dict[str, Claimed] = {}

    def claim(self, saga_id: str) -> Claimed:
        if saga_id not in self.held:
            for claimed in self.store.claim(self.owner, 100, self.lease_secs):
                self.held[claimed.state.saga_id] = claimed
        assert saga_id in self.held, f"{self.owner} could not claim {saga_id}"
        return self.held[saga_id]

    def run(self, wf: Workflow, saga_id: str) -> Run:
        got = self.claim(saga_id)
        return Run(
            self.store, self.owner, wf, self.clock, got.state, got.lease_token, self.lease_secs
        )


@dataclass
class Run:
    """One executor driving one saga with the real core, committing every `Commit` it emits."""

    store: Store
    owner: str
    wf: Workflow
    clock: Clock
    state: SagaState
    token: int
    lease_secs: float = LONG
    commits: list[Commit] = field(default_factory=list)
    results: list[CommitResult] = field(default_factory=list)

    @classmethod
    def claim(
        cls, store: Store, owner: str, wf: Workflow, clock: Clock, saga_id: str, **kw: Any
    ) -> Run:
        got = claim_one(store, owner, saga_id, kw.get("lease_secs", LONG))
        return cls(store, owner, wf, clock, got.state, got.lease_token, **kw)

    def feed(self, event: Event) -> Decision:
        decision = decide(self.state, self.wf, event)
        for effect in decision.effects:
            if isinstance(effect, Commit):
                results = self.store.commit(
                    self.owner, [CommitRequest(effect, self.token)], self.lease_secs
                )
                assert len(results) == 1
                assert results[0].saga_id == effect.state.saga_id
                assert not results[0].fenced, "unexpectedly fenced"
                self.commits.append(effect)
                self.results.append(results[0])
        self.state = decision.state
        return decision

    def resume(self, cancel: bool = False) -> Decision:
        return self.feed(Resume(self.clock(), cancel))

    def succeed(self, **response: Any) -> Decision:
        return self.feed(StepSucceeded(self.clock(), response))

    def fail(self, code: str = "FAILED_PRECONDITION", message: str = "rejected") -> Decision:
        return self.feed(StepFailed(self.clock(), code, message))

    @property
    def committed(self) -> SagaState:
        return self.commits[-1].state

    @property
    def logs(self) -> list[StepLog]:
        return [log for c in self.commits for log in c.step_logs]

    @property
    def events(self) -> list[SagaEvent]:
        return [ev for c in self.commits for ev in c.events]


def newest_first(sagas: list[SagaState]) -> list[str]:
    return [s.saga_id for s in sorted(sagas, key=lambda s: (s.created_at, s.saga_id), reverse=True)]


def all_pages(store: Store, filters: SagaFilter, page_size: int) -> list[SagaPage]:
    pages = [store.list_sagas(filters, 1, page_size)]
    while pages[-1].has_next:
        pages.append(store.list_sagas(filters, len(pages) + 1, page_size))
        assert len(pages) < 1000
    return pages


def expected_body(event: SagaEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "event_type": event.event_type.value,
        "saga_id": event.saga_id,
        "workflow_name": event.workflow_name,
        "status": event.status.value,
        "current_step": event.current_step,
        "correlation_id": event.correlation_id,
        "error_message": event.error_message,
        "payload": dict(event.payload),
        "timestamp": format_timestamp(event.timestamp),
    }


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value


# ---------------------------------------------------------------- lifecycle


def test_ping_answers(store: Store) -> None:
    """A working store answers a ping."""
    assert store.ping() is None


# ---------------------------------------------------------------- workflows


def test_register_numbers_versions_per_name(store: Store) -> None:
    """Registering a name gives version 1, registering it again gives 2, whatever was passed."""
    first = store.register_workflow(make_workflow("order"))
    other = store.register_workflow(make_workflow("refund"))
    second = store.register_workflow(Workflow("order", make_workflow().steps[:1], version=9))
    assert (first.version, other.version, second.version) == (1, 1, 2)
    assert second.steps == make_workflow().steps[:1]


def test_get_workflow_latest_or_given_version(store: Store) -> None:
    """A workflow reads back whole: the latest by default, or exactly the version asked for."""
    rich = Step(
        "charge",
        "payment",
        "pay.v1.Payment.Charge",
        compensate=None,
        timeout_secs=2.5,
        retry=RetryPolicy(
            max_attempts=5,
            backoff=Backoff.FIXED,
            initial_interval_ms=250,
            max_interval_ms=4000,
            jitter=True,
            non_retryable_codes=("NOT_FOUND", "ABORTED"),
        ),
    )
    v1 = store.register_workflow(make_workflow("order"))
    v2 = store.register_workflow(Workflow("order", (rich, *make_workflow().steps[1:])))
    assert store.get_workflow("order") == v2
    assert store.get_workflow("order", 2) == v2
    assert store.get_workflow("order", 1) == v1
    assert store.get_workflow("order", 1) == Workflow("order", make_workflow().steps, version=1)
    assert store.get_workflow("order", 3) is None
    assert store.get_workflow("unknown") is None


def test_list_workflows_gives_latest_of_each_by_name(store: Store) -> None:
    """The workflow list has one entry per name, its latest version, sorted by name."""
    assert store.list_workflows() == []
    store.register_workflow(make_workflow("zeta"))
    store.register_workflow(make_workflow("alpha"))
    latest_alpha = store.register_workflow(Workflow("alpha", make_workflow().steps[:2]))
    store.register_workflow(make_workflow("mid"))
    listed = store.list_workflows()
    assert [(w.name, w.version) for w in listed] == [("alpha", 2), ("mid", 1), ("zeta", 1)]
    assert listed[0] == latest_alpha


def test_concurrent_registration_gives_distinct_versions(factory: StoreFactory) -> None:
    """Registering one name from several processes at once gives versions 1..n, none twice."""
    stores = [factory.open() for _ in range(4)]

    def register(i: int) -> int:
        return stores[i % 4].register_workflow(make_workflow("race")).version

    with ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(register, range(12)))
    assert versions == list(range(1, 13))
    latest = stores[0].get_workflow("race")
    assert latest is not None and latest.version == 12


def test_saga_keeps_its_workflow_version(store: Store, clock: Clock) -> None:
    """A saga started on version 1 still runs version 1 after version 2 is registered."""
    v1 = store.register_workflow(make_workflow())
    saga = make_saga(store, v1, clock())
    v2 = store.register_workflow(Workflow(v1.name, v1.steps[:1]))
    assert v2.version == 2
    got = store.get_saga(saga.saga_id)
    assert got is not None and got.workflow_version == 1
    run = Run.claim(store, "ex-1", v1, clock, saga.saga_id)
    assert run.state.workflow_version == 1
    run.resume()
    run.succeed()
    after = store.get_saga(saga.saga_id)
    assert after is not None and after.workflow_version == 1
    assert store.get_workflow(after.workflow_name, after.workflow_version) == v1


# ---------------------------------------------------------------- create / get


@pytest.mark.parametrize("with_ids", [False, True], ids=["no-ids", "ids"])
def test_created_saga_reads_back_equal(
    store: Store, wf: Workflow, clock: Clock, with_ids: bool
) -> None:
    """A created saga reads back exactly: payload, optional ids, UTC timestamps to the µs."""
    payload = {
        "order_id": "ord-ü-注文-🚚",
        "amount": 1234.5,
        "count": 3,
        "items": [{"sku": "A-1", "qty": 2, "tags": ["x", "y"]}, {"sku": "B", "qty": None}],
        "nested": {"deep": {"deeper": {"flag": True, "empty": {}, "list": []}}},
        "quote": 'he said "hi"\n\ttab \\ back',
    }
    at = clock().replace(microsecond=987654)
    saga = make_saga(
        store,
        wf,
        at,
        payload=payload,
        correlation_id="corr-ß-1" if with_ids else None,
        initiated_by="user@example.com" if with_ids else None,
    )
    got = store.get_saga(saga.saga_id)
    assert got == saga
    assert got is not None
    assert dict(got.payload) == payload
    assert got.status is SagaStatus.STARTED and got.current_step == 0
    assert got.created_at == at and got.updated_at == at
    assert got.created_at.microsecond == 987654
    assert_utc(got.created_at)
    assert_utc(got.updated_at)
    assert store.get_step_logs(saga.saga_id) == []


def test_unknown_saga_is_none(store: Store) -> None:
    """Reading an id that was never created gives None and no logs."""
    unknown = str(uuid.uuid4())
    assert store.get_saga(unknown) is None
    assert store.get_step_logs(unknown) == []
    assert store.is_cancel_requested(unknown) is False


def test_idempotency_key_returns_first_saga(store: Store, wf: Workflow, clock: Clock) -> None:
    """A second create with the same idempotency key inserts nothing and returns the first saga."""
    first = new_saga(
        saga_id=str(uuid.uuid4()),
        workflow=wf,
        payload={"n": 1},
        correlation_id="c-1",
        initiated_by=None,
        at=clock(),
    )
    saved, stored_hash, created = store.create_saga(
        first, idempotency_key="key-1", request_hash="h1"
    )
    assert (saved, stored_hash, created) == (first, "h1", True)

    second = new_saga(
        saga_id=str(uuid.uuid4()),
        workflow=wf,
        payload={"n": 2},
        correlation_id="c-2",
        initiated_by="someone",
        at=clock(),
    )
    again, again_hash, again_created = store.create_saga(
        second, idempotency_key="key-1", request_hash="h2"
    )
    assert again_created is False
    assert again == first
    assert again_hash == "h1"
    assert store.get_saga(second.saga_id) is None
    assert store.list_sagas(SagaFilter(), 1, 20).total_count == 1

    third = new_saga(
        saga_id=str(uuid.uuid4()),
        workflow=wf,
        payload={"n": 3},
        correlation_id=None,
        initiated_by=None,
        at=clock(),
    )
    _, _, third_created = store.create_saga(third, idempotency_key="key-2", request_hash="h1")
    assert third_created is True
    assert store.get_saga(third.saga_id) == third


def test_idempotency_key_returns_saga_as_it_is_now(
    store: Store, wf: Workflow, clock: Clock
) -> None:
    """A repeated idempotent create returns the first saga's current status, not its first one."""
    first = new_saga(
        saga_id=str(uuid.uuid4()),
        workflow=wf,
        payload={},
        correlation_id=None,
        initiated_by=None,
        at=clock(),
    )
    store.create_saga(first, idempotency_key="k", request_hash="h")
    run = Run.claim(store, "ex-1", wf, clock, first.saga_id)
    run.resume()
    again, _, created = store.create_saga(
        new_saga(
            saga_id=str(uuid.uuid4()),
            workflow=wf,
            payload={},
            correlation_id=None,
            initiated_by=None,
            at=clock(),
        ),
        idempotency_key="k",
        request_hash="h",
    )
    assert created is False
    assert again == run.committed
    assert again.status is SagaStatus.RUNNING


# ---------------------------------------------------------------- list


def test_list_filters_combine(store: Store, clock: Clock) -> None:
    """Each filter narrows the list, and given together they must all match."""
    alpha = store.register_workflow(make_workflow("alpha"))
    beta = store.register_workflow(make_workflow("beta"))
    a1 = make_saga(store, alpha, clock(), correlation_id="c1")
    a2 = make_saga(store, alpha, clock(), correlation_id="c2")
    a3 = make_saga(store, alpha, clock())
    b1 = make_saga(store, beta, clock(), correlation_id="c1")
    b2 = make_saga(store, beta, clock(), correlation_id="c1")
    # a2 and b2 become RUNNING.
    ex = Executor(store, "ex", clock)
    ex.run(alpha, a2.saga_id).resume()
    ex.run(beta, b2.saga_id).resume()

    def ids(**kw: Any) -> set[str]:
        page = store.list_sagas(SagaFilter(**kw), 1, 100)
        assert page.total_count == len(page.sagas)
        return {s.saga_id for s in page.sagas}

    every = {s.saga_id for s in (a1, a2, a3, b1, b2)}
    assert ids() == every
    assert ids(workflow_name="alpha") == {a1.saga_id, a2.saga_id, a3.saga_id}
    assert ids(workflow_name="beta") == {b1.saga_id, b2.saga_id}
    assert ids(workflow_name="gamma") == set()
    assert ids(status=SagaStatus.RUNNING) == {a2.saga_id, b2.saga_id}
    assert ids(status=SagaStatus.STARTED) == {a1.saga_id, a3.saga_id, b1.saga_id}
    assert ids(status=SagaStatus.COMPLETED) == set()
    assert ids(correlation_id="c1") == {a1.saga_id, b1.saga_id, b2.saga_id}
    assert ids(correlation_id="c") == set()
    assert ids(workflow_name="alpha", correlation_id="c1") == {a1.saga_id}
    assert ids(workflow_name="beta", status=SagaStatus.RUNNING) == {b2.saga_id}
    assert ids(status=SagaStatus.STARTED, correlation_id="c1") == {a1.saga_id, b1.saga_id}
    assert ids(workflow_name="beta", status=SagaStatus.STARTED, correlation_id="c1") == {b1.saga_id}
    assert ids(workflow_name="alpha", status=SagaStatus.RUNNING, correlation_id="c1") == set()
    running = store.list_sagas(SagaFilter(status=SagaStatus.RUNNING), 1, 100).sagas
    assert all(s.status is SagaStatus.RUNNING for s in running)


def test_list_is_newest_first_with_id_tie_break(store: Store, wf: Workflow, clock: Clock) -> None:
    """The list is newest first by creation time; sagas created at the same time go by id."""
    tie = clock()
    created: list[SagaState] = []
    # Inserted in an order that is neither time order nor id order.
    for at in (clock(), tie, clock(), tie, tie, clock(), tie):
        created.append(make_saga(store, wf, at))
    created.insert(0, make_saga(store, wf, tie - timedelta(days=1)))
    page = store.list_sagas(SagaFilter(), 1, 100)
    assert [s.saga_id for s in page.sagas] == newest_first(created)
    assert [s.saga_id for s in page.sagas] != [s.saga_id for s in reversed(created)]


@pytest.mark.parametrize("count", [0, 1, 20, 21, 40, 41])
def test_list_pagination_at_boundaries(
    store: Store, wf: Workflow, clock: Clock, count: int
) -> None:
    """Pages of 20 cover every saga once, newest first, with the right total and has_next."""
    created = [make_saga(store, wf, clock()) for _ in range(count)]
    pages = all_pages(store, SagaFilter(), 20)
    expected_pages = max(1, -(-count // 20))
    assert len(pages) == expected_pages
    for number, page in enumerate(pages, start=1):
        assert (page.page, page.page_size, page.total_count) == (number, 20, count)
        assert page.has_next == (number < expected_pages)
        assert len(page.sagas) == (20 if number < expected_pages else count - 20 * (number - 1))
    assert [s.saga_id for p in pages for s in p.sagas] == newest_first(created)
    past = store.list_sagas(SagaFilter(), expected_pages + 1, 20)
    assert past.sagas == () and past.total_count == count and not past.has_next


def test_list_pagination_over_a_thousand_rows(store: Store, wf: Workflow, clock: Clock) -> None:
    """With 1,050 sagas, the 53rd page of 20 holds the last 10 and nothing comes after it."""
    created = [
        make_saga(store, wf, clock(), correlation_id=f"c{i % 3}", payload={"i": i})
        for i in range(1050)
    ]
    order = newest_first(created)

    first = store.list_sagas(SagaFilter(), 1, 20)
    assert first.total_count == 1050 and first.has_next
    assert [s.saga_id for s in first.sagas] == order[:20]
    before_last = store.list_sagas(SagaFilter(), 52, 20)
    assert len(before_last.sagas) == 20 and before_last.has_next
    last = store.list_sagas(SagaFilter(), 53, 20)
    assert len(last.sagas) == 10 and not last.has_next and last.total_count == 1050
    assert [s.saga_id for s in last.sagas] == order[-10:]
    past = store.list_sagas(SagaFilter(), 54, 20)
    assert past.sagas == () and past.total_count == 1050 and not past.has_next

    hundreds = all_pages(store, SagaFilter(), 100)
    assert len(hundreds) == 11 and len(hundreds[-1].sagas) == 50
    assert [s.saga_id for p in hundreds for s in p.sagas] == order

    filtered = store.list_sagas(SagaFilter(correlation_id="c1"), 4, 100)
    assert filtered.total_count == 350 and len(filtered.sagas) == 50 and not filtered.has_next
    c1 = [s for s in created if s.correlation_id == "c1"]
    assert [s.saga_id for s in filtered.sagas] == newest_first(c1)[300:]


# ---------------------------------------------------------------- claim / lease


def _drive_to_every_status(store: Store, wf: Workflow, clock: Clock) -> dict[SagaStatus, str]:
    """One saga in each of the seven statuses (created oldest to newest in this order)."""
    ids: dict[SagaStatus, str] = {}
    for status in SagaStatus:
        ids[status] = make_saga(store, wf, clock()).saga_id
    driver = Executor(store, "driver", clock)
    for status, saga_id in ids.items():
        run = driver.run(wf, saga_id)
        if status is SagaStatus.STARTED:
            store.release("driver", {saga_id: run.token})
            continue
        if status is SagaStatus.CANCELLED:
            run.resume(cancel=True)
        elif status is SagaStatus.PAUSED:  # paused on request at the boundary after step 0
            run.resume()
            run.succeed(ok=1)
            run.feed(Resume(clock(), pause_requested=True))
        else:
            run.resume()
            if status is not SagaStatus.RUNNING:
                run.succeed(ok=1)
                run.resume()
                if status is SagaStatus.COMPLETED:
                    run.succeed(ok=2)
                    run.resume()
                    run.succeed(ok=3)
                    run.resume()  # the boundary after the last step completes the saga
                elif status is SagaStatus.COMPENSATING:
                    run.fail()
                else:  # FAILED: step 1 fails, the compensation of step 0 succeeds
                    run.fail()
                    run.succeed(undone=True)
        assert run.committed.status is status
        if not status.terminal:
            store.release("driver", {saga_id: run.token})
    return ids


def test_claim_takes_only_active_sagas_oldest_first(
    store: Store, wf: Workflow, clock: Clock
) -> None:
    """Claiming returns only STARTED, RUNNING and COMPENSATING sagas, oldest first."""
    ids = _drive_to_every_status(store, wf, clock)
    claimed = store.claim("ex-1", 100, LONG)
    # Created in the order STARTED, RUNNING, COMPLETED, COMPENSATING, FAILED, CANCELLED.
    assert [c.state.saga_id for c in claimed] == [
        ids[SagaStatus.STARTED],
        ids[SagaStatus.RUNNING],
        ids[SagaStatus.COMPENSATING],
    ]
    for c in claimed:
        assert c.state == store.get_saga(c.state.saga_id)
        assert c.state.in_flight is None


def test_claim_respects_limit_and_creation_order(store: Store, wf: Workflow, clock: Clock) -> None:
    """A claim takes at most `limit` sagas, the oldest ones, whatever order they were written in."""
    times = [clock() for _ in range(6)]
    sagas = [make_saga(store, wf, times[i]) for i in (3, 0, 5, 1, 4, 2)]
    by_age = [s.saga_id for s in sorted(sagas, key=lambda s: s.created_at)]
    first = store.claim("ex-1", 2, LONG)
    assert [c.state.saga_id for c in first] == by_age[:2]
    assert all(not c.taken_over and not c.cancel_requested for c in first)
    assert claimed_ids(store, "ex-2", 3) == by_age[2:5]
    assert claimed_ids(store, "ex-3", 10) == by_age[5:]
    assert store.claim("ex-4", 10, LONG) == []


def test_lease_blocks_others_until_it_expires(factory: StoreFactory, clock: Clock) -> None:
    """A claimed saga goes to no one else until its lease expires; then it is taken over."""
    a, b = factory.open(), factory.open()
    wf = a.register_workflow(make_workflow())
    saga = make_saga(a, wf, clock())
    first = claim_one(a, "ex-a", saga.saga_id, SHORT)
    assert first.taken_over is False
    assert b.claim("ex-b", 10, LONG) == []
    assert a.claim("ex-c", 10, LONG) == []
    time.sleep(PAST_SHORT)
    [second] = b.claim("ex-b", 10, LONG)
    assert second.state.saga_id == saga.saga_id
    assert second.taken_over is True
    assert second.lease_token > first.lease_token
    assert second.state == saga
    assert a.claim("ex-a", 10, LONG) == []


def test_concurrent_claims_never_share_a_saga(factory: StoreFactory, clock: Clock) -> None:
    """Executors claiming at the same time never get the same saga, and together get them all."""
    stores = [factory.open() for _ in range(4)]
    wf = stores[0].register_workflow(make_workflow())
    sagas = {make_saga(stores[0], wf, clock()).saga_id for _ in range(60)}

    def grab(i: int) -> list[str]:
        got: list[str] = []
        while True:
            batch = claimed_ids(stores[i], f"ex-{i}", 3)
            if not batch:
                return got
            got.extend(batch)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(grab, range(4)))
    flat = [saga_id for r in results for saga_id in r]
    assert len(flat) == len(set(flat))
    assert set(flat) == sagas


def test_release_makes_saga_claimable_at_once(store: Store, wf: Workflow, clock: Clock) -> None:
    """A released lease can be claimed by another executor without waiting for it to expire."""
    saga = make_saga(store, wf, clock())
    held = claim_one(store, "ex-a", saga.saga_id, LONG)
    assert store.claim("ex-b", 10, LONG) == []
    store.release("ex-a", {saga.saga_id: held.lease_token})
    again = claim_one(store, "ex-b", saga.saga_id, LONG)
    assert again.lease_token > held.lease_token


def test_stale_release_does_not_free_the_new_holder(
    store: Store, wf: Workflow, clock: Clock
) -> None:
    """An executor that lost a lease cannot release it away from the executor that took it over."""
    saga = make_saga(store, wf, clock())
    old = claim_one(store, "ex-a", saga.saga_id, SHORT)
    time.sleep(PAST_SHORT)
    claim_one(store, "ex-b", saga.saga_id, LONG)
    store.release("ex-a", {saga.saga_id: old.lease_token})
    assert store.claim("ex-c", 10, LONG) == []


def test_renew_keeps_lease_and_reports_lost_ones(store: Store, wf: Workflow, clock: Clock) -> None:
    """Renewing keeps a lease past its first expiry; a lease already taken over is reported lost."""
    kept = make_saga(store, wf, clock())
    lost = make_saga(store, wf, clock())
    leases = {c.state.saga_id: c.lease_token for c in store.claim("ex-a", 10, SHORT)}
    assert set(leases) == {kept.saga_id, lost.saga_id}

    time.sleep(SHORT / 4)
    assert store.renew("ex-a", {kept.saga_id: leases[kept.saga_id]}, 2.0) == {kept.saga_id}
    time.sleep(PAST_SHORT)
    # `kept` was renewed past its first expiry; `lost` was not and is taken over.
    assert claimed_ids(store, "ex-b", 10, LONG) == [lost.saga_id]
    assert store.renew("ex-a", leases, 2.0) == {kept.saga_id}
    assert store.claim("ex-c", 10, LONG) == []


def test_renew_with_wrong_owner_or_token_holds_nothing(
    store: Store, wf: Workflow, clock: Clock
) -> None:
    """Only the holder of a lease, with its current token, can renew it."""
    saga = make_saga(store, wf, clock())
    held = claim_one(store, "ex-a", saga.saga_id, LONG)
    assert store.renew("ex-b", {saga.saga_id: held.lease_token}, LONG) == set()
    assert store.renew("ex-a", {saga.saga_id: held.lease_token - 1}, LONG) == set()
    assert store.renew("ex-a", {str(uuid.uuid4()): 1}, LONG) == set()
    assert store.renew("ex-a", {saga.saga_id: held.lease_token}, LONG) == {saga.saga_id}


# ---------------------------------------------------------------- commit


def test_commits_store_state_and_logs_in_order(store: Store, clock: Clock) -> None:
    """Every commit of a run is stored: the latest state, and all step logs in commit order."""
    wf = store.register_workflow(make_workflow(no_compensate_first=True))
    saga = make_saga(
        store,
        wf,
        clock(),
        payload={"order": {"id": "o-7", "lines": [1, 2]}, "name": "Zoë"},
        correlation_id="c-7",
        initiated_by="alice",
    )
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id)
    run.resume()
    assert store.get_saga(saga.saga_id) == run.committed
    assert run.committed.status is SagaStatus.RUNNING
    run.succeed(reserved={"sku": "A", "qty": 2}, note="日本語")
    assert store.get_step_logs(saga.saga_id) == run.logs
    run.resume()
    run.succeed(charged=42.5)
    run.resume()
    run.fail("FAILED_PRECONDITION", "mail server refuses")
    # Compensation: step 1 is undone (a call), step 0 has no compensate method (SKIPPED).
    stored = store.get_saga(saga.saga_id)
    assert stored == run.committed
    assert stored is not None and stored.status is SagaStatus.COMPENSATING
    assert stored.compensation == Compensation(
        cancelled=False, cause=stored.error_message, pending=(1, 0)
    )
    run.succeed(refunded=True)
    final = store.get_saga(saga.saga_id)
    assert final == run.committed
    assert final is not None and final.status is SagaStatus.FAILED
    assert final.error_message is not None and "mail server refuses" in final.error_message
    assert_utc(final.updated_at)
    logs = store.get_step_logs(saga.saga_id)
    assert logs == run.logs
    assert [(log.step_index, log.action, log.status) for log in logs] == [
        (0, Action.EXECUTE, StepStatus.SUCCESS),
        (1, Action.EXECUTE, StepStatus.SUCCESS),
        (2, Action.EXECUTE, StepStatus.FAILED),
        (1, Action.COMPENSATE, StepStatus.SUCCESS),
        (0, Action.COMPENSATE, StepStatus.SKIPPED),
    ]
    for log in logs:
        assert_utc(log.started_at)
        assert_utc(log.completed_at)


def test_saga_detail_is_the_saga_its_logs_and_its_actions(store: Store, clock: Clock) -> None:
    """`saga_detail` (one round trip where the store can) reads exactly what `get_saga`,
    `get_step_logs` and `operator_actions` read, for a saga with logs of every kind, odd
    values (floats, big integers, non-ASCII, nulls, nesting) and operator actions."""
    wf = store.register_workflow(make_workflow())
    saga = make_saga(store, wf, clock(), payload={"n": 1.0, "big": 2**62, "name": "Zoë"})
    assert store.saga_detail(saga.saga_id) == (saga, [], [])
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id)
    run.resume()
    run.succeed(reserved={"sku": "A", "qty": 2, "price": 0.1, "none": None}, note="日本語")
    run.resume()
    run.fail("FAILED_PRECONDITION", "no\nway \u2603")
    paused = store.request_pause(saga.saga_id, by="bob", at=clock())  # COMPENSATING: yes
    assert paused is not None and paused.accepted
    detail = store.saga_detail(saga.saga_id)
    assert detail is not None
    state, logs, actions = detail
    assert state == store.get_saga(saga.saga_id)
    assert logs == store.get_step_logs(saga.saga_id) and len(logs) >= 2
    assert actions == store.operator_actions(saga.saga_id) and len(actions) == 1
    for log in logs:
        assert_utc(log.started_at)
        assert_utc(log.completed_at)
    assert store.saga_detail(str(uuid.uuid4())) is None
    assert store.saga_detail("not-a-uuid") is None


def test_logs_written_together_keep_their_order(store: Store, clock: Clock) -> None:
    """Step logs committed together with the same completion time read back in written order."""
    steps = (
        Step("a", "s", "S.A"),
        Step("b", "s", "S.B"),
        Step("c", "s", "S.C"),
        Step("d", "s", "S.D", compensate="S.UndoD"),
    )
    wf = store.register_workflow(Workflow("flat", steps))
    saga = make_saga(store, wf, clock())
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id)
    for _ in range(3):
        run.resume()
        run.succeed()
    run.resume()
    run.fail("INVALID_ARGUMENT", "bad")
    # One commit: the FAILED log of d, then SKIPPED c, b, a, all completed at the same instant.
    last = run.commits[-1]
    assert [log.step_index for log in last.step_logs] == [3, 2, 1, 0]
    assert len({log.completed_at for log in last.step_logs}) == 1
    assert store.get_step_logs(saga.saga_id) == run.logs


def test_terminal_saga_is_never_claimed_again(store: Store, wf: Workflow, clock: Clock) -> None:
    """A saga that ended is not claimed again, even once the lease it ended under has run out."""
    saga = make_saga(store, wf, clock())
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id, lease_secs=SHORT)
    for _ in range(3):
        run.resume()
        run.succeed()
    run.resume()
    assert run.committed.status is SagaStatus.COMPLETED
    assert store.claim("ex-2", 10, LONG) == []
    time.sleep(PAST_SHORT)
    assert store.claim("ex-2", 10, LONG) == []
    assert store.get_saga(saga.saga_id) == run.committed


def test_commit_extends_the_lease(store: Store, wf: Workflow, clock: Clock) -> None:
    """A non-terminal commit extends the executor's lease, so no one takes the saga over."""
    saga = make_saga(store, wf, clock())
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id, lease_secs=SHORT)
    time.sleep(SHORT / 4)
    run.lease_secs = 2.0
    run.resume()
    time.sleep(PAST_SHORT)
    assert store.claim("ex-2", 10, LONG) == []
    assert store.renew("ex-1", {saga.saga_id: run.token}, LONG) == {saga.saga_id}


def test_stale_commit_is_fenced_and_writes_nothing(factory: StoreFactory, clock: Clock) -> None:
    """A commit from an executor whose lease was taken over is fenced and changes nothing."""
    store = factory.open(outbox=True)
    other = factory.open(outbox=True)
    wf = store.register_workflow(make_workflow())
    saga = make_saga(store, wf, clock())
    stale = Run.claim(store, "ex-a", wf, clock, saga.saga_id, lease_secs=SHORT)
    time.sleep(PAST_SHORT)
    fresh = Run.claim(other, "ex-b", wf, clock, saga.saga_id)
    assert fresh.token > stale.token

    decision = decide(stale.state, wf, Resume(clock()))
    commit = next(e for e in decision.effects if isinstance(e, Commit))
    assert commit.events, "the first commit publishes SAGA_RUNNING"
    [result] = store.commit("ex-a", [CommitRequest(commit, stale.token)], LONG)
    assert result == CommitResult(saga.saga_id, fenced=True, cancel_requested=False)
    assert store.get_saga(saga.saga_id) == saga
    assert store.get_step_logs(saga.saga_id) == []
    assert store.claim_outbox("relay", 100, LONG) == []
    assert store.outbox_stats() == (0, None)

    # Same token but another owner name is fenced too.
    [result] = store.commit("ex-a", [CommitRequest(commit, fresh.token)], LONG)
    assert result.fenced is True
    assert store.get_saga(saga.saga_id) == saga

    # The new holder commits normally, with its own token.
    fresh.resume()
    assert store.get_saga(saga.saga_id) == fresh.committed
    # A late commit from the old holder, with logs this time, still writes nothing.
    late = decide(fresh.state, wf, StepSucceeded(clock(), {"late": True}))
    late_commit = next(e for e in late.effects if isinstance(e, Commit))
    assert late_commit.step_logs
    [result] = store.commit("ex-a", [CommitRequest(late_commit, stale.token)], LONG)
    assert result.fenced is True
    assert store.get_saga(saga.saga_id) == fresh.committed
    assert store.get_step_logs(saga.saga_id) == []
    assert store.outbox_stats()[0] == len(fresh.events) == 1


def test_batch_commits_all_but_the_fenced_saga(store: Store, wf: Workflow, clock: Clock) -> None:
    """In one batch, a fenced saga writes nothing while the others commit; results keep order."""
    s1 = make_saga(store, wf, clock())
    [lost] = store.claim("ex-a", 1, SHORT)
    assert lost.state.saga_id == s1.saga_id
    s2 = make_saga(store, wf, clock())
    s3 = make_saga(store, wf, clock())
    held = {c.state.saga_id: c for c in store.claim("ex-a", 10, LONG)}
    assert set(held) == {s2.saga_id, s3.saga_id}
    time.sleep(PAST_SHORT)
    assert claimed_ids(store, "ex-b", 10, LONG) == [s1.saga_id]

    def first_commit(claimed: Claimed) -> Commit:
        decision = decide(claimed.state, wf, Resume(clock()))
        return next(e for e in decision.effects if isinstance(e, Commit))

    c2, c1, c3 = first_commit(held[s2.saga_id]), first_commit(lost), first_commit(held[s3.saga_id])
    results = store.commit(
        "ex-a",
        [
            CommitRequest(c2, held[s2.saga_id].lease_token),
            CommitRequest(c1, lost.lease_token),
            CommitRequest(c3, held[s3.saga_id].lease_token),
        ],
        LONG,
    )
    assert [(r.saga_id, r.fenced) for r in results] == [
        (s2.saga_id, False),
        (s1.saga_id, True),
        (s3.saga_id, False),
    ]
    assert store.get_saga(s1.saga_id) == s1
    assert store.get_saga(s2.saga_id) == c2.state
    assert store.get_saga(s3.saga_id) == c3.state


def test_commit_reports_cancel_requested_between_commits(
    store: Store, wf: Workflow, clock: Clock
) -> None:
    """A cancel requested while a step runs shows in the next commit's result and the next claim."""
    saga = make_saga(store, wf, clock())
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id)
    run.resume()
    assert run.results[-1].cancel_requested is False
    returned = store.request_cancel(saga.saga_id)
    assert returned is not None and returned.accepted
    assert returned.state.saga_id == saga.saga_id
    run.succeed()
    assert run.results[-1].cancel_requested is True

    assert store.is_cancel_requested(saga.saga_id) is True
    store.release("ex-1", {saga.saga_id: run.token})
    claimed = claim_one(store, "ex-2", saga.saga_id)
    assert claimed.cancel_requested is True
    assert claimed.state == run.committed
    again = Run(store, "ex-2", wf, clock, claimed.state, claimed.lease_token)
    again.resume(cancel=True)
    assert again.committed.status is SagaStatus.COMPENSATING
    again.succeed()
    assert again.committed.status is SagaStatus.CANCELLED
    assert store.get_saga(saga.saga_id) == again.committed


def test_claim_carries_the_stored_cancel_flag(store: Store, wf: Workflow, clock: Clock) -> None:
    """A saga cancelled before any executor picks it up is claimed with its cancel flag set."""
    cancelled = make_saga(store, wf, clock())
    plain = make_saga(store, wf, clock())
    store.request_cancel(cancelled.saga_id)
    flags = {c.state.saga_id: c.cancel_requested for c in store.claim("ex-1", 10, LONG)}
    assert flags == {cancelled.saga_id: True, plain.saga_id: False}


# ---------------------------------------------------------------- cancel


def test_cancel_sets_flag_on_started_and_running(store: Store, wf: Workflow, clock: Clock) -> None:
    """Cancelling a STARTED or RUNNING saga sets its cancel flag and returns the saga."""
    started = make_saga(store, wf, clock())
    running = make_saga(store, wf, clock())
    run = Run.claim(store, "ex-1", wf, clock, running.saga_id)
    run.resume()
    assert store.is_cancel_requested(started.saga_id) is False
    assert store.is_cancel_requested(running.saga_id) is False

    got = store.request_cancel(started.saga_id)
    assert got is not None and got.accepted and got.state.saga_id == started.saga_id
    assert got.state.status is SagaStatus.STARTED
    assert store.is_cancel_requested(started.saga_id) is True
    assert store.is_cancel_requested(running.saga_id) is False

    got = store.request_cancel(running.saga_id)
    assert got is not None and got.accepted and got.state.saga_id == running.saga_id
    assert got.state.status is SagaStatus.RUNNING
    assert store.is_cancel_requested(running.saga_id) is True
    again = store.request_cancel(running.saga_id)
    assert again is not None and again.accepted  # asking twice is still a yes


def test_cancel_leaves_other_statuses_alone(store: Store, wf: Workflow, clock: Clock) -> None:
    """Cancelling a terminal or compensating saga returns it unchanged without setting the flag."""
    ids = _drive_to_every_status(store, wf, clock)
    for status in (
        SagaStatus.COMPLETED,
        SagaStatus.FAILED,
        SagaStatus.CANCELLED,
        SagaStatus.COMPENSATING,
    ):
        before = store.get_saga(ids[status])
        got = store.request_cancel(ids[status])
        assert got is not None and not got.accepted, status
        assert got.state == before, status
        assert got.state.status is status
        assert store.is_cancel_requested(ids[status]) is False, status
        assert store.get_saga(ids[status]) == before


def test_cancel_unknown_saga_is_none(store: Store) -> None:
    """Cancelling an id that does not exist gives None and creates nothing."""
    unknown = str(uuid.uuid4())
    assert store.request_cancel(unknown) is None
    assert store.is_cancel_requested(unknown) is False
    assert store.get_saga(unknown) is None


# ---------------------------------------------------------------- outbox


def _one_step(store: Store) -> Workflow:
    return store.register_workflow(
        Workflow("single", (Step("only", "svc", "Svc.Do", compensate="Svc.Undo"),))
    )


def test_outbox_rows_carry_the_event_fields(outbox_store: Store, clock: Clock) -> None:
    """Each committed event becomes one outbox row whose body has the SPEC §6 fields."""
    store = outbox_store
    assert store.outbox_enabled() is True
    wf = _one_step(store)
    saga = make_saga(
        store, wf, clock(), payload={"k": "ü", "n": {"x": [1]}}, correlation_id="corr-9"
    )
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id)
    run.resume()
    run.succeed()
    run.resume()
    events = run.events
    assert [e.event_type for e in events] == [EventType.SAGA_RUNNING, EventType.SAGA_COMPLETED]
    rows = store.claim_outbox("relay-1", 100, LONG)
    assert [r.event_id for r in rows] == [e.event_id for e in events]
    assert rows[0].seq < rows[1].seq
    for row, event in zip(rows, events, strict=True):
        assert row.saga_id == saga.saga_id
        assert row.event_type == event.event_type.value
        assert row.body == expected_body(event)
    count, age = store.outbox_stats()
    assert count == 2 and age is not None and age >= 0


def test_outbox_off_writes_no_rows(store: Store, wf: Workflow, clock: Clock) -> None:
    """Without the outbox, commits with events leave nothing to relay."""
    assert store.outbox_enabled() is False
    saga = make_saga(store, wf, clock())
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id)
    run.resume(cancel=True)
    assert run.events
    assert store.get_saga(saga.saga_id) == run.committed
    assert store.claim_outbox("relay-1", 100, LONG) == []
    assert store.outbox_stats() == (0, None)


def test_outbox_claims_oldest_first_and_exclusively(outbox_store: Store, clock: Clock) -> None:
    """Relays get rows oldest first, and a row one relay holds is not given to another."""
    store = outbox_store
    wf = _one_step(store)
    sagas = [make_saga(store, wf, clock()) for _ in range(4)]
    ex = Executor(store, "ex-1", clock)
    for saga in sagas:  # one SAGA_RUNNING row each, in this order
        ex.run(wf, saga.saga_id).resume()
    first = store.claim_outbox("relay-1", 2, SHORT)
    assert [r.saga_id for r in first] == [s.saga_id for s in sagas[:2]]
    second = store.claim_outbox("relay-2", 10, LONG)
    assert [r.saga_id for r in second] == [s.saga_id for s in sagas[2:]]
    assert store.claim_outbox("relay-3", 10, LONG) == []
    time.sleep(PAST_SHORT)
    # relay-1's claim ran out: its rows go to another relay, still oldest first.
    assert [r.seq for r in store.claim_outbox("relay-3", 10, LONG)] == [r.seq for r in first]


def test_outbox_keeps_order_per_saga(outbox_store: Store, clock: Clock) -> None:
    """While one relay holds a saga's earlier row, no relay gets that saga's later rows."""
    store = outbox_store
    wf = _one_step(store)
    x = make_saga(store, wf, clock())
    y = make_saga(store, wf, clock())
    ex = Executor(store, "ex-1", clock)
    run_x = ex.run(wf, x.saga_id)
    run_x.resume()  # x: SAGA_RUNNING
    run_y = ex.run(wf, y.saga_id)
    run_y.resume()  # y: SAGA_RUNNING
    run_x.fail()  # x: SAGA_COMPENSATING, SAGA_FAILED in one commit
    x_events = [e.event_id for e in run_x.events]
    assert len(x_events) == 3

    [x_first] = store.claim_outbox("relay-1", 1, LONG)
    assert x_first.event_id == x_events[0]
    others = store.claim_outbox("relay-2", 10, LONG)
    assert [r.event_id for r in others] == [run_y.events[0].event_id]
    assert store.claim_outbox("relay-3", 10, LONG) == []

    store.mark_published([x_first.seq])
    rest = store.claim_outbox("relay-3", 10, LONG)
    assert [r.event_id for r in rest] == x_events[1:]


def test_published_rows_leave_claims_and_stats(outbox_store: Store, clock: Clock) -> None:
    """Published rows are never handed out again and no longer count as waiting."""
    store = outbox_store
    wf = _one_step(store)
    sagas = [make_saga(store, wf, clock()) for _ in range(3)]
    ex = Executor(store, "ex-1", clock)
    for saga in sagas:
        ex.run(wf, saga.saga_id).resume()
    assert store.outbox_stats()[0] == 3
    rows = store.claim_outbox("relay-1", 10, SHORT)
    assert len(rows) == 3
    store.mark_published([rows[0].seq, rows[2].seq])
    count, age = store.outbox_stats()
    assert count == 1 and age is not None and age >= 0
    time.sleep(PAST_SHORT)
    assert [r.seq for r in store.claim_outbox("relay-2", 10, SHORT)] == [rows[1].seq]
    store.mark_published([rows[1].seq])
    assert store.outbox_stats() == (0, None)
    time.sleep(PAST_SHORT)
    assert store.claim_outbox("relay-3", 10, LONG) == []


def test_outbox_stats_age_tracks_the_oldest_row(outbox_store: Store, clock: Clock) -> None:
    """The reported age is that of the oldest unpublished row, growing as it waits."""
    store = outbox_store
    wf = _one_step(store)
    assert store.outbox_stats() == (0, None)
    saga = make_saga(store, wf, clock())
    Run.claim(store, "ex-1", wf, clock, saga.saga_id).resume()
    time.sleep(0.3)
    count, age = store.outbox_stats()
    assert count == 1 and age is not None
    assert 0.25 <= age < 60


def test_prune_deletes_only_old_published_rows(outbox_store: Store, clock: Clock) -> None:
    """Pruning removes published rows older than the given age and nothing else."""
    store = outbox_store
    wf = _one_step(store)
    sagas = [make_saga(store, wf, clock()) for _ in range(3)]
    ex = Executor(store, "ex-1", clock)
    for saga in sagas:
        ex.run(wf, saga.saga_id).resume()
    rows = store.claim_outbox("relay-1", 10, SHORT)
    store.mark_published([rows[0].seq, rows[1].seq])
    assert store.prune_outbox(3600) == 0
    time.sleep(0.3)
    assert store.prune_outbox(0.1) == 2
    assert store.prune_outbox(0.1) == 0
    assert store.outbox_stats()[0] == 1
    time.sleep(PAST_SHORT)
    assert [r.seq for r in store.claim_outbox("relay-2", 10, LONG)] == [rows[2].seq]


# ---------------------------------------------------------------- durability


def test_data_survives_reopening(durable_factory: StoreFactory, clock: Clock) -> None:
    """What one store instance committed, a fresh instance on the same database reads back."""
    factory = durable_factory
    first = factory.open(outbox=True)
    wf = first.register_workflow(make_workflow())
    saga = make_saga(first, wf, clock(), correlation_id="keep")
    run = Run.claim(first, "ex-1", wf, clock, saga.saga_id)
    run.resume()
    run.succeed(ok=True)
    first.close()
    factory.opened.remove(first)
    second = factory.open(outbox=True)
    assert second.get_workflow(wf.name) == wf
    assert second.get_saga(saga.saga_id) == run.committed
    assert second.get_step_logs(saga.saga_id) == run.logs
    assert [r.event_id for r in second.claim_outbox("relay", 10, LONG)] == [
        e.event_id for e in run.events
    ]


def test_outbox_a_failed_send_is_retried_before_newer_rows(
    outbox_store: Store, clock: Clock
) -> None:
    """A row this relay claimed but did not publish (its send failed) comes back first, before
    the saga's newer rows: claim 1 without marking, commit 2, claim again gives 1 then 2."""
    store = outbox_store
    wf = _one_step(store)
    saga = make_saga(store, wf, clock())
    run = Executor(store, "ex-1", clock).run(wf, saga.saga_id)
    run.resume()  # SAGA_RUNNING
    [first] = store.claim_outbox("relay-1", 10, LONG)  # the send fails: not marked
    run.succeed()  # the step is done: nothing new yet (the saga stops at the boundary)
    run.resume()  # SAGA_COMPLETED
    again = store.claim_outbox("relay-1", 10, LONG)
    assert [r.event_type for r in again] == ["SAGA_RUNNING", "SAGA_COMPLETED"]
    assert again[0].seq == first.seq
    assert store.claim_outbox("relay-2", 10, LONG) == []


# ---------------------------------------------------------------- cancel against the last commit


def _run_to_last_boundary(store: Store, wf: Workflow, clock: Clock) -> Run:
    saga = make_saga(store, wf, clock())
    run = Run.claim(store, "ex-1", wf, clock, saga.saga_id)
    run.resume()
    for _ in wf.steps:
        run.succeed()
        if run.state.current_step < len(wf.steps):
            run.resume()
    assert run.state.current_step == len(wf.steps) and run.state.status is SagaStatus.RUNNING
    return run


def test_completed_is_not_written_over_a_cancel(store: Store, wf: Workflow, clock: Clock) -> None:
    """A cancel accepted after the executor last read the flag stops the COMPLETED commit: it
    writes nothing and says so, the lease is still held, and the saga can compensate."""
    run = _run_to_last_boundary(store, wf, clock)
    saga_id = run.state.saga_id
    decision = decide(run.state, wf, Resume(clock(), cancel_requested=False))
    [complete] = decision.effects
    assert isinstance(complete, Commit) and complete.state.status is SagaStatus.COMPLETED
    outcome = store.request_cancel(saga_id)
    assert outcome is not None and outcome.accepted
    [result] = store.commit("ex-1", [CommitRequest(complete, run.token)], LONG)
    assert (result.fenced, result.cancel_first, result.cancel_requested) == (False, True, True)
    assert store.get_saga(saga_id) == run.committed
    run.resume(cancel=True)
    assert run.committed.status is SagaStatus.COMPENSATING


def test_cancel_after_completed_is_refused(store: Store, wf: Workflow, clock: Clock) -> None:
    """Once COMPLETED is written, a cancel is not accepted and sets no flag."""
    run = _run_to_last_boundary(store, wf, clock)
    run.resume()
    assert run.committed.status is SagaStatus.COMPLETED
    outcome = store.request_cancel(run.state.saga_id)
    assert outcome is not None and not outcome.accepted
    assert outcome.state.status is SagaStatus.COMPLETED
    assert store.is_cancel_requested(run.state.saga_id) is False


def test_claim_says_whether_the_last_lease_was_given_back(
    store: Store, wf: Workflow, clock: Clock
) -> None:
    """A saga released at a boundary is claimed with lease_expired false; one whose holder
    never gave it back (died mid-call) with lease_expired true, even for the same owner."""
    fresh = make_saga(store, wf, clock())
    first = claim_one(store, "ex-1", fresh.saga_id, SHORT)
    assert first.lease_expired is False
    store.release("ex-1", {fresh.saga_id: first.lease_token})
    again = claim_one(store, "ex-2", fresh.saga_id, SHORT)
    assert again.lease_expired is False
    time.sleep(PAST_SHORT)
    taken = claim_one(store, "ex-3", fresh.saga_id, SHORT)
    assert (taken.lease_expired, taken.taken_over) == (True, True)
    time.sleep(PAST_SHORT)
    own = claim_one(store, "ex-3", fresh.saga_id, LONG)
    assert (own.lease_expired, own.taken_over) == (True, False)


def test_a_saga_started_with_a_lease_is_held_by_its_owner_from_the_insert(
    store: Store, wf: Workflow, clock: Clock
) -> None:
    """`create_saga(..., lease=...)`: nobody else claims the saga while the lease runs; its
    owner drives it with token START_LEASE_TOKEN (renew and commits are not fenced) to its end."""
    saga = make_saga(store, wf, clock(), lease=StartLease("ex-1", LONG))
    unleased = make_saga(store, wf, clock())
    assert claimed_ids(store, "ex-2") == [unleased.saga_id]
    assert store.renew("ex-1", {saga.saga_id: START_LEASE_TOKEN}, LONG) == {saga.saga_id}
    run = Run(store, "ex-1", wf, clock, saga, START_LEASE_TOKEN)
    run.resume()
    while not run.state.status.terminal:
        run.succeed()
        run.resume()
    stored = store.get_saga(saga.saga_id)
    assert stored is not None and stored.status is SagaStatus.COMPLETED
    assert claimed_ids(store, "ex-2") == []


def test_a_leased_start_whose_owner_died_is_taken_over_when_the_lease_expires(
    store: Store, wf: Workflow, clock: Clock
) -> None:
    """The accepting process died before running the saga: after the lease, another executor
    claims it, as a take-over of a lease never given back, still STARTED; the dead owner's
    token is fenced from then on."""
    saga = make_saga(store, wf, clock(), lease=StartLease("ex-1", SHORT))
    assert claimed_ids(store, "ex-2") == []
    time.sleep(PAST_SHORT)
    taken = claim_one(store, "ex-2", saga.saga_id)
    assert (taken.taken_over, taken.lease_expired) == (True, True)
    assert taken.state.status is SagaStatus.STARTED
    assert taken.lease_token != START_LEASE_TOKEN
    decision = decide(saga, wf, Resume(clock(), False))
    commit = next(e for e in decision.effects if isinstance(e, Commit))
    [result] = store.commit("ex-1", [CommitRequest(commit, START_LEASE_TOKEN)], LONG)
    assert result.fenced


def test_a_replayed_commit_writes_nothing_twice(outbox_store: Store, clock: Clock) -> None:
    """The same commit written again (its first outcome was lost with the connection) adds no
    second step log and no second event."""
    store = outbox_store
    wf = _one_step(store)
    saga = make_saga(store, wf, clock())
    run = Executor(store, "ex-1", clock).run(wf, saga.saga_id)
    run.resume()
    run.succeed()
    for commit in run.commits:  # both written again: the RUNNING one and the step's
        [again] = store.commit("ex-1", [CommitRequest(commit, run.token)], LONG)
        assert not again.fenced
    assert len(store.get_step_logs(saga.saga_id)) == 1
    run.resume()
    assert [r.event_type for r in store.claim_outbox("relay-1", 10, LONG)] == [
        "SAGA_RUNNING",
        "SAGA_COMPLETED",
    ]


# ---------------------------------------------------------------- stats


def test_stats_count_statuses_and_minutes(store: Store, wf: Workflow, clock: Clock) -> None:
    """Counts cover every status; started counts by created_at minute from `since` on, ended
    counts terminal sagas by the minute they ended."""
    old = make_saga(store, wf, clock.now - timedelta(hours=2))
    since = clock.now.replace(second=0, microsecond=0)
    fresh = [make_saga(store, wf, clock()) for _ in range(3)]
    done = _run_to_last_boundary(store, wf, clock)
    done.resume()
    assert done.committed.status is SagaStatus.COMPLETED
    stats = store.stats(since)
    assert set(stats.counts) == set(SagaStatus)
    assert stats.counts[SagaStatus.STARTED] == 4
    assert stats.counts[SagaStatus.COMPLETED] == 1
    assert sum(stats.counts.values()) == 5
    assert sum(stats.started.values()) == 4  # the three fresh ones and the completed one
    assert sum(stats.ended.values()) == 1
    ended_minute = done.committed.updated_at.astimezone(UTC).replace(second=0, microsecond=0)
    assert stats.ended == {ended_minute: 1}
    for minute in stats.started:
        assert minute.second == 0 and minute.microsecond == 0 and minute >= since
    assert old.saga_id not in [s.saga_id for s in fresh]
