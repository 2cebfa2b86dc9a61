"""Data between steps (SPEC §10): `input`, `when` and `compensate_input` under `decide`, over
random workflows whose expressions read the payload and earlier steps' responses."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st

from saga.decide import decide
from saga.errors import ValidationError
from saga.events import CallParticipant, Commit, Resume
from saga.invariants import violations
from saga.model import (
    Action,
    RetryPolicy,
    SagaStatus,
    Step,
    StepStatus,
    Workflow,
    steps_from_logs,
)
from saga.simulation import Outcome, record_of, run, start_state
from saga.workflow import parse_workflow
from tests.unit.strategies import outcomes

PAYLOAD = {"order": "o-1", "flag": True, "amount": 5, "items": [1, 2]}


def _name(i: int) -> str:
    return f"step-{i}"


@st.composite
def data_workflows(draw: Any) -> Workflow:
    n = draw(st.integers(1, 6))
    steps = []
    for i in range(n):
        earlier = [_name(j) for j in range(i)]
        inputs = [None, "payload", "{order: payload.order, amount: payload.amount}", "`{}`"]
        whens = [None, "payload.flag", "`false`", "`true`", "payload.missing"]
        if earlier:
            j = draw(st.sampled_from(earlier))
            inputs.append(f'{{order: payload.order, prev: steps."{j}".response.value}}')
            whens.append(f'steps."{j}".response.ok')
        inputs.append("payload.items")  # not an object: the step fails as INVALID_INPUT
        compensate = draw(st.booleans())
        comp_inputs: list[str | None] = [None]
        if compensate:
            comp_inputs += [
                f'{{undo: steps."{_name(i)}".response.value, sent: steps."{_name(i)}".request}}',
                "{order: payload.order}",
            ]
        steps.append(
            Step(
                name=_name(i),
                service="svc",
                method=f"Svc{i}.Do",
                compensate=f"Svc{i}.Undo" if compensate else None,
                timeout_secs=1,
                retry=RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_interval_ms=10),
                input=draw(st.sampled_from(inputs)),
                when=draw(st.sampled_from(whens)),
                compensate_input=draw(st.sampled_from(comp_inputs)),
            )
        )
    return Workflow(name="data", steps=tuple(steps))


@st.composite
def data_scenarios(draw: Any) -> tuple[Workflow, dict[Any, Outcome], int | None]:
    wf = draw(data_workflows())
    table: dict[Any, Outcome] = {}
    for i, step in enumerate(wf.steps):
        for action in (Action.EXECUTE, Action.COMPENSATE):
            for attempt in range(1, step.retry.max_attempts + 1):
                outcome = draw(outcomes)
                if outcome.kind == "success":
                    ok = draw(st.booleans())
                    outcome = Outcome("success", response={"value": f"v{i}-{attempt}", "ok": ok})
                table[(i, action, attempt)] = outcome
    cancel_after = draw(st.none() | st.integers(0, len(wf.steps)))
    return wf, table, cancel_after


def _run(wf: Workflow, table: dict[Any, Outcome], cancel_after: int | None) -> Any:
    return run(
        wf,
        lambda i, a, n: table[(i, a, n)],
        state=start_state(wf, PAYLOAD),
        cancel_when=None if cancel_after is None else (lambda s: s.current_step >= cancel_after),
        max_decisions=10_000,
    )


def _context(done: dict[str, Any], state: Any) -> dict[str, Any]:
    """The SPEC §10 context, built here independently of the core."""
    return {
        "payload": dict(state.payload),
        "saga": {
            "id": state.saga_id,
            "workflow_name": state.workflow_name,
            "correlation_id": state.correlation_id,
            "initiated_by": state.initiated_by,
        },
        "steps": done,
    }


@given(data_scenarios())
def test_every_request_is_its_expression_over_the_responses_committed_before(
    scenario: Any,
) -> None:
    """Each execution's request (first attempt and retries alike) is its `input` evaluated
    over the responses of the steps committed before it; each compensation's request is its
    `compensate_input` with the step's own request and response, else the forward request."""
    wf, table, cancel_after = scenario
    result = _run(wf, table, cancel_after)
    done: dict[str, Any] = {}
    sent: dict[int, Any] = {}
    for turn in result.turns:
        for effect in turn.decision.effects:
            if isinstance(effect, Commit):
                for log in effect.step_logs:
                    if log.action is Action.EXECUTE and log.status is StepStatus.SUCCESS:
                        done[log.step_name] = {
                            "request": log.request_payload,
                            "response": log.response_payload,
                        }
            if not isinstance(effect, CallParticipant):
                continue
            step = wf.steps[effect.step_index]
            if effect.action is Action.EXECUTE:
                expected = (
                    PAYLOAD
                    if step.input is None
                    else jmespath.search(step.input, _context(done, turn.before))
                )
                if effect.attempt > 1:
                    assert effect.payload == sent[effect.step_index]
                assert effect.payload == expected
                sent[effect.step_index] = effect.payload
            else:
                mine = done.get(step.name) or {
                    "request": sent.get(effect.step_index),
                    "response": None,
                }
                if step.compensate_input is None:
                    assert effect.payload == mine["request"]
                else:
                    ctx = _context({**done, step.name: mine}, turn.before)
                    assert effect.payload == jmespath.search(step.compensate_input, ctx)


@given(data_scenarios())
def test_a_step_whose_when_is_false_is_never_called_nor_compensated(scenario: Any) -> None:
    """A step logged EXECUTE/SKIPPED was not called and is not compensated; every saga keeps
    the promises of saga.invariants."""
    wf, table, cancel_after = scenario
    result = _run(wf, table, cancel_after)
    logs = [log for c in result.commits for log in c.step_logs]
    skipped = {
        g.step_index for g in logs if g.action is Action.EXECUTE and g.status is StepStatus.SKIPPED
    }
    called = {c.step_index for c in result.calls}
    compensated = {g.step_index for g in logs if g.action is Action.COMPENSATE}
    assert not skipped & called
    assert not skipped & compensated
    assert violations(record_of(result, wf, cancel_accepted=cancel_after is not None)) == []


@given(data_scenarios())
def test_an_input_that_is_not_an_object_fails_the_step_uncalled(scenario: Any) -> None:
    """A step whose request expression gives something other than a JSON object fails at once
    as INVALID_INPUT, is never called and never retried."""
    wf, table, cancel_after = scenario
    result = _run(wf, table, cancel_after)
    logs = [log for c in result.commits for log in c.step_logs]
    for log in logs:
        if log.action is Action.EXECUTE and (log.error_message or "").startswith("INVALID_INPUT"):
            assert not [c for c in result.calls if c.step_index == log.step_index]
            assert log.status is StepStatus.FAILED
            assert result.final.status in (SagaStatus.FAILED, SagaStatus.CANCELLED)


@given(data_scenarios())
def test_the_steps_a_store_rebuilds_from_logs_are_the_ones_decide_holds(scenario: Any) -> None:
    """At every commit, `steps` rebuilt from the logs written so far (what a store gives a
    recovered saga) equals the state's own: recovery sees the same context."""
    wf, table, cancel_after = scenario
    result = _run(wf, table, cancel_after)
    logs: list[Any] = []
    for commit in result.commits:
        logs.extend(commit.step_logs)
        assert steps_from_logs(logs) == dict(commit.state.steps)


def test_without_expressions_every_request_is_the_payload() -> None:
    """A workflow without `input` or `compensate_input` sends the payload to every step and
    compensation, as before expressions existed."""
    wf = Workflow(
        name="plain",
        steps=tuple(Step(_name(i), "svc", f"S{i}.Do", compensate=f"S{i}.Undo") for i in range(3)),
    )
    fail_last = {(2, Action.EXECUTE, n): Outcome("error", code="NOT_FOUND") for n in (1, 2, 3)}
    result = run(
        wf,
        lambda i, a, n: fail_last.get((i, a, n), Outcome("success", response={"x": i})),
        state=start_state(wf, PAYLOAD),
    )
    assert [c.payload for c in result.calls] == [PAYLOAD] * 5
    assert all(g.request_payload == PAYLOAD for c in result.commits for g in c.step_logs)


def test_the_refund_gets_the_charge_id_only_the_payment_answered() -> None:
    """The compensation of a payment receives the charge id from the payment's response; a
    step whose `when` is false is skipped, never called, never compensated."""
    wf = parse_workflow(
        """
name: orders
steps:
  - name: reserve
    service: inventory
    method: Inventory.Reserve
    compensate: Inventory.Release
  - name: process-payment
    service: payment
    method: Payment.Charge
    compensate: Payment.Refund
    input: "{order_id: payload.order_id, amount: payload.amount}"
    compensate_input: '{charge_id: steps."process-payment".response.charge_id}'
  - name: arrange-shipping
    service: shipping
    method: Shipping.Arrange
    when: "!(payload.digital)"
  - name: notify
    service: mail
    method: Mail.Send
"""
    )
    replies = {1: {"charge_id": "ch_1"}}
    failures = {(3, Action.EXECUTE, n): Outcome("error", code="NOT_FOUND") for n in (1, 2, 3)}
    result = run(
        wf,
        lambda i, a, n: failures.get((i, a, n), Outcome("success", response=replies.get(i, {}))),
        state=start_state(wf, {"order_id": "A-1", "amount": 10, "digital": True}),
    )
    calls = [(c.step_name, c.action.value, dict(c.payload)) for c in result.calls]
    assert ("process-payment", "EXECUTE", {"order_id": "A-1", "amount": 10}) in calls
    assert ("process-payment", "COMPENSATE", {"charge_id": "ch_1"}) in calls
    assert not [c for c in calls if c[0] == "arrange-shipping"]
    logs = [
        (g.step_name, g.action.value, g.status.value) for c in result.commits for g in c.step_logs
    ]
    assert ("arrange-shipping", "EXECUTE", "SKIPPED") in logs
    assert not [g for g in logs if g[0] == "arrange-shipping" and g[1] == "COMPENSATE"]
    assert result.final.status is SagaStatus.FAILED


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("input", "{a: ", "steps[0].input: Invalid jmespath expression"),
        ("when", "payload.[", "steps[0].when: "),
        ("compensate_input", "a ||| b", "steps[0].compensate_input: "),
        ("input", "", "steps[0].input: must be a JMESPath expression"),
    ],
)
def test_an_expression_that_does_not_compile_is_refused_naming_its_field(
    key: str, text: str, message: str
) -> None:
    """Registration compiles every expression; a bad one is a ValidationError naming the field."""
    doc = (
        "name: x\nsteps:\n  - name: a\n    service: s\n    method: S.A\n    compensate: S.U\n"
        f"    {key}: {text!r}\n"
    )
    with pytest.raises(ValidationError) as caught:
        parse_workflow(doc)
    assert caught.value.message.startswith(message), caught.value.message


def test_a_recovered_saga_sends_the_request_it_sent_before() -> None:
    """Resuming from a committed state (steps rebuilt from its logs) makes the same request for
    the next step as the unbroken run did."""
    wf = parse_workflow(
        """
name: chain
steps:
  - name: a
    service: s
    method: S.A
  - name: b
    service: s
    method: S.B
    input: '{from_a: steps.a.response.token}'
"""
    )
    whole = run(
        wf,
        lambda i, a, n: Outcome("success", response={"token": f"t{i}"}),
        state=start_state(wf, {}),
    )
    after_a = next(c.state for c in whole.commits if c.state.current_step == 1)
    logs = [g for c in whole.commits for g in c.step_logs if g.step_index == 0]
    # What a store hands a recovered saga: the committed columns, `steps` rebuilt from logs.
    loaded = evolve(after_a, steps=steps_from_logs(logs))
    assert loaded == after_a
    recovered = decide(loaded, wf, Resume(at=after_a.updated_at))
    [call] = [e for e in recovered.effects if isinstance(e, CallParticipant)]
    assert dict(call.payload) == {"from_a": "t0"}
