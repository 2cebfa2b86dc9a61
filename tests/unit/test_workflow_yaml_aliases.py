"""Ordinary YAML in workflow files (SPEC §2): anchors, aliases and merge keys mean what YAML
says, and the alias expansion is bounded, checked on the node graph before anything is built."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from saga.codec import workflow_to_dict
from saga.errors import ValidationError
from saga.model import Workflow
from saga.workflow import MAX_ALIAS_NODES, load_document, parse_workflow
from tests.unit.strategies import workflows


def _definition(workflow: Workflow) -> dict[str, Any]:
    """The workflow as the dict a user would dump: no version, absent optionals left out."""
    doc = workflow_to_dict(workflow)
    doc.pop("version")
    for step in doc["steps"]:
        if step["compensate"] is None:
            del step["compensate"]
        if step["retry"]["max_interval_ms"] is None:
            del step["retry"]["max_interval_ms"]
    return doc


def _alias_free(doc: Any) -> str:
    """The same document with every shared object written out in full."""
    return yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False)


@st.composite
def shared_definitions(draw: Any) -> dict[str, Any]:
    """A valid definition in which some steps share one retry dict, and steps with equal
    non_retryable_codes share one list, so `safe_dump` writes `&id001` / `*id001`."""
    doc = _definition(draw(workflows(min_steps=2, max_steps=8)))
    steps = doc["steps"]
    codes: dict[tuple[str, ...], list[str]] = {}
    for step in steps:
        own = step["retry"]["non_retryable_codes"]
        step["retry"]["non_retryable_codes"] = codes.setdefault(tuple(own), own)
    sharing = draw(st.lists(st.sampled_from(range(len(steps))), min_size=2, unique=True))
    for index in sharing[1:]:
        steps[index]["retry"] = steps[sharing[0]]["retry"]
    return doc


@given(shared_definitions())
def test_safe_dump_with_aliases_parses_like_its_alias_free_form(doc: dict[str, Any]) -> None:
    """Any document PyYAML's safe_dump writes for a definition with shared sub-objects (so
    with anchors and aliases) parses to the same workflow as the document written out."""
    text = yaml.safe_dump(doc, sort_keys=False)
    assert "&id001" in text and "*id001" in text
    assert parse_workflow(text) == parse_workflow(_alias_free(doc))


@given(workflows(min_steps=2, max_steps=8), st.data())
def test_merge_keys_take_the_anchor_and_let_own_keys_win(workflow: Workflow, data: Any) -> None:
    """`- {<<: *first, ...own keys}` gives each step the first step's keys overridden by its
    own, exactly as if the merged mapping had been written out."""
    steps = _definition(workflow)["steps"]
    first = steps[0]
    own = [
        {k: v for k, v in step.items() if k == "name" or data.draw(st.booleans(), label=k)}
        for step in steps[1:]
    ]
    lines = ["name: wf", "steps:", f"  - &first {json.dumps(first)}"]
    lines += ["  - {<<: *first, " + json.dumps(step)[1:] for step in own]
    merged = [first, *({**first, **step} for step in own)]
    expected = parse_workflow(_alias_free({"name": "wf", "steps": merged}))
    assert parse_workflow("\n".join(lines) + "\n") == expected


@st.composite
def alias_trees(draw: Any) -> tuple[str, int]:
    """A document of anchored levels, each a sequence or mapping of aliases to the level
    below, and the number of nodes its aliases stand for, counted independently."""
    leaves = draw(st.integers(0, 5))
    text = "l0: &l0 [" + ", ".join(f"leaf{i}" for i in range(leaves)) + "]\n"
    size = 1 + leaves  # nodes under l0, the sequence itself included
    added = 0
    for level in range(1, draw(st.integers(1, 7)) + 1):
        fan_out = draw(st.integers(1, 12))
        below = f"*l{level - 1}"
        if draw(st.booleans()):
            text += f"l{level}: &l{level} [" + ", ".join([below] * fan_out) + "]\n"
            size_here = 1 + fan_out * size
        else:
            pairs = ", ".join(f"k{i}: {below}" for i in range(fan_out))
            text += f"l{level}: &l{level} {{{pairs}}}\n"
            size_here = 1 + fan_out * (1 + size)
        added += fan_out * size  # every alias stands for a whole copy of the level below
        size = size_here
    return text, added


@given(alias_trees(), st.integers(0, 3 * MAX_ALIAS_NODES))
def test_alias_expansion_bound_holds_for_generated_trees(tree: tuple[str, int], limit: int) -> None:
    """A document whose aliases stand for at most `limit` nodes loads as PyYAML loads it; one
    over the limit is refused, naming the expansion, in well under a second."""
    text, added = tree
    started = time.perf_counter()
    if added <= limit:
        assert load_document(text, max_alias_nodes=limit) == yaml.safe_load(text)
    else:
        with pytest.raises(ValidationError, match=r"^workflow_yaml: aliases expand to"):
            load_document(text, max_alias_nodes=limit)
    assert time.perf_counter() - started < 1.0


def test_the_default_bound_is_ten_thousand_alias_nodes() -> None:
    """10,000 aliases of a scalar pass the YAML stage (the unknown key is the next problem);
    10,001 are refused."""
    head = "name: w\nsteps: []\nlabel: &a x\n"
    at_bound = head + "more: [" + ",".join(["*a"] * MAX_ALIAS_NODES) + "]\n"
    with pytest.raises(ValidationError, match=r"^label: unknown key"):
        parse_workflow(at_bound)
    over = head + "more: [" + ",".join(["*a"] * (MAX_ALIAS_NODES + 1)) + "]\n"
    with pytest.raises(ValidationError, match=r"^workflow_yaml: aliases expand to 10001 more"):
        parse_workflow(over)


def test_a_deep_alias_bomb_is_refused_quickly() -> None:
    """Thirty levels of ten aliases (10^30 nodes expanded) cost milliseconds to refuse."""
    text = "l0: &l0 [lol]\n" + "".join(
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 31)
    )
    started = time.perf_counter()
    with pytest.raises(ValidationError, match="aliases expand"):
        parse_workflow("name: w\nsteps: []\n" + text)
    assert time.perf_counter() - started < 0.5
