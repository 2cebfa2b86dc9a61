"""Workflow YAML text to a validated `Workflow`, or a `ValidationError` naming the field.

Safe loader only (PyYAML's `SafeLoader`: no Python objects are ever built from a tag). The
document is composed into a node graph first and checked before anything is constructed:

- Anchors, aliases and merge keys (`<<: *defaults`) are ordinary YAML and mean what YAML
  says. An alias is a reference to an already composed node, so composing costs no more than
  the text; what a hostile document (the billion laughs) can blow up is the *expanded* tree.
  Its size is counted on the graph, once per node (memoised), before construction: when the
  nodes that aliases stand for add up to more than `MAX_ALIAS_NODES`, or an alias refers to a
  node that contains it, the document is refused, in time linear in its own size.
- Tags: only the YAML core schema's `!!str`, `!!int`, `!!float`, `!!bool`, `!!null`,
  `!!seq` and `!!map` (written or, as usual, resolved implicitly), the `!!merge` key `<<`,
  and `!!timestamp`, which PyYAML's resolver gives a plain date (no field takes a date, so
  it then fails the field's type check). Any other tag (`!!python/...`, `!!binary`,
  `!!set`, `!!omap`, `!!pairs`, `!!value`, a local `!tag`, a verbatim `!<...>`) is
  refused, before anything is constructed.
- Duplicate keys in one mapping are refused (keys brought in by a merge key are not
  duplicates: the mapping's own keys win over them, as YAML says).

After construction every string, key or value, is checked for NUL characters and lone
surrogates (a double-quoted `"\\0"` or `"\\ud800"` escape makes them, and no store can keep
them), naming the field. Pure: text in, definition or error out.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any, TypeVar

import yaml

import saga.expressions as expressions
from saga.errors import ValidationError
from saga.model import (
    GRPC_CODE_NAMES,
    Backoff,
    OnCompensationFailure,
    OnFailure,
    RetryPolicy,
    Step,
    Workflow,
)
from saga.values import text_problem

MAX_DOCUMENT_BYTES = 64 * 1024
MAX_STEPS = 200
MAX_NAME_LENGTH = 255
MAX_ATTEMPTS_LIMIT = 100
MAX_TIMEOUT_SECS = 24 * 3600
MAX_INTERVAL_LIMIT_MS = 24 * 3600 * 1000
# SPEC §2: the nodes that aliases may stand for, summed over every alias of the expanded tree.
MAX_ALIAS_NODES = 10_000

# A gRPC method name, `Service.Method` or `pkg.Service.Method`; ASCII only, as gRPC paths travel
# in HTTP/2 headers. The one rule: workflow parsing and the participant caller both use it.
METHOD_PATTERN = re.compile(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", re.ASCII)
_SERVICE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)

_CORE = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(
    _CORE + name
    for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp")
)

_WORKFLOW_KEYS = frozenset(
    {"name", "steps", "on_failure", "on_compensation_failure", "deadline_secs"}
)
MAX_DEADLINE_SECS = 366 * 24 * 3600
_STEP_KEYS = frozenset(
    {
        "name",
        "service",
        "method",
        "compensate",
        "timeout_secs",
        "retry",
        "input",
        "when",
        "compensate_input",
        "on_failure",
        "on_compensation_failure",
    }
)
_EXPRESSION_KEYS = ("input", "when", "compensate_input")
MAX_EXPRESSION_CHARS = 4096
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
    data = load_document(text)
    return _workflow(data, max_steps=max_steps, known_services=known_services)


def load_document(text: str, *, max_alias_nodes: int = MAX_ALIAS_NODES) -> Any:
    """One YAML document as plain data (dicts, lists, scalars) under the rules of this module:
    standard tags only, aliases bounded, no duplicate keys, no NUL or lone surrogate in any
    string. A `ValidationError` starting with `workflow_yaml:` (or the field's path, for a
    bad string) otherwise."""
    if "\x00" in text:
        raise ValidationError("workflow_yaml: contains a NUL character")
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ValidationError("workflow_yaml: the document is empty")
            _check_graph(node, max_alias_nodes)
            data = _construct(loader, node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ValidationError(f"workflow_yaml: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ValidationError("workflow_yaml: nested too deeply") from None
    _check_strings(data)
    return data


def _construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """SafeLoader's construction of a checked graph. A scalar that does not fit its explicit
    tag (`!!bool maybe`, `!!timestamp soon`) makes PyYAML raise plain Python errors: each is
    the document's fault, so a 400."""
    try:
        return loader.construct_document(node)
    except yaml.YAMLError:
        raise
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise ValidationError("workflow_yaml: a number has too many digits") from None
        raise ValidationError("workflow_yaml: a value does not fit its type or tag") from None
    except (KeyError, AttributeError, TypeError, OverflowError):
        raise ValidationError("workflow_yaml: a value does not fit its type or tag") from None


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def _check_graph(root: yaml.Node, max_alias_nodes: int) -> None:
    """Check every distinct node once (tags, duplicate keys) and count the expanded tree.

    Post-order walk with an explicit stack (no recursion, whatever the depth). `expanded`
    memoises each node's expanded size, so a node reached through a thousand aliases is
    still counted once; `expanded[root] - distinct nodes` is what the aliases stand for.
    A node reached again while it is still open is an alias inside its own anchor."""
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            expanded[key] = 1 + sum(expanded[id(child)] for child in _children(node))
            continue
        if key in expanded:
            continue
        if key in open_nodes:
            raise ValidationError(
                f"workflow_yaml: an alias refers to a node that contains it ({_where(node)})"
            )
        _check_node(node)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    added = expanded[id(root)] - len(expanded)
    if added > max_alias_nodes:
        raise ValidationError(
            f"workflow_yaml: aliases expand to {added} more nodes, over the limit of "
            f"{max_alias_nodes}"
        )


def _check_node(node: yaml.Node) -> None:
    tag = node.tag
    if tag not in _ALLOWED_TAGS:
        shown = "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag
        raise ValidationError(
            f"workflow_yaml: tags other than YAML's standard ones are not allowed: {shown} "
            f"({_where(node)})"
        )
    if isinstance(node, yaml.MappingNode):
        seen: set[tuple[str, Any]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                identity = (key.tag, key.value)
                if identity in seen:
                    raise ValidationError(
                        f"workflow_yaml: duplicate key '{key.value}' ({_where(key)})"
                    )
                seen.add(identity)


def _check_strings(data: Any) -> None:
    """Refuse NUL characters and lone surrogates in any string, key or value, naming the
    field (`steps[0].name: contains a NUL character`). The walk sees the expanded tree,
    which `_check_graph` has bounded."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _clean(item, path or "workflow_yaml", "")
        elif isinstance(item, Mapping):
            for key, value in item.items():
                if isinstance(key, str):
                    _clean(key, path or "workflow_yaml", "a key ")
                child = f"{path}.{key}" if path else str(key)
                stack.append((value, child))
        elif isinstance(item, list):
            stack.extend((value, f"{path}[{i}]") for i, value in enumerate(item))


def _clean(value: str, path: str, what: str) -> None:
    problem = text_problem(value)
    if problem == "NUL":
        raise ValidationError(f"{path}: {what}contains a NUL character")
    if problem == "surrogate":
        raise ValidationError(
            f"{path}: {what}contains a lone surrogate (a \\uD800-style escape; write the "
            "character itself)"
        )


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
    deadline = data.get("deadline_secs")
    if deadline is not None:
        if not _is_number(deadline):
            raise ValidationError("deadline_secs: must be a number")
        if deadline <= 0 or deadline > MAX_DEADLINE_SECS:
            raise ValidationError(f"deadline_secs: must be > 0 and <= {MAX_DEADLINE_SECS}")
    return Workflow(
        name=name,
        steps=steps,
        on_failure=_choice(data, "on_failure", "on_failure", OnFailure) or OnFailure.COMPENSATE,
        on_compensation_failure=_choice(
            data, "on_compensation_failure", "on_compensation_failure", OnCompensationFailure
        )
        or OnCompensationFailure.CONTINUE,
        deadline_secs=deadline,
    )


_Choice = TypeVar("_Choice", OnFailure, OnCompensationFailure)


def _choice(raw: Mapping[str, Any], key: str, field: str, kind: type[_Choice]) -> _Choice | None:
    value = raw.get(key)
    if value is None:
        return None
    allowed = [c.value for c in kind]
    if not isinstance(value, str) or value not in allowed:
        raise ValidationError(f"{field}: must be one of {', '.join(allowed)}")
    return kind(value)


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
    expressions = {key: _expression(raw, key, path) for key in _EXPRESSION_KEYS}
    if expressions["compensate_input"] is not None and compensate is None:
        raise ValidationError(
            f"{path}.compensate_input: the step has no compensate method to send it to"
        )
    return Step(
        name=name,
        service=service,
        method=method,
        compensate=compensate,
        timeout_secs=timeout,
        retry=retry,
        input=expressions["input"],
        when=expressions["when"],
        compensate_input=expressions["compensate_input"],
        on_failure=_choice(raw, "on_failure", f"{path}.on_failure", OnFailure),
        on_compensation_failure=_choice(
            raw, "on_compensation_failure", f"{path}.on_compensation_failure", OnCompensationFailure
        ),
    )


def _expression(raw: Mapping[str, Any], key: str, path: str) -> str | None:
    """A JMESPath expression (SPEC §10), compiled now so a mistake is a 400 at registration."""
    value = raw.get(key)
    if value is None:
        return None
    field = f"{path}.{key}"
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field}: must be a JMESPath expression (a non-empty string)")
    if len(value) > MAX_EXPRESSION_CHARS:
        raise ValidationError(f"{field}: must be at most {MAX_EXPRESSION_CHARS} characters")
    expressions.check(value, field)
    return value


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


def method_is_valid(method: str) -> bool:
    """Whether `method` is a `Service.Method` or `pkg.Service.Method` name."""
    return METHOD_PATTERN.fullmatch(method) is not None


def grpc_path(method: str) -> str:
    """`A.B` as the gRPC path `/A/B`, `pkg.A.B` as `/pkg.A/B` (SPEC §3); ValueError if invalid."""
    if not method_is_valid(method):
        raise ValueError(f"invalid method name: {method!r} (expected Service.Method)")
    service, _, name = method.rpartition(".")
    return f"/{service}/{name}"
