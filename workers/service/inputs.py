"""Checks on what clients send, shared by REST, gRPC and the CLI: each failure is a
`ValidationError` naming the field. Nothing reaches a query before it passed here."""

from __future__ import annotations

import json
import uuid
from typing import Any

from saga.errors import ValidationError
from saga.model import ResumeAction, SagaStatus
from saga.values import check_json, check_text


def saga_id(value: Any, field: str = "saga_id") -> str:
    """A canonical lower-case UUID string."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field}: is required")
    if len(value) > 64:
        raise ValidationError(f"{field}: not a valid UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationError(f"{field}: not a valid UUID") from None


def optional_string(value: Any, field: str, max_length: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field}: must be a string")
    if len(value) > max_length:
        raise ValidationError(f"{field}: must be at most {max_length} characters")
    return check_text(value, field)


def required_string(value: Any, field: str, max_length: int) -> str:
    if value is None or value == "":
        raise ValidationError(f"{field}: is required")
    result = optional_string(value, field, max_length)
    assert result is not None
    return result


def payload(value: Any, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("payload: must be a JSON object")
    check_json(value, "payload", max_depth=max_depth)
    size = len(
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
    )
    if size > max_bytes:
        raise ValidationError(f"payload: is {size} bytes, over the {max_bytes}-byte limit")
    return value


def status(value: Any) -> SagaStatus | None:
    if value is None or value == "":
        return None
    try:
        return SagaStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in SagaStatus)
        raise ValidationError(f"status: must be one of {allowed}") from None


def positive_int(value: Any, field: str, *, default: int, maximum: int | None = None) -> int:
    """A query integer: digits only, >= 1, <= maximum; otherwise a 400, never a clamp."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValidationError(f"{field}: must be an integer")
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 9:
            raise ValidationError(f"{field}: must be a positive integer")
        value = int(value)
    if not isinstance(value, int):
        raise ValidationError(f"{field}: must be an integer")
    if value < 1:
        raise ValidationError(f"{field}: must be >= 1")
    if maximum is not None and value > maximum:
        raise ValidationError(f"{field}: must be <= {maximum}")
    return value


def idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 255
        or not value.isprintable()
        or not value.isascii()
    ):
        raise ValidationError("Idempotency-Key: must be 1..255 printable characters")
    return value


def resume_action(value: Any) -> ResumeAction | None:
    """The `action` of a resume (SPEC §11), or None for the default."""
    if value is None or value == "":
        return None
    allowed = [a.value for a in ResumeAction]
    if not isinstance(value, str) or value not in allowed:
        raise ValidationError(f"action: must be one of {', '.join(allowed)}")
    return ResumeAction(value)
