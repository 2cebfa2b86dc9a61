"""The one mapping between stored rows and core records, for both SQL stores.

Both schemas name their columns alike (SPEC §7), so a row, read by column name, maps to a
`SagaState` or `StepLog` the same way on PostgreSQL and SQLite; each store passes only how it
reads a timestamp and a JSON column (PostgreSQL hands back datetimes and parsed JSONB, SQLite
text). Adding a column means: a migration per dialect, the column in each store's statements,
and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from saga.codec import compensation_from_dict, pause_from_dict
from saga.model import (
    Action,
    OperatorAction,
    ResumeAction,
    SagaState,
    SagaStatus,
    StepLog,
    StepStatus,
)

STATE_COLUMNS = (
    "id, workflow_name, workflow_version, status, current_step, payload, correlation_id,"
    " initiated_by, error_message, created_at, updated_at, compensation, pause, resumes,"
    " in_doubt, trace_context"
)
ACTION_COLUMNS = "action, resume_action, payload_replaced, actor, at"
LOG_COLUMNS = (
    "id, saga_id, step_index, step_name, action, status, request_payload, response_payload,"
    " error_message, started_at, completed_at"
)


def sql_list(statuses: Collection[SagaStatus], order: Sequence[str] = ()) -> str:
    """A status set of `saga.model` as an SQL list, so the stores filter on the core's sets
    (in `order` when given: it must name exactly the set)."""
    names = sorted(s.value for s in statuses)
    if order:
        assert sorted(order) == names, f"{order} is not {names}"
        names = list(order)
    return ", ".join(f"'{name}'" for name in names)


Time = Callable[[Any], datetime]
Json = Callable[[Any], Any]


def state_from_row(row: Mapping[str, Any], when: Time, json_value: Json) -> SagaState:
    """A saga as stored (the `STATE_COLUMNS` of `row`)."""
    return SagaState(
        saga_id=str(row["id"]),
        workflow_name=row["workflow_name"],
        workflow_version=row["workflow_version"],
        status=SagaStatus(row["status"]),
        current_step=row["current_step"],
        payload=json_value(row["payload"]) or {},
        correlation_id=row["correlation_id"],
        initiated_by=row["initiated_by"],
        error_message=row["error_message"],
        created_at=when(row["created_at"]),
        updated_at=when(row["updated_at"]),
        compensation=compensation_from_dict(json_value(row["compensation"])),
        pause=pause_from_dict(json_value(row["pause"])),
        resumes=row["resumes"],
        in_doubt=bool(row["in_doubt"]),
        trace_context=row["trace_context"],
    )


def action_from_row(row: Mapping[str, Any], when: Time) -> OperatorAction:
    """An operator action as stored (the `ACTION_COLUMNS` of `row`)."""
    resume = row["resume_action"]
    return OperatorAction(
        action=row["action"],
        by=row["actor"],
        at=when(row["at"]),
        resume_action=None if resume is None else ResumeAction(resume),
        payload_replaced=bool(row["payload_replaced"]),
    )


def log_from_row(row: Mapping[str, Any], when: Time, json_value: Json) -> StepLog:
    """A step log as stored (the `LOG_COLUMNS` of `row`)."""
    completed = row["completed_at"]
    return StepLog(
        id=str(row["id"]),
        saga_id=str(row["saga_id"]),
        step_index=row["step_index"],
        step_name=row["step_name"],
        action=Action(row["action"]),
        status=StepStatus(row["status"]),
        request_payload=json_value(row["request_payload"]),
        response_payload=json_value(row["response_payload"]),
        error_message=row["error_message"],
        started_at=when(row["started_at"]),
        completed_at=None if completed is None else when(completed),
    )
