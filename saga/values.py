"""What a value must be for the saga server to keep it: the one rule, used by every edge.

Every store must be able to hold what the server accepts, so one definition of "storable"
serves the REST and gRPC inputs, workflow files, participant replies and status details:
text holds no NUL character (PostgreSQL cannot store one) and no lone surrogate (it has no
UTF-8 form; SQLite and PostgreSQL both refuse it); JSON is those texts, finite numbers, and
nesting no deeper than a limit. Pure: no I/O; `check_*` raise `ValidationError` naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from saga.errors import ValidationError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

TextProblem = Literal["NUL", "surrogate"]


def text_problem(value: str) -> TextProblem | None:
    """Why `value` cannot be stored as text, or None when it can."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    return "NUL" if found.group() == "\x00" else "surrogate"


def check_text(value: str, field: str) -> str:
    """`value`, or a `ValidationError` naming `field` when it holds a NUL or a lone surrogate."""
    problem = text_problem(value)
    if problem == "NUL":
        raise ValidationError(f"{field}: must not contain NUL characters")
    if problem == "surrogate":
        raise ValidationError(f"{field}: must not contain lone surrogates")
    return value


def storable_text(value: str) -> str:
    """`value` with every NUL and lone surrogate replaced by U+FFFD (for texts the server keeps
    but did not choose, such as a participant's status detail)."""
    return _UNSTORABLE.sub("\ufffd", value)


def check_json(value: Any, field: str, *, max_depth: int) -> None:
    """Refuse unstorable text anywhere (keys too), numbers that are not finite, and nesting
    deeper than `max_depth`; iterative, so a hostile depth costs no stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise ValidationError(f"{field}: nested deeper than {max_depth} levels")
            for key, child in item.items():
                check_text(key, field)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise ValidationError(f"{field}: nested deeper than {max_depth} levels")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            check_text(item, field)
        elif isinstance(item, float) and (item != item or item in (float("inf"), float("-inf"))):
            raise ValidationError(f"{field}: numbers must be finite")
