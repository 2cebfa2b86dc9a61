"""What goes into `decide` (events, past tense) and what comes out (effects, imperative).

Both are closed unions. Each class has a stable `tag` used wherever an event or effect is
recorded (golden histories, logs): renaming a class must not change stored data.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from attrs import frozen

from saga.model import Action, ResumeAction, SagaEvent, SagaState, StepLog

# ---------------------------------------------------------------- events (input)


@frozen
class Resume:
    """The executor holds the saga at a step boundary and wants it to go on.

    Sent when an executor claims a saga (first run or recovery) and after every commit.
    `cancel_requested` and `pause_requested` are the flags as last read from the store.
    `lease_expired` is true
    when the executor that held the saga before never gave it back at a step boundary (it died,
    or its lease ran out mid-call): the call of the forward step at `current_step` may then
    have been made, and its outcome is unknown.
    """

    tag: ClassVar[str] = "resume"
    at: datetime
    cancel_requested: bool = False
    lease_expired: bool = False
    pause_requested: bool = False


@frozen
class StepSucceeded:
    """The in-flight participant call answered OK with this JSON object."""

    tag: ClassVar[str] = "step_succeeded"
    at: datetime
    response: Mapping[str, Any]


@frozen
class StepFailed:
    """The in-flight participant call failed.

    Facts only; what they mean for the saga is decided in `saga.decide`. `code` is the gRPC
    status name, or one the caller reports itself (`saga.model.CALLER_CODES`: the service is not
    configured, the method name is invalid, the reply could not be used); `timed_out` is true
    when the attempt hit its deadline; `jitter` in [-1, 1] is the random draw used when the
    policy asks for jitter.
    """

    tag: ClassVar[str] = "step_failed"
    at: datetime
    code: str
    message: str
    timed_out: bool = False
    jitter: float = 0.0


@frozen
class RetryDue:
    """The delay asked for by `ScheduleRetry` has passed."""

    tag: ClassVar[str] = "retry_due"
    at: datetime


@frozen
class CommitRefused:
    """The store refused to keep the last commit for its data (not an outage: it is up and said
    no), so the saga goes on from its last committed state, which is where it is now.

    `reason` is a clean one-line text; `refusals` counts the refusals in a row for this saga.
    """

    tag: ClassVar[str] = "commit_refused"
    at: datetime
    reason: str
    refusals: int = 1


@frozen
class ResumeRequested:
    """An operator resumes a PAUSED saga (SPEC §11): `action` (None: the default for how it
    paused), and `payload` to replace the saga's (forward phase only), already checked."""

    tag: ClassVar[str] = "resume_requested"
    at: datetime
    action: ResumeAction | None = None
    payload: Mapping[str, Any] | None = None


@frozen
class CancelRequested:
    """An operator cancels a saga PAUSED in its forward phase (SPEC §11)."""

    tag: ClassVar[str] = "cancel_requested"
    at: datetime


Event = (
    Resume
    | StepSucceeded
    | StepFailed
    | RetryDue
    | CommitRefused
    | ResumeRequested
    | CancelRequested
)
EVENT_TYPES: tuple[type[Event], ...] = (
    Resume,
    StepSucceeded,
    StepFailed,
    RetryDue,
    CommitRefused,
    ResumeRequested,
    CancelRequested,
)

# ---------------------------------------------------------------- effects (output)


@frozen
class Commit:
    """Write the state, its step logs and its events in one transaction.

    With `unless_cancel_requested` (`unless_pause_requested`), the store writes nothing when
    the saga's cancel (pause) flag is set at the moment of writing (it may have been set after
    it was last read): a saga about to end goes on to compensate (or pauses) instead, so a
    cancel or a pause answered 200 is never lost.
    """

    tag: ClassVar[str] = "commit"
    state: SagaState
    step_logs: tuple[StepLog, ...] = ()
    events: tuple[SagaEvent, ...] = ()
    unless_cancel_requested: bool = False
    unless_pause_requested: bool = False


@frozen
class CallParticipant:
    """Make one attempt of a participant call; answer with `StepSucceeded` or `StepFailed`."""

    tag: ClassVar[str] = "call_participant"
    saga_id: str
    step_index: int
    step_name: str
    action: Action
    attempt: int
    service: str
    method: str
    payload: Mapping[str, Any]
    timeout_secs: float
    idempotency_key: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata of SPEC §3."""
        return (
            ("x-saga-id", self.saga_id),
            ("x-saga-step", str(self.step_index)),
            ("x-saga-action", self.action.value),
            ("x-saga-attempt", str(self.attempt)),
            ("idempotency-key", self.idempotency_key),
        )


@frozen
class ScheduleRetry:
    """Wait `delay_ms`, then send `RetryDue`."""

    tag: ClassVar[str] = "schedule_retry"
    saga_id: str
    step_index: int
    action: Action
    next_attempt: int
    delay_ms: int


Effect = Commit | CallParticipant | ScheduleRetry
