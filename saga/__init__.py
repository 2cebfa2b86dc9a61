"""The pure saga core: model, workflow parsing and the `decide` state machine.

Importing this package must never load an I/O library (flask, grpc, psycopg, kafka, sqlite3,
socket); a test checks it in a fresh interpreter.
"""

from saga.decide import Decision, decide, phase, retry_delay_ms
from saga.errors import Conflict, IllegalEvent, NotFound, SagaError, ValidationError
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
    new_saga,
)
from saga.workflow import parse_workflow

__all__ = [
    "Action",
    "CallParticipant",
    "Commit",
    "Conflict",
    "Decision",
    "Effect",
    "Event",
    "EventType",
    "IllegalEvent",
    "NotFound",
    "Resume",
    "RetryDue",
    "SagaError",
    "SagaEvent",
    "SagaState",
    "SagaStatus",
    "ScheduleRetry",
    "Step",
    "StepFailed",
    "StepLog",
    "StepStatus",
    "StepSucceeded",
    "ValidationError",
    "Workflow",
    "decide",
    "new_saga",
    "parse_workflow",
    "phase",
    "retry_delay_ms",
]
