"""Golden histories: recorded runs of `decide` that every later version must replay exactly.

A change to a rule that would make a saga already in flight take another path breaks the replay
test. To record them again after a deliberate, compatible change:

    .venv/bin/python -m tests.unit.golden --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from saga.codec import effect_to_dict, event_to_dict, state_to_dict, workflow_to_dict
from saga.model import Action
from saga.simulation import SUCCESS, Outcome, Run, run, start_state
from saga.workflow import parse_workflow

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "data" / "golden"

WORKFLOW = """
name: golden
steps:
  - name: reserve
    service: inventory
    method: Inventory.Reserve
    compensate: Inventory.Release
    retry: {max_attempts: 3, initial_interval_ms: 100}
  - name: audit
    service: audit
    method: Audit.Record
  - name: charge
    service: payment
    method: pay.v1.Payment.Charge
    compensate: pay.v1.Payment.Refund
    timeout_secs: 2
    retry: {max_attempts: 4, backoff: fixed, initial_interval_ms: 500, jitter: true}
  - name: ship
    service: shipping
    method: Shipping.Create
    compensate: Shipping.Cancel
    retry: {max_attempts: 5, initial_interval_ms: 1000, max_interval_ms: 3000}
"""


# Data between steps (SPEC §10): the refund reads the charge id from the payment's reply, and a
# digital order skips shipping.
DATA_WORKFLOW = """
name: golden-data
steps:
  - name: reserve
    service: inventory
    method: Inventory.Reserve
    compensate: Inventory.Release
    input: "{sku: payload.sku}"
  - name: charge
    service: payment
    method: Payment.Charge
    compensate: Payment.Refund
    input: "{order: payload.order_id, amount: payload.amount, hold: steps.reserve.response.hold}"
    compensate_input: "{charge_id: steps.charge.response.charge_id, sent: steps.charge.request}"
  - name: ship
    service: shipping
    method: Shipping.Create
    when: "!(payload.digital)"
  - name: notify
    service: mail
    method: Mail.Send
    input: "{order: payload.order_id, charge: steps.charge.response.charge_id}"
"""


def _script(rules: dict[tuple[int, str, int], Outcome]) -> Any:
    def script(index: int, action: Action, attempt: int) -> Outcome:
        return rules.get((index, action.value, attempt), SUCCESS)

    return script


def _replies(rules: dict[tuple[int, str, int], Outcome], replies: dict[int, Any]) -> Any:
    def script(index: int, action: Action, attempt: int) -> Outcome:
        if (index, action.value, attempt) in rules:
            return rules[(index, action.value, attempt)]
        return Outcome("success", response=replies.get(index, {}))

    return script


def data_scenarios() -> dict[str, Run]:
    wf = parse_workflow(DATA_WORKFLOW)
    replies = {0: {"hold": "h-7"}, 1: {"charge_id": "ch_1"}}
    declined = Outcome("error", code="FAILED_PRECONDITION", message="no such address")
    physical = {"order_id": "o-2", "sku": "s-1", "amount": 7, "digital": False}
    return {
        "data_flow_refund_gets_charge_id": run(
            wf,
            _replies({(3, "EXECUTE", n): declined for n in range(1, 4)}, replies),
            state=start_state(wf, physical),
        ),
        "data_flow_when_skips_a_step": run(
            wf, _replies({}, replies), state=start_state(wf, {**physical, "digital": True})
        ),
    }


def scenarios() -> dict[str, Run]:
    wf = parse_workflow(WORKFLOW)
    fail = Outcome("error", code="UNAVAILABLE", message="try later", jitter=0.5)
    payload = {"order_id": "o-1", "amount": 42}
    start = start_state(wf, payload)
    return {
        "completes": run(wf, _script({}), state=start),
        "retries_then_completes": run(
            wf, _script({(0, "EXECUTE", 1): fail, (2, "EXECUTE", 1): fail}), state=start
        ),
        "last_step_fails_after_retries": run(
            wf, _script({(3, "EXECUTE", n): fail for n in range(1, 6)}), state=start
        ),
        "non_retryable_then_compensation_fails": run(
            wf,
            _script(
                {
                    (2, "EXECUTE", 1): Outcome(
                        "error", code="FAILED_PRECONDITION", message="declined"
                    ),
                    **{(0, "COMPENSATE", n): Outcome("timeout") for n in range(1, 4)},
                }
            ),
            state=start,
        ),
        "timeout": run(
            wf, _script({(2, "EXECUTE", n): Outcome("timeout") for n in range(1, 5)}), state=start
        ),
        "cancelled_after_two_steps": run(
            wf, _script({}), state=start, cancel_when=lambda s: s.current_step >= 2
        ),
        "cancelled_before_start": run(wf, _script({}), state=start, cancel_from_boundary=0),
    }


def record(result: Run, text: str = WORKFLOW) -> dict[str, Any]:
    wf = parse_workflow(text)
    return {
        "workflow": workflow_to_dict(wf),
        "turns": [
            {
                "state": state_to_dict(t.before),
                "event": event_to_dict(t.event),
                "next_state": state_to_dict(t.decision.state),
                "effects": [effect_to_dict(e) for e in t.decision.effects],
            }
            for t in result.turns
        ],
    }


def write() -> None:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    recorded = [(n, r, WORKFLOW) for n, r in scenarios().items()]
    recorded += [(n, r, DATA_WORKFLOW) for n, r in data_scenarios().items()]
    for name, result, text in recorded:
        path = GOLDEN_DIR / f"{name}.json"
        path.write_text(json.dumps(record(result, text), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.unit.golden --write")
    write()
