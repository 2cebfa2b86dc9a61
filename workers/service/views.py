"""The public JSON shape of sagas, step logs and workflows (SPEC §4), shared by REST and the
CLI's `--json` output. Timestamps are RFC 3339 UTC with milliseconds and `Z`; absent is null."""

from __future__ import annotations

from typing import Any

from saga.codec import format_timestamp
from saga.model import SagaState, StepLog, Workflow
from workers.adapters.store.base import SagaPage


def saga_view(state: SagaState) -> dict[str, Any]:
    return {
        "saga_id": state.saga_id,
        "workflow_name": state.workflow_name,
        "current_step": state.current_step,
        "status": state.status.value,
        "payload": dict(state.payload),
        "correlation_id": state.correlation_id,
        "initiated_by": state.initiated_by,
        "error_message": state.error_message,
        "created_at": format_timestamp(state.created_at),
        "updated_at": format_timestamp(state.updated_at),
    }


def step_log_view(log: StepLog) -> dict[str, Any]:
    return {
        "id": log.id,
        "saga_id": log.saga_id,
        "step_index": log.step_index,
        "step_name": log.step_name,
        "action": log.action.value,
        "status": log.status.value,
        "request_payload": None if log.request_payload is None else dict(log.request_payload),
        "response_payload": None if log.response_payload is None else dict(log.response_payload),
        "error_message": log.error_message,
        "started_at": format_timestamp(log.started_at),
        "completed_at": format_timestamp(log.completed_at),
    }


def saga_detail_view(state: SagaState, logs: list[StepLog]) -> dict[str, Any]:
    return {"saga": saga_view(state), "step_logs": [step_log_view(g) for g in logs]}


def saga_page_view(page: SagaPage) -> dict[str, Any]:
    return {
        "sagas": [saga_view(s) for s in page.sagas],
        "pagination": {
            "total_count": page.total_count,
            "page": page.page,
            "page_size": page.page_size,
            "has_next": page.has_next,
        },
    }


def workflow_summary_view(workflow: Workflow) -> dict[str, Any]:
    return {
        "name": workflow.name,
        "step_count": len(workflow.steps),
        "step_names": list(workflow.step_names),
        "version": workflow.version,
    }
