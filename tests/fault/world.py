"""A deterministic world for the real `Executor`: one thread, a clock that only moves when told,
participants that answer when told, a store that fails when told, and a relay to a fake topic.

Nothing here re-implements the executor: `World` holds real `Executor` objects over a real store
(memory or SQLite) and calls their one-round methods (`claim_once`, `commit_once`,
`fire_due_timers`, `renew_once`) in the order a schedule says, exactly as their threads would,
only never two at once. Faults are the ones a real deployment meets:

- an executor dies (its object is dropped with whatever it held: queued commits, timers, calls
  in flight whose answers then go nowhere); a frozen one simply gets no turns for a while;
- the store is down (every call raises, as a lost connection does), loses a commit's outcome
  (the write happened, the caller is told it failed), or refuses a value it cannot keep;
- a participant answers late, never (the deadline fires), twice, with an unusable reply, or
  times out after (or before) doing the work;
- a cancel request arrives at any moment; the relay's send fails.

`World.record(saga_id)` turns what was seen into a `saga.invariants.SagaRecord`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attrs import define, field

from saga.errors import Conflict, NotFound
from saga.invariants import CallMade, SagaRecord
from saga.model import (
    INVALID_RESPONSE,
    Action,
    EventType,
    OnCompensationFailure,
    OnFailure,
    RetryPolicy,
    SagaStatus,
    Step,
    Workflow,
    new_saga,
)
from workers.adapters.participant import CallResult
from workers.adapters.store.base import StoreRefused
from workers.adapters.store.memory import MemoryStore
from workers.config import Config
from workers.interpreter import Executor, WorkflowCatalog
from workers.service.engine import Engine

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
LEASE_SECS = 10.0
POISON = "\x00poison"  # a value the faulty store refuses to keep, as PostgreSQL refuses a NUL

WORKFLOW = Workflow(
    name="order",
    steps=(
        Step(
            "reserve",
            "inventory",
            "Inventory.Reserve",
            compensate="Inventory.Release",
            timeout_secs=2,
            retry=RetryPolicy(max_attempts=2, initial_interval_ms=500),
            on_compensation_failure=OnCompensationFailure.PAUSE,
        ),
        Step(
            "charge",
            "payment",
            "Payment.Charge",
            compensate="Payment.Refund",
            timeout_secs=2,
            retry=RetryPolicy(max_attempts=3, initial_interval_ms=200),
            on_failure=OnFailure.PAUSE,
        ),
        Step("notify", "mail", "Mail.Send", timeout_secs=1, retry=RetryPolicy(max_attempts=1)),
    ),
)


class Clock:
    """Seconds since an epoch; moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    def utc(self) -> datetime:
        return EPOCH + timedelta(seconds=self.now)

    def advance(self, secs: float) -> None:
        self.now += secs


class StoreDown(ConnectionError):
    """What a store call raises while the store is down."""


class FaultyStore:
    """Wraps a real store; every call goes through, unless a fault is switched on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.lose_next_commit_outcome = False
        # Called just before the next commit is written: a cancel racing the executor's write.
        self.before_next_commit: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreDown(f"store is down ({name})")
            return attr(*args, **kwargs)

        return call

    def commit(self, owner: str, requests: Sequence[Any], lease_secs: float) -> list[Any]:
        if self.down:
            raise StoreDown("store is down (commit)")
        for request in requests:
            if any(_poisoned(_log_values(g)) for g in request.commit.step_logs):
                raise StoreRefused("ValueError: a NUL character cannot be stored")
        if self.before_next_commit is not None:
            race, self.before_next_commit = self.before_next_commit, None
            race()
        results = self.inner.commit(owner, requests, lease_secs)
        if self.lose_next_commit_outcome:
            self.lose_next_commit_outcome = False
            raise StoreDown("connection lost after the commit was sent")
        return list(results)


def _poisoned(value: Any) -> bool:
    if isinstance(value, str):
        return POISON in value
    if isinstance(value, dict):
        return any(_poisoned(v) for v in value.values())
    if isinstance(value, list):
        return any(_poisoned(v) for v in value)
    return False


def _log_values(log: Any) -> list[Any]:
    return [log.error_message, dict(log.response_payload or {}), dict(log.request_payload or {})]


@define
class Attempt:
    """One participant call made by an executor and not yet answered."""

    number: int
    executor: str
    saga_id: str
    step_index: int
    action: Action
    attempt: int
    key: str
    done: Callable[[CallResult], None]
    stale: bool
    slot: int = 0


class Participants:
    """Every participant service at once: records the calls it gets, applies each idempotency
    key at most once (as a well-behaved participant does) and answers when the test says."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.waiting: list[Attempt] = []
        self.made: dict[str, list[CallMade]] = {}
        self.applied: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self._numbers = 0

    def caller_for(self, owner: str) -> Any:
        participants = self

        class Caller:
            def call_async(
                self,
                service: str,
                method: str,
                payload: bytes,
                timeout_s: float,
                metadata: Sequence[tuple[str, str]],
                done: Callable[[CallResult], None],
            ) -> None:
                meta = dict(metadata)
                participants._numbers += 1
                saga_id = meta["x-saga-id"]
                step = int(meta["x-saga-step"])
                attempt = Attempt(
                    number=participants._numbers,
                    executor=owner,
                    saga_id=saga_id,
                    step_index=step,
                    action=Action(meta["x-saga-action"]),
                    attempt=int(meta["x-saga-attempt"]),
                    key=meta["idempotency-key"],
                    done=done,
                    stale=not participants.world.holds(owner, saga_id),
                )
                participants.received[attempt.key] += 1
                participants.waiting.append(attempt)
                calls = participants.made.setdefault(saga_id, [])
                attempt.slot = len(calls)
                calls.append(
                    CallMade(
                        step,
                        attempt.action,
                        attempt.attempt,
                        attempt.key,
                        "unknown",
                        stale=attempt.stale,
                    )
                )

        return Caller()

    def answer(self, index: int, how: str) -> None:
        """Answer one waiting call: success, success_poison, busy (retryable), declined
        (permanent), timeout_applied, timeout_unapplied, unusable, or twice (success, twice)."""
        if not self.waiting:
            return
        attempt = self.waiting.pop(index % len(self.waiting))
        applied = how in ("success", "success_poison", "timeout_applied", "unusable", "twice")
        if applied:
            self.applied[attempt.key] = 1  # exactly-once per key on the participant's side
        outcome = {
            "success": "success",
            "success_poison": "success",
            "twice": "success",
            "busy": "failed",
            "declined": "failed",
        }.get(how, "unknown")
        calls = self.made[attempt.saga_id]
        calls[attempt.slot] = CallMade(
            attempt.step_index,
            attempt.action,
            attempt.attempt,
            attempt.key,
            outcome,  # type: ignore[arg-type]
            stale=attempt.stale,
        )
        if attempt.executor not in self.world.executors:
            return  # its executor died: the answer goes nowhere
        result = _result(how)
        attempt.done(result)
        if how == "twice":
            attempt.done(result)

    def forget_calls_of(self, owner: str) -> None:
        """An executor died: the calls it made still reach the participants (they may have
        done the work); their answers will go nowhere."""
        for attempt in self.waiting:
            if attempt.executor == owner:
                attempt.stale = True


def _result(how: str) -> CallResult:
    if how in ("success", "twice"):
        return CallResult(True, {"ok": True}, None, "", 1.0, 11)
    if how == "success_poison":
        return CallResult(True, {"note": POISON}, None, "", 1.0, 20)
    if how == "busy":
        return CallResult(False, {}, "UNAVAILABLE", "busy", 1.0)
    if how == "declined":
        return CallResult(False, {}, "FAILED_PRECONDITION", "declined", 1.0)
    if how == "unusable":
        return CallResult(False, {}, INVALID_RESPONSE, "participant reply is not JSON", 1.0)
    return CallResult(False, {}, "DEADLINE_EXCEEDED", "deadline exceeded", 2000.0)


@define
class Relay:
    """The outbox relay's one round, to a topic kept in memory (send failures on demand)."""

    world: World
    topic: list[tuple[str, str, str]] = field(factory=list)  # (saga id, event id, type)

    def round(self, *, fail: bool = False) -> None:
        store = self.world.store
        rows = store.claim_outbox("relay", 50, 5.0)
        if fail or not rows:
            return
        for row in rows:
            self.topic.append((row.saga_id, row.event_id, row.event_type))
        store.mark_published([r.seq for r in rows])

    def events_of(self, saga_id: str) -> list[EventType]:
        seen: set[str] = set()
        out: list[EventType] = []
        for sid, event_id, kind in self.topic:
            if sid == saga_id and event_id not in seen:
                seen.add(event_id)
                out.append(EventType(kind))
        return out


class World:
    """Executors, participants, a faulty store and a relay, driven one round at a time."""

    def __init__(self, kind: str = "memory", tmp_path: Path | None = None, slots: int = 2) -> None:
        self.clock = Clock()
        if kind == "memory":
            inner: Any = MemoryStore(outbox=True, clock=self.clock.monotonic)
        else:
            from workers.adapters.store.sqlite import SqliteStore

            assert tmp_path is not None
            inner = SqliteStore(str(tmp_path / "fault.sqlite3"), outbox=True, clock=self.clock.wall)
        self.kind = kind
        self.store = FaultyStore(inner)
        self.workflow = inner.register_workflow(WORKFLOW)
        self.participants = Participants(self)
        self.relay = Relay(self)
        self.executors: dict[str, Executor] = {}
        self.slots: list[str] = []
        self.generation = 0
        self.sagas: list[str] = []
        self.cancel_accepted: set[str] = set()
        self.in_doubt: dict[str, set[int]] = {}
        self.down_after_claim = False
        self.pause_accepted: set[str] = set()
        # The API processes' engine (it executes nothing), over the same faulty store.
        self.api = Engine(Config(), self.store, execute=False, relay=False)  # type: ignore[arg-type]
        for _ in range(slots):
            self.slots.append(self._new_executor())

    # ---------------------------------------------------------------- executors

    def _new_executor(self) -> str:
        self.generation += 1
        owner = f"ex-{self.generation}"
        world = self

        class WatchedStore:
            """The store as one executor sees it (faults included); notes, at each claim, the
            steps a dead executor may have left in flight."""

            def __getattr__(self, name: str) -> Any:
                return getattr(world.store, name)

            def claim(self, owner_: str, limit: int, lease_secs: float) -> list[Any]:
                claimed = world.store.claim(owner_, limit, lease_secs)
                for c in claimed:
                    if c.lease_expired and c.state.status is SagaStatus.RUNNING:
                        world.in_doubt.setdefault(c.state.saga_id, set()).add(c.state.current_step)
                if world.down_after_claim:
                    world.down_after_claim = False
                    world.store.down = True
                return list(claimed)

        watched = WatchedStore()
        self.executors[owner] = Executor(
            watched,  # type: ignore[arg-type]
            WorkflowCatalog(watched),  # type: ignore[arg-type]
            self.participants.caller_for(owner),  # type: ignore[arg-type]
            owner=owner,
            max_concurrent=3,
            lease_secs=LEASE_SECS,
            commit_batch=4,
            clock=self.clock.utc,
            monotonic=self.clock.monotonic,
            jitter=lambda: 0.0,
        )
        return owner

    def executor(self, slot: int) -> Executor:
        return self.executors[self.slots[slot % len(self.slots)]]

    def crash(self, slot: int) -> None:
        """SIGKILL: the executor is gone with all it held; a fresh one takes its slot."""
        index = slot % len(self.slots)
        owner = self.slots[index]
        self.executors.pop(owner, None)
        self.participants.forget_calls_of(owner)
        self.slots[index] = self._new_executor()

    def holds(self, owner: str, saga_id: str) -> bool:
        """Whether `owner` holds the saga's lease right now (per the store)."""
        inner = self.store.inner
        if isinstance(inner, MemoryStore):
            row = inner._sagas.get(saga_id)
            return bool(row and row.owner == owner and row.expires >= self.clock.now)
        conn = inner._conn()
        got = conn.execute(
            "SELECT lease_owner, lease_expires_at FROM saga_states WHERE id = ?", (saga_id,)
        ).fetchone()
        return bool(got and got[0] == owner and (got[1] or 0) >= self.clock.wall())

    # ---------------------------------------------------------------- the outside world

    def start_saga(self, payload: dict[str, Any] | None = None) -> str:
        number = len(self.sagas) + 1
        saga_id = f"00000000-0000-4000-8000-{number:012d}"
        state = new_saga(
            saga_id=saga_id,
            workflow=self.workflow,
            payload=payload or {"order": number},
            correlation_id=None,
            initiated_by=None,
            at=self.clock.utc(),
        )
        self.store.inner.create_saga(state)
        self.sagas.append(saga_id)
        return saga_id

    def cancel(self, index: int) -> None:
        """An operator's cancel through the real `Engine` (a 200 is remembered)."""
        if self.sagas:
            saga_id = self.sagas[index % len(self.sagas)]
            if self._api(lambda: self.api.cancel_saga(saga_id, by="op")):
                self.cancel_accepted.add(saga_id)

    def pause(self, index: int) -> None:
        """An operator's pause request through the real `Engine` (a 200 is remembered)."""
        if self.sagas:
            saga_id = self.sagas[index % len(self.sagas)]
            if self._api(lambda: self.api.pause_saga(saga_id, by="op")):
                self.pause_accepted.add(saga_id)

    def resume(self, index: int, action: str | None) -> bool:
        """An operator's resume through the real `Engine`; True when it was answered 200."""
        if not self.sagas:
            return False
        saga_id = self.sagas[index % len(self.sagas)]
        return self._api(lambda: self.api.resume_saga(saga_id, action, by="op"))

    def _api(self, request: Callable[[], object]) -> bool:
        try:
            request()
        except (Conflict, NotFound, StoreDown):
            return False  # a 409, a 404, or a 500 while the store is down: nothing was done
        return True

    # ---------------------------------------------------------------- rounds, as the loops run them

    def claim(self, slot: int) -> None:
        with contextlib.suppress(StoreDown):
            self.executor(slot).claim_once()

    def commit(self, slot: int) -> None:
        self.executor(slot).commit_once()

    def timers(self, slot: int) -> None:
        ex = self.executor(slot)
        due = ex.next_timer_due()
        if due is not None and due > self.clock.now:
            self.clock.advance(due - self.clock.now)
        ex.fire_due_timers()

    def renew(self, slot: int) -> None:
        with contextlib.suppress(StoreDown):
            self.executor(slot).renew_once()

    def relay_round(self, *, fail: bool = False) -> None:
        if not self.store.down:
            self.relay.round(fail=fail)

    # ---------------------------------------------------------------- the end

    def drain(self, max_rounds: int = 3_000) -> None:
        """Faults stop; everything runs fairly until every saga has ended (or the bound)."""
        self.store.down = False
        self.store.lose_next_commit_outcome = False
        self.store.before_next_commit = None
        self.down_after_claim = False
        for _ in range(max_rounds):
            if self._all_ended() and not self.participants.waiting:
                break
            progressed = self._operator_resumes_paused_sagas()
            for slot in range(len(self.slots)):
                ex = self.executor(slot)
                if ex.pending_commits():
                    ex.commit_once()
                    progressed = True
            if self.participants.waiting:
                self.participants.answer(0, "success")
                continue
            if progressed:
                continue
            for slot in range(len(self.slots)):
                self.claim(slot)
                self.renew(slot)
                progressed = progressed or bool(self.executor(slot).pending_commits())
            if progressed:
                continue
            dues = [
                d for d in (self.executor(s).next_timer_due() for s in range(len(self.slots))) if d
            ]
            if dues:
                self.clock.advance(max(0.0, min(dues) - self.clock.now))
                for slot in range(len(self.slots)):
                    self.executor(slot).fire_due_timers()
                continue
            # Nothing to do but wait for a lease left by a dead executor to run out.
            self.clock.advance(LEASE_SECS / 2)
        for _ in range(100):
            before = len(self.relay.topic)
            self.relay.round()
            if len(self.relay.topic) == before:
                break

    def _operator_resumes_paused_sagas(self) -> bool:
        """Once faults stop, the operator resumes every PAUSED saga: the default action first,
        then skip, then compensate, until one is taken."""
        resumed = False
        for index, saga_id in enumerate(self.sagas):
            state = self.store.inner.get_saga(saga_id)
            if state is not None and state.status is SagaStatus.PAUSED:
                for action in (None, "skip", "compensate"):
                    if self.resume(index, action):
                        resumed = True
                        break
        return resumed

    def _all_ended(self) -> bool:
        for saga_id in self.sagas:
            state = self.store.inner.get_saga(saga_id)
            if state is None or not state.status.terminal:
                return False
        return True

    def record(self, saga_id: str) -> SagaRecord:
        inner = self.store.inner
        return SagaRecord(
            workflow=self.workflow,
            final=inner.get_saga(saga_id),
            step_logs=tuple(inner.get_step_logs(saga_id)),
            calls=tuple(self.participants.made.get(saga_id, ())),
            events=tuple(self.relay.events_of(saga_id)),
            cancel_accepted=saga_id in self.cancel_accepted,
            pause_accepted=saga_id in self.pause_accepted,
            applied={k: v for k, v in self.participants.applied.items() if k.startswith(saga_id)},
            in_doubt=frozenset(self.in_doubt.get(saga_id, ())),
        )
