"""Retention (SPEC §13) on the memory, SQLite and PostgreSQL stores: backdated sagas, driven to
their status by the real core and committed as an executor would, then one retention pass.

Only terminal sagas that ended before the cut-off go, with their step logs, published events and
idempotency keys; sagas still running, recent ones and ones with an event not yet published stay
exactly as they were; one process (or store instance) deletes at a time, and a deleter that
dies leaves the turn free.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from saga.decide import decide
from saga.events import (
    CallParticipant,
    Commit,
    Event,
    Resume,
    RetryDue,
    ScheduleRetry,
    StepFailed,
    StepSucceeded,
)
from saga.model import SagaState, SagaStatus, Step, Workflow, new_saga
from tests.harness import fresh_saga
from tests.services import require_postgres
from workers.adapters.store.base import CommitRequest, DeleteEnded, Store
from workers.config import ConfigError, load_config
from workers.service.retention import Retention

ROOT = Path(__file__).resolve().parents[2]
STORE_KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SQL_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DAYS = 30
OWNER = "executor-test"


# ---------------------------------------------------------------- stores


class Backing:
    """One backing database of a kind (a file, a PostgreSQL schema) and the stores opened on it."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.sqlite_path = str(tmp_path / "saga.sqlite3")
        self.schema = f"t_{uuid.uuid4().hex[:8]}"
        self.pg_url = require_postgres() if kind == "postgres" else None
        self.opened: list[Store] = []

    def open(self) -> Store:
        store: Store
        if self.kind == "memory":
            from workers.adapters.store.memory import MemoryStore

            store = MemoryStore(outbox=True)
        elif self.kind == "sqlite":
            from workers.adapters.store.sqlite import SqliteStore

            store = SqliteStore(self.sqlite_path, outbox=True)
        else:
            from workers.adapters.store.postgres import PostgresStore

            assert self.pg_url is not None
            store = PostgresStore(self.pg_url, schema=self.schema, outbox=True)
        self.opened.append(store)
        return store

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the backing database itself (`{s}` is the schema prefix)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.sqlite_path, isolation_level=None) as conn:
                return list(conn.execute(statement.replace("{s}", ""), params).fetchall())
        import psycopg

        assert self.pg_url is not None
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            cur = conn.execute(
                statement.replace("{s}", f"{self.schema}.").replace("?", "%s"), params
            )
            return list(cur.fetchall()) if cur.description else []

    def close(self) -> None:
        for store in self.opened:
            store.close()
        if self.pg_url is not None:
            import psycopg

            with psycopg.connect(self.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=STORE_KINDS)
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    made = Backing(request.param, tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(params=SQL_KINDS)
def sql_backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    made = Backing(request.param, tmp_path)
    try:
        yield made
    finally:
        made.close()


# ---------------------------------------------------------------- sagas, as an executor makes them

WORKFLOW = Workflow(
    name="order",
    steps=(
        Step("reserve", "inventory", "Inventory.Reserve", compensate="Inventory.Release"),
        Step("charge", "payment", "Payment.Charge", compensate="Payment.Refund"),
    ),
)


class Clock:
    """Strictly increasing UTC times from a given start."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=3)
        return self.now


def make(store: Store, wf: Workflow, status: SagaStatus, ended_days_ago: float) -> SagaState:
    """A saga whose last change was `ended_days_ago` days ago, left in `status`: created, claimed
    and driven by `decide` (the charge fails for good on the way to FAILED and COMPENSATING, a
    cancel comes after the first step for CANCELLED), every commit written under the lease, as the executor
    does. It has step logs, outbox events and an idempotency key."""
    clock = Clock(datetime.now(UTC) - timedelta(days=ended_days_ago, minutes=1))
    state = new_saga(
        saga_id=str(uuid.uuid4()),
        workflow=wf,
        payload={"order_id": "o-1"},
        correlation_id=None,
        initiated_by=None,
        at=clock(),
    )
    store.create_saga(state, idempotency_key=f"key-{state.saga_id}", request_hash="h")
    if status is SagaStatus.STARTED:
        return state
    cancel = status is SagaStatus.CANCELLED
    [claimed] = [c for c in store.claim(OWNER, 100, 30.0) if c.state.saga_id == state.saga_id]
    state, token = claimed.state, claimed.lease_token
    event: Event | None = Resume(clock())
    while event is not None:
        decision = decide(state, wf, event)
        state, event = decision.state, None
        for effect in decision.effects:
            if isinstance(effect, Commit):
                [result] = store.commit(OWNER, [CommitRequest(effect, token)], 30.0)
                assert not result.fenced
                if cancel and effect.step_logs and not result.cancel_requested:
                    outcome = store.request_cancel(state.saga_id, by="operator-1", at=clock())
                    assert outcome is not None and outcome.accepted
                if effect.state.status is status and status is not SagaStatus.COMPLETED:
                    return _stored(store, state.saga_id)
            elif isinstance(effect, CallParticipant):
                fails = status in (SagaStatus.FAILED, SagaStatus.COMPENSATING)
                if fails and effect.step_name == "charge" and effect.action.value == "EXECUTE":
                    event = StepFailed(clock(), "FAILED_PRECONDITION", "declined")
                else:
                    event = StepSucceeded(clock(), {"ok": True})
            elif isinstance(effect, ScheduleRetry):
                event = RetryDue(clock())
        if event is None and not state.terminal:  # at a step boundary: go on, as after a commit
            event = Resume(clock(), store.is_cancel_requested(state.saga_id))
    assert state.status is status, (state.status, status)
    return _stored(store, state.saga_id)


def _stored(store: Store, saga_id: str) -> SagaState:
    state = store.get_saga(saga_id)
    assert state is not None
    return state


def publish_all(store: Store, *, except_saga: str | None = None) -> None:
    """What the relay does once the broker acknowledged: every outbox row is published
    (but the rows of `except_saga`, left waiting)."""
    while True:
        rows = store.claim_outbox("relay-test", 1000, 30.0)
        seqs = [r.seq for r in rows if r.saga_id != except_saga]
        if not seqs:
            return
        store.mark_published(seqs)


def outbox_saga_ids(backing: Backing, store: Store) -> dict[str, int]:
    """Outbox rows per saga, read from the backing database (the memory store: its list)."""
    if backing.kind == "memory":
        counts: dict[str, int] = {}
        for item in store._outbox:  # type: ignore[attr-defined]  # a peek at the fake itself
            counts[item.row.saga_id] = counts.get(item.row.saga_id, 0) + 1
        return counts
    rows = backing.sql("SELECT saga_id, count(*) FROM {s}outbox GROUP BY saga_id")
    return {str(saga_id): int(n) for saga_id, n in rows}


def backdate_events(backing: Backing, older_than: datetime) -> None:
    """Outbox rows get the age of their saga's last change (they are written with it): a real
    store that has run for `DAYS` days has them that old too."""
    if backing.kind == "memory":
        return
    if backing.kind == "sqlite":
        backing.sql(
            "UPDATE outbox SET created_at = created_at - ? WHERE saga_id IN "
            "(SELECT id FROM saga_states WHERE updated_at < ?)",
            (DAYS * 86400.0, older_than.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
        )
    else:
        backing.sql(
            "UPDATE {s}outbox SET created_at = created_at - interval '30 days' "
            "WHERE saga_id IN (SELECT id FROM {s}saga_states WHERE updated_at < ?)",
            (older_than,),
        )


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# ---------------------------------------------------------------- what goes and what stays


def test_only_terminal_sagas_ended_before_the_cutoff_are_deleted(backing: Backing) -> None:
    """One pass deletes the COMPLETED, FAILED and CANCELLED sagas that ended more than
    `retention_days` ago, with their step logs, operator actions, published events and
    idempotency keys; running,
    waiting and compensating sagas of any age, and recent terminal ones, stay as they were."""
    store = backing.open()
    wf = store.register_workflow(WORKFLOW)
    old = [make(store, wf, s, DAYS + 5) for s in (SagaStatus.COMPLETED, SagaStatus.FAILED)]
    old += [
        make(store, wf, SagaStatus.CANCELLED, DAYS + 1),
        make(store, wf, SagaStatus.FAILED, 400),
    ]
    kept = [
        make(store, wf, SagaStatus.STARTED, DAYS + 40),
        make(store, wf, SagaStatus.RUNNING, DAYS + 40),
        make(store, wf, SagaStatus.COMPENSATING, DAYS + 40),
        make(store, wf, SagaStatus.COMPLETED, DAYS - 1),
        make(store, wf, SagaStatus.FAILED, 0),
    ]
    # Operator actions on an old saga that goes and on two that stay (SPEC §11's audit).
    at = datetime.now(UTC) - timedelta(days=DAYS + 40)
    assert store.request_pause(kept[0].saga_id, by="operator-2", at=at) is not None
    assert store.request_cancel(kept[1].saga_id, by="operator-3", at=at) is not None
    publish_all(store)
    backdate_events(backing, datetime.now(UTC) - timedelta(days=DAYS))

    def saved(saga_id: str) -> tuple[Any, ...]:
        return (
            store.get_saga(saga_id),
            store.get_step_logs(saga_id),
            store.operator_actions(saga_id),
        )

    before = {s.saga_id: saved(s.saga_id) for s in kept}
    events_before = outbox_saga_ids(backing, store)
    assert all(store.get_step_logs(s.saga_id) for s in old)
    assert store.operator_actions(old[2].saga_id) and before[kept[0].saga_id][2]
    assert all(events_before.get(s.saga_id) for s in old + kept[1:])
    deleted_before = counter("saga_retention_deleted_total")

    assert Retention(store, DAYS).run_pass() == len(old)

    for saga in old:
        assert store.get_saga(saga.saga_id) is None
        assert store.get_step_logs(saga.saga_id) == []
        assert store.operator_actions(saga.saga_id) == []
    for saga in kept:
        assert saved(saga.saga_id) == before[saga.saga_id]
    if backing.kind != "memory":  # no row of a deleted saga is left in any table
        for table in ("saga_step_logs", "operator_actions", "outbox"):
            rows = backing.sql(f"SELECT saga_id FROM {{s}}{table}")
            assert not {str(r[0]) for r in rows} & {s.saga_id for s in old}, table
    events_after = outbox_saga_ids(backing, store)
    assert not {s.saga_id for s in old} & set(events_after)
    assert events_after == {k: v for k, v in events_before.items() if k in before}
    # The idempotency key went with its saga: the same key starts a new saga now.
    fresh = fresh_saga(wf)
    _, _, created = store.create_saga(fresh, idempotency_key=f"key-{old[0].saga_id}")
    assert created
    assert counter("saga_retention_deleted_total") - deleted_before == len(old)
    assert Retention(store, DAYS).run_pass() == 0


def test_a_saga_whose_events_are_not_yet_published_waits_for_them(backing: Backing) -> None:
    """An old terminal saga with an event still in the outbox is not deleted (the event would
    be lost); once the relay has published it, the next pass deletes the saga."""
    store = backing.open()
    wf = store.register_workflow(WORKFLOW)
    waiting = make(store, wf, SagaStatus.COMPLETED, DAYS + 2)
    done = make(store, wf, SagaStatus.COMPLETED, DAYS + 3)
    publish_all(store, except_saga=waiting.saga_id)
    backdate_events(backing, datetime.now(UTC) - timedelta(days=DAYS))

    assert Retention(store, DAYS).run_pass() == 1
    assert store.get_saga(done.saga_id) is None
    assert store.get_saga(waiting.saga_id) == waiting
    assert outbox_saga_ids(backing, store).get(waiting.saga_id)

    publish_all(store)
    assert Retention(store, DAYS).run_pass() == 1
    assert store.get_saga(waiting.saga_id) is None
    assert waiting.saga_id not in outbox_saga_ids(backing, store)


class CountingStore:
    """The real store, with the size of every retention batch it is asked for noted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches: list[tuple[int, int]] = []  # (asked, deleted)

    @contextmanager
    def retention_turn(self) -> Iterator[DeleteEnded | None]:
        with self.store.retention_turn() as delete_ended:
            if delete_ended is None:
                yield None
                return
            inner = delete_ended

            def counted(ended_before: datetime, limit: int) -> int:
                n = inner(ended_before, limit)
                self.batches.append((limit, n))
                return n

            yield counted


def test_a_pass_deletes_in_batches_until_one_comes_back_short(backing: Backing) -> None:
    """With a batch of 4, 10 old sagas go in batches of 4, 4 and 2, oldest first; a batch
    larger than 1,000 sagas is refused by every store."""
    store = backing.open()
    wf = store.register_workflow(WORKFLOW)
    sagas = [make(store, wf, SagaStatus.COMPLETED, DAYS + 20 - i) for i in range(10)]
    publish_all(store)
    backdate_events(backing, datetime.now(UTC) - timedelta(days=DAYS))
    counting = CountingStore(store)
    retention = Retention(counting, DAYS, batch=4, min_pause_secs=0.0)  # type: ignore[arg-type]

    assert retention.run_pass() == 10
    assert counting.batches == [(4, 4), (4, 4), (4, 2)]
    assert all(store.get_saga(s.saga_id) is None for s in sagas)

    with store.retention_turn() as delete_ended:
        assert delete_ended is not None
        with pytest.raises(ValueError, match="1..1000"):
            delete_ended(datetime.now(UTC), 1001)


def test_oldest_go_first(backing: Backing) -> None:
    """A batch smaller than what is due takes the sagas that ended longest ago."""
    store = backing.open()
    wf = store.register_workflow(WORKFLOW)
    sagas = {days: make(store, wf, SagaStatus.COMPLETED, days) for days in (40, 90, 31, 60)}
    publish_all(store)
    backdate_events(backing, datetime.now(UTC) - timedelta(days=DAYS))
    with store.retention_turn() as delete_ended:
        assert delete_ended is not None
        assert delete_ended(datetime.now(UTC) - timedelta(days=DAYS), 2) == 2
    assert {d for d, s in sagas.items() if store.get_saga(s.saga_id) is None} == {90, 60}


@pytest.mark.postgres
def test_postgres_counts_stay_exact(tmp_path: Path) -> None:
    """After deletions, the per-status counts the list and stats read (saga_counts, kept by
    triggers) equal a count of the rows."""
    backing = Backing("postgres", tmp_path)
    try:
        store = backing.open()
        wf = store.register_workflow(WORKFLOW)
        for status in (SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.CANCELLED):
            make(store, wf, status, DAYS + 1)
            make(store, wf, status, 1)
        make(store, wf, SagaStatus.RUNNING, DAYS + 1)
        publish_all(store)
        backdate_events(backing, datetime.now(UTC) - timedelta(days=DAYS))
        assert Retention(store, DAYS).run_pass() == 3
        counted = dict(backing.sql("SELECT status, count(*) FROM {s}saga_states GROUP BY 1"))
        stats = store.stats(datetime.now(UTC)).counts
        assert {s.value: n for s, n in stats.items() if n} == counted
        assert counted == {"COMPLETED": 1, "FAILED": 1, "CANCELLED": 1, "RUNNING": 1}
    finally:
        backing.close()


def test_the_batch_reads_the_index_of_ended_sagas(sql_backing: Backing) -> None:
    """The batch finds due sagas through idx_saga_states_ended (terminal sagas by updated_at),
    not by scanning every saga."""
    store = sql_backing.open()
    if sql_backing.kind == "sqlite":
        from workers.adapters.store.sqlite import _ENDED_BEFORE

        plan = " ".join(
            str(r) for r in sql_backing.sql("EXPLAIN QUERY PLAN " + _ENDED_BEFORE, ("x", 10))
        )
    else:
        import psycopg

        from workers.adapters.store.postgres import _DELETE_ENDED

        assert sql_backing.pg_url is not None
        store.close()
        with psycopg.connect(sql_backing.pg_url) as conn:  # a transaction: rolled back
            conn.execute("SET LOCAL enable_seqscan = off")
            sql = _DELETE_ENDED.replace("{schema}", sql_backing.schema)
            params = {"before": datetime.now(UTC), "limit": 1000, "seq_bound": 10}
            plan = " ".join(r[0] for r in conn.execute("EXPLAIN " + sql, params).fetchall())
            conn.rollback()
    assert "idx_saga_states_ended" in plan, plan


# ---------------------------------------------------------------- one process at a time

_HOLD_TURN = """
import sys
{open_store}
with store.retention_turn() as delete_ended:
    print("held" if delete_ended is not None else "refused", flush=True)
    sys.stdin.readline()
store.close()
"""


def _open_store_code(backing: Backing) -> str:
    if backing.kind == "sqlite":
        return (
            "from workers.adapters.store.sqlite import SqliteStore\n"
            f"store = SqliteStore({backing.sqlite_path!r})"
        )
    return (
        "from workers.adapters.store.postgres import PostgresStore\n"
        f"store = PostgresStore({backing.pg_url!r}, schema={backing.schema!r})"
    )


@contextmanager
def other_process_holding_the_turn(backing: Backing) -> Iterator[subprocess.Popen[str]]:
    code = textwrap.dedent(_HOLD_TURN).format(open_store=_open_store_code(backing))
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)


def test_a_second_process_does_not_delete_while_one_holds_the_turn(sql_backing: Backing) -> None:
    """While another process holds the retention turn, a pass here deletes nothing and says
    so; when that process gives the turn back, the next pass here deletes what is due."""
    store = sql_backing.open()
    wf = store.register_workflow(WORKFLOW)
    due = make(store, wf, SagaStatus.COMPLETED, DAYS + 1)
    publish_all(store)
    with other_process_holding_the_turn(sql_backing) as child:
        assert Retention(store, DAYS).run_pass() is None
        assert store.get_saga(due.saga_id) == due
        assert child.stdin is not None
        child.stdin.write("release\n")
        child.stdin.flush()
        assert child.wait(10) == 0
    assert Retention(store, DAYS).run_pass() == 1
    assert store.get_saga(due.saga_id) is None


def test_a_deleter_killed_mid_turn_leaves_the_turn_free(sql_backing: Backing) -> None:
    """A process killed (SIGKILL) while it holds the turn does not keep it: another process's
    next pass takes it and deletes."""
    store = sql_backing.open()
    wf = store.register_workflow(WORKFLOW)
    due = make(store, wf, SagaStatus.FAILED, DAYS + 1)
    publish_all(store)
    with other_process_holding_the_turn(sql_backing) as child:
        assert Retention(store, DAYS).run_pass() is None
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    deadline = time.monotonic() + 10  # PostgreSQL ends the dead session's backend first
    while (got := Retention(store, DAYS).run_pass()) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got == 1
    assert store.get_saga(due.saga_id) is None


def test_two_stores_in_one_process_take_turns(backing: Backing) -> None:
    """Two store instances on one database (or two threads on one memory store): while one
    holds the turn the other gets none."""
    first = backing.open()
    second = first if backing.kind == "memory" else backing.open()
    held = threading.Event()
    release = threading.Event()
    seen: list[object] = []

    def hold(turn: Callable[[], AbstractContextManager[DeleteEnded | None]]) -> None:
        with turn() as delete_ended:
            seen.append(delete_ended)
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold, args=(first.retention_turn,))
    thread.start()
    try:
        assert held.wait(10)
        with second.retention_turn() as other:
            assert other is None
    finally:
        release.set()
        thread.join(10)
    assert seen and seen[0] is not None
    with second.retention_turn() as other:
        assert other is not None


# ---------------------------------------------------------------- the engine and the config


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"saga:\n  sqlite_path: {tmp_path / 'saga.sqlite3'}\n"
        f"  workflow_dir: {tmp_path / 'none'}\n  execute: false\n{extra}"
    )
    return path


def test_the_engine_runs_retention_only_when_configured(tmp_path: Path) -> None:
    """With `saga.retention_days` the engine deletes due sagas soon after it starts; without
    it, the same saga is kept (nothing runs that could delete it)."""
    from workers.adapters.store.sqlite import SqliteStore
    from workers.service.engine import Engine

    store = SqliteStore(str(tmp_path / "saga.sqlite3"), outbox=True)
    wf = store.register_workflow(WORKFLOW)
    due = make(store, wf, SagaStatus.COMPLETED, DAYS + 1)
    publish_all(store)
    store.close()

    plain = Engine.from_config(load_config(str(_config(tmp_path)), environ={}))
    plain.start()
    try:
        assert plain.retention is None
        time.sleep(0.5)
        assert plain.store.get_saga(due.saga_id) == due
    finally:
        plain.close()

    config = load_config(str(_config(tmp_path, f"  retention_days: {DAYS}\n")), environ={})
    assert config.saga.retention_days == DAYS
    engine = Engine.from_config(config)
    engine.start()
    try:
        deadline = time.monotonic() + 10
        while engine.store.get_saga(due.saga_id) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.store.get_saga(due.saga_id) is None
    finally:
        engine.close()


@pytest.mark.parametrize("value", ["0", "-3", "abc", ".nan"])
def test_a_bad_retention_days_stops_the_program_naming_the_key(tmp_path: Path, value: str) -> None:
    """`saga.retention_days` must be a number of days above 0; anything else is a config error
    that names the key."""
    with pytest.raises(ConfigError, match=r"saga\.retention_days"):
        load_config(str(_config(tmp_path, f"  retention_days: {value}\n")), environ={})
