"""Workflow YAML parsing and validation (SPEC §2)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from hypothesis import given

from saga.codec import workflow_from_dict, workflow_to_dict
from saga.errors import ValidationError
from saga.model import Backoff
from saga.workflow import parse_workflow
from tests.unit.strategies import workflows

GOOD = """
name: order-fulfillment
steps:
  - name: reserve-inventory
    service: inventory-service
    method: InventoryService.Reserve
    compensate: InventoryService.Release
    timeout_secs: 30
    retry:
      max_attempts: 3
      backoff: exponential
      initial_interval_ms: 1000
  - name: notify
    service: mail-service
    method: pkg.v1.Mail.Send
"""


def test_a_good_document_parses_with_defaults() -> None:
    """Every field is read, and absent ones take the documented defaults."""
    wf = parse_workflow(GOOD)
    assert wf.name == "order-fulfillment"
    assert wf.step_names == ("reserve-inventory", "notify")
    first, second = wf.steps
    assert first.compensate == "InventoryService.Release"
    assert first.retry.max_attempts == 3 and first.retry.initial_interval_ms == 1000
    assert second.compensate is None
    assert second.timeout_secs == 30
    assert second.retry.backoff is Backoff.EXPONENTIAL
    assert "INVALID_ARGUMENT" in second.retry.non_retryable_codes


def _steps(extra: str) -> str:
    return f"name: w\nsteps:\n  - name: a\n    service: s\n    method: S.A\n{extra}"


BAD: list[tuple[str, str]] = [
    ("", "workflow_yaml: the document is empty"),
    ("- a\n- b\n", "workflow_yaml: the document must be a mapping"),
    ("name: w\n", "steps: is required"),
    ("name: w\nsteps: []\n", "steps: must have at least one step"),
    ("name: w\nsteps: {}\n", "steps: must be a list"),
    ("steps:\n  - name: a\n    service: s\n    method: S.A\n", "name: is required"),
    ("name: ''\nsteps: []\n", "name: must not be empty"),
    ("name: 5\nsteps: []\n", "name: must be a string"),
    ("name: w\ncolour: red\nsteps: []\n", "colour: unknown key"),
    (_steps("    colour: red\n"), "steps[0].colour: unknown key"),
    (_steps("    timeout_secs: 0\n"), "steps[0].timeout_secs: must be > 0"),
    (_steps("    timeout_secs: -3\n"), "steps[0].timeout_secs: must be > 0"),
    (_steps("    timeout_secs: soon\n"), "steps[0].timeout_secs: must be a number"),
    (_steps("    retry:\n      max_attempts: 0\n"), "steps[0].retry.max_attempts: must be >= 1"),
    (
        _steps("    retry:\n      max_attempts: 2.5\n"),
        "steps[0].retry.max_attempts: must be an integer",
    ),
    (
        _steps("    retry:\n      backoff: linear\n"),
        "steps[0].retry.backoff: unknown backoff 'linear'",
    ),
    (
        _steps("    retry:\n      max_interval_ms: 0\n"),
        "steps[0].retry.max_interval_ms: must be > 0",
    ),
    (_steps("    retry:\n      jitter: 1\n"), "steps[0].retry.jitter: must be true or false"),
    (
        _steps("    retry:\n      non_retryable_codes: [NOPE]\n"),
        "steps[0].retry.non_retryable_codes[0]: 'NOPE'",
    ),
    (_steps("    retry:\n      wait: 1\n"), "steps[0].retry.wait: unknown key"),
    (
        _steps("    compensate: nodot\n"),
        "steps[0].compensate: 'nodot' must look like Service.Method",
    ),
    (
        _steps("  - name: a\n    service: s\n    method: S.B\n"),
        "steps[1].name: duplicate step name 'a'",
    ),
    ("name: w\nsteps:\n  - name: a\n    service: s\n", "steps[0].method: is required"),
    (
        "name: w\nsteps:\n  - name: a\n    service: 127.0.0.1:80/x\n    method: S.A\n",
        "steps[0].service: '127.0.0.1:80/x' is not a service name",
    ),
    ("name: w\nname: v\nsteps: []\n", "workflow_yaml: duplicate key 'name'"),
    ("name: [unclosed\n", "workflow_yaml: not valid YAML"),
    ("base: &b {name: a}\nname: w\nsteps: []\n", "base: unknown key"),
    (
        "name: !!python/object/apply:os.system ['true']\nsteps: []\n",
        "workflow_yaml: tags other than YAML's standard ones are not allowed: "
        "!!python/object/apply:os.system (line 1, column 7)",
    ),
    ("name: !!binary aGVsbG8=\nsteps: []\n", "workflow_yaml: tags other than"),
    ("name: !!set {a: null}\nsteps: []\n", "workflow_yaml: tags other than"),
    ("name: !local w\nsteps: []\n", "workflow_yaml: tags other than"),
    ("name: !<tag:example.com,2026:x> w\nsteps: []\n", "workflow_yaml: tags other than"),
    ("name: !!bool maybe\nsteps: []\n", "workflow_yaml: a value does not fit its type or tag"),
    ("name: 2026-02-20\nsteps: []\n", "name: must be a string"),
    (
        _steps("    timeout_secs: " + "9" * 5000 + "\n"),
        "workflow_yaml: a number has too many digits",
    ),
    ("name: w\nsteps: *nothing\n", "workflow_yaml: not valid YAML: found undefined alias"),
    ("name: w\nsteps: &a [*a]\n", "workflow_yaml: an alias refers to a node that contains it"),
    (
        "name: w\nsteps:\n  - <<: {name: a}\n    <<: {service: s}\n    method: S.A\n",
        "workflow_yaml: duplicate key '<<'",
    ),
    ("name: w\nsteps:\n  - <<: [1]\n", "workflow_yaml: not valid YAML"),
    ('name: "a\\0b"\nsteps: []\n', "name: contains a NUL character"),
    (_steps('    compensate: "S.\\0"\n'), "steps[0].compensate: contains a NUL character"),
    (
        _steps('    retry: {non_retryable_codes: [ABORTED, "\\ud800"]}\n'),
        "steps[0].retry.non_retryable_codes[1]: contains a lone surrogate",
    ),
    (_steps('    "x\\0": 1\n'), "steps[0]: a key contains a NUL character"),
    ('name: "\\ud83d\\ude00"\nsteps: []\n', "name: contains a lone surrogate"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_document_is_refused_naming_the_field(text: str, message: str) -> None:
    """Each broken rule gives a ValidationError whose message starts with the field path."""
    with pytest.raises(ValidationError) as info:
        parse_workflow(text)
    assert info.value.message.startswith(message), info.value.message


def test_billion_laughs_is_refused_before_expansion() -> None:
    """Nine levels of nine aliases (about 387 million nodes) are refused from the node graph
    in milliseconds, naming the alias expansion."""
    bomb = 'name: w\nsteps: []\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        bomb += f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
    started = time.perf_counter()
    with pytest.raises(ValidationError, match=r"^workflow_yaml: aliases expand to \d+ more nodes"):
        parse_workflow(bomb)
    assert time.perf_counter() - started < 0.5


def test_anchors_aliases_and_merge_keys_mean_what_yaml_says() -> None:
    """A shared retry policy (&/*) and a hand-written `<<: *defaults` give the same workflow as
    the document written out in full; the mapping's own keys win over merged ones."""
    with_aliases = """
name: order-fulfillment
steps:
  - &defaults
    name: reserve-inventory
    service: inventory-service
    method: InventoryService.Reserve
    compensate: InventoryService.Release
    retry: &retry {max_attempts: 5, backoff: fixed, initial_interval_ms: 250}
  - <<: *defaults
    name: notify
    method: pkg.v1.Mail.Send
    compensate: null
  - <<: [{timeout_secs: 7}, *defaults]
    name: ship
    retry: *retry
"""
    written_out = """
name: order-fulfillment
steps:
  - name: reserve-inventory
    service: inventory-service
    method: InventoryService.Reserve
    compensate: InventoryService.Release
    retry: {max_attempts: 5, backoff: fixed, initial_interval_ms: 250}
  - name: notify
    service: inventory-service
    method: pkg.v1.Mail.Send
    retry: {max_attempts: 5, backoff: fixed, initial_interval_ms: 250}
  - name: ship
    service: inventory-service
    method: InventoryService.Reserve
    compensate: InventoryService.Release
    timeout_secs: 7
    retry: {max_attempts: 5, backoff: fixed, initial_interval_ms: 250}
"""
    assert parse_workflow(with_aliases) == parse_workflow(written_out)
    assert parse_workflow(with_aliases).steps[1].compensate is None


def test_standard_tags_are_accepted() -> None:
    """Explicit core-schema tags (`!!str`, `!!int`, `!!map`, `!!seq`) are ordinary YAML."""
    text = (
        "!!map\nname: !!str w\nsteps: !!seq\n  - name: a\n    service: s\n    method: S.A\n"
        "    retry: {max_attempts: !!int '4'}\n"
    )
    workflow = parse_workflow(text)
    assert workflow.name == "w" and workflow.steps[0].retry.max_attempts == 4


def test_size_and_step_limits() -> None:
    """A document over 64 KiB or over 200 steps is refused; the limits are parameters."""
    big = "name: w\n# " + "x" * (64 * 1024) + "\nsteps: []\n"
    with pytest.raises(ValidationError, match="over the 65536-byte limit"):
        parse_workflow(big)
    many = "name: w\nsteps:\n" + "".join(
        f"  - {{name: s{i}, service: s, method: S.A}}\n" for i in range(201)
    )
    with pytest.raises(ValidationError, match="201 steps, over the limit of 200"):
        parse_workflow(many)
    assert len(parse_workflow(many, max_steps=201).steps) == 201


def test_known_services_are_enforced_when_given() -> None:
    """With a service list, a step naming another service is refused."""
    with pytest.raises(
        ValidationError, match=r"steps\[1\].service: service not registered: mail-service"
    ):
        parse_workflow(GOOD, known_services={"inventory-service"})
    parse_workflow(GOOD, known_services={"inventory-service", "mail-service"})


def _to_yaml(wf: Any) -> str:
    doc = workflow_to_dict(wf)
    doc.pop("version")
    for step in doc["steps"]:
        if step["compensate"] is None:
            del step["compensate"]
        if step["retry"]["max_interval_ms"] is None:
            del step["retry"]["max_interval_ms"]
    return yaml.safe_dump(doc, sort_keys=False)


@given(workflows())
def test_any_valid_workflow_survives_yaml_and_json_round_trips(wf: Any) -> None:
    """Dumping a workflow to YAML and parsing it back, or to JSON and back, changes nothing."""
    assert parse_workflow(_to_yaml(wf)) == wf
    assert workflow_from_dict(workflow_to_dict(wf)) == wf
