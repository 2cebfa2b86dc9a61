"""The saga store interface: one small contract that the memory, SQLite and PostgreSQL stores
all keep (and one shared test suite checks: tests/integration/test_store_contract.py).

A store persists saga states, step logs, workflow definitions (versioned), leases and the
outbox. It never decides anything about a saga: it writes what `saga.decide` committed.

Leases. An executor (`owner`, unique per executor instance) claims sagas; each claim bumps the
saga's `lease_token`. Every write of an executor is fenced by (owner, token): a write from an
executor whose lease was taken over changes nothing and reports `fenced`. A saga may also be
created already leased (`create_saga(..., lease=...)`): the process that accepts a start runs
it itself, with no claim, holding token `START_LEASE_TOKEN`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from attrs import frozen

from saga.events import Commit
from saga.model import OperatorAction, SagaState, SagaStatus, StepLog, Workflow


@frozen
class SagaFilter:
    workflow_name: str | None = None
    status: SagaStatus | None = None
    correlation_id: str | None = None


@frozen
class SagaPage:
    sagas: tuple[SagaState, ...]
    total_count: int
    page: int
    page_size: int

    @property
    def has_next(self) -> bool:
        return self.page * self.page_size < self.total_count


class StoreRefused(Exception):
    """The store is up and refused to keep this data as given (a value it cannot hold, a broken
    constraint). Any other exception from a store means it could not be reached or answer."""


class UnknownWorkflow(LookupError):
    """`create_saga(..., latest_version=True)` for a workflow name that has no version."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@frozen
class StartLease:
    """Create a saga already leased to `owner` for `lease_secs` (see `Store.create_saga`)."""

    owner: str
    lease_secs: float


#: The token of the lease a saga is created with: the first one (every claim bumps it).
START_LEASE_TOKEN = 1

#: What `Store.wakeups` returns: call it to stop listening.
StopListening = Callable[[], None]


def refusal_reason(exc: BaseException) -> str:
    """A one-line, printable, short text for a store's refusal (it may quote the bad value)."""
    first = (str(exc).splitlines() or [""])[0]
    text = "".join(
        ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF else "?" for ch in first
    )
    return f"{type(exc).__name__}: {text[:200]}".rstrip(": ")


@frozen
class Claimed:
    """A saga an executor now holds: its committed state (always idle), the fencing token,
    the stored cancel flag, whether another executor held it before (a take-over), and whether
    the lease it held was never given back (`lease_expired`: that executor died or lost the
    lease with the saga in hand, maybe mid-call; the same executor's own expired lease counts)."""

    state: SagaState
    lease_token: int
    cancel_requested: bool
    taken_over: bool
    lease_expired: bool = False
    pause_requested: bool = False


@frozen
class RequestOutcome:
    """The answer to a cancel or pause request: `accepted` when the flag is set and the saga was
    in a status that takes it when it was set (so the saga will act on it); else `state` says
    why not."""

    state: SagaState
    accepted: bool


@frozen
class CommitRequest:
    """One saga's commit, fenced by the lease it was made under."""

    commit: Commit
    lease_token: int


@frozen
class CommitResult:
    """`fenced` is true when the lease was lost and nothing was written.
    `cancel_requested` is the saga's cancel flag as stored after the write.
    `cancel_first` (`pause_first`) is true when a commit made `unless_cancel_requested`
    (`unless_pause_requested`) found that flag set and wrote nothing (the lease is still held).
    A commit into a status of `UNLEASED_STATUSES` gives the lease back; one into PAUSED also
    clears the pause flag (the pause took effect)."""

    saga_id: str
    fenced: bool
    cancel_requested: bool
    cancel_first: bool = False
    pause_requested: bool = False
    pause_first: bool = False


@frozen
class SagaStats:
    """How many sagas are in each status, and how many started and ended in each minute since
    a given time (minutes with none are absent)."""

    counts: Mapping[SagaStatus, int]
    started: Mapping[datetime, int]
    ended: Mapping[datetime, int]


@frozen
class OutboxRow:
    seq: int
    event_id: str
    saga_id: str
    event_type: str
    body: dict[str, Any]


class Store(abc.ABC):
    """What the engine needs from a saga store."""

    # -------------------------------------------------------------- workflows

    @abc.abstractmethod
    def register_workflow(self, workflow: Workflow) -> Workflow:
        """Store a new version of `workflow.name` (1 for a new name, else latest + 1) and
        return the workflow with that version set. Safe under concurrent registration."""

    @abc.abstractmethod
    def get_workflow(self, name: str, version: int | None = None) -> Workflow | None:
        """The given version, or the latest one when `version` is None; None if absent."""

    @abc.abstractmethod
    def list_workflows(self) -> list[Workflow]:
        """The latest version of every workflow, ordered by name."""

    # -------------------------------------------------------------- sagas (API side)

    @abc.abstractmethod
    def create_saga(
        self,
        state: SagaState,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        latest_version: bool = False,
        lease: StartLease | None = None,
    ) -> tuple[SagaState, str | None, bool]:
        """Insert a new STARTED saga. With an idempotency key that already exists, insert
        nothing and return the existing saga. Returns (saga, stored request hash, created).

        With `latest_version`, the saga is written at the latest registered version of
        `state.workflow_name`, read in the same statement as the insert (one round trip for a
        start), whatever `state.workflow_version` says; `UnknownWorkflow` when there is none.
        Every executor listening through `wakeups` is told a saga was created, unless it was
        created with a `lease`: then it is held by `lease.owner` with token `START_LEASE_TOKEN`
        from the insert on (nobody else claims it before the lease expires, as if claimed),
        and nobody is told."""

    @abc.abstractmethod
    def get_saga(self, saga_id: str, *, with_steps: bool = False) -> SagaState | None:
        """The saga as last committed, or None; with `with_steps`, `steps` rebuilt from its logs
        (what an operator action decides on)."""

    def saga_detail(
        self, saga_id: str
    ) -> tuple[SagaState, list[StepLog], list[OperatorAction]] | None:
        """The saga, its step logs (as `get_step_logs`) and its operator actions (as
        `operator_actions`), or None. A store may read them in one round trip."""
        state = self.get_saga(saga_id)
        if state is None:
            return None
        return state, self.get_step_logs(saga_id), self.operator_actions(saga_id)

    @abc.abstractmethod
    def get_step_logs(self, saga_id: str) -> list[StepLog]:
        """The saga's step logs in time order (completion time, then insertion)."""

    @abc.abstractmethod
    def list_sagas(self, filters: SagaFilter, page: int, page_size: int) -> SagaPage:
        """One page of sagas matching every given filter, newest first (created_at, then id)."""

    @abc.abstractmethod
    def stats(self, since: datetime) -> SagaStats:
        """Counts by status (every status present, 0 for none), and sagas started (by
        `created_at`) and ended (terminal, by `updated_at`) per UTC minute from `since` on.
        Reads indexes only: cheap at a million sagas."""

    @abc.abstractmethod
    def request_cancel(
        self, saga_id: str, *, by: str | None = None, at: datetime | None = None
    ) -> RequestOutcome | None:
        """Set the cancel flag of a saga in `CANCELLABLE_STATUSES`, deciding on the row as it
        is when the flag is written (not on an older snapshot), and, when accepted with `at`,
        record the operator action. None for an unknown saga."""

    @abc.abstractmethod
    def request_pause(self, saga_id: str, *, by: str | None, at: datetime) -> RequestOutcome | None:
        """The same for the pause flag, on a saga in `PAUSABLE_STATUSES` (SPEC §11)."""

    @abc.abstractmethod
    def commit_operator(
        self, commit: Commit, expected_resumes: int, action: OperatorAction
    ) -> bool:
        """Write an operator's decision on a PAUSED saga (its state, payload included, logs and
        events) with the action's audit row, in one transaction, only if the saga is still
        PAUSED with `expected_resumes` (else nothing is written and False is returned)."""

    @abc.abstractmethod
    def operator_actions(self, saga_id: str) -> list[OperatorAction]:
        """The saga's operator actions, oldest first."""

    @abc.abstractmethod
    def paused_by_workflow(self) -> dict[str, int]:
        """How many sagas are PAUSED, per workflow name (workflows with none are absent)."""

    @abc.abstractmethod
    def is_cancel_requested(self, saga_id: str) -> bool:
        """The stored cancel flag (False for an unknown saga)."""

    # -------------------------------------------------------------- execution (executor side)

    @abc.abstractmethod
    def claim(self, owner: str, limit: int, lease_secs: float) -> list[Claimed]:
        """Take a lease on up to `limit` active sagas whose lease is free or expired, oldest
        first. Two concurrent callers never get the same saga."""

    @abc.abstractmethod
    def renew(self, owner: str, leases: dict[str, int], lease_secs: float) -> set[str]:
        """Extend the leases still held (saga id -> token); return the ids still held."""

    @abc.abstractmethod
    def release(self, owner: str, leases: dict[str, int]) -> None:
        """Give up these leases (shutdown): the sagas become claimable at once."""

    @abc.abstractmethod
    def commit(
        self, owner: str, requests: Sequence[CommitRequest], lease_secs: float
    ) -> list[CommitResult]:
        """Write several sagas' commits in ONE transaction, each fenced by its lease: state,
        step logs and (when the outbox is on) event rows together. A fenced commit writes
        nothing for that saga; the others still commit. A committed non-terminal saga's lease
        is extended; a terminal one's lease is released. Results are in request order.
        Step log and event ids already stored are skipped (a replayed commit writes nothing
        twice). Raises `StoreRefused` when the data cannot be kept (nothing is written)."""

    # -------------------------------------------------------------- outbox

    @abc.abstractmethod
    def outbox_enabled(self) -> bool:
        """Whether commits write event rows (only when Kafka is configured)."""

    @abc.abstractmethod
    def claim_outbox(self, owner: str, limit: int, lease_secs: float) -> list[OutboxRow]:
        """Up to `limit` unpublished rows, oldest first, taken for `lease_secs` so another relay
        skips them; per saga only its oldest unpublished rows, so order per saga holds."""

    @abc.abstractmethod
    def mark_published(self, seqs: Sequence[int]) -> None:
        """Mark these rows as acknowledged by the broker."""

    @abc.abstractmethod
    def outbox_stats(self) -> tuple[int, float | None]:
        """(unpublished rows, age in seconds of the oldest unpublished row or None)."""

    @abc.abstractmethod
    def prune_outbox(self, older_than_secs: float) -> int:
        """Delete published rows older than this; return how many."""

    # -------------------------------------------------------------- lifecycle

    def wakeups(self, wake: Callable[[], None]) -> StopListening:
        """Call `wake` soon after any process commits a saga an executor should take now (one
        just started, resumed, or cancelled while paused), so it is claimed without waiting for
        the next poll. Best effort: a lost wake-up costs one claim interval, never a saga.
        Returns the function that stops listening. The default listens to nothing."""
        del wake
        return _no_op

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot answer."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    # -------------------------------------------------------------- retention (SPEC §13)

    @abc.abstractmethod
    def retention_turn(self) -> AbstractContextManager[DeleteEnded | None]:
        """This process's turn at deleting ended sagas, for the length of the block: a
        `DeleteEnded` while no other process (or store instance) holds the turn, else None
        (then do nothing now). One process at a time deletes, so the work never doubles up."""


MAX_RETENTION_BATCH = 1000
# A saga's outbox rows are written with its commits, so none is written much after its last
# `updated_at` (the executor's clock; its commit may wait a little in the queue). The SQL stores
# look for the published rows of deleted sagas among the rows written up to this long after
# the cut-off: a range of the outbox's primary key, not a scan of the whole outbox.
RETENTION_EVENTS_MARGIN_SECS = 3600.0


class DeleteEnded(Protocol):
    """One batch of retention, in one short transaction (SPEC §13)."""

    def __call__(self, ended_before: datetime, limit: int) -> int:
        """Delete up to `limit` (at most `MAX_RETENTION_BATCH`) terminal sagas whose
        `updated_at` is before `ended_before`, oldest first, with everything that belongs to
        them: step logs, operator actions, published outbox rows, the idempotency key (a column
        of the saga). A saga with an event not yet published is skipped until it is (events
        are never lost); a saga that is not terminal is never touched. Returns how many
        sagas were deleted (fewer than `limit`: none are left for now)."""


def _no_op() -> None:
    return None
