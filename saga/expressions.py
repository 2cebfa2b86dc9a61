"""Step expressions (SPEC §10): `input`, `when` and `compensate_input` are JMESPath over the
saga's context, compiled when a workflow is registered and evaluated by `saga.decide`.

The context of a saga is

    {"payload": {...}, "saga": {"id", "workflow_name", "correlation_id", "initiated_by"},
     "steps": {"<step name>": {"request": {...}, "response": {...}}}}

with `steps` holding every step whose execution succeeded so far (`SagaState.steps`, rebuilt
from the step logs when a saga is loaded, so a recovered saga sees the same context).

Pure like the rest of the core: `jmespath` is a pure-Python library and no custom function is
registered. An evaluation never raises past this module: a failure is an `ExpressionFailed`
with a one-line reason, which the core turns into `INVALID_INPUT: <reason>`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jmespath
from jmespath.parser import ParsedResult

from saga.errors import ValidationError
from saga.model import SagaState
from saga.values import check_json

# A request an expression makes obeys the payload limits of SPEC §4.
MAX_REQUEST_BYTES = 256 * 1024
MAX_REQUEST_DEPTH = 64


class ExpressionFailed(Exception):
    """An expression could not give what its step needs; `str()` is the reason."""


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> ParsedResult:
    """The compiled expression (cached: a stored workflow's expressions are compiled once)."""
    return jmespath.compile(text)


def check(text: str, field: str) -> None:
    """Raise `ValidationError` naming `field` and JMESPath's own words if `text` does not
    compile (`steps[1].input: invalid jmespath expression: ...`)."""
    try:
        compile_expression(text)
    except Exception as exc:  # jmespath raises its own error types, and ValueError
        raise ValidationError(f"{field}: {_reason(exc)}") from None


def context(state: SagaState) -> dict[str, Any]:
    """The context expressions see (see the module docstring)."""
    return {
        "payload": state.payload,
        "saga": {
            "id": state.saga_id,
            "workflow_name": state.workflow_name,
            "correlation_id": state.correlation_id,
            "initiated_by": state.initiated_by,
        },
        "steps": {
            name: {"request": done.request, "response": done.response}
            for name, done in state.steps.items()
        },
    }


def evaluate(text: str, ctx: Mapping[str, Any]) -> Any:
    """The value of `text` over `ctx`, or `ExpressionFailed`."""
    try:
        return compile_expression(text).search(ctx)
    except Exception as exc:  # a type error in a function, a bad index: the step's input fails
        raise ExpressionFailed(_reason(exc)) from None


def request(text: str, ctx: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The JSON object `text` makes over `ctx`, within the payload limits, or `ExpressionFailed`
    naming `what` (`input`, `compensate_input`)."""
    value = evaluate(text, ctx)
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise ExpressionFailed(f"{what} gave {kind}, not a JSON object")
    try:
        check_json(value, what, max_depth=MAX_REQUEST_DEPTH)
    except ValidationError as exc:
        raise ExpressionFailed(exc.message) from None
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_REQUEST_BYTES:
        raise ExpressionFailed(f"{what} is {size} bytes, over the {MAX_REQUEST_BYTES}-byte limit")
    return value


def is_true(value: Any) -> bool:
    """JMESPath truth: false, null, an empty string, array or object are false; all else true
    (0 included)."""
    return not (value is None or value is False or value in ("", [], {}))


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines) or type(exc).__name__
    return text[:300]
