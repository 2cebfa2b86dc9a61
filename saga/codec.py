"""Serialisation of core values at the edges: JSON-ready dicts for the store, the APIs and
golden histories. Rules live in the domain classes; formats live here, in one converter.

Unions are tagged with each class's stable `tag`, never its Python name.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import cattrs

from saga.events import (
    EVENT_TYPES,
    CallParticipant,
    Commit,
    Effect,
    Event,
    ScheduleRetry,
)
from saga.model import Compensation, Pause, SagaState, Workflow

EFFECT_TYPES: tuple[type[Effect], ...] = (Commit, CallParticipant, ScheduleRetry)


def format_timestamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with milliseconds and `Z` (`2026-02-20T10:30:05.123Z`), or None."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """The inverse of `format_timestamp` (accepts any ISO 8601 with an offset)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text}")
    return value.astimezone(UTC)


def make_converter() -> cattrs.Converter:
    """The one converter: datetimes as RFC 3339 strings (microseconds kept), tuples as lists."""
    conv = cattrs.Converter()
    conv.register_unstructure_hook(datetime, lambda d: d.astimezone(UTC).isoformat())
    conv.register_structure_hook(datetime, lambda v, _: parse_timestamp(v))
    # StrEnum is a str subclass, so the str pass-through would win over an Enum hook.
    conv.register_unstructure_hook(enum.StrEnum, lambda e: e.value)
    return conv


_CONVERTER = make_converter()


def workflow_to_dict(workflow: Workflow) -> dict[str, Any]:
    data: dict[str, Any] = _CONVERTER.unstructure(workflow)
    return data


def workflow_from_dict(data: dict[str, Any]) -> Workflow:
    return _CONVERTER.structure(data, Workflow)


def compensation_to_dict(value: Compensation | None) -> dict[str, Any] | None:
    return None if value is None else _CONVERTER.unstructure(value)


def compensation_from_dict(data: dict[str, Any] | None) -> Compensation | None:
    return None if data is None else _CONVERTER.structure(data, Compensation)


def pause_to_dict(value: Pause | None) -> dict[str, Any] | None:
    return None if value is None else _CONVERTER.unstructure(value)


def pause_from_dict(data: dict[str, Any] | None) -> Pause | None:
    return None if data is None else _CONVERTER.structure(data, Pause)


def state_to_dict(state: SagaState) -> dict[str, Any]:
    data: dict[str, Any] = _CONVERTER.unstructure(state)
    return data


def state_from_dict(data: dict[str, Any]) -> SagaState:
    return _CONVERTER.structure(data, SagaState)


def event_to_dict(event: Event) -> dict[str, Any]:
    return {"tag": event.tag, **_CONVERTER.unstructure(event)}


def event_from_dict(data: dict[str, Any]) -> Event:
    by_tag = {cls.tag: cls for cls in EVENT_TYPES}
    body = dict(data)
    cls = by_tag[body.pop("tag")]
    result: Event = _CONVERTER.structure(body, cls)
    return result


def effect_to_dict(effect: Effect) -> dict[str, Any]:
    return {"tag": effect.tag, **_CONVERTER.unstructure(effect)}


def effect_from_dict(data: dict[str, Any]) -> Effect:
    by_tag = {cls.tag: cls for cls in EFFECT_TYPES}
    body = dict(data)
    cls = by_tag[body.pop("tag")]
    result: Effect = _CONVERTER.structure(body, cls)
    return result
