"""The saga's data: statuses, workflow definitions, saga state, step logs and published events.

Frozen attrs classes only. No I/O, no clock, no ids made here: every time and id comes in from
outside (see `saga.decide`). Serialisation lives in `saga.codec`, never in these classes.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from attrs import field, frozen


class SagaStatus(enum.StrEnum):
    STARTED = "STARTED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPENSATING = "COMPENSATING"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.CANCELLED})
# The statuses an executor drives (and claims); a PAUSED saga waits for an operator (SPEC §11).
ACTIVE_STATUSES = frozenset({SagaStatus.STARTED, SagaStatus.RUNNING, SagaStatus.COMPENSATING})
# A cancel is taken only before compensation has begun (SPEC §4: else 409); a saga PAUSED in its
# forward phase is cancelled by the operator path (`saga.decide`, `CancelRequested`).
CANCELLABLE_STATUSES = frozenset({SagaStatus.STARTED, SagaStatus.RUNNING})
# A pause request is taken while the saga runs (SPEC §11: else 409).
PAUSABLE_STATUSES = ACTIVE_STATUSES
# Nothing runs in these: a commit into one of them gives the lease back.
UNLEASED_STATUSES = TERMINAL_STATUSES | {SagaStatus.PAUSED}


class Action(enum.StrEnum):
    EXECUTE = "EXECUTE"
    COMPENSATE = "COMPENSATE"


class StepStatus(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    SKIPPED = "SKIPPED"


class Backoff(enum.StrEnum):
    EXPONENTIAL = "exponential"
    FIXED = "fixed"


class EventType(enum.StrEnum):
    SAGA_RUNNING = "SAGA_RUNNING"
    SAGA_COMPLETED = "SAGA_COMPLETED"
    SAGA_COMPENSATING = "SAGA_COMPENSATING"
    SAGA_FAILED = "SAGA_FAILED"
    SAGA_CANCELLED = "SAGA_CANCELLED"
    SAGA_PAUSED = "SAGA_PAUSED"
    SAGA_RESUMED = "SAGA_RESUMED"


class OnFailure(enum.StrEnum):
    """What a forward step that failed for good does (SPEC §11)."""

    COMPENSATE = "compensate"
    PAUSE = "pause"


class OnCompensationFailure(enum.StrEnum):
    """What a compensation that failed for good does (SPEC §11)."""

    CONTINUE = "continue"
    PAUSE = "pause"


class ResumeAction(enum.StrEnum):
    """How an operator resumes a PAUSED saga (SPEC §11)."""

    CONTINUE = "continue"
    RETRY = "retry"
    SKIP = "skip"
    COMPENSATE = "compensate"


# The gRPC status code names a retry policy may list.
GRPC_CODE_NAMES = frozenset(
    {
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)

# Codes the participant caller reports itself: the remote never answered with them.
SERVICE_NOT_REGISTERED = "SERVICE_NOT_REGISTERED"  # the step's service is not in `services`
INVALID_METHOD = "INVALID_METHOD"  # the method name cannot be a gRPC path
INVALID_RESPONSE = "INVALID_RESPONSE"  # a reply came but cannot be used (too large, not JSON)
CALLER_CODES = frozenset({SERVICE_NOT_REGISTERED, INVALID_METHOD, INVALID_RESPONSE})
# The core's own: a step's `input`, `when` or `compensate_input` could not give a request
# (SPEC §10); the step was never called, and no retry can mend it.
INVALID_INPUT = "INVALID_INPUT"

# Failures no retry can mend: the same call would fail the same way (SPEC §3).
PERMANENT_FAILURE_CODES = frozenset({SERVICE_NOT_REGISTERED, INVALID_METHOD, INVALID_RESPONSE})
# Failures after which the participant may still have done the work: a reply came back, only
# unusable (a timed-out attempt is the other case; see `saga.decide`).
OUTCOME_UNKNOWN_CODES = frozenset({INVALID_RESPONSE})

DEFAULT_NON_RETRYABLE_CODES: tuple[str, ...] = (
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "UNIMPLEMENTED",
)


@frozen
class RetryPolicy:
    max_attempts: int = 3
    backoff: Backoff = Backoff.EXPONENTIAL
    initial_interval_ms: int = 1000
    max_interval_ms: int | None = None
    jitter: bool = False
    non_retryable_codes: tuple[str, ...] = DEFAULT_NON_RETRYABLE_CODES


@frozen
class Step:
    name: str
    service: str
    method: str
    compensate: str | None = None
    timeout_secs: float = 30
    retry: RetryPolicy = field(factory=RetryPolicy)
    # SPEC §10, JMESPath source text (compiled when the workflow is parsed): the request, when
    # the step runs at all, and the compensation's request. None: the payload, always, and the
    # forward request.
    input: str | None = None
    when: str | None = None
    compensate_input: str | None = None
    # SPEC §11; None: the workflow's.
    on_failure: OnFailure | None = None
    on_compensation_failure: OnCompensationFailure | None = None


@frozen
class Workflow:
    name: str
    steps: tuple[Step, ...]
    version: int = 1
    on_failure: OnFailure = OnFailure.COMPENSATE
    on_compensation_failure: OnCompensationFailure = OnCompensationFailure.CONTINUE
    deadline_secs: float | None = None

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def pauses_on_failure(self, index: int) -> bool:
        return (self.steps[index].on_failure or self.on_failure) is OnFailure.PAUSE

    def pauses_on_compensation_failure(self, index: int) -> bool:
        chosen = self.steps[index].on_compensation_failure or self.on_compensation_failure
        return chosen is OnCompensationFailure.PAUSE


@frozen
class InFlight:
    """The one participant call a saga is waiting on (never stored: a recovered saga starts
    the step again with a fresh attempt count; the idempotency key makes that safe). `request`
    is what every attempt of it sends, fixed when the execution started."""

    action: Action
    step_index: int
    attempt: int
    started_at: datetime
    waiting_retry: bool = False
    request: Mapping[str, Any] | None = None
    # Whether this execution may already have taken effect (an attempt timed out or got an
    # unusable reply, or an executor that is gone may have called it): only a success settles
    # it. And, while waiting for a retry, what the last attempt failed with.
    in_doubt: bool = False
    last_error: str | None = None


@frozen
class StepResult:
    """A forward step that succeeded: what it was sent and what it answered (SPEC §10)."""

    request: Mapping[str, Any] | None
    response: Mapping[str, Any] | None


@frozen
class Compensation:
    """Why the saga is compensating and what is left to undo, newest first."""

    cancelled: bool
    cause: str | None
    pending: tuple[int, ...]
    failures: tuple[str, ...] = ()


@frozen
class Pause:
    """Why and where a PAUSED saga stopped (SPEC §11). `phase` is `forward` or `compensating`;
    `failed_step` is the step (or compensation) that failed for good, None after a pause
    request; `resume_status` is the status a resume goes back to."""

    phase: str
    resume_status: SagaStatus
    failed_step: int | None = None
    error: str | None = None
    in_doubt: bool = False

    @property
    def forward(self) -> bool:
        return self.phase == "forward"


@frozen
class SagaState:
    saga_id: str
    workflow_name: str
    workflow_version: int
    status: SagaStatus
    current_step: int
    payload: Mapping[str, Any]
    correlation_id: str | None
    initiated_by: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    compensation: Compensation | None = None
    in_flight: InFlight | None = None
    # The steps that succeeded so far, by name: the context of step expressions. Not a stored
    # column: the stores rebuild it from the step logs (`steps_from_logs`) when a saga is claimed,
    # so it takes no part in comparing two states (equal columns are the same saga state).
    steps: Mapping[str, StepResult] = field(factory=dict, eq=False)
    pause: Pause | None = None
    # How many times an operator resumed the saga: each resume starts a new generation of step
    # log and event ids, so a retried step gets a log of its own.
    resumes: int = 0
    # The forward step at `current_step` may have been called by an executor that is gone: an
    # expired lease says so at a claim, and this keeps it across a pause and a resume.
    in_doubt: bool = False
    # The saga's W3C trace context (SPEC §12), written when it is created and never changed:
    # text the tracing adapter made and reads (`workers.adapters.tracing`). The core only
    # carries it from state to state; it never reads it and makes no span.
    trace_context: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@frozen
class StepLog:
    id: str
    saga_id: str
    step_index: int
    step_name: str
    action: Action
    status: StepStatus
    request_payload: Mapping[str, Any] | None
    response_payload: Mapping[str, Any] | None
    error_message: str | None
    started_at: datetime
    completed_at: datetime | None


@frozen
class OperatorAction:
    """One pause, resume or cancel an operator asked for (SPEC §11 audit)."""

    action: str  # "pause" | "resume" | "cancel"
    by: str | None
    at: datetime
    resume_action: ResumeAction | None = None
    payload_replaced: bool = False


@frozen
class SagaEvent:
    """One event to publish (SPEC §6); written to the outbox with the state change."""

    event_id: str
    event_type: EventType
    saga_id: str
    workflow_name: str
    status: SagaStatus
    current_step: int
    correlation_id: str | None
    error_message: str | None
    payload: Mapping[str, Any]
    timestamp: datetime


class WorkflowRef(Protocol):
    """What a new saga needs of its workflow: a `Workflow`, or a name whose version the store
    resolves when it writes the saga."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...


def new_saga(
    *,
    saga_id: str,
    workflow: WorkflowRef,
    payload: Mapping[str, Any],
    correlation_id: str | None,
    initiated_by: str | None,
    at: datetime,
    trace_context: str | None = None,
) -> SagaState:
    """A saga as it is first written: STARTED at step 0."""
    return SagaState(
        saga_id=saga_id,
        workflow_name=workflow.name,
        workflow_version=workflow.version,
        status=SagaStatus.STARTED,
        current_step=0,
        payload=payload,
        correlation_id=correlation_id,
        initiated_by=initiated_by,
        error_message=None,
        created_at=at,
        updated_at=at,
        trace_context=trace_context,
    )


def idempotency_key(saga_id: str, step_index: int, action: Action) -> str:
    """`<saga_id>:<step_index>:<action>`, the same across retries and recoveries (SPEC §3)."""
    return f"{saga_id}:{step_index}:{action.value}"


def _derived_id(saga_id: str, name: str) -> str:
    # A name-based UUID: replaying the same history gives the same ids, so a decision re-made
    # after a crash writes the same step log and event ids (consumers de-duplicate on them).
    return str(uuid.uuid5(uuid.UUID(saga_id), name))


def step_log_id(saga_id: str, step_index: int, action: Action, generation: int = 0) -> str:
    """Each (step, action) is logged at most once per generation (see `SagaState.resumes`), so
    this id is unique; generation 0 keeps the ids sagas had before operators could resume."""
    suffix = f":{generation}" if generation else ""
    return _derived_id(saga_id, f"log:{step_index}:{action.value}{suffix}")


def event_id(saga_id: str, event_type: EventType, generation: int = 0) -> str:
    """Each event type is published at most once per saga and generation, so this id is unique."""
    suffix = f":{generation}" if generation else ""
    return _derived_id(saga_id, f"event:{event_type.value}{suffix}")


def steps_from_logs(logs: Iterable[StepLog]) -> dict[str, StepResult]:
    """`SagaState.steps` from a saga's step logs in time order: the last successful execution
    of each step."""
    done: dict[str, StepResult] = {}
    for log in logs:
        if log.action is Action.EXECUTE and log.status is StepStatus.SUCCESS:
            done[log.step_name] = StepResult(log.request_payload, log.response_payload)
    return done
