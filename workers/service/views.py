"""The public JSON shape of sagas, step logs, operator actions and workflows (SPEC §4, §11),
shared by REST and the CLI's `--json` output. Timestamps are RFC 3339 UTC with milliseconds and
`Z`; absent is null."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from saga.codec import format_timestamp
from saga.model import OperatorAction, RetryPolicy, SagaState, Step, StepLog, Workflow
from workers.adapters.store.base import SagaPage
from workers.adapters.tracing import trace_id_of


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
        "trace_id": trace_id_of(state),  # SPEC §12
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


def operator_action_view(action: OperatorAction) -> dict[str, Any]:
    """One pause, resume or cancel of the audit (SPEC §11); `resume_action` is the action a
    resume took (the default resolved), null for a pause or cancel."""
    return {
        "action": action.action,
        "resume_action": None if action.resume_action is None else action.resume_action.value,
        "payload_replaced": action.payload_replaced,
        "by": action.by,
        "at": format_timestamp(action.at),
    }


def resume_message(state: SagaState, actions: Sequence[OperatorAction]) -> str:
    """What a resume answers: the action it took (the newest resume of the audit) and the
    status the saga is in now."""
    taken = next((a for a in reversed(actions) if a.action == "resume"), None)
    how = ""
    if taken is not None and taken.resume_action is not None:
        how = f" with {taken.resume_action.value}"
        if taken.payload_replaced:
            how += " and a replaced payload"
    return f"saga {state.saga_id} resumed{how}; now {state.status.value}"


def saga_detail_view(
    state: SagaState, logs: list[StepLog], actions: Sequence[OperatorAction] = ()
) -> dict[str, Any]:
    """The saga, its step logs in time order and its operator actions, oldest first."""
    return {
        "saga": saga_view(state),
        "step_logs": [step_log_view(g) for g in logs],
        "operator_actions": [operator_action_view(a) for a in actions],
    }


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


def _number(value: float | None) -> float | int | None:
    """A number of seconds as it was written: 30, not 30.0 (the store keeps floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _retry_view(retry: RetryPolicy) -> dict[str, Any]:
    return {
        "max_attempts": retry.max_attempts,
        "backoff": retry.backoff.value,
        "initial_interval_ms": retry.initial_interval_ms,
        "max_interval_ms": retry.max_interval_ms,
        "jitter": retry.jitter,
        "non_retryable_codes": list(retry.non_retryable_codes),
    }


def _step_view(step: Step) -> dict[str, Any]:
    return {
        "name": step.name,
        "service": step.service,
        "method": step.method,
        "compensate": step.compensate,
        "timeout_secs": _number(step.timeout_secs),
        "retry": _retry_view(step.retry),
        "input": step.input,
        "when": step.when,
        "compensate_input": step.compensate_input,
        "on_failure": None if step.on_failure is None else step.on_failure.value,
        "on_compensation_failure": (
            None if step.on_compensation_failure is None else step.on_compensation_failure.value
        ),
    }


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def workflow_yaml(workflow: Workflow) -> str:
    """The definition as a workflow document (SPEC §2) with every default written out: the
    server keeps the parsed definition, not the text it was registered with. Registering
    this text again gives the same definition (as a new version)."""
    document = {
        "name": workflow.name,
        "steps": [_step_view(s) for s in workflow.steps],
        "on_failure": workflow.on_failure.value,
        "on_compensation_failure": workflow.on_compensation_failure.value,
        "deadline_secs": _number(workflow.deadline_secs),
    }
    return yaml.safe_dump(
        _without_nulls(document), sort_keys=False, allow_unicode=True, default_flow_style=False
    )


def workflow_view(workflow: Workflow) -> dict[str, Any]:
    """One version of a workflow, every key of its definition present (null: not set; a
    step's null `on_failure` / `on_compensation_failure` means the workflow's), and the same
    definition as YAML."""
    return {
        "name": workflow.name,
        "version": workflow.version,
        "steps": [_step_view(s) for s in workflow.steps],
        "on_failure": workflow.on_failure.value,
        "on_compensation_failure": workflow.on_compensation_failure.value,
        "deadline_secs": _number(workflow.deadline_secs),
        "workflow_yaml": workflow_yaml(workflow),
    }
