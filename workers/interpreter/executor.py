"""The interpreter: carries out the effects of `saga.decide` and feeds every outcome back.

It owns the I/O of saga execution and none of its rules. Per process:

- a claimer thread takes leases on waiting sagas (up to `max_concurrent` held at once);
- participant calls run as gRPC futures, so a saga waiting on a participant holds no thread;
- one committer thread writes the commits of every saga in flight in shared transactions
  (a batch is whatever queued up while the previous transaction ran);
- one timer thread wakes sagas whose retry delay has passed (no pool thread ever sleeps);
- a renewer thread extends the leases of the sagas held.

A saga is only ever touched by one thread at a time: each event is handled by whoever
produced it (gRPC callback, timer, committer, claimer), and the next event of a saga only
exists after the previous one's effects were handed on.

Each thread's work is one public method that does one round (`claim_once`, `commit_once`,
`fire_due_timers`, `renew_once`); the threads only loop over them. With the clock, the
monotonic clock, the store and the participant caller passed in, a test drives the real
executor from one thread in any order it likes (tests/fault). A loop that dies on an error
nobody expected is restarted, and `healthy()` says so meanwhile (`/readyz`).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from saga.decide import ENDED, IDLE, PAUSED, decide, phase
from saga.events import (
    CallParticipant,
    Commit,
    CommitRefused,
    Effect,
    Event,
    Resume,
    RetryDue,
    ScheduleRetry,
    StepFailed,
    StepSucceeded,
)
from saga.model import SagaState, SagaStatus, StepStatus, Workflow
from workers.adapters import metrics
from workers.adapters.participant import CallResult, ParticipantCaller
from workers.adapters.store.base import (
    START_LEASE_TOKEN,
    Claimed,
    CommitRequest,
    CommitResult,
    StartLease,
    Store,
    StoreRefused,
    refusal_reason,
)
from workers.adapters.tracing import RunTrace, Tracing

log = logging.getLogger("saga.executor")

# A saga whose commits the store refuses this many times in a row is left to its lease (the
# core already turns the first refusals into a FAILED end that writes almost nothing).
_MAX_REFUSALS = 3
# A retry whose lease could not be checked (the store did not answer) is tried again this soon.
_RETRY_CHECK_AGAIN_SECS = 1.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def _about(state: SagaState, workflow: Workflow | None = None) -> dict[str, object]:
    """The log extras of a line about a saga: its id and the name of the step it is at (None
    past the last step, or when the workflow is not known)."""
    index = state.in_flight.step_index if state.in_flight is not None else state.current_step
    steps = workflow.steps if workflow is not None else ()
    return {
        "saga_id": state.saga_id,
        "step": steps[index].name if 0 <= index < len(steps) else None,
    }


# The shortest time between two claims of one executor (see `_claim_loop`).
_CLAIM_GAP_SECS = 0.003


class WorkflowCatalog:
    """Workflow definitions by (name, version), read from the store once and kept (a stored
    version never changes)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[tuple[str, int], Workflow] = {}

    def get(self, name: str, version: int) -> Workflow | None:
        found = self._cache.get((name, version))
        if found is None:
            found = self._store.get_workflow(name, version)
            if found is not None:
                self._cache[(name, version)] = found
        return found

    def remember(self, workflow: Workflow) -> None:
        self._cache[(workflow.name, workflow.version)] = workflow


class _Run:
    """One saga this executor holds: its state as decided, its state as last committed, and
    the lease it holds it by."""

    __slots__ = (
        "state",
        "committed",
        "workflow",
        "token",
        "cancel",
        "call_started",
        "refusals",
        "trace",
        "_body_of",
        "_body",
    )

    def __init__(self, claimed: Claimed, workflow: Workflow, trace: RunTrace) -> None:
        self.state: SagaState = claimed.state
        self.committed: SagaState = claimed.state
        self.workflow = workflow
        self.token = claimed.lease_token
        self.cancel = claimed.cancel_requested
        self.call_started = 0.0
        self.refusals = 0
        self.trace = trace
        self._body_of: object = None
        self._body = b""

    def body(self, call: CallParticipant) -> bytes:
        """The request bytes of `call`: its payload as compact JSON, made once per payload."""
        if call.payload is not self._body_of:
            self._body = json.dumps(dict(call.payload), separators=(",", ":")).encode()
            self._body_of = call.payload
        return self._body


_Pending = tuple[_Run, Commit, tuple[Effect, ...], int]


class Executor:
    """Drives sagas from the store to their end. `start()` it, `stop()` it."""

    def __init__(
        self,
        store: Store,
        catalog: WorkflowCatalog,
        caller: ParticipantCaller,
        *,
        owner: str | None = None,
        max_concurrent: int = 100,
        lease_secs: float = 30.0,
        claim_interval_secs: float = 0.2,
        commit_batch: int = 512,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = lambda: random.uniform(-1.0, 1.0),
        tracing: Tracing | None = None,
    ) -> None:
        self.owner = owner or f"executor-{uuid.uuid4()}"
        self._store = store
        self._catalog = catalog
        self._caller = caller
        self._max = max_concurrent
        self._lease = lease_secs
        self._claim_interval = claim_interval_secs
        self._batch = commit_batch
        self._clock = clock
        self._monotonic = monotonic
        self._jitter = jitter
        # Trace context on every call; spans only when the tracing exports them (SPEC §12).
        self._tracing = tracing or Tracing()

        self._runs: dict[str, _Run] = {}
        self._reserved = 0  # room kept for sagas being started here (`start_lease`)
        self._runs_lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._commits: deque[_Pending] = deque()
        self._commit_cv = threading.Condition()
        self._timers: list[tuple[float, int, _Run]] = []
        self._timer_cv = threading.Condition()
        self._timer_seq = itertools.count()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._draining = False
        self._threads: list[threading.Thread] = []
        self._down: dict[str, str] = {}
        self._first_claim = True
        self._stop_listening: Callable[[], None] | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        metrics.EXECUTOR_HEALTHY.set(1)
        # A saga started, resumed or cancelled by any process is claimed at once; the claim
        # poll only catches what a lost wake-up missed and expired leases (recovery).
        try:
            self._stop_listening = self._store.wakeups(self.wake)
        except Exception as exc:
            log.warning("cannot listen for new sagas (%s); claiming by polling only", exc)
        for name, loop in (
            ("claimer", self._claim_loop),
            ("committer", self._commit_loop),
            ("timer", self._timer_loop),
            ("renewer", self._renew_loop),
        ):
            thread = threading.Thread(
                target=self._supervise, args=(name, loop), name=f"saga-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def start_lease(self) -> StartLease | None:
        """A lease for a saga this process is about to start, when this executor has room to run
        it at once: the store writes the saga already leased to it (no claim, no wake-up of
        other executors) and `take` runs it. The room is kept until `take` or `unreserve`.
        None when the executor is full, not running, or stopping."""
        if self._draining or self._stopping.is_set() or not self._threads:
            return None
        with self._runs_lock:
            if len(self._runs) + self._reserved >= self._max:
                return None
            self._reserved += 1
        return StartLease(self.owner, self._lease)

    def unreserve(self) -> None:
        """The start a `start_lease` was for wrote no saga leased to this executor. Its room
        goes to the sagas waiting in the store, if the executor was full."""
        with self._runs_lock:
            was_full = len(self._runs) + self._reserved >= self._max
            self._reserved -= 1
        if was_full and not self._draining:
            self._wake.set()

    def take(self, state: SagaState) -> None:
        """Run the saga just created with this executor's `start_lease` (token
        `START_LEASE_TOKEN`). If the executor began to stop meanwhile, the lease is given back
        so another executor claims the saga."""
        item = Claimed(state, START_LEASE_TOKEN, cancel_requested=False, taken_over=False)
        with self._claim_lock:  # `stop` counts the leases held only after this
            with self._runs_lock:
                self._reserved -= 1
            if not self._draining and self._begin(item):
                return
        try:
            self._store.release(self.owner, {state.saga_id: START_LEASE_TOKEN})
        except Exception:
            log.warning(
                "saga %s: could not give back its lease; it expires by itself",
                state.saga_id,
                extra=_about(state),
            )

    def wake(self) -> None:
        """Claim now rather than at the next poll (a saga was just started, resumed or
        cancelled, here or in another process)."""
        self._wake.set()

    def held(self) -> int:
        return len(self._runs)

    def healthy(self) -> bool:
        """Every loop is running (none died and is waiting to be restarted, none is gone)."""
        if self._stopping.is_set() or not self._threads:
            return False
        return not self._down and all(t.is_alive() for t in self._threads)

    def down(self) -> dict[str, str]:
        """The loops that died and are waiting to be restarted, with the error that killed them."""
        return dict(self._down)

    def stop(self, grace_secs: float = 10.0) -> None:
        """Stop claiming, let calls in flight finish and commit (up to `grace_secs`), then give
        back the leases of every saga still held so another executor takes them at once."""
        self._draining = True
        self._wake.set()
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        # A claim in flight finishes (and its sagas are adopted) before the leases are counted,
        # so none stays leased to an executor that is gone.
        with self._claim_lock:
            pass
        deadline = time.monotonic() + grace_secs
        while time.monotonic() < deadline:
            with self._runs_lock:
                busy = any(r.call_started for r in self._runs.values())
            with self._commit_cv:
                busy = busy or bool(self._commits)
            if not busy:
                break
            time.sleep(0.02)
        with self._runs_lock:
            leases = {saga_id: run.token for saga_id, run in self._runs.items()}
            self._runs.clear()
        try:
            self._store.release(self.owner, leases)
        except Exception:
            log.exception(
                "could not release %d leases; they expire in %.0fs", len(leases), self._lease
            )
        if leases:
            log.info("released %d sagas on shutdown", len(leases))
        self._stopping.set()
        with self._commit_cv:
            self._commit_cv.notify_all()
        with self._timer_cv:
            self._timer_cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        metrics.IN_FLIGHT.set(0)

    # ---------------------------------------------------------------- one round of each loop

    def claim_once(self) -> tuple[int, int]:
        """Claim up to the free capacity and start the sagas claimed: (claimed, asked for).
        Raises when the store cannot answer."""
        with self._claim_lock:
            if self._draining:
                return 0, 0
            want = min(self._max - len(self._runs) - self._reserved, 256)
            if want <= 0:
                return 0, 0
            claimed = self._store.claim(self.owner, want, self._lease)
            self._adopt(claimed)
            return len(claimed), want

    def commit_once(self) -> str:
        """Write one batch of queued commits: "idle" (none queued), "committed", or
        "unavailable" (the store did not answer; the commits stay queued, in order)."""
        with self._commit_cv:
            if not self._commits:
                return "idle"
            batch = [self._commits.popleft() for _ in range(min(self._batch, len(self._commits)))]
        requests = [CommitRequest(commit, run.token) for run, commit, _, _ in batch]
        try:
            results = self._store.commit(self.owner, requests, self._lease)
        except StoreRefused:
            return self._commit_one_by_one(batch)
        except Exception as exc:
            self._requeue(batch, exc)
            return "unavailable"
        metrics.COMMIT_BATCH.observe(len(batch))
        for item, result in zip(batch, results, strict=True):
            self._after_commit(item, result)
        return "committed"

    def fire_due_timers(self) -> int:
        """Send `RetryDue` to every saga whose retry delay has passed; return how many."""
        fired = 0
        while True:
            with self._timer_cv:
                if not self._timers or self._timers[0][0] > self._monotonic():
                    return fired
                _, _, run = heapq.heappop(self._timers)
            if self._is_held(run) and self._still_leased(run):
                fired += 1
                self._advance(run, RetryDue(at=self._clock()))

    def next_timer_due(self) -> float | None:
        """The monotonic time of the next retry, or None."""
        with self._timer_cv:
            return self._timers[0][0] if self._timers else None

    def pending_commits(self) -> int:
        with self._commit_cv:
            return len(self._commits)

    def renew_once(self) -> None:
        """Extend the leases held; drop the sagas whose lease turns out to be gone."""
        with self._runs_lock:
            leases = {saga_id: run.token for saga_id, run in self._runs.items()}
        if not leases:
            return
        held = self._store.renew(self.owner, leases, self._lease)
        with self._runs_lock:
            # A saga that ended while the renewal ran released its lease: not a loss.
            lost = [
                self._runs[i]
                for i in leases
                if i not in held and i in self._runs and self._runs[i].token == leases[i]
            ]
        if lost:
            log.warning("%d leases no longer held; dropping those sagas here", len(lost))
            for run in lost:
                if not run.state.terminal:
                    metrics.LEASES_LOST.inc()
                self._forget(run, release=False)

    # ---------------------------------------------------------------- driving one saga

    def _advance(self, run: _Run, event: Event) -> None:
        try:
            decision = decide(run.state, run.workflow, event)
        except Exception:
            log.exception(
                "saga %s: decision failed; giving the saga back",
                run.state.saga_id,
                extra=_about(run.state, run.workflow),
            )
            self._forget(run, release=True)
            return
        run.state = decision.state
        self._apply(run, decision.effects, 0)

    def _apply(self, run: _Run, effects: tuple[Effect, ...], start: int) -> None:
        for index in range(start, len(effects)):
            effect = effects[index]
            if isinstance(effect, Commit):
                with self._commit_cv:
                    self._commits.append((run, effect, effects, index + 1))
                    self._commit_cv.notify()
                return
            if isinstance(effect, CallParticipant):
                self._call(run, effect)
            elif isinstance(effect, ScheduleRetry):
                metrics.STEP_RETRIES.labels(
                    run.workflow.steps[effect.step_index].name, effect.action.value
                ).inc()
                with self._timer_cv:
                    due = self._monotonic() + effect.delay_ms / 1000.0
                    heapq.heappush(self._timers, (due, next(self._timer_seq), run))
                    self._timer_cv.notify()

    def _call(self, run: _Run, call: CallParticipant) -> None:
        if call.attempt == 1:
            run.call_started = time.monotonic()
        metrics.STEP_ATTEMPTS.labels(call.step_name, call.action.value).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "saga %s: %s %s, attempt %d",
                call.saga_id,
                call.action.value.lower(),
                call.step_name,
                call.attempt,
                extra={"saga_id": call.saga_id, "step": call.step_name},
            )
        answers = itertools.count()
        attempt = run.trace.attempt(call)

        def answered(result: CallResult) -> None:
            # One answer per attempt: a second one (a caller bug, a duplicated reply) is dropped.
            if next(answers) == 0:
                attempt.end(result)
                self._on_result(run, call, result)
            else:
                log.warning(
                    "saga %s: a second answer to one attempt, ignored",
                    call.saga_id,
                    extra={"saga_id": call.saga_id, "step": call.step_name},
                )

        self._caller.call_async(
            call.service,
            call.method,
            run.body(call),
            call.timeout_secs,
            call.metadata + attempt.metadata,
            answered,
        )

    def _on_result(self, run: _Run, call: CallParticipant, result: CallResult) -> None:
        try:
            self._advance(run, self._outcome(result))
        except Exception:
            log.exception(
                "saga %s: handling a participant reply failed",
                run.state.saga_id,
                extra=_about(run.state, run.workflow),
            )
            self._forget(run, release=True)

    def _outcome(self, result: CallResult) -> Event:
        """The facts of one attempt, as the event `decide` takes."""
        now = self._clock()
        if result.ok:
            return StepSucceeded(at=now, response=result.response)
        code = result.code or "UNKNOWN"
        return StepFailed(
            at=now,
            code=code,
            message=result.message,
            timed_out=code == "DEADLINE_EXCEEDED",
            jitter=self._jitter(),
        )

    def _after_commit(self, item: _Pending, result: CommitResult) -> None:
        try:
            self._committed(item, result)
        except Exception:
            log.exception(
                "saga %s: after-commit step failed",
                item[0].state.saga_id,
                extra=_about(item[0].state, item[0].workflow),
            )
            self._forget(item[0], release=True)

    def _committed(self, item: _Pending, result: CommitResult) -> None:
        run, commit, effects, next_index = item
        if result.fenced:
            metrics.LEASES_LOST.inc()
            log.warning(
                "saga %s: lease lost to another executor; dropping it here",
                run.state.saga_id,
                extra=_about(run.state, run.workflow),
            )
            self._forget(run, release=False)
            return
        run.refusals = 0
        run.cancel = result.cancel_requested
        if result.cancel_first or result.pause_first:
            # A cancel or a pause came after the flags were last read: nothing was written; go
            # on from the committed state with them seen (the saga compensates or pauses
            # instead of ending), so a request answered 200 is never lost.
            run.state = run.committed
            self._advance(
                run,
                Resume(
                    at=self._clock(),
                    cancel_requested=result.cancel_requested,
                    pause_requested=result.pause_requested,
                ),
            )
            return
        run.committed = commit.state
        for step_log in commit.step_logs:
            if step_log.status is not StepStatus.SKIPPED:
                metrics.STEP_DURATION.labels(
                    step_log.step_name, step_log.action.value, step_log.status.value
                ).observe(
                    max(0.0, time.monotonic() - run.call_started) if run.call_started else 0.0
                )
        run.call_started = 0.0 if commit.step_logs else run.call_started
        if commit.step_logs:
            run.trace.logged(commit.step_logs)
        if next_index < len(effects):
            self._apply(run, effects, next_index)
            return
        current = phase(run.state)
        if current == ENDED:
            metrics.SAGAS_ENDED.labels(run.state.workflow_name, run.state.status.value).inc()
            run.trace.ended(run.state)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "saga %s ended %s",
                    run.state.saga_id,
                    run.state.status.value,
                    extra=_about(run.state, run.workflow),
                )
            self._forget(run, release=False)
        elif current == PAUSED:
            # Nothing runs while paused: the commit gave the lease back (SPEC §11).
            pause = run.state.pause
            if pause is None or pause.failed_step is None:
                reason = "request"
            else:
                reason = "failure" if pause.forward else "compensation_failure"
            metrics.PAUSES.labels(reason).inc()
            self._forget(run, release=False)
        elif current == IDLE:
            if self._draining:
                self._forget(run, release=True)
            else:
                self._advance(
                    run,
                    Resume(
                        at=self._clock(),
                        cancel_requested=result.cancel_requested,
                        pause_requested=result.pause_requested,
                    ),
                )

    def _refused(self, item: _Pending, exc: StoreRefused) -> None:
        """The store refused this saga's commit for its data: the saga goes on from its last
        committed state with the refusal as the event (the core fails it the safe way)."""
        run = item[0]
        run.refusals += 1
        reason = refusal_reason(exc.__cause__ or exc) if exc.__cause__ else str(exc)
        if run.refusals > _MAX_REFUSALS:
            log.error(
                "saga %s: the store refused %d commits in a row (%s); leaving it to its lease",
                run.state.saga_id,
                run.refusals,
                reason,
                extra=_about(run.state, run.workflow),
            )
            self._forget(run, release=False)
            return
        log.error(
            "saga %s: the store refused its commit (%s)",
            run.state.saga_id,
            reason,
            extra=_about(run.state, run.workflow),
        )
        run.state = run.committed
        self._advance(run, CommitRefused(at=self._clock(), reason=reason, refusals=run.refusals))

    def _commit_one_by_one(self, batch: list[_Pending]) -> str:
        """After the store refused a batch: commit its sagas one at a time, so that the one
        whose data it refuses is failed on its own and the others go on. If the store stops
        answering meanwhile, the rest stay queued."""
        for index, item in enumerate(batch):
            run, commit, _, _ = item
            try:
                [result] = self._store.commit(
                    self.owner, [CommitRequest(commit, run.token)], self._lease
                )
            except StoreRefused as exc:
                self._refused(item, exc)
                continue
            except Exception as exc:
                self._requeue(batch[index:], exc)
                return "unavailable"
            self._after_commit(item, result)
        return "committed"

    def _requeue(self, items: list[_Pending], exc: BaseException) -> None:
        log.warning(
            "commit of %d sagas failed (%s: %s); it stays queued",
            len(items),
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        with self._commit_cv:
            self._commits.extendleft(reversed(items))

    def _is_held(self, run: _Run) -> bool:
        with self._runs_lock:
            return self._runs.get(run.state.saga_id) is run

    def _still_leased(self, run: _Run) -> bool:
        """Before a retry: check the lease is still ours, so a process that was frozen past its
        lease does not call the participant again for a saga another executor now drives."""
        saga_id = run.state.saga_id
        try:
            held = self._store.renew(self.owner, {saga_id: run.token}, self._lease)
        except Exception:
            with self._timer_cv:
                due = self._monotonic() + _RETRY_CHECK_AGAIN_SECS
                heapq.heappush(self._timers, (due, next(self._timer_seq), run))
            return False
        if saga_id in held:
            return True
        metrics.LEASES_LOST.inc()
        log.warning(
            "saga %s: lease lost before a retry; dropping it here",
            saga_id,
            extra=_about(run.state, run.workflow),
        )
        self._forget(run, release=False)
        return False

    def _forget(self, run: _Run, *, release: bool) -> None:
        saga_id = run.state.saga_id
        with self._runs_lock:
            # Room only matters to the claimer when the last claim may have left sagas
            # waiting in the store for lack of it (the executor was full).
            was_full = len(self._runs) + self._reserved >= self._max
            if self._runs.get(saga_id) is run:
                del self._runs[saga_id]
            metrics.IN_FLIGHT.set(len(self._runs))
        run.trace.abandon()
        if release:
            try:
                self._store.release(self.owner, {saga_id: run.token})
            except Exception:
                log.warning(
                    "saga %s: could not release its lease; it expires by itself",
                    saga_id,
                    extra=_about(run.state, run.workflow),
                )
        if (was_full or release) and not self._draining:
            self._wake.set()

    def _adopt(self, claimed: Sequence[Claimed]) -> None:
        recovered = [c for c in claimed if c.taken_over or c.state.status is not SagaStatus.STARTED]
        takeovers = sum(1 for c in claimed if c.taken_over)
        if recovered:
            metrics.RECOVERED.inc(len(recovered))
        if takeovers:
            metrics.TAKEOVERS.inc(takeovers)
        if self._first_claim:
            self._first_claim = False
            log.info(
                "recovered %d sagas at start (%d taken over from expired leases)",
                len(recovered),
                takeovers,
            )
        elif recovered:
            log.info(
                "recovered %d sagas (%d taken over from expired leases)", len(recovered), takeovers
            )
        unadopted = {c.state.saga_id: c.lease_token for c in claimed if not self._begin(c)}
        if unadopted:
            try:
                self._store.release(self.owner, unadopted)
            except Exception:
                log.warning("could not give back %d sagas; their leases expire", len(unadopted))

    def _begin(self, item: Claimed) -> bool:
        """Run a saga this executor holds; False when it must be given back."""
        saga_id = item.state.saga_id
        try:
            workflow = self._catalog.get(item.state.workflow_name, item.state.workflow_version)
        except Exception as exc:
            log.warning(
                "saga %s: could not read its workflow (%s); giving it back",
                saga_id,
                type(exc).__name__,
                extra=_about(item.state),
            )
            return False
        if workflow is None:
            log.error(
                "saga %s: workflow %s v%d is not in the store; leaving the saga",
                saga_id,
                item.state.workflow_name,
                item.state.workflow_version,
                extra=_about(item.state),
            )
            return True
        run = _Run(item, workflow, self._tracing.run(item.state))
        with self._runs_lock:
            self._runs[saga_id] = run
            metrics.IN_FLIGHT.set(len(self._runs))
        self._advance(
            run,
            Resume(
                at=self._clock(),
                cancel_requested=item.cancel_requested,
                lease_expired=item.lease_expired,
                pause_requested=item.pause_requested,
            ),
        )
        return True

    # ---------------------------------------------------------------- threads

    def _supervise(self, name: str, loop: Callable[[], None]) -> None:
        """Run `loop` until the executor stops; restart it, with a growing pause, when it dies."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                loop()
                return
            except Exception as exc:
                self._down[name] = f"{type(exc).__name__}: {exc}"
                metrics.EXECUTOR_HEALTHY.set(0)
                metrics.LOOP_RESTARTS.labels(name).inc()
                log.exception("executor %s loop died; restarting it in %.1fs", name, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _beat(self, name: str) -> None:
        """A loop is running again after a restart."""
        if name in self._down:
            self._down.pop(name, None)
            if not self._down:
                metrics.EXECUTOR_HEALTHY.set(1)

    def _claim_loop(self) -> None:
        backoff = 0.1
        last = -_CLAIM_GAP_SECS
        claimed = 0
        while not self._stopping.is_set():
            self._beat("claimer")
            # Woken by every start, claims would come one saga at a time under load: after a
            # claim that found sagas, the next waits out the gap, so the sagas started
            # meanwhile are gathered into one statement (one write transaction). After one
            # that found none the executor is idle: a saga started now is claimed at once.
            gap = last + _CLAIM_GAP_SECS - self._monotonic() if claimed else 0.0
            if gap > 0 and self._stopping.wait(gap):
                return
            last = self._monotonic()
            try:
                claimed, wanted = self.claim_once()
                backoff = 0.1
            except Exception as exc:
                claimed = 0
                log.warning("claim failed (%s); retrying in %.1fs", type(exc).__name__, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if wanted and claimed == wanted:
                continue
            self._wake.wait(self._claim_interval)
            self._wake.clear()

    def _commit_loop(self) -> None:
        backoff = 0.05
        while True:
            self._beat("committer")
            with self._commit_cv:
                while not self._commits and not self._stopping.is_set():
                    self._commit_cv.wait()
                if not self._commits:
                    return
            if self.commit_once() == "unavailable":
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = 0.05

    def _timer_loop(self) -> None:
        while not self._stopping.is_set():
            self._beat("timer")
            with self._timer_cv:
                while not self._timers and not self._stopping.is_set():
                    self._timer_cv.wait()
                if self._stopping.is_set():
                    return
                wait = self._timers[0][0] - self._monotonic()
                if wait > 0:
                    self._timer_cv.wait(wait)
                    continue
            self.fire_due_timers()

    def _renew_loop(self) -> None:
        interval = max(self._lease / 3.0, 0.05)
        while not self._stopping.wait(interval):
            self._beat("renewer")
            try:
                self.renew_once()
            except Exception as exc:
                log.warning("lease renewal failed (%s)", type(exc).__name__)


__all__ = ["Executor", "WorkflowCatalog", "utc_now"]
