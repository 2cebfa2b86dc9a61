"""`saga simulate --explore`: the compensation matrix of a workflow and the warnings a reviewer
gets before it runs, from the pure core alone."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve

from saga.decide import decide
from saga.errors import IllegalEvent
from saga.events import Event, Resume
from saga.explore import Exploration, Row, explore, worst_case_secs
from saga.model import SagaState, Workflow
from saga.workflow import parse_workflow
from saga_cli.main import main
from saga_cli.offline import EXIT_BROKEN_PROMISE, print_exploration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "workflows" / "order-fulfillment.yaml"

TRIO = """\
name: trio
steps:
  - name: reserve
    service: inventory
    method: Inventory.Reserve
    compensate: Inventory.Release
    retry: {max_attempts: 2, initial_interval_ms: 100}
  - name: charge
    service: payment
    method: Payment.Charge
    compensate: Payment.Refund
    input: "{order: payload.order}"
    compensate_input: "{charge_id: steps.charge.response.charge_id}"
    retry: {max_attempts: 2, initial_interval_ms: 100}
  - name: notify
    service: mail
    method: Mail.Send
    retry: {max_attempts: 1}
"""

# Every row of TRIO's matrix with payload {"order": "o-1"} and the charge answering
# {"charge_id": "ch_1"}: `number case => status: error_message`, then each call made, in order,
# as `ACTION step request result [xN attempts]`; `(executor dies)` where a crash row's executor
# died; `Na`, `Nb`: what resuming paused saga N does.
PINNED = """\
1 every participant answers its sample => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
2 reserve: FAILED_PRECONDITION (non-retryable) => FAILED: step reserve failed: FAILED_PRECONDITION: simulated refusal
    EXECUTE reserve {"order":"o-1"} FAILED_PRECONDITION
3 reserve: UNAVAILABLE on all 2 attempts => FAILED: step reserve failed: UNAVAILABLE: simulated outage (attempt 2 of 2)
    EXECUTE reserve {"order":"o-1"} UNAVAILABLE x2
4 reserve: TIMEOUT on all 2 attempts => FAILED: step reserve failed: step timed out after 30s (attempt 2 of 2)
    EXECUTE reserve {"order":"o-1"} TIMEOUT x2
    COMPENSATE reserve {"order":"o-1"} ok
5 reserve: unusable reply (INVALID_RESPONSE) => FAILED: step reserve failed: INVALID_RESPONSE: the reply is not JSON
    EXECUTE reserve {"order":"o-1"} INVALID_RESPONSE
    COMPENSATE reserve {"order":"o-1"} ok
6 charge: FAILED_PRECONDITION (non-retryable) => FAILED: step charge failed: FAILED_PRECONDITION: simulated refusal
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE reserve {"order":"o-1"} ok
7 charge: UNAVAILABLE on all 2 attempts => FAILED: step charge failed: UNAVAILABLE: simulated outage (attempt 2 of 2)
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} UNAVAILABLE x2
    COMPENSATE reserve {"order":"o-1"} ok
8 charge: TIMEOUT on all 2 attempts => FAILED: step charge failed: step timed out after 30s (attempt 2 of 2)
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} TIMEOUT x2
    COMPENSATE charge {"charge_id":null} ok
    COMPENSATE reserve {"order":"o-1"} ok
9 charge: unusable reply (INVALID_RESPONSE) => FAILED: step charge failed: INVALID_RESPONSE: the reply is not JSON
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} INVALID_RESPONSE
    COMPENSATE charge {"charge_id":null} ok
    COMPENSATE reserve {"order":"o-1"} ok
10 charge: its input fails (INVALID_INPUT) => FAILED: step charge failed: INVALID_INPUT: input gave null, not a JSON object
    EXECUTE reserve {"order":"o-1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
11 notify: FAILED_PRECONDITION (non-retryable) => FAILED: step notify failed: FAILED_PRECONDITION: simulated refusal
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
12 notify: UNAVAILABLE on its only attempt => FAILED: step notify failed: UNAVAILABLE: simulated outage
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} UNAVAILABLE
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
13 notify: TIMEOUT on its only attempt => FAILED: step notify failed: step timed out after 30s
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} TIMEOUT
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
14 notify: unusable reply (INVALID_RESPONSE) => FAILED: step notify failed: INVALID_RESPONSE: the reply is not JSON
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} INVALID_RESPONSE
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
15 compensation of reserve: UNAVAILABLE on all 2 attempts (after charge fails) => FAILED: step charge failed: FAILED_PRECONDITION: simulated refusal; compensation failed for: reserve (UNAVAILABLE: simulated outage (attempt 2 of 2))
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE reserve {"order":"o-1"} UNAVAILABLE x2
16 compensation of charge: UNAVAILABLE on all 2 attempts (after notify fails) => FAILED: step notify failed: FAILED_PRECONDITION: simulated refusal; compensation failed for: charge (UNAVAILABLE: simulated outage (attempt 2 of 2))
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE charge {"charge_id":"ch_1"} UNAVAILABLE x2
    COMPENSATE reserve {"order":"o-1"} ok
17 compensation of charge: its compensate_input fails (INVALID_INPUT, after notify fails) => FAILED: step notify failed: FAILED_PRECONDITION: simulated refusal; compensation failed for: charge (INVALID_INPUT: compensate_input gave null, not a JSON object)
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE reserve {"order":"o-1"} ok
18 cancel before reserve => CANCELLED
19 cancel before charge => CANCELLED
    EXECUTE reserve {"order":"o-1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
20 cancel before notify => CANCELLED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
21 cancel after notify, the last step => CANCELLED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
22 pause requested before reserve => PAUSED
22a then resume (continue, the default) => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
22b then resume --action compensate => FAILED: compensation asked for by an operator
23 pause requested before charge => PAUSED
    EXECUTE reserve {"order":"o-1"} ok
23a then resume (continue, the default) => COMPLETED
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
23b then resume --action compensate => FAILED: compensation asked for by an operator
    COMPENSATE reserve {"order":"o-1"} ok
24 pause requested before notify => PAUSED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
24a then resume (continue, the default) => COMPLETED
    EXECUTE notify {"order":"o-1"} ok
24b then resume --action compensate => FAILED: compensation asked for by an operator
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
25 pause requested after notify, the last step => PAUSED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
25a then resume (continue, the default) => COMPLETED
25b then resume --action compensate => FAILED: compensation asked for by an operator
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
26 executor dies just before committing status RUNNING => COMPLETED
    (executor dies)
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
27 executor dies just after committing status RUNNING => COMPLETED
    (executor dies)
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
28 executor dies just before committing reserve EXECUTE SUCCESS => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    (executor dies)
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
29 executor dies just after committing reserve EXECUTE SUCCESS => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    (executor dies)
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
30 executor dies just before committing charge EXECUTE SUCCESS => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    (executor dies)
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
31 executor dies just after committing charge EXECUTE SUCCESS => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    (executor dies)
    EXECUTE notify {"order":"o-1"} ok
32 executor dies just before committing notify EXECUTE SUCCESS => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
    (executor dies)
    EXECUTE notify {"order":"o-1"} ok
33 executor dies just after committing notify EXECUTE SUCCESS => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
    (executor dies)
34 executor dies just before committing status COMPLETED => COMPLETED
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} ok
    (executor dies)
35 after notify fails, executor dies just before committing notify EXECUTE FAILED, status COMPENSATING => FAILED: step notify failed: FAILED_PRECONDITION: simulated refusal
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    (executor dies)
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
36 after notify fails, executor dies just after committing notify EXECUTE FAILED, status COMPENSATING => FAILED: step notify failed: FAILED_PRECONDITION: simulated refusal
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    (executor dies)
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
37 after notify fails, executor dies just before committing charge COMPENSATE SUCCESS => FAILED: step notify failed: FAILED_PRECONDITION: simulated refusal
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE charge {"charge_id":"ch_1"} ok
    (executor dies)
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
38 after notify fails, executor dies just after committing charge COMPENSATE SUCCESS => FAILED: step notify failed: FAILED_PRECONDITION: simulated refusal
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE charge {"charge_id":"ch_1"} ok
    (executor dies)
    COMPENSATE reserve {"order":"o-1"} ok
39 after notify fails, executor dies just before committing reserve COMPENSATE SUCCESS, status FAILED => FAILED: step notify failed: FAILED_PRECONDITION: simulated refusal
    EXECUTE reserve {"order":"o-1"} ok
    EXECUTE charge {"order":"o-1"} ok
    EXECUTE notify {"order":"o-1"} FAILED_PRECONDITION
    COMPENSATE charge {"charge_id":"ch_1"} ok
    COMPENSATE reserve {"order":"o-1"} ok
    (executor dies)
    COMPENSATE reserve {"order":"o-1"} ok
"""


def _lines(number: str, row: Row) -> list[str]:
    head = f"{number} {row.case} => {row.status}"
    out = [head + (f": {row.error_message}" if row.error_message else "")]
    for i, call in enumerate(row.calls):
        if row.recovered_after == i:
            out.append("    (executor dies)")
        request = json.dumps(dict(call.request), separators=(",", ":"))
        attempts = f" x{call.attempts}" if call.attempts > 1 else ""
        out.append(f"    {call.action.value} {call.step} {request} {call.result}{attempts}")
    if row.recovered_after is not None and row.recovered_after >= len(row.calls):
        out.append("    (executor dies)")
    return out


def matrix(exploration: Exploration) -> str:
    lines: list[str] = []
    for n, row in enumerate(exploration.rows, 1):
        lines.extend(_lines(str(n), row))
        for i, follow in enumerate(row.then):
            lines.extend(_lines(f"{n}{'abc'[i]}", follow))
    return "\n".join(lines) + "\n"


def wf(text: str) -> Workflow:
    return parse_workflow(text)


def kinds(exploration: Exploration) -> list[tuple[str, str]]:
    return [(r.kind, r.step) for r in exploration.risks]


def test_the_matrix_of_a_three_step_workflow_is_pinned() -> None:
    """Every row of a 3-step workflow's matrix (case, calls with their requests, final status,
    error message) is exactly the pinned one, and every row kept every promise."""
    exploration = explore(
        wf(TRIO), payload={"order": "o-1"}, samples={"charge": {"charge_id": "ch_1"}}
    )
    assert matrix(exploration) == PINNED
    assert (exploration.cases, exploration.resumes) == (39, 8)
    assert exploration.broken == ()
    assert kinds(exploration) == [("payment-continue", "charge")]


def test_the_sample_workflow_keeps_every_promise_in_every_row() -> None:
    """The shipped order-fulfillment workflow explores without a broken promise, and each
    refund carries the charge id the charge answered (null where it never answered)."""
    from saga_cli.offline import load_workflow

    exploration = explore(
        load_workflow(str(SAMPLE)), samples={"process-payment": {"charge_id": "ch_1"}}
    )
    assert exploration.broken == ()
    seen = 0
    for row in (r for top in exploration.rows for r in (top, *top.then)):
        charged = any(
            c.step == "process-payment" and c.action.value == "EXECUTE" and c.result == "ok"
            for c in row.calls
        )
        for call in row.calls:
            if call.method == "PaymentService.Refund" and row.kind != "resume":
                seen += 1
                assert dict(call.request)["charge_id"] == ("ch_1" if charged else None), row.case
    assert seen > 10


# ---------------------------------------------------------------- warnings

PLAIN_STEP = """\
  - name: {name}
    service: {service}
    method: {method}
"""


def test_a_step_without_compensate_before_steps_that_can_fail_is_warned() -> None:
    """A step with no compensate followed by steps that can fail is named with those steps;
    the same step last (nothing after it to fail) is not."""
    risky = wf(
        "name: w\nsteps:\n"
        "  - {name: audit, service: audit, method: Audit.Record}\n"
        "  - {name: reserve, service: stock, method: Stock.Reserve, compensate: Stock.Release}\n"
        "  - {name: ship, service: ship, method: Ship.Create, compensate: Ship.Cancel}\n"
    )
    risks = explore(risky).risks
    assert [(r.kind, r.step) for r in risks] == [("no-compensate", "audit")]
    assert "when reserve or ship fails for good, its effect stays" in risks[0].text
    safe = wf(
        "name: w\nsteps:\n"
        "  - {name: reserve, service: stock, method: Stock.Reserve, compensate: Stock.Release}\n"
        "  - {name: audit, service: audit, method: Audit.Record}\n"
    )
    assert explore(safe).risks == ()


DATA = """\
name: data
steps:
  - name: reserve
    service: stock
    method: Stock.Reserve
    compensate: Stock.Release
    compensate_input: "{hold: steps.reserve.response.hold}"
  - name: ship
    service: ship
    method: Ship.Create
    compensate: Ship.Cancel
    input: "{hold: steps.reserve.response.hold, box: steps.reserve.response.box.size}"
"""


def test_a_response_field_no_sample_provides_is_warned() -> None:
    """A compensate_input or a later input reading a response field that no sample has is
    named (with the --respond that would give it); samples that have every field are not."""
    risks = explore(wf(DATA), samples={"reserve": {"box": {}}}).risks
    assert [(r.kind, r.step) for r in risks] == [
        ("missing-response", "reserve"),
        ("missing-response", "ship"),
        ("missing-response", "ship"),
    ]
    assert risks[0].text == (
        "reserve.compensate_input reads steps.reserve.response.hold, which no sample of reserve"
        " provides (it is null there); give one with --respond reserve='{\"hold\": ...}'"
    )
    assert "ship.input reads steps.reserve.response.box.size" in risks[2].text
    full = {"reserve": {"hold": "h-1", "box": {"size": 2}}}
    assert explore(wf(DATA), samples=full).risks == ()


def test_reading_a_step_that_has_not_run_or_does_not_exist_is_warned() -> None:
    """An input reading the response of a later step, or of no step at all, is named."""
    text = DATA.replace("steps.reserve.response.box.size", "steps.ship.response.id").replace(
        "steps.reserve.response.hold}", "steps.nope.response.x}"
    )
    texts = [r.text for r in explore(wf(text), samples={"reserve": {"hold": 1}}).risks]
    assert any("steps.ship.response.id, but ship has not run when ship starts" in t for t in texts)
    assert any("steps.nope.response.x, but there is no step nope" in t for t in texts)


DEADLINE = """\
name: slow
deadline_secs: {deadline}
steps:
  - name: reserve
    service: stock
    method: Stock.Reserve
    compensate: Stock.Release
  - name: ship
    service: ship
    method: Ship.Create
    compensate: Ship.Cancel
    timeout_secs: 10
    retry: {{max_attempts: 2, initial_interval_ms: 500}}
"""


def test_a_deadline_shorter_than_the_worst_case_forward_path_is_warned() -> None:
    """deadline_secs under the sum of timeouts x attempts + backoff names the step during
    which it passes; a deadline above it is not warned."""
    assert worst_case_secs(wf(DEADLINE.format(deadline=1)).steps[0]) == 30 * 3 + 1 + 2
    risks = explore(wf(DEADLINE.format(deadline=100))).risks
    assert [(r.kind, r.step) for r in risks] == [("deadline-too-short", "ship")]
    assert "deadline_secs 100 is shorter than the forward path's worst case, 113.5 s" in (
        risks[0].text
    )
    assert explore(wf(DEADLINE.format(deadline=114))).risks == ()


PAYMENT = """\
name: pay
{policy}
steps:
  - name: take-money
    service: billing
    method: Billing.Charge
    compensate: Billing.Refund
"""


def test_continue_on_a_payment_like_compensation_is_warned_and_called_a_heuristic() -> None:
    """on_compensation_failure: continue on a payment-like step is warned, saying it is a
    heuristic; with pause, or on a step that does not look like a payment, it is not."""
    risks = explore(wf(PAYMENT.format(policy=""))).risks
    assert [(r.kind, r.step) for r in risks] == [("payment-continue", "take-money")]
    assert "a heuristic" in risks[0].text and "Billing.Refund is the only undo" in risks[0].text
    paused = PAYMENT.format(policy="on_compensation_failure: pause")
    assert explore(wf(paused)).risks == ()
    stock = PAYMENT.format(policy="").replace("take-money", "hold").replace("billing", "stock")
    stock = stock.replace("Billing.Charge", "Stock.Reserve").replace("Billing.Refund", "S.Free")
    assert explore(wf(stock)).risks == ()


GATED = """\
name: gated
steps:
  - name: reserve
    service: stock
    method: Stock.Reserve
    compensate: Stock.Release
  - name: gift
    service: gifts
    method: Gifts.Send
    compensate: Gifts.Recall
    when: "payload.vip"
"""


def test_a_step_whose_when_is_false_on_the_samples_is_warned_unreachable() -> None:
    """A step never called in any case (its when false on the payload and samples) is named;
    with a payload that makes it true, it is not."""
    risks = explore(wf(GATED)).risks
    assert [(r.kind, r.step) for r in risks] == [("unreachable", "gift")]
    assert "`payload.vip`" in risks[0].text
    assert explore(wf(GATED), payload={"vip": True}).risks == ()


# ---------------------------------------------------------------- pauses and deadlines


def test_a_paused_saga_shows_the_default_resume_and_compensate() -> None:
    """With on_failure: pause a failed step pauses the saga, and its row is followed by the
    default resume (retry: the step runs again and the saga completes) and compensate."""
    text = GATED.replace("name: gated\n", "name: gated\non_failure: pause\n").replace(
        '    when: "payload.vip"\n', ""
    )
    rows = {r.case: r for r in explore(wf(text)).rows}
    row = rows["gift: FAILED_PRECONDITION (non-retryable)"]
    assert (row.status, row.error_message) == (
        "PAUSED",
        "step gift failed: FAILED_PRECONDITION: simulated refusal",
    )
    retry, compensate = row.then
    assert retry.case == "then resume (retry, the default)"
    assert [(c.action.value, c.step, c.result) for c in retry.calls] == [("EXECUTE", "gift", "ok")]
    assert retry.status == "COMPLETED"
    assert compensate.case == "then resume --action compensate"
    assert [(c.action.value, c.step) for c in compensate.calls] == [("COMPENSATE", "reserve")]
    assert compensate.status == "FAILED"


def test_a_compensation_that_pauses_is_followed_by_its_retry_only() -> None:
    """With on_compensation_failure: pause, a compensation failing for good pauses the saga;
    the default resume retries it (no compensate: it is already compensating)."""
    text = GATED.replace("name: gated\n", "name: gated\non_compensation_failure: pause\n")
    rows = {r.case: r for r in explore(wf(text), payload={"vip": True}).rows}
    row = rows["compensation of reserve: UNAVAILABLE on all 3 attempts (after gift fails)"]
    assert row.status == "PAUSED"
    assert row.error_message == (
        "compensation of reserve failed: UNAVAILABLE: simulated outage (attempt 3 of 3)"
    )
    (retry,) = row.then
    assert retry.case == "then resume (retry, the default)"
    assert [(c.action.value, c.step, c.result) for c in retry.calls] == [
        ("COMPENSATE", "reserve", "ok")
    ]
    assert (retry.status, retry.error_message) == (
        "FAILED",
        "step gift failed: FAILED_PRECONDITION: simulated refusal",
    )


def test_the_deadline_passing_mid_call_keeps_its_outcome_and_fails_what_comes_next() -> None:
    """The deadline passing while a step is in flight: its success is kept and compensated,
    the next step fails with `deadline exceeded`; a failure gets no retry."""
    rows = {r.case: r for r in explore(wf(DEADLINE.format(deadline=3600))).rows}
    ok = rows["deadline passes while reserve is in flight (it then succeeds)"]
    assert [(c.action.value, c.step, c.result) for c in ok.calls] == [
        ("EXECUTE", "reserve", "ok"),
        ("COMPENSATE", "reserve", "ok"),
    ]
    assert (ok.status, ok.error_message) == ("FAILED", "step ship failed: deadline exceeded")
    failed = rows["deadline passes while ship is in flight (it fails with UNAVAILABLE)"]
    assert [(c.step, c.result, c.attempts) for c in failed.calls][-2:] == [
        ("ship", "UNAVAILABLE", 1),
        ("reserve", "ok", 1),
    ]
    assert failed.error_message == (
        "step ship failed: deadline exceeded (last attempt: UNAVAILABLE: simulated outage)"
    )
    last = rows["deadline passes while ship is in flight (it then succeeds)"]
    assert last.status == "COMPLETED"


# ---------------------------------------------------------------- a bug of ours is loud


def _loses_cancels(state: SagaState, workflow: Workflow, event: Event) -> Any:
    if isinstance(event, Resume):
        event = evolve(event, cancel_requested=False)
    return decide(state, workflow, event)


def test_a_decision_that_breaks_a_promise_is_reported_loudly() -> None:
    """A decide that loses cancels answered 200 makes every cancel row broken; the command
    prints BROKEN PROMISE on the row and a BUG banner, and exits 3."""
    exploration = explore(wf(TRIO), decider=_loses_cancels)
    broken = dict(exploration.broken)
    assert set(broken) == {r.case for r in exploration.rows if r.kind == "cancel"}
    assert broken["cancel before charge"] == (
        "cancel_200_completed: a cancel was answered 200, but the saga ended COMPLETED"
    )
    for fmt in ("text", "markdown", "json"):
        out, err = io.StringIO(), io.StringIO()
        assert print_exploration(exploration, fmt, out, err) == EXIT_BROKEN_PROMISE == 3
        assert err.getvalue().startswith("BUG: 4 broken promise(s) of the saga core")
        assert "cancel before charge: cancel_200_completed" in err.getvalue()
    text = io.StringIO()
    print_exploration(exploration, "text", text, io.StringIO())
    assert "!!! BROKEN PROMISE (a bug of the saga server): cancel_200_completed" in text.getvalue()


def test_a_decision_that_raises_is_a_broken_row_not_a_crash() -> None:
    """A decide that raises on some event gives that row status ERROR and a decide_raised
    finding; the other rows are still explored."""

    def refuses_timeouts(state: SagaState, workflow: Workflow, event: Event) -> Any:
        if getattr(event, "timed_out", False):
            raise IllegalEvent("timeouts are not handled")
        return decide(state, workflow, event)

    exploration = explore(wf(TRIO), decider=refuses_timeouts)
    rows = {r.case: r for r in exploration.rows}
    row = rows["charge: TIMEOUT on all 2 attempts"]
    assert row.status == "ERROR"
    assert row.broken == ("decide_raised: IllegalEvent: timeouts are not handled",)
    assert rows["every participant answers its sample"].status == "COMPLETED"


# ---------------------------------------------------------------- the command


def write(tmp_path: Path, text: str, name: str = "w.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


CLEAN = """\
name: clean
steps:
  - {name: reserve, service: stock, method: Stock.Reserve, compensate: Stock.Release}
  - {name: ship, service: ship, method: Ship.Create, compensate: Ship.Cancel}
"""


def test_exit_codes_0_without_warnings_1_with_2_for_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--explore exits 0 for a workflow without warnings, 1 with warnings (for CI), 2 for an
    invalid or missing file and for flags that do not go with it."""
    assert main(["simulate", write(tmp_path, CLEAN), "--explore"]) == 0
    out = capsys.readouterr().out
    assert "clean: 27 cases explored over 2 steps" in out and "NO WARNINGS" in out
    assert main(["simulate", str(SAMPLE), "--explore"]) == 1
    assert "WARNINGS (2)" in capsys.readouterr().out
    bad = write(tmp_path, "name: w\nsteps: []\n", "bad.yaml")
    assert main(["simulate", bad, "--explore"]) == 2
    assert f"{bad}: steps: must have at least one step" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "missing.yaml"), "--explore"]) == 2
    assert "missing.yaml: file not found" in capsys.readouterr().err
    assert main(["simulate", str(SAMPLE), "--explore", "--fail", "process-payment"]) == 2
    assert "--fail: not with --explore" in capsys.readouterr().err
    assert main(["simulate", str(SAMPLE), "--explore", "--respond", "nope={}"]) == 2
    assert "--respond: expected STEP=JSON" in capsys.readouterr().err
    assert main(["simulate", str(SAMPLE), "--format", "json"]) == 2
    assert "--format: only with --explore" in capsys.readouterr().err


def test_the_respond_samples_clear_a_missing_field_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--respond gives a participant's sample: the refund's charge id is then in the matrix
    and no longer warned about."""
    code = main(
        [
            "simulate",
            str(SAMPLE),
            "--explore",
            "--respond",
            'process-payment={"charge_id": "ch_1"}',
            "--payload",
            '{"order_id": "A-1"}',
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert (
        'PaymentService.Refund          ok                  {"order_id":"A-1","charge_id":"ch_1"}'
        in out
    )
    assert "[missing-response]" not in out and "[payment-continue]" in out


def test_json_output_has_every_row_call_and_warning(capsys: pytest.CaptureFixture[str]) -> None:
    """--format json writes the matrix for tooling: one entry per case (follow-ups in `then`),
    each call with its request, the warnings and no broken promise."""
    assert main(["simulate", str(SAMPLE), "--explore", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {
        "workflow",
        "steps",
        "cases",
        "resumes",
        "payload",
        "samples",
        "rows",
        "warnings",
        "broken",
    }
    assert data["workflow"] == "order-fulfillment" and data["cases"] == len(data["rows"]) == 41
    assert sum(len(r["then"]) for r in data["rows"]) == data["resumes"] == 8
    row_keys = {"id", "case", "kind", "step", "calls", "status", "error_message"}
    row_keys |= {"recovered_after", "broken"}
    assert all(set(r) == row_keys | {"then"} for r in data["rows"])
    assert all(set(f) == row_keys for r in data["rows"] for f in r["then"])
    first = data["rows"][0]
    assert first["calls"][1] == {
        "action": "EXECUTE",
        "step": "process-payment",
        "method": "PaymentService.Charge",
        "request": {"order_id": None, "amount": None, "card": None},
        "attempts": 1,
        "result": "ok",
    }
    paused = next(r for r in data["rows"] if r["then"])
    assert [f["id"] for f in paused["then"]] == [paused["id"] + "a", paused["id"] + "b"]
    assert [(w["kind"], w["step"]) for w in data["warnings"]] == [
        ("missing-response", "process-payment"),
        ("payment-continue", "process-payment"),
    ]
    assert data["broken"] == []


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_markdown_output_is_one_table_row_per_case_with_pipes_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--format markdown writes a legend, a five-column table with one row per case and
    follow-up (a pipe in a request escaped, so no row gains a cell) and the warnings."""
    code = main(
        [
            "simulate",
            write(tmp_path, TRIO),
            "--explore",
            "--format",
            "markdown",
            "--payload",
            '{"order": "a|b"}',
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "### trio: compensation matrix"
    header = lines.index("| # | case | calls, in order | final status | error_message |")
    assert lines[header + 1] == "|---|---|---|---|---|"
    table = [line for line in lines[header + 2 :] if line.startswith("| ")]
    assert len(table) == 39 + 8
    assert all(len(_cells(line)) == 5 for line in table)
    assert _cells(table[0]) == [
        "1",
        "every participant answers its sample",
        '`EXECUTE reserve {"order":"a\\|b"}` ok<br>`EXECUTE charge {"order":"a\\|b"}` ok<br>'
        '`EXECUTE notify {"order":"a\\|b"}` ok',
        "**COMPLETED**",
        "",
    ]
    resumed = next(line for line in table if _cells(line)[0] == "22a")
    assert _cells(resumed)[1] == "↳ then resume (continue, the default)"
    crash = next(line for line in table if "*executor dies*" in line)
    assert "executor dies just before committing status RUNNING" in crash
    assert "#### Warnings (2)" in lines
    assert any(line.startswith("- **charge** (`missing-response`): ") for line in lines)
    assert any(line.startswith("- **charge** (`payment-continue`): ") for line in lines)
    assert lines[-1].startswith("Invariants: every row was checked") and lines[-1].endswith(
        "all kept."
    )


def twenty_steps() -> str:
    """A 20-step workflow with every feature the exploration looks at."""
    lines = ["name: twenty", "deadline_secs: 900", "on_compensation_failure: pause", "steps:"]
    for i in range(20):
        lines += [
            f"  - name: s{i}",
            f"    service: svc{i}",
            f"    method: S{i}.Do",
            f"    compensate: S{i}.Undo",
            f'    input: "{{order: payload.order, prev: steps.s{max(i - 1, 0)}.response.id}}"',
            f'    compensate_input: "{{id: steps.s{i}.response.id}}"',
            "    retry: {max_attempts: 5, initial_interval_ms: 100}",
        ]
        if i % 4 == 3:
            lines.append('    when: "payload.order"')
        if i % 5 == 4:
            lines.append("    on_failure: pause")
    return "\n".join(lines) + "\n"


def test_a_twenty_step_workflow_explores_in_under_ten_seconds(tmp_path: Path) -> None:
    """The whole command on a 20-step workflow (every failure point, about 270 cases and
    their resumes, each checked against the invariants) takes well under 10 s and prints the
    case count (about 1 s on 2 shared cores, interpreter start-up included)."""
    path = write(tmp_path, twenty_steps())
    samples = [f's{i}={{"id": {i}}}' for i in range(20)]
    args = [arg for s in samples for arg in ("--respond", s)]
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saga_cli.main",
            "simulate",
            path,
            "--explore",
            *args,
            "--payload",
            '{"order": "o-1"}',
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    first = result.stdout.splitlines()[0]
    count = int(re.fullmatch(r"twenty: (\d+) cases explored over 20 steps, and \d+ .*", first)[1])
    assert count > 250
    assert "Invariants: every row was checked" in result.stdout
    assert elapsed < 10, elapsed


def test_the_exploration_is_pure() -> None:
    """Importing saga.explore loads no I/O library (it is part of the pure core)."""
    code = (
        "import sys, saga.explore\n"
        "bad = {'flask', 'grpc', 'psycopg', 'psycopg_pool', 'kafka', 'sqlite3', 'socket', "
        "'gunicorn'}\n"
        "print(sorted(bad & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_shows_the_real_output_of_the_sample_exploration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's `--explore --format markdown` output for the sample workflow is exactly
    what the command prints now."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "saga simulate workflows/order-fulfillment.yaml --explore --format markdown" in readme
    start = readme.index("```markdown\n### order-fulfillment: compensation matrix") + 12
    shown = readme[start : readme.index("```\n", start)]
    assert main(["simulate", str(SAMPLE), "--explore", "--format", "markdown"]) == 1
    assert capsys.readouterr().out == shown
