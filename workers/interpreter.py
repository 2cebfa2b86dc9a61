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

from saga.decide import ENDED, IDLE, decide, phase
from saga.events import (
    CallParticipant,
    Commit,
    Effect,
    Event,
    Resume,
    RetryDue,
    ScheduleRetry,
    StepFailed,
    StepSucceeded,
)
from saga.model import SagaState, StepStatus, Workflow
from workers import metrics
from workers.participant import (
    INVALID_METHOD,
    SERVICE_NOT_REGISTERED,
    CallResult,
    ParticipantCaller,
)
from workers.store.base import Claimed, CommitRequest, CommitResult, Store

log = logging.getLogger("saga.executor")

_PERMANENT_CODES = frozenset({SERVICE_NOT_REGISTERED, INVALID_METHOD})


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    """One saga this executor holds."""

    __slots__ = ("state", "workflow", "token", "body", "cancel", "call_started")

    def __init__(self, claimed: Claimed, workflow: Workflow) -> None:
        self.state: SagaState = claimed.state
        self.workflow = workflow
        self.token = claimed.lease_token
        self.cancel = claimed.cancel_requested
        self.body = json.dumps(dict(claimed.state.payload), separators=(",", ":")).encode()
        self.call_started = 0.0


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
        response_limit_bytes: int = 1024 * 1024,
        clock: Callable[[], datetime] = utc_now,
        jitter: Callable[[], float] = lambda: random.uniform(-1.0, 1.0),
    ) -> None:
        self.owner = owner or f"executor-{uuid.uuid4()}"
        self._store = store
        self._catalog = catalog
        self._caller = caller
        self._max = max_concurrent
        self._lease = lease_secs
        self._claim_interval = claim_interval_secs
        self._batch = commit_batch
        self._response_limit = response_limit_bytes
        self._clock = clock
        self._jitter = jitter

        self._runs: dict[str, _Run] = {}
        self._runs_lock = threading.Lock()
        self._commits: deque[tuple[_Run, Commit, tuple[Effect, ...], int]] = deque()
        self._commit_cv = threading.Condition()
        self._timers: list[tuple[float, int, _Run]] = []
        self._timer_cv = threading.Condition()
        self._timer_seq = itertools.count()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._draining = False
        self._threads: list[threading.Thread] = []
        self._first_claim = True
        self.recovered = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for name, target in (
            ("claimer", self._claim_loop),
            ("committer", self._commit_loop),
            ("timer", self._timer_loop),
            ("renewer", self._renew_loop),
        ):
            thread = threading.Thread(target=target, name=f"saga-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Claim now rather than at the next poll (a saga was just started here)."""
        self._wake.set()

    def held(self) -> int:
        return len(self._runs)

    def stop(self, grace_secs: float = 10.0) -> None:
        """Stop claiming, let calls in flight finish and commit (up to `grace_secs`), then give
        back the leases of every saga still held so another executor takes them at once."""
        self._draining = True
        self._wake.set()
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

    # ---------------------------------------------------------------- driving one saga

    def _advance(self, run: _Run, event: Event) -> None:
        try:
            decision = decide(run.state, run.workflow, event)
        except Exception:
            log.exception("saga %s: decision failed; giving the saga back", run.state.saga_id)
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
                    due = time.monotonic() + effect.delay_ms / 1000.0
                    heapq.heappush(self._timers, (due, next(self._timer_seq), run))
                    self._timer_cv.notify()

    def _call(self, run: _Run, call: CallParticipant) -> None:
        if call.attempt == 1:
            run.call_started = time.monotonic()
        metrics.STEP_ATTEMPTS.labels(call.step_name, call.action.value).inc()
        self._caller.call_async(
            call.service,
            call.method,
            run.body,
            call.timeout_secs,
            call.metadata,
            lambda result: self._on_result(run, call, result),
        )

    def _on_result(self, run: _Run, call: CallParticipant, result: CallResult) -> None:
        try:
            now = self._clock()
            event: Event
            if result.ok:
                size = result.size
                if size > self._response_limit:
                    event = StepFailed(
                        at=now,
                        code="RESOURCE_EXHAUSTED",
                        message=f"participant reply is {size} bytes, over the {self._response_limit}-byte limit",
                        permanent=True,
                    )
                else:
                    event = StepSucceeded(at=now, response=result.response)
            else:
                # A reply over the receive cap is cut off by the transport: it would be just as
                # large on a retry, so it fails at once (a participant's own RESOURCE_EXHAUSTED,
                # such as a rate limit, is still retried).
                too_large = (
                    result.code == "RESOURCE_EXHAUSTED" and "larger than max" in result.message
                )
                event = StepFailed(
                    at=now,
                    code=result.code or "UNKNOWN",
                    message=result.message,
                    timed_out=result.code == "DEADLINE_EXCEEDED",
                    permanent=result.code in _PERMANENT_CODES or too_large,
                    jitter=self._jitter(),
                )
            self._advance(run, event)
        except Exception:
            log.exception("saga %s: handling a participant reply failed", run.state.saga_id)
            self._forget(run, release=True)

    def _committed(
        self, item: tuple[_Run, Commit, tuple[Effect, ...], int], result: CommitResult
    ) -> None:
        run, commit, effects, next_index = item
        if result.fenced:
            metrics.LEASES_LOST.inc()
            log.warning(
                "saga %s: lease lost to another executor; dropping it here", run.state.saga_id
            )
            self._forget(run, release=False)
            return
        run.cancel = result.cancel_requested
        for step_log in commit.step_logs:
            if step_log.status is not StepStatus.SKIPPED:
                metrics.STEP_DURATION.labels(
                    step_log.step_name, step_log.action.value, step_log.status.value
                ).observe(
                    max(0.0, time.monotonic() - run.call_started) if run.call_started else 0.0
                )
        run.call_started = 0.0 if commit.step_logs else run.call_started
        if next_index < len(effects):
            self._apply(run, effects, next_index)
            return
        current = phase(run.state)
        if current == ENDED:
            metrics.SAGAS_ENDED.labels(run.state.workflow_name, run.state.status.value).inc()
            self._forget(run, release=False)
        elif current == IDLE:
            if self._draining:
                self._forget(run, release=True)
            else:
                self._advance(
                    run, Resume(at=self._clock(), cancel_requested=result.cancel_requested)
                )

    def _forget(self, run: _Run, *, release: bool) -> None:
        saga_id = run.state.saga_id
        with self._runs_lock:
            if self._runs.get(saga_id) is run:
                del self._runs[saga_id]
            metrics.IN_FLIGHT.set(len(self._runs))
        if release:
            try:
                self._store.release(self.owner, {saga_id: run.token})
            except Exception:
                log.warning("saga %s: could not release its lease; it expires by itself", saga_id)
        if not self._draining:
            self._wake.set()

    # ---------------------------------------------------------------- threads

    def _claim_loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            claimed_all = False
            if not self._draining:
                free = self._max - len(self._runs)
                if free > 0:
                    want = min(free, 256)
                    try:
                        claimed = self._store.claim(self.owner, want, self._lease)
                        backoff = 0.1
                    except Exception as exc:
                        log.warning(
                            "claim failed (%s); retrying in %.1fs", type(exc).__name__, backoff
                        )
                        self._stopping.wait(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    self._adopt(claimed)
                    claimed_all = len(claimed) == want
            if claimed_all:
                continue
            self._wake.wait(self._claim_interval)
            self._wake.clear()

    def _adopt(self, claimed: Sequence[Claimed]) -> None:
        recovered = [c for c in claimed if c.taken_over or c.state.status.value != "STARTED"]
        takeovers = sum(1 for c in claimed if c.taken_over)
        if recovered:
            self.recovered += len(recovered)
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
        for item in claimed:
            workflow = self._catalog.get(item.state.workflow_name, item.state.workflow_version)
            if workflow is None:
                log.error(
                    "saga %s: workflow %s v%d is not in the store; leaving the saga",
                    item.state.saga_id,
                    item.state.workflow_name,
                    item.state.workflow_version,
                )
                continue
            run = _Run(item, workflow)
            with self._runs_lock:
                self._runs[item.state.saga_id] = run
                metrics.IN_FLIGHT.set(len(self._runs))
            self._advance(run, Resume(at=self._clock(), cancel_requested=item.cancel_requested))

    def _commit_loop(self) -> None:
        backoff = 0.05
        while True:
            with self._commit_cv:
                while not self._commits and not self._stopping.is_set():
                    self._commit_cv.wait()
                if not self._commits:
                    return
                batch = [
                    self._commits.popleft() for _ in range(min(self._batch, len(self._commits)))
                ]
            requests = [CommitRequest(commit, run.token) for run, commit, _, _ in batch]
            try:
                results = self._store.commit(self.owner, requests, self._lease)
                backoff = 0.05
            except Exception as exc:
                if len(batch) > 1 and self._commit_one_by_one(batch):
                    continue
                log.warning(
                    "commit of %d sagas failed (%s: %s); retrying in %.2fs",
                    len(batch),
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                    backoff,
                )
                with self._commit_cv:
                    self._commits.extendleft(reversed(batch))
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, 2.0)
                continue
            metrics.COMMIT_BATCH.observe(len(batch))
            for item, result in zip(batch, results, strict=True):
                try:
                    self._committed(item, result)
                except Exception:
                    log.exception("saga %s: after-commit step failed", item[0].state.saga_id)
                    self._forget(item[0], release=True)

    def _commit_one_by_one(self, batch: list[tuple[_Run, Commit, tuple[Effect, ...], int]]) -> bool:
        """After a batch failed: commit its sagas one at a time, so one commit the store
        refuses (bad data) cannot hold every other saga back. Returns False, changing nothing,
        when none goes through (the store is down: the batch is retried as a whole)."""
        outcomes: list[CommitResult | Exception] = []
        for run, commit, _, _ in batch:
            try:
                outcomes.append(
                    self._store.commit(self.owner, [CommitRequest(commit, run.token)], self._lease)[
                        0
                    ]
                )
            except Exception as exc:
                outcomes.append(exc)
        if all(isinstance(o, Exception) for o in outcomes):
            return False
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error(
                    "saga %s: the store refused its commit (%s: %s); dropping it here, its lease "
                    "expires and another attempt starts from the last commit",
                    item[0].state.saga_id,
                    type(outcome).__name__,
                    str(outcome).splitlines()[0] if str(outcome) else "",
                )
                self._forget(item[0], release=False)
                continue
            try:
                self._committed(item, outcome)
            except Exception:
                log.exception("saga %s: after-commit step failed", item[0].state.saga_id)
                self._forget(item[0], release=True)
        return True

    def _timer_loop(self) -> None:
        while not self._stopping.is_set():
            with self._timer_cv:
                while not self._timers and not self._stopping.is_set():
                    self._timer_cv.wait()
                if self._stopping.is_set():
                    return
                due, _, run = self._timers[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._timer_cv.wait(wait)
                    continue
                heapq.heappop(self._timers)
            self._advance(run, RetryDue(at=self._clock()))

    def _renew_loop(self) -> None:
        interval = max(self._lease / 3.0, 0.05)
        while not self._stopping.wait(interval):
            with self._runs_lock:
                leases = {saga_id: run.token for saga_id, run in self._runs.items()}
            if not leases:
                continue
            try:
                held = self._store.renew(self.owner, leases, self._lease)
            except Exception as exc:
                log.warning("lease renewal failed (%s)", type(exc).__name__)
                continue
            with self._runs_lock:
                # A saga that ended while the renewal ran released its lease: not a loss.
                lost = [i for i in leases if i not in held and i in self._runs]
            if lost:
                log.warning(
                    "%d leases no longer held; their next commit will be refused", len(lost)
                )


__all__ = ["Executor", "WorkflowCatalog", "utc_now"]
