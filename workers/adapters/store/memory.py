"""An in-memory store for tests: the reference behaviour of `workers.adapters.store.base.Store`,
with a lock instead of transactions and a clock of its own instead of the database clock
(`time.monotonic` unless one is given, so a test can move time to expire leases)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from attrs import evolve

from saga.events import Commit
from saga.model import (
    ACTIVE_STATUSES,
    CANCELLABLE_STATUSES,
    PAUSABLE_STATUSES,
    UNLEASED_STATUSES,
    OperatorAction,
    SagaState,
    SagaStatus,
    StepLog,
    Workflow,
)
from workers.adapters.store.base import (
    MAX_RETENTION_BATCH,
    START_LEASE_TOKEN,
    Claimed,
    CommitRequest,
    CommitResult,
    DeleteEnded,
    OutboxRow,
    RequestOutcome,
    SagaFilter,
    SagaPage,
    SagaStats,
    StartLease,
    StopListening,
    Store,
    UnknownWorkflow,
)
from workers.adapters.store.events import event_body


def _minute(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


class _Row:
    __slots__ = (
        "state",
        "cancel",
        "pause",
        "owner",
        "token",
        "expires",
        "key",
        "hash",
        "order",
        "actions",
    )

    def __init__(
        self, state: SagaState, key: str | None, request_hash: str | None, order: int
    ) -> None:
        self.state = state
        self.cancel = False
        self.pause = False
        self.actions: list[OperatorAction] = []
        self.owner: str | None = None
        self.token = 0
        self.expires = 0.0
        self.key = key
        self.hash = request_hash
        self.order = order


class _Outbox:
    __slots__ = ("row", "created", "published", "claimed_by", "claim_expires")

    def __init__(self, row: OutboxRow, created: float) -> None:
        self.row = row
        self.created = created
        self.published: float | None = None
        self.claimed_by: str | None = None
        self.claim_expires = 0.0


class MemoryStore(Store):
    def __init__(self, outbox: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self._outbox_on = outbox
        self._clock = clock
        self._log_ids: set[str] = set()
        self._event_ids: set[str] = set()
        self._lock = threading.RLock()
        self._workflows: dict[str, list[Workflow]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._sagas: dict[str, _Row] = {}
        self._keys: dict[str, str] = {}
        self._logs: dict[str, list[StepLog]] = {}
        self._outbox: list[_Outbox] = []
        self._seq = 0
        self._retention_turn = threading.Lock()

    # ---------------------------------------------------------------- workflows

    def register_workflow(self, workflow: Workflow) -> Workflow:
        with self._lock:
            versions = self._workflows.setdefault(workflow.name, [])
            stored = evolve(workflow, version=len(versions) + 1)
            versions.append(stored)
            return stored

    def get_workflow(self, name: str, version: int | None = None) -> Workflow | None:
        with self._lock:
            versions = self._workflows.get(name)
            if not versions:
                return None
            if version is None:
                return versions[-1]
            return versions[version - 1] if 1 <= version <= len(versions) else None

    def list_workflows(self) -> list[Workflow]:
        with self._lock:
            return [self._workflows[n][-1] for n in sorted(self._workflows)]

    # ---------------------------------------------------------------- sagas

    def create_saga(
        self,
        state: SagaState,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        latest_version: bool = False,
        lease: StartLease | None = None,
    ) -> tuple[SagaState, str | None, bool]:
        with self._lock:
            if idempotency_key is not None and idempotency_key in self._keys:
                row = self._sagas[self._keys[idempotency_key]]
                return row.state, row.hash, False
            if latest_version:
                versions = self._workflows.get(state.workflow_name)
                if not versions:
                    raise UnknownWorkflow(state.workflow_name)
                state = evolve(state, workflow_version=versions[-1].version)
            self._seq += 1
            row = _Row(state, idempotency_key, request_hash, self._seq)
            if lease is not None:
                row.owner, row.token = lease.owner, START_LEASE_TOKEN
                row.expires = self._clock() + lease.lease_secs
            self._sagas[state.saga_id] = row
            if idempotency_key is not None:
                self._keys[idempotency_key] = state.saga_id
            self._logs[state.saga_id] = []
        if lease is None:
            self._tell()
        return state, request_hash, True

    def get_saga(self, saga_id: str, *, with_steps: bool = False) -> SagaState | None:
        with self._lock:
            row = self._sagas.get(saga_id)
            return row.state if row else None  # a committed state keeps its `steps` here

    def get_step_logs(self, saga_id: str) -> list[StepLog]:
        with self._lock:
            return list(self._logs.get(saga_id, ()))

    def list_sagas(self, filters: SagaFilter, page: int, page_size: int) -> SagaPage:
        with self._lock:
            rows = [
                r.state
                for r in self._sagas.values()
                if (filters.workflow_name is None or r.state.workflow_name == filters.workflow_name)
                and (filters.status is None or r.state.status is filters.status)
                and (
                    filters.correlation_id is None
                    or r.state.correlation_id == filters.correlation_id
                )
            ]
        start = (page - 1) * page_size
        if start >= len(rows):  # past the end: nothing to sort
            return SagaPage((), len(rows), page, page_size)
        rows.sort(key=lambda s: (s.created_at, s.saga_id), reverse=True)
        return SagaPage(tuple(rows[start : start + page_size]), len(rows), page, page_size)

    def stats(self, since: datetime) -> SagaStats:
        counts = dict.fromkeys(SagaStatus, 0)
        started: Counter[datetime] = Counter()
        ended: Counter[datetime] = Counter()
        with self._lock:
            for row in self._sagas.values():
                state = row.state
                counts[state.status] += 1
                if state.created_at >= since:
                    started[_minute(state.created_at)] += 1
                if state.terminal and state.updated_at >= since:
                    ended[_minute(state.updated_at)] += 1
        return SagaStats(counts, dict(started), dict(ended))

    def request_cancel(
        self, saga_id: str, *, by: str | None = None, at: datetime | None = None
    ) -> RequestOutcome | None:
        with self._lock:
            row = self._sagas.get(saga_id)
            if row is None:
                return None
            accepted = row.state.status in CANCELLABLE_STATUSES
            if accepted:
                row.cancel = True
                if at is not None:
                    row.actions.append(OperatorAction("cancel", by, at))
            return RequestOutcome(row.state, accepted)

    def request_pause(self, saga_id: str, *, by: str | None, at: datetime) -> RequestOutcome | None:
        with self._lock:
            row = self._sagas.get(saga_id)
            if row is None:
                return None
            accepted = row.state.status in PAUSABLE_STATUSES
            if accepted:
                row.pause = True
                row.actions.append(OperatorAction("pause", by, at))
            return RequestOutcome(row.state, accepted)

    def commit_operator(
        self, commit: Commit, expected_resumes: int, action: OperatorAction
    ) -> bool:
        state = commit.state
        with self._lock:
            row = self._sagas.get(state.saga_id)
            if (
                row is None
                or row.state.status is not SagaStatus.PAUSED
                or row.state.resumes != expected_resumes
            ):
                return False
            row.state = state
            row.owner, row.expires = None, 0.0
            row.actions.append(action)
            self._keep_logs_and_events(commit)
        if state.status in ACTIVE_STATUSES:
            self._tell()
        return True

    def paused_by_workflow(self) -> dict[str, int]:
        with self._lock:
            found = Counter(
                r.state.workflow_name
                for r in self._sagas.values()
                if r.state.status is SagaStatus.PAUSED
            )
        return dict(found)

    def operator_actions(self, saga_id: str) -> list[OperatorAction]:
        with self._lock:
            row = self._sagas.get(saga_id)
            return list(row.actions) if row else []

    def is_cancel_requested(self, saga_id: str) -> bool:
        with self._lock:
            row = self._sagas.get(saga_id)
            return bool(row and row.cancel)

    # ---------------------------------------------------------------- execution

    def claim(self, owner: str, limit: int, lease_secs: float) -> list[Claimed]:
        now = self._clock()
        out: list[Claimed] = []
        with self._lock:
            candidates = sorted(
                (
                    r
                    for r in self._sagas.values()
                    if r.state.status in ACTIVE_STATUSES and r.expires < now
                ),
                key=lambda r: (r.state.created_at, r.order),
            )
            for row in candidates[:limit]:
                taken_over = row.owner is not None and row.owner != owner
                expired = row.owner is not None
                row.owner, row.token, row.expires = owner, row.token + 1, now + lease_secs
                out.append(
                    Claimed(row.state, row.token, row.cancel, taken_over, expired, row.pause)
                )
        return out

    def renew(self, owner: str, leases: dict[str, int], lease_secs: float) -> set[str]:
        now = self._clock()
        held: set[str] = set()
        with self._lock:
            for saga_id, token in leases.items():
                row = self._sagas.get(saga_id)
                if (
                    row
                    and row.owner == owner
                    and row.token == token
                    and row.state.status in ACTIVE_STATUSES
                ):
                    row.expires = now + lease_secs
                    held.add(saga_id)
        return held

    def release(self, owner: str, leases: dict[str, int]) -> None:
        with self._lock:
            for saga_id, token in leases.items():
                row = self._sagas.get(saga_id)
                if row and row.owner == owner and row.token == token:
                    row.owner, row.expires = None, 0.0

    def commit(
        self, owner: str, requests: Sequence[CommitRequest], lease_secs: float
    ) -> list[CommitResult]:
        now = self._clock()
        results: list[CommitResult] = []
        with self._lock:
            for request in requests:
                state = request.commit.state
                row = self._sagas.get(state.saga_id)
                if row is None or row.owner != owner or row.token != request.lease_token:
                    results.append(CommitResult(state.saga_id, True, bool(row and row.cancel)))
                    continue
                if request.commit.unless_cancel_requested and row.cancel:
                    results.append(CommitResult(state.saga_id, False, True, True, row.pause, False))
                    continue
                if request.commit.unless_pause_requested and row.pause:
                    results.append(
                        CommitResult(state.saga_id, False, row.cancel, False, True, True)
                    )
                    continue
                row.state = state
                if state.status in UNLEASED_STATUSES:
                    row.owner, row.expires = None, 0.0
                else:
                    row.expires = now + lease_secs
                if state.status is SagaStatus.PAUSED:
                    row.pause = False
                self._keep_logs_and_events(request.commit)
                results.append(
                    CommitResult(state.saga_id, False, row.cancel, pause_requested=row.pause)
                )
        return results

    def _keep_logs_and_events(self, commit: Commit) -> None:
        """Append a commit's step logs and (outbox on) events, skipping ids already kept."""
        state = commit.state
        for step_log in commit.step_logs:
            if step_log.id not in self._log_ids:
                self._log_ids.add(step_log.id)
                self._logs[state.saga_id].append(step_log)
        if self._outbox_on:
            for event in commit.events:
                if event.event_id in self._event_ids:
                    continue
                self._event_ids.add(event.event_id)
                self._seq += 1
                self._outbox.append(
                    _Outbox(
                        OutboxRow(
                            self._seq,
                            event.event_id,
                            event.saga_id,
                            event.event_type.value,
                            event_body(event),
                        ),
                        time.time(),
                    )
                )

    # ---------------------------------------------------------------- outbox

    def outbox_enabled(self) -> bool:
        return self._outbox_on

    def claim_outbox(self, owner: str, limit: int, lease_secs: float) -> list[OutboxRow]:
        now = self._clock()
        out: list[OutboxRow] = []
        blocked: set[str] = set()
        with self._lock:
            for item in self._outbox:
                if item.published is not None:
                    continue
                saga_id = item.row.saga_id
                claimed_by_other = (
                    item.claimed_by not in (None, owner) and item.claim_expires >= now
                )
                if saga_id in blocked or claimed_by_other:
                    blocked.add(saga_id)
                    continue
                if len(out) >= limit:
                    break
                item.claimed_by, item.claim_expires = owner, now + lease_secs
                out.append(item.row)
        return out

    def mark_published(self, seqs: Sequence[int]) -> None:
        wanted = set(seqs)
        now = time.time()
        with self._lock:
            for item in self._outbox:
                if item.row.seq in wanted:
                    item.published = now

    def outbox_stats(self) -> tuple[int, float | None]:
        now = time.time()
        with self._lock:
            waiting = [i.created for i in self._outbox if i.published is None]
        return len(waiting), (now - min(waiting)) if waiting else None

    def prune_outbox(self, older_than_secs: float) -> int:
        cutoff = time.time() - older_than_secs
        with self._lock:
            keep = [i for i in self._outbox if i.published is None or i.published > cutoff]
            pruned = len(self._outbox) - len(keep)
            self._outbox = keep
        return pruned

    # ---------------------------------------------------------------- lifecycle

    def wakeups(self, wake: Callable[[], None]) -> StopListening:
        with self._lock:
            self._listeners.append(wake)

        def stop() -> None:
            with self._lock:
                if wake in self._listeners:
                    self._listeners.remove(wake)

        return stop

    def _tell(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for wake in listeners:
            wake()

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    # ---------------------------------------------------------------- retention

    @contextmanager
    def retention_turn(self) -> Iterator[DeleteEnded | None]:
        if not self._retention_turn.acquire(blocking=False):
            yield None
            return
        try:
            yield self._delete_ended
        finally:
            self._retention_turn.release()

    def _delete_ended(self, ended_before: datetime, limit: int) -> int:
        if not 0 < limit <= MAX_RETENTION_BATCH:
            raise ValueError(f"limit must be 1..{MAX_RETENTION_BATCH}, not {limit}")
        with self._lock:
            waiting = {i.row.saga_id for i in self._outbox if i.published is None}
            ended = sorted(
                (
                    r
                    for r in self._sagas.values()
                    if r.state.terminal
                    and r.state.updated_at < ended_before
                    and r.state.saga_id not in waiting
                ),
                key=lambda r: r.state.updated_at,
            )[:limit]
            gone = {r.state.saga_id for r in ended}
            for row in ended:
                del self._sagas[row.state.saga_id]
                if row.key is not None:
                    self._keys.pop(row.key, None)
                self._log_ids.difference_update(g.id for g in self._logs.pop(row.state.saga_id, ()))
            kept = [i for i in self._outbox if i.row.saga_id not in gone]
            self._event_ids.difference_update(
                i.row.event_id for i in self._outbox if i.row.saga_id in gone
            )
            self._outbox = kept
        return len(gone)


__all__ = ["MemoryStore"]
