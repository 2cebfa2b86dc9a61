"""The executor's threads under the faults that used to kill them or leave sagas behind:
a store error right after a claim, a loop dying on an unexpected error, a shutdown while a
claim is in flight, and a SQLite claim that waited for the write lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saga.model import Step, Workflow
from tests.harness import fresh_saga, wait_until
from workers.adapters.participant import CallResult
from workers.adapters.store.memory import MemoryStore
from workers.adapters.store.sqlite import SqliteStore
from workers.interpreter import Executor, WorkflowCatalog

WF = Workflow("one", (Step("only", "svc", "Svc.Do", compensate="Svc.Undo"),))


class AnsweringCaller:
    """Answers every call at once, successfully, from the calling thread."""

    def call_async(self, service: str, method: str, payload: bytes, timeout_s: float,
                   metadata: Any, done: Any) -> None:  # fmt: skip
        done(CallResult(True, {"ok": True}, None, "", 1.0, 11))


def _saga(store: Any, wf: Workflow) -> str:
    state = fresh_saga(wf)
    store.create_saga(state)
    return str(state.saga_id)


def _polling_a_minute(store: Any, caller: Any, **kw: Any) -> Executor:
    """An executor whose claim poll never comes during a test: only wake-ups make it claim."""
    return Executor(
        store, WorkflowCatalog(store), caller, claim_interval_secs=60, lease_secs=30, **kw
    )


def _ended(store: Any, saga_id: str) -> bool:
    state = store.get_saga(saga_id)
    return state is not None and state.status.terminal


def test_a_store_error_right_after_a_claim_does_not_stop_claiming() -> None:
    """The workflow read after a claim fails once: the claimer lives on, the saga is given back
    and later completes, and so does every saga started after it."""

    class FlakyWorkflows(MemoryStore):
        failures = 1

        def get_workflow(self, name: str, version: int | None = None) -> Workflow | None:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("store went away")
            return super().get_workflow(name, version)

    store = FlakyWorkflows()
    wf = store.register_workflow(WF)
    first = _saga(store, wf)
    ex = Executor(
        store, WorkflowCatalog(store), AnsweringCaller(),  # type: ignore[arg-type]
        claim_interval_secs=0.02, lease_secs=5,
    )  # fmt: skip
    ex.start()
    try:
        wait_until(lambda: _ended(store, first), timeout=10, what="the first saga to end")
        later = _saga(store, wf)
        ex.wake()
        wait_until(lambda: _ended(store, later), timeout=10, what="a later saga to end")
        assert ex.healthy()
    finally:
        ex.stop(1)


def test_a_loop_that_dies_is_restarted_and_reported_meanwhile() -> None:
    """A loop killed by an unexpected error shows as not healthy, is restarted, and the executor
    is healthy again and keeps completing sagas."""
    store = MemoryStore()
    wf = store.register_workflow(WF)
    ex = Executor(
        store, WorkflowCatalog(store), AnsweringCaller(),  # type: ignore[arg-type]
        claim_interval_secs=0.02, lease_secs=0.3,
    )  # fmt: skip
    real_renew = ex.renew_once
    calls = {"n": 0}
    health_after_restart: list[bool] = []

    def dying_renew() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a bug nobody expected")
        if calls["n"] == 2:  # restarted, not yet through one round
            health_after_restart.append(ex.healthy())
        real_renew()

    ex.renew_once = dying_renew  # type: ignore[method-assign]

    def renew_loop() -> None:  # the real loop's shape, quicker, reporting after each round
        while not ex._stopping.wait(0.02):
            ex.renew_once()
            ex._beat("renewer")

    ex._renew_loop = renew_loop  # type: ignore[method-assign]
    ex.start()
    try:
        wait_until(lambda: calls["n"] >= 3, timeout=10, what="the renewer to run again")
        assert health_after_restart == [False]
        assert "renewer" not in ex.down()
        wait_until(ex.healthy, timeout=5, what="the executor to be healthy again")
        saga = _saga(store, wf)
        ex.wake()
        wait_until(lambda: _ended(store, saga), timeout=10, what="a saga to end")
    finally:
        ex.stop(1)


def test_stop_waits_for_a_claim_in_flight_and_gives_its_sagas_back() -> None:
    """A shutdown that begins while a claim is in flight leaves no saga leased to the stopped
    executor: another executor can claim it at once."""
    release_claim = threading.Event()
    claim_started = threading.Event()

    class SlowClaims(MemoryStore):
        def claim(self, owner: str, limit: int, lease_secs: float) -> list[Any]:
            claim_started.set()
            release_claim.wait(5)
            return super().claim(owner, limit, lease_secs)

    store = SlowClaims()
    wf = store.register_workflow(WF)
    saga_id = _saga(store, wf)

    class Silent:
        def call_async(self, *args: Any) -> None:  # never answers: the saga stays held
            return None

    ex = Executor(store, WorkflowCatalog(store), Silent(), lease_secs=60)  # type: ignore[arg-type]
    ex.start()
    assert claim_started.wait(5)
    stopper = threading.Thread(target=ex.stop, args=(0.2,))
    stopper.start()
    time.sleep(0.1)
    release_claim.set()
    stopper.join(10)
    assert not stopper.is_alive()
    other = MemoryStore.claim(store, "another", 10, 60)
    assert [c.state.saga_id for c in other] == [saga_id]


def test_sqlite_lease_is_timed_from_when_the_write_lock_was_held(tmp_path: Path) -> None:
    """A claim that waited for the SQLite write lock takes a lease counted from the moment it
    got the lock, not from before the wait."""
    now = {"t": 1_000.0}
    path = tmp_path / "claim.sqlite3"
    store = SqliteStore(str(path), clock=lambda: now["t"])
    wf = store.register_workflow(WF)
    _saga(store, wf)
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    got: list[Any] = []
    claimer = threading.Thread(target=lambda: got.extend(store.claim("ex-1", 10, 30)))
    claimer.start()
    time.sleep(0.3)  # the claim is now waiting for the lock
    now["t"] = 1_025.0  # 25 s "pass" while it waits
    blocker.execute("COMMIT")
    claimer.join(10)
    assert len(got) == 1
    expires = blocker.execute("SELECT lease_expires_at FROM saga_states").fetchone()[0]
    assert expires == 1_025.0 + 30
    store.close()


class CountingClaims(MemoryStore):
    """Records when each claim began and how many sagas it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[tuple[float, int]] = []

    def claim(self, owner: str, limit: int, lease_secs: float) -> Any:
        began = time.monotonic()
        got = super().claim(owner, limit, lease_secs)
        self.claims.append((began, len(got)))
        return got


@contextmanager
def _running(caller: Any, **kw: Any) -> Iterator[tuple[CountingClaims, Workflow, Executor]]:
    """A started `_polling_a_minute` executor on a `CountingClaims` store, past its first
    claim (which finds nothing); stopped at the end."""
    store = CountingClaims()
    wf = store.register_workflow(WF)
    ex = _polling_a_minute(store, caller, **kw)
    ex.start()
    try:
        wait_until(lambda: len(store.claims) == 1, timeout=5, what="the first claim")
        yield store, wf, ex
    finally:
        ex.stop(0.5)


def test_an_idle_executor_claims_a_started_saga_at_once_and_only_then(monkeypatch: Any) -> None:
    """On an executor polling once a minute, a saga started right after a claim that found
    nothing is claimed as soon as the executor is woken (the gap between claims is for load),
    and a saga that ends on an executor with room left sets off no claim of its own (each
    would be a write transaction finding nothing)."""
    monkeypatch.setattr("workers.interpreter.executor._CLAIM_GAP_SECS", 0.5)
    with _running(AnsweringCaller()) as (store, wf, ex):
        for round_ in range(3):
            if round_:
                time.sleep(0.6)  # the gap after the last claim that found a saga is over
                assert len(store.claims) == 2 * round_, "a saga's end set off a claim"
                ex.wake()  # a claim that finds nothing (a wake-up for a saga another took)
                wait_until(lambda: len(store.claims) == 2 * round_ + 1, timeout=5,  # noqa: B023
                           what="the empty claim")  # fmt: skip
            saga = _saga(store, wf)
            woken = time.monotonic()
            ex.wake()
            wait_until(lambda: _ended(store, saga), timeout=5, what="the saga to end")  # noqa: B023
            assert time.monotonic() - woken < 0.25, "the claim waited for the gap"
        time.sleep(0.1)
        assert [n for _, n in store.claims] == [0, 1, 0, 1, 0, 1]


def test_a_claim_that_found_sagas_makes_the_next_one_wait_for_the_gap(monkeypatch: Any) -> None:
    """Under load (the last claim found sagas) the claimer waits out the gap before the next
    claim, so the sagas started meanwhile are claimed together."""
    monkeypatch.setattr("workers.interpreter.executor._CLAIM_GAP_SECS", 0.4)
    with _running(AnsweringCaller()) as (store, wf, ex):
        first = _saga(store, wf)
        ex.wake()
        wait_until(lambda: _ended(store, first), timeout=5, what="the first saga to end")
        later = [_saga(store, wf) for _ in range(3)]
        for _ in later:
            ex.wake()
        wait_until(lambda: all(_ended(store, s) for s in later), timeout=5, what="the rest")
        (t1, n1), (t2, n2) = store.claims[1:3]
        assert (n1, n2) == (1, 3)
        assert t2 - t1 >= 0.35


def test_a_full_executor_claims_the_next_saga_as_soon_as_one_ends() -> None:
    """With `max_concurrent` 1 and a claim poll of a minute, sagas left in the store for lack
    of room are claimed as each saga before them ends."""

    class SlowCaller:
        """Answers each call 50 ms later, from a thread of its own."""

        def call_async(self, service: str, method: str, payload: bytes, timeout_s: float,
                       metadata: Any, done: Any) -> None:  # fmt: skip
            answer = CallResult(True, {"ok": True}, None, "", 50.0, 11)
            threading.Timer(0.05, done, (answer,)).start()

    store = CountingClaims()
    wf = store.register_workflow(WF)
    ex = _polling_a_minute(store, SlowCaller(), max_concurrent=1)
    sagas = [_saga(store, wf) for _ in range(4)]
    ex.start()
    try:
        wait_until(lambda: all(_ended(store, s) for s in sagas), timeout=5, what="all four")
        assert [n for _, n in store.claims][:4] == [1, 1, 1, 1]
    finally:
        ex.stop(1)


def test_a_saga_started_with_the_executors_lease_runs_with_no_claim() -> None:
    """Accept and run: a start written with `start_lease()` and handed to `take` runs to its
    end in this executor, and no claim statement is made for it."""
    with _running(AnsweringCaller()) as (store, wf, ex):
        for _ in range(3):
            lease = ex.start_lease()
            assert lease is not None and lease.owner == ex.owner
            state, _, created = store.create_saga(fresh_saga(wf), lease=lease)
            assert created
            ex.take(state)
            wait_until(lambda: _ended(store, state.saga_id), timeout=5, what="the saga to end")  # noqa: B023
        time.sleep(0.1)
        assert [n for _, n in store.claims] == [0]


def test_start_leases_keep_room_within_max_concurrent() -> None:
    """`start_lease` keeps a place among `max_concurrent` until `take` or `unreserve`: never
    more sagas held (or about to be) than the bound, and claims leave room for them."""

    class SilentCaller:
        def call_async(self, *args: Any) -> None:  # never answers: the saga stays held
            pass

    with _running(SilentCaller(), max_concurrent=2) as (store, wf, ex):
        first, second = ex.start_lease(), ex.start_lease()
        assert first is not None and second is not None
        assert ex.start_lease() is None, "a third start leased past max_concurrent 2"
        waiting = _saga(store, wf)  # started by another process: it wakes the claimer
        state, _, _ = store.create_saga(fresh_saga(wf), lease=first)
        ex.take(state)
        assert ex.claim_once() == (0, 0), "a claim took the room kept for a start"
        time.sleep(0.1)
        assert ex.held() == 1 and store.claims[-1][1] == 0
        ex.unreserve()  # the second start wrote nothing: its room goes to the waiting saga
        wait_until(lambda: ex.held() == 2, timeout=5, what="the waiting saga to be claimed")
        assert sum(n for _, n in store.claims) == 1 and waiting in ex._runs
        assert ex.start_lease() is None


def test_a_start_leased_while_the_executor_stops_is_given_back() -> None:
    """An executor that begins to stop between the insert and `take` gives the lease back at
    once: another executor claims the saga without waiting for the lease to expire."""
    store = MemoryStore()
    wf = store.register_workflow(WF)
    ex = _polling_a_minute(store, AnsweringCaller())
    ex.start()
    lease = ex.start_lease()
    assert lease is not None
    state, _, _ = store.create_saga(fresh_saga(wf), lease=lease)
    ex.stop(0.5)
    assert ex.start_lease() is None
    ex.take(state)
    [claimed] = store.claim("another", 10, 30)
    assert claimed.state.saga_id == state.saga_id and not claimed.lease_expired
