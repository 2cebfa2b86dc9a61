"""The layout's rules, read from the code itself: every `import` of every project module (at the
top or inside a function) is collected from the source, and the arrows must point inward.

    saga_cli  ->  saga_http, saga_grpc  ->  workers.service  ->  workers.interpreter
                                                     \\              |
                                                      +-> workers.adapters, workers.config -> saga

`saga` is the pure core (tests/unit/test_core_purity.py checks it loads no I/O library).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("saga", "workers", "saga_http", "saga_grpc", "saga_cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Each project module and the project modules it imports."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "gen" in path.relative_to(ROOT).parts:
                continue
            name = _module_name(path)
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found.update(f"{node.module}.{alias.name}" for alias in node.names)
            graph[name] = {m for m in found if m.split(".")[0] in PACKAGES}
    return graph


GRAPH = _imports()


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# (who, what it must never import, why)
RULES = [
    ("saga", ("workers", "saga_http", "saga_grpc", "saga_cli"), "the core knows no shell"),
    ("workers", ("saga_http", "saga_grpc", "saga_cli"), "the shell never imports an entry point"),
    (
        "workers.adapters",
        ("workers.service", "workers.interpreter", "workers.scripted_participants"),
        "adapters report facts; they do not call the service or the interpreter",
    ),
    ("workers.interpreter", ("workers.service",), "the interpreter does not call the service"),
    ("saga_http", ("saga_grpc", "saga_cli"), "one API does not import the other"),
    ("saga_grpc", ("saga_http", "saga_cli"), "one API does not import the other"),
]


@pytest.mark.parametrize(("who", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_dependencies_point_inward(who: str, forbidden: tuple[str, ...], why: str) -> None:
    """No module of `who` imports any of `forbidden`."""
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _within(module, who)
        for target in targets
        if any(_within(target, f) for f in forbidden)
    )
    assert not bad, f"{why}: " + "; ".join(bad)


def test_nothing_imports_an_entry_point() -> None:
    """saga_cli (the `saga` command) is imported by no other package, and the scripted
    participant server only by the demo command."""
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if (_within(target, "saga_cli") and not _within(module, "saga_cli"))
        or (
            _within(target, "workers.scripted_participants")
            and not _within(module, "saga_cli")
            and not _within(module, "workers.scripted_participants")
        )
    )
    assert not bad, "; ".join(bad)


def test_no_import_cycles() -> None:
    """The module import graph has no cycle (counting imports inside functions too)."""
    modules = set(GRAPH)
    edges = {
        m: {t for t in GRAPH[m] if t in modules and t != m} | _parents_of(GRAPH[m], modules, m)
        for m in modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def _parents_of(targets: set[str], modules: set[str], me: str) -> set[str]:
    """`from a.b import c` names `a.b.c`; when that is not a module, the edge is to `a.b`."""
    out = set()
    for t in targets:
        if t not in modules:
            parent = t.rsplit(".", 1)[0]
            if parent in modules and parent != me:
                out.add(parent)
    return out
