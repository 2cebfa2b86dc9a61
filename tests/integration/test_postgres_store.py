"""What only the PostgreSQL store has to prove: migrations, constraints, row locking under
concurrency, fencing of whole batches, surviving a server restart, and index use at scale.

The store contract shared by every store is in test_store_contract.py. Each test here works in
its own schema (`t_<hex>`), dropped at the end.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from attrs import evolve

from saga.events import Commit
from saga.model import (
    Action,
    EventType,
    SagaEvent,
    SagaState,
    SagaStatus,
    Step,
    StepLog,
    StepStatus,
    Workflow,
    event_id,
    new_saga,
    step_log_id,
)
from tests.services import in_ci, pg_cluster, require_postgres
from workers.adapters.store.base import CommitRequest, SagaFilter, StartLease, UnknownWorkflow
from workers.adapters.store.migrate import load_migrations, migrate_postgres
from workers.adapters.store.postgres import PostgresStore, list_statements

pytestmark = pytest.mark.postgres

LONG = 60.0
T = TypeVar("T")

WORKFLOW = Workflow(
    "pg-order",
    (
        Step("reserve", "inventory", "Inventory.Reserve", compensate="Inventory.Release"),
        Step("charge", "payment", "Payment.Charge"),
    ),
)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def url() -> str:
    return require_postgres()


@pytest.fixture
def schema(url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def stores(url: str, schema: str) -> Iterator[Callable[..., PostgresStore]]:
    """Opens stores on the test schema (each its own pool, like separate processes)."""
    opened: list[PostgresStore] = []

    def open_store(**kwargs: Any) -> PostgresStore:
        kwargs.setdefault("outbox", True)
        store = PostgresStore(url, schema=schema, **kwargs)
        opened.append(store)
        return store

    try:
        yield open_store
    finally:
        for store in opened:
            store.close()


@pytest.fixture
def store(stores: Callable[..., PostgresStore]) -> PostgresStore:
    return stores()


def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh connection (outside the store) and return its rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description is not None else []


def make_state(i: int) -> SagaState:
    """A new saga of WORKFLOW (not written)."""
    return new_saga(
        saga_id=str(uuid.uuid4()),
        workflow=WORKFLOW,
        payload={"order": i},
        correlation_id=None,
        initiated_by=None,
        at=datetime.now(UTC).replace(microsecond=0) + timedelta(milliseconds=i),
    )


def make_sagas(store: PostgresStore, n: int) -> list[SagaState]:
    start = datetime.now(UTC) - timedelta(hours=1)
    made = []
    for i in range(n):
        state = new_saga(
            saga_id=str(uuid.uuid4()),
            workflow=WORKFLOW,
            payload={"order": i},
            correlation_id=None,
            initiated_by=None,
            at=start + timedelta(milliseconds=i),
        )
        made.append(store.create_saga(state)[0])
    return made


def first_step_commit(state: SagaState) -> Commit:
    """The commit an executor makes after step 0 succeeded: RUNNING at step 1, one log, one event."""
    at = state.created_at + timedelta(seconds=1)
    running = evolve(state, status=SagaStatus.RUNNING, current_step=1, updated_at=at)
    log = StepLog(
        id=step_log_id(state.saga_id, 0, Action.EXECUTE),
        saga_id=state.saga_id,
        step_index=0,
        step_name="reserve",
        action=Action.EXECUTE,
        status=StepStatus.SUCCESS,
        request_payload=state.payload,
        response_payload={"reserved": True},
        error_message=None,
        started_at=at - timedelta(milliseconds=5),
        completed_at=at,
    )
    event = SagaEvent(
        event_id=event_id(state.saga_id, EventType.SAGA_RUNNING),
        event_type=EventType.SAGA_RUNNING,
        saga_id=state.saga_id,
        workflow_name=state.workflow_name,
        status=SagaStatus.RUNNING,
        current_step=1,
        correlation_id=state.correlation_id,
        error_message=None,
        payload=state.payload,
        timestamp=at,
    )
    return Commit(running, (log,), (event,))


def in_threads(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run fn(0..n-1) on n threads released at the same instant."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def count_rows(url: str, schema: str, table: str) -> int:
    return int(sql(url, f"SELECT count(*) FROM {schema}.{table}")[0][0])


# ---------------------------------------------------------------- migrations


def test_migrations_are_recorded_and_idempotent(url: str, schema: str) -> None:
    """Every migration is applied once and recorded; running migrate again applies nothing."""
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 2
    assert migrate_postgres(url, schema) == versions
    assert migrate_postgres(url, schema) == []
    recorded = sql(url, f"SELECT version, name, applied_at FROM {schema}.schema_migrations")
    assert sorted(r[0] for r in recorded) == versions
    assert all(r[1] and r[2] is not None for r in recorded)
    tables = {
        r[0] for r in sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    }
    assert tables == {
        "saga_states",
        "saga_step_logs",
        "workflow_definitions",
        "outbox",
        "saga_counts",
        "operator_actions",
        "schema_migrations",
    }


def test_concurrent_migrations_apply_each_version_once(url: str, schema: str) -> None:
    """Four processes migrating a fresh schema at once apply each migration exactly once."""
    versions = [m.version for m in load_migrations()]
    applied = in_threads(4, lambda _: migrate_postgres(url, schema))
    assert sorted(v for run in applied for v in run) == versions
    assert sum(1 for run in applied if run) == 1  # the lock winner did all; the others waited
    assert count_rows(url, schema, "schema_migrations") == len(versions)


def test_invalid_schema_name_is_refused(url: str) -> None:
    """A schema name that is not a plain identifier never reaches SQL."""
    for bad in ("Saga", "saga; DROP TABLE x", "1saga", "", "a" * 64, 'x"y'):
        with pytest.raises(ValueError, match="invalid schema name"):
            migrate_postgres(url, bad)
        with pytest.raises(ValueError, match="invalid schema name"):
            PostgresStore(url, schema=bad)


# ---------------------------------------------------------------- constraints and trigger


def test_check_constraints_reject_bad_values(store: PostgresStore, url: str, schema: str) -> None:
    """The CHECK constraints refuse a status or action outside the enumerations."""
    [saga] = make_sagas(store, 1)
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(url, f"INSERT INTO {schema}.saga_states (workflow_name, status) VALUES ('w', 'DONE')")
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(
            url, f"UPDATE {schema}.saga_states SET status = 'HALTED' WHERE id = %s", (saga.saga_id,)
        )
    # PAUSED is one of the seven (SPEC §1, migration 0005).
    sql(url, f"INSERT INTO {schema}.saga_states (workflow_name, status) VALUES ('w', 'PAUSED')")
    for action, status in (("RETRY", "SUCCESS"), ("EXECUTE", "OK")):
        with pytest.raises(psycopg.errors.CheckViolation):
            sql(
                url,
                f"INSERT INTO {schema}.saga_step_logs (saga_id, step_index, step_name, action,"
                " status) VALUES (%s, 0, 's', %s, %s)",
                (saga.saga_id, action, status),
            )
    assert store.get_saga(saga.saga_id) == saga


def test_updated_at_trigger_only_fills_in_unset_values(
    store: PostgresStore, url: str, schema: str
) -> None:
    """A plain UPDATE gets updated_at = NOW(); the store's own writes keep the time it gives."""
    [saga] = make_sagas(store, 1)
    [claimed] = store.claim("ex-1", 1, LONG)
    same_time = evolve(saga, status=SagaStatus.RUNNING)  # updated_at deliberately unchanged
    [result] = store.commit("ex-1", [CommitRequest(Commit(same_time), claimed.lease_token)], LONG)
    assert not result.fenced
    assert store.get_saga(saga.saga_id) == same_time
    store.renew("ex-1", {saga.saga_id: claimed.lease_token}, LONG)
    store.request_cancel(saga.saga_id)
    assert store.get_saga(saga.saga_id) == same_time

    before = datetime.now(UTC)
    sql(
        url,
        f"UPDATE {schema}.saga_states SET error_message = 'by hand' WHERE id = %s",
        (saga.saga_id,),
    )
    touched = store.get_saga(saga.saga_id)
    assert touched is not None and touched.updated_at >= before - timedelta(seconds=1)
    explicit = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    sql(
        url,
        f"UPDATE {schema}.saga_states SET updated_at = %s WHERE id = %s",
        (explicit, saga.saga_id),
    )
    after = store.get_saga(saga.saga_id)
    assert after is not None and after.updated_at == explicit


# ---------------------------------------------------------------- leases under concurrency


def test_concurrent_claims_never_share_a_saga(stores: Callable[..., PostgresStore]) -> None:
    """Four executors claiming 200 sagas at once get every saga, none of them twice."""
    executors = [stores() for _ in range(4)]
    sagas = make_sagas(executors[0], 200)

    def claim_all(i: int) -> list[str]:
        got: list[str] = []
        while batch := executors[i].claim(f"ex-{i}", 7, LONG):
            got.extend(c.state.saga_id for c in batch)
        return got

    claimed = in_threads(4, claim_all)
    every = [saga_id for got in claimed for saga_id in got]
    assert len(every) == len(set(every)) == 200
    assert set(every) == {s.saga_id for s in sagas}
    assert sum(1 for got in claimed if got) >= 2, "claims did not overlap at all"


def test_fenced_commit_writes_nothing(store: PostgresStore, url: str, schema: str) -> None:
    """A commit under a lost lease writes no state, no step log and no outbox row."""
    [saga] = make_sagas(store, 1)
    [stale] = store.claim("ex-a", 1, 0.05)
    time.sleep(0.2)
    [fresh] = store.claim("ex-b", 1, LONG)
    assert fresh.taken_over and fresh.lease_token == stale.lease_token + 1

    [result] = store.commit(
        "ex-a", [CommitRequest(first_step_commit(stale.state), stale.lease_token)], LONG
    )
    assert result.fenced
    assert store.get_saga(saga.saga_id) == saga
    assert count_rows(url, schema, "saga_step_logs") == 0
    assert count_rows(url, schema, "outbox") == 0
    owner, token = sql(
        url,
        f"SELECT lease_owner, lease_token FROM {schema}.saga_states WHERE id = %s",
        (saga.saga_id,),
    )[0]
    assert (owner, token) == ("ex-b", fresh.lease_token)

    commit = first_step_commit(fresh.state)
    [result] = store.commit("ex-b", [CommitRequest(commit, fresh.lease_token)], LONG)
    assert not result.fenced
    assert store.get_saga(saga.saga_id) == commit.state
    assert count_rows(url, schema, "outbox") == 1


def test_batch_of_fifty_commits_all_but_two_fenced(
    stores: Callable[..., PostgresStore], url: str, schema: str
) -> None:
    """One call with 50 commits, 2 of them under lost leases, commits exactly the other 48."""
    store, other = stores(), stores()
    sagas = make_sagas(store, 50)
    held = {c.state.saga_id: c for c in store.claim("ex-a", 50, LONG)}
    assert len(held) == 50
    lost = [sagas[7].saga_id, sagas[31].saga_id]
    sql(
        url,
        f"UPDATE {schema}.saga_states SET lease_expires_at = now() - interval '1 second'"
        " WHERE id = ANY(%s::uuid[])",
        (lost,),
    )
    assert sorted(c.state.saga_id for c in other.claim("ex-b", 50, LONG)) == sorted(lost)
    # (the hand-written UPDATE above moved their updated_at: that is what the trigger is for)
    stored = {saga_id: store.get_saga(saga_id) for saga_id in lost}

    requests = [
        CommitRequest(first_step_commit(held[s.saga_id].state), held[s.saga_id].lease_token)
        for s in sagas
    ]
    results = store.commit("ex-a", requests, LONG)
    assert [r.saga_id for r in results] == [s.saga_id for s in sagas]
    assert {r.saga_id for r in results if r.fenced} == set(lost)
    for saga, request in zip(sagas, requests, strict=True):
        expected = stored[saga.saga_id] if saga.saga_id in lost else request.commit.state
        assert store.get_saga(saga.saga_id) == expected
    assert count_rows(url, schema, "saga_step_logs") == 48
    assert count_rows(url, schema, "outbox") == 48
    assert store.outbox_stats()[0] == 48


def test_concurrent_registration_of_a_new_name(stores: Callable[..., PostgresStore]) -> None:
    """Four processes registering a brand-new name at once get versions 1..4, none twice."""
    registrars = [stores() for _ in range(4)]
    got = in_threads(4, lambda i: registrars[i].register_workflow(WORKFLOW).version)
    assert sorted(got) == [1, 2, 3, 4]


def test_renew_and_commit_at_once_do_not_deadlock(stores: Callable[..., PostgresStore]) -> None:
    """An executor's lease renewals and commits on the same sagas run side by side without error."""
    store = stores(max_size=4)
    sagas = make_sagas(store, 60)
    held = {c.state.saga_id: c.lease_token for c in store.claim("ex-1", 60, LONG)}
    assert len(held) == 60
    reverse = dict(reversed(list(held.items())))

    def work(i: int) -> int:
        if i % 2:
            for _ in range(20):
                assert store.renew("ex-1", reverse, LONG) == set(held)
            return 0
        requests = [
            CommitRequest(first_step_commit(s), held[s.saga_id]) for s in sagas[::-1] + sagas
        ]
        for _ in range(10):
            assert not any(r.fenced for r in store.commit("ex-1", requests, LONG))
        return 1

    assert sum(in_threads(4, work)) == 2


def test_outbox_row_held_by_one_relay_holds_back_that_saga(
    stores: Callable[..., PostgresStore], url: str, schema: str
) -> None:
    """While a relay holds a saga's oldest event, other relays get none of its later events."""
    store, relay = stores(), stores()
    x, y = make_sagas(store, 2)
    claims = {c.state.saga_id: c for c in store.claim("ex-1", 2, LONG)}
    commits = []
    for saga in (x, y):
        commit = first_step_commit(claims[saga.saga_id].state)
        later = evolve(
            commit.events[0],
            event_id=event_id(saga.saga_id, EventType.SAGA_COMPLETED),
            event_type=EventType.SAGA_COMPLETED,
        )
        commits.append(
            CommitRequest(
                evolve(commit, events=(*commit.events, later)), claims[saga.saga_id].lease_token
            )
        )
    store.commit("ex-1", commits, LONG)
    assert count_rows(url, schema, "outbox") == 4

    [x_first] = store.claim_outbox("relay-1", 1, LONG)
    assert x_first.saga_id == x.saga_id and x_first.event_type == "SAGA_RUNNING"
    others = relay.claim_outbox("relay-2", 10, LONG)
    assert [(r.saga_id, r.event_type) for r in others] == [
        (y.saga_id, "SAGA_RUNNING"),
        (y.saga_id, "SAGA_COMPLETED"),
    ]
    # relay-1 claiming again (its send of the first did not go through) gets the first again,
    # then the next: in order, never the newer one alone.
    again = store.claim_outbox("relay-1", 10, LONG)
    assert [(r.saga_id, r.event_type) for r in again] == [
        (x.saga_id, "SAGA_RUNNING"),
        (x.saga_id, "SAGA_COMPLETED"),
    ]
    assert again[0].seq == x_first.seq


# ---------------------------------------------------------------- connection loss


def _wait_until_answering(store: PostgresStore, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            store.ping()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_store_works_again_after_server_restart(stores: Callable[..., PostgresStore]) -> None:
    """After `pg_ctlcluster ... restart` the same store instance serves every call again."""
    cluster = pg_cluster()
    if cluster is None:
        if in_ci():
            pytest.fail("SAGA_TEST_PG_CLUSTER is unset in CI: cannot restart PostgreSQL")
        reason = "SAGA_TEST_PG_CLUSTER unset: the test server is not ours to restart"
        pytest.skip(reason)  # never under CI=true: that failed above
    version, name = cluster.split()
    store = stores(min_size=2, max_size=4, timeout=5.0)
    [saga] = make_sagas(store, 1)
    for _ in range(8):  # let the pool hold several connections that the restart will break
        assert store.get_saga(saga.saga_id) == saga

    subprocess.run(["pg_ctlcluster", version, name, "restart"], check=True, timeout=120)

    _wait_until_answering(store, 30)
    for _ in range(20):  # every pooled connection was replaced, not handed out broken
        assert store.get_saga(saga.saga_id) == saga
    [claimed] = store.claim("ex-1", 1, LONG)
    [result] = store.commit(
        "ex-1", [CommitRequest(first_step_commit(claimed.state), claimed.lease_token)], LONG
    )
    assert not result.fenced


def test_store_replaces_connections_killed_by_the_server(url: str, schema: str) -> None:
    """Backends terminated under the pool cost no failed call: broken connections are replaced."""
    app = f"saga-test-{schema}"
    sep = "&" if "?" in url else "?"
    store = PostgresStore(f"{url}{sep}application_name={app}", schema=schema, min_size=3)
    try:
        [saga] = make_sagas(store, 1)
        killed = sql(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )
        assert killed and all(row[0] for row in killed)
        for _ in range(10):
            assert store.get_saga(saga.saga_id) == saga
    finally:
        store.close()


def test_a_start_sent_again_after_its_answer_was_lost_writes_one_saga(
    store: PostgresStore, url: str, schema: str
) -> None:
    """The store sends a statement again when its connection broke under it; for a start that
    is safe only if a second run of the INSERT (the first one committed, its answer lost) finds
    its own row and writes nothing: the same saga, created, one row, with or without a key."""
    state = make_state(0)
    first = store.create_saga(state)
    again = store.create_saga(state)
    assert first == again == (state, None, True)
    keyed = make_state(1)
    first = store.create_saga(keyed, idempotency_key="k-1", request_hash="h")
    again = store.create_saga(keyed, idempotency_key="k-1", request_hash="h")
    assert first == again == (keyed, "h", True)
    rows = sql(url, f"SELECT count(*) FROM {schema}.saga_states")
    assert rows == [(2,)]


def test_a_start_on_connections_the_server_ended_costs_no_failed_call(
    url: str, schema: str
) -> None:
    """No probe on checkout: the pooled connections are dead after the server ended them, and
    starts still succeed (the INSERT is sent again on a live connection), each exactly once."""
    app = f"saga-test-{schema}"
    sep = "&" if "?" in url else "?"
    store = PostgresStore(f"{url}{sep}application_name={app}", schema=schema, min_size=3)
    try:
        store.register_workflow(WORKFLOW)
        make_sagas(store, 1)
        killed = sql(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )
        assert killed and all(row[0] for row in killed)
        made = [store.create_saga(make_state(i), latest_version=True) for i in range(1, 6)]
        assert all(created for _, _, created in made)
        rows = sql(url, f"SELECT count(*), min(workflow_version) FROM {schema}.saga_states")
        assert rows == [(6, 1)]
    finally:
        store.close()


def test_a_start_at_the_latest_version_reads_it_in_the_insert(store: PostgresStore) -> None:
    """`latest_version`: the saga gets the newest registered version, whatever the state says;
    an unknown workflow is `UnknownWorkflow` and writes nothing."""
    v1 = store.register_workflow(WORKFLOW)
    v2 = store.register_workflow(evolve(WORKFLOW, steps=WORKFLOW.steps[:1]))
    assert (v1.version, v2.version) == (1, 2)
    saga, _, created = store.create_saga(make_state(0), latest_version=True)
    assert created and saga.workflow_version == 2
    assert store.get_saga(saga.saga_id) == saga
    with pytest.raises(UnknownWorkflow):
        store.create_saga(
            evolve(make_state(1), workflow_name="no-such-workflow"), latest_version=True
        )
    assert store.list_sagas(SagaFilter(), 1, 10).total_count == 1


def test_an_executor_listening_is_told_of_a_start_and_a_resume(
    stores: Callable[..., PostgresStore],
) -> None:
    """`wakeups`: one store's start (and only a committed one) reaches another store's
    listener through NOTIFY; after `stop`, nothing more is heard."""
    api, executor = stores(), stores()
    api.register_workflow(WORKFLOW)
    heard = threading.Event()
    stop = executor.wakeups(heard.set)
    try:
        time.sleep(0.3)  # LISTEN is in place
        heard.clear()
        api.create_saga(make_state(0), latest_version=True)
        assert heard.wait(5), "no wake-up after a start"
        heard.clear()
        with pytest.raises(UnknownWorkflow):
            api.create_saga(evolve(make_state(1), workflow_name="nope"), latest_version=True)
        assert not heard.wait(0.5), "a start that wrote nothing woke the executor"
        api.create_saga(make_state(3), latest_version=True, lease=StartLease("api-1", LONG))
        assert not heard.wait(0.5), "a start leased to its accepting process woke the executor"
    finally:
        stop()
    api.create_saga(make_state(2), latest_version=True)
    assert not heard.wait(0.5)


def test_unreachable_server_fails_fast() -> None:
    """With nothing listening, opening a store raises OperationalError within seconds."""
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        PostgresStore("postgresql://saga:saga@127.0.0.1:9/saga", timeout=2.0)
    assert time.monotonic() - started < 15


# ---------------------------------------------------------------- indexes


def _plan(url: str, query: str, params: list[Any]) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("EXPLAIN " + query, params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_list_queries_use_indexes_at_scale(store: PostgresStore, url: str, schema: str) -> None:
    """With 20k sagas, the list query under each filter reads an index, never a Seq Scan."""
    sql(
        url,
        f"""
        INSERT INTO {schema}.saga_states
            (workflow_name, status, current_step, payload, correlation_id, created_at, updated_at)
        SELECT 'wf-' || (i % 20),
               CASE WHEN i % 10 = 0
                    THEN (ARRAY['STARTED', 'RUNNING', 'COMPENSATING', 'FAILED', 'CANCELLED'])
                         [1 + (i / 10) % 5]
                    ELSE 'COMPLETED' END,
               2, jsonb_build_object('n', i),
               CASE WHEN i % 3 = 0 THEN 'corr-' || (i % 1000) END,
               now() - make_interval(secs => i), now()
        FROM generate_series(1, 20000) AS i
        """,
    )
    sql(url, f"VACUUM ANALYZE {schema}.saga_states")

    cases = [SagaFilter(status=s) for s in SagaStatus] + [
        SagaFilter(),
        SagaFilter(workflow_name="wf-3"),
        SagaFilter(correlation_id="corr-42"),
        SagaFilter(workflow_name="wf-3", status=SagaStatus.RUNNING),
    ]
    for filters in cases:
        count_sql, page_sql, params = list_statements(schema, filters)
        for page in (1, 50):
            plan = _plan(url, page_sql, [*params, 20, (page - 1) * 20])
            assert "Seq Scan" not in plan, f"{filters} page {page}:\n{plan}"
        if filters.status not in (None, SagaStatus.COMPLETED):
            plan = _plan(url, count_sql, params)
            assert "Seq Scan" not in plan, f"count {filters}:\n{plan}"
        page = store.list_sagas(filters, 1, 20)
        assert len(page.sagas) == min(20, page.total_count)
        assert list(page.sagas) == sorted(
            page.sagas, key=lambda s: (s.created_at, s.saga_id), reverse=True
        )

    # claim() finds the active sagas through its partial index too.
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "EXPLAIN " + store._claim, {"owner": "ex", "limit": 100, "lease_secs": 30.0}
        ).fetchall()
    plan = "\n".join(r[0] for r in rows)
    assert "idx_saga_states_claimable" in plan and "Seq Scan" not in plan, plan


def test_list_total_count_comes_from_exact_counters(url: str, schema: str) -> None:
    """total_count stays exact through inserts, status changes and deletes, per workflow and status."""
    store = PostgresStore(url, schema=schema)
    try:
        wf = store.register_workflow(Workflow("count-me", (Step("a", "svc", "Svc.A"),)))
        other = store.register_workflow(Workflow("other", (Step("a", "svc", "Svc.A"),)))
        now = datetime.now(UTC)
        ids = []
        for i in range(30):
            saga = new_saga(
                saga_id=str(uuid.uuid4()),
                workflow=wf if i % 3 else other,
                payload={},
                correlation_id=None,
                initiated_by=None,
                at=now,
            )
            store.create_saga(saga)
            ids.append(saga.saga_id)
        sql(
            url,
            f"UPDATE {schema}.saga_states SET status = 'COMPLETED' WHERE id = ANY(%s::uuid[])",
            (ids[:7],),
        )
        sql(url, f"DELETE FROM {schema}.saga_states WHERE id = %s::uuid", (ids[29],))

        def count(**filters: object) -> int:
            return store.list_sagas(SagaFilter(**filters), 1, 1).total_count  # type: ignore[arg-type]

        for filters in (
            {},
            {"status": SagaStatus.COMPLETED},
            {"status": SagaStatus.STARTED},
            {"workflow_name": "count-me"},
            {"workflow_name": "other", "status": SagaStatus.COMPLETED},
        ):
            where, params = [], []
            if "status" in filters:
                where.append("status = %s")
                params.append(filters["status"].value)  # type: ignore[attr-defined]
            if "workflow_name" in filters:
                where.append("workflow_name = %s")
                params.append(filters["workflow_name"])
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            exact = sql(url, f"SELECT count(*) FROM {schema}.saga_states{clause}", tuple(params))[
                0
            ][0]
            assert count(**filters) == exact, filters
        assert count() == 29
    finally:
        store.close()
