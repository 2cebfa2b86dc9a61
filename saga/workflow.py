"""Workflow YAML text to a validated `Workflow`, or a `ValidationError` naming the field.

Safe loader only. Before anything is built, the event stream is checked: anchors, aliases
(the billion-laughs attack), explicit tags (`!!python/...`) and merge keys are refused, so a
hostile document costs no more than its own size. Pure: text in, definition or error out.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import yaml

from saga.errors import ValidationError
from saga.model import GRPC_CODE_NAMES, Backoff, RetryPolicy, Step, Workflow

MAX_DOCUMENT_BYTES = 64 * 1024
MAX_STEPS = 200
MAX_NAME_LENGTH = 255
MAX_ATTEMPTS_LIMIT = 100
MAX_TIMEOUT_SECS = 24 * 3600
MAX_INTERVAL_LIMIT_MS = 24 * 3600 * 1000

METHOD_PATTERN = re.compile(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", re.ASCII)
_SERVICE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)

_WORKFLOW_KEYS = frozenset({"name", "steps"})
_STEP_KEYS = frozenset({"name", "service", "method", "compensate", "timeout_secs", "retry"})
_RETRY_KEYS = frozenset(
    {
        "max_attempts",
        "backoff",
        "initial_interval_ms",
        "max_interval_ms",
        "jitter",
        "non_retryable_codes",
    }
)


def parse_workflow(
    text: str,
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    max_steps: int = MAX_STEPS,
    known_services: Collection[str] | None = None,
) -> Workflow:
    """Parse and validate one workflow document (SPEC §2).

    With `known_services`, every step's service must be one of them.
    """
    if not isinstance(text, str):
        raise ValidationError("workflow_yaml: must be a string")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ValidationError(
            f"workflow_yaml: document is {size} bytes, over the {max_bytes}-byte limit"
        )
    data = _load(text)
    return _workflow(data, max_steps=max_steps, known_services=known_services)


def _load(text: str) -> Any:
    if "\x00" in text:
        raise ValidationError("workflow_yaml: contains a NUL character")
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.AliasEvent):
                raise ValidationError(f"workflow_yaml: aliases are not allowed ({_where(ev)})")
            anchor = getattr(ev, "anchor", None)
            if anchor is not None:
                raise ValidationError(f"workflow_yaml: anchors are not allowed ({_where(ev)})")
            tag = getattr(ev, "tag", None)
            implicit = getattr(ev, "implicit", True)
            explicit = (
                tag is not None
                and tag != "!"
                and not (implicit is True or (isinstance(implicit, tuple) and implicit[0]))
            )
            if isinstance(ev, yaml.CollectionStartEvent) and tag is not None:
                explicit = True
            if explicit:
                raise ValidationError(f"workflow_yaml: tags are not allowed: {tag} ({_where(ev)})")
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ValidationError("workflow_yaml: the document is empty")
            _check_keys(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ValidationError(f"workflow_yaml: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ValidationError("workflow_yaml: nested too deeply") from None


def _check_keys(node: yaml.Node) -> None:
    """Refuse duplicate keys and merge keys anywhere in the document."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in current.value:
                if key.tag == "tag:yaml.org,2002:merge":
                    raise ValidationError(
                        f"workflow_yaml: merge keys are not allowed ({_where(key)})"
                    )
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise ValidationError(
                            f"workflow_yaml: duplicate key '{key.value}' ({_where(key)})"
                        )
                    seen.add(key.value)
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _where(mark_owner: Any) -> str:
    mark = getattr(mark_owner, "start_mark", None)
    return (
        f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown place"
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


# ---------------------------------------------------------------- shape checks


def _workflow(data: Any, *, max_steps: int, known_services: Collection[str] | None) -> Workflow:
    if not isinstance(data, Mapping):
        raise ValidationError("workflow_yaml: the document must be a mapping with name and steps")
    _no_unknown_keys(data, _WORKFLOW_KEYS, "")
    name = _name(data, "name", "name")
    steps_raw = data.get("steps")
    if steps_raw is None:
        raise ValidationError("steps: is required")
    if not isinstance(steps_raw, list):
        raise ValidationError("steps: must be a list")
    if not steps_raw:
        raise ValidationError("steps: must have at least one step")
    if len(steps_raw) > max_steps:
        raise ValidationError(f"steps: has {len(steps_raw)} steps, over the limit of {max_steps}")
    steps = tuple(_step(raw, f"steps[{i}]", known_services) for i, raw in enumerate(steps_raw))
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.name in seen:
            raise ValidationError(
                f"steps[{i}].name: duplicate step name '{step.name}' (also steps[{seen[step.name]}])"
            )
        seen[step.name] = i
    return Workflow(name=name, steps=steps)


def _step(raw: Any, path: str, known_services: Collection[str] | None) -> Step:
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{path}: must be a mapping")
    _no_unknown_keys(raw, _STEP_KEYS, path)
    name = _name(raw, "name", f"{path}.name")
    service = _name(raw, "service", f"{path}.service")
    if not _SERVICE_PATTERN.fullmatch(service):
        raise ValidationError(f"{path}.service: '{service}' is not a service name")
    if known_services is not None and service not in known_services:
        raise ValidationError(f"{path}.service: service not registered: {service}")
    method = _method(raw, "method", path, required=True)
    compensate = _method(raw, "compensate", path, required=False)
    assert method is not None
    timeout = raw.get("timeout_secs", 30)
    if not _is_number(timeout):
        raise ValidationError(f"{path}.timeout_secs: must be a number")
    if timeout <= 0:
        raise ValidationError(f"{path}.timeout_secs: must be > 0")
    if timeout > MAX_TIMEOUT_SECS:
        raise ValidationError(f"{path}.timeout_secs: must be <= {MAX_TIMEOUT_SECS}")
    retry = _retry(raw.get("retry", {}), f"{path}.retry")
    return Step(
        name=name,
        service=service,
        method=method,
        compensate=compensate,
        timeout_secs=timeout,
        retry=retry,
    )


def _retry(raw: Any, path: str) -> RetryPolicy:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{path}: must be a mapping")
    _no_unknown_keys(raw, _RETRY_KEYS, path)
    defaults = RetryPolicy()
    max_attempts = _int(raw, "max_attempts", path, defaults.max_attempts)
    if max_attempts < 1:
        raise ValidationError(f"{path}.max_attempts: must be >= 1")
    if max_attempts > MAX_ATTEMPTS_LIMIT:
        raise ValidationError(f"{path}.max_attempts: must be <= {MAX_ATTEMPTS_LIMIT}")
    backoff_raw = raw.get("backoff", defaults.backoff.value)
    if not isinstance(backoff_raw, str):
        raise ValidationError(f"{path}.backoff: must be a string")
    try:
        backoff = Backoff(backoff_raw)
    except ValueError:
        raise ValidationError(
            f"{path}.backoff: unknown backoff '{backoff_raw}' (exponential or fixed)"
        ) from None
    initial = _int(raw, "initial_interval_ms", path, defaults.initial_interval_ms)
    if initial < 0:
        raise ValidationError(f"{path}.initial_interval_ms: must be >= 0")
    if initial > MAX_INTERVAL_LIMIT_MS:
        raise ValidationError(f"{path}.initial_interval_ms: must be <= {MAX_INTERVAL_LIMIT_MS}")
    cap: int | None = None
    if raw.get("max_interval_ms") is not None:
        cap = _int(raw, "max_interval_ms", path, 0)
        if cap <= 0:
            raise ValidationError(f"{path}.max_interval_ms: must be > 0")
        if cap > MAX_INTERVAL_LIMIT_MS:
            raise ValidationError(f"{path}.max_interval_ms: must be <= {MAX_INTERVAL_LIMIT_MS}")
    jitter = raw.get("jitter", False)
    if not isinstance(jitter, bool):
        raise ValidationError(f"{path}.jitter: must be true or false")
    codes_raw = raw.get("non_retryable_codes", list(defaults.non_retryable_codes))
    if not isinstance(codes_raw, list):
        raise ValidationError(f"{path}.non_retryable_codes: must be a list")
    codes: list[str] = []
    for i, code in enumerate(codes_raw):
        if not isinstance(code, str) or code not in GRPC_CODE_NAMES:
            raise ValidationError(
                f"{path}.non_retryable_codes[{i}]: '{code}' is not a gRPC status code name"
            )
        codes.append(code)
    return RetryPolicy(
        max_attempts=max_attempts,
        backoff=backoff,
        initial_interval_ms=initial,
        max_interval_ms=cap,
        jitter=jitter,
        non_retryable_codes=tuple(codes),
    )


def _no_unknown_keys(raw: Mapping[Any, Any], allowed: frozenset[str], path: str) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ValidationError(f"{where}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _name(raw: Mapping[str, Any], key: str, path: str) -> str:
    value = raw.get(key)
    if value is None:
        raise ValidationError(f"{path}: is required")
    if not isinstance(value, str):
        raise ValidationError(f"{path}: must be a string")
    if not value.strip():
        raise ValidationError(f"{path}: must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(f"{path}: must be at most {MAX_NAME_LENGTH} characters")
    return value


def _method(raw: Mapping[str, Any], key: str, path: str, *, required: bool) -> str | None:
    if key not in raw or raw[key] is None:
        if required:
            raise ValidationError(f"{path}.{key}: is required")
        return None
    value = _name(raw, key, f"{path}.{key}")
    if not METHOD_PATTERN.fullmatch(value):
        raise ValidationError(
            f"{path}.{key}: '{value}' must look like Service.Method or pkg.Service.Method"
        )
    return value


def _int(raw: Mapping[str, Any], key: str, path: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{path}.{key}: must be an integer")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
