"""The published form of a saga event (SPEC §6), shared by every store's outbox."""

from __future__ import annotations

from typing import Any

from saga.codec import format_timestamp
from saga.model import SagaEvent


def event_body(event: SagaEvent) -> dict[str, Any]:
    """The JSON value of an event message, field for field as SPEC §6 lists them."""
    return {
        "event_id": event.event_id,
        "event_type": event.event_type.value,
        "saga_id": event.saga_id,
        "workflow_name": event.workflow_name,
        "status": event.status.value,
        "current_step": event.current_step,
        "correlation_id": event.correlation_id,
        "error_message": event.error_message,
        "payload": dict(event.payload),
        "timestamp": format_timestamp(event.timestamp),
    }
