"""Data between steps (SPEC §10) as a user sees it: `saga serve`, the shipped
`order-fulfillment` workflow, a real participant process, sagas started over REST."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.test_serve_and_cli import Server
from tests.harness import ParticipantProcess, wait_until

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


@pytest.fixture
def flow(tmp_path: Path) -> Iterator[tuple[Server, ParticipantProcess]]:
    participant = ParticipantProcess(
        {
            # The charge id exists only in the payment's reply, never in a payload.
            "PaymentService.Charge": {"reply": {"charge_id": "ch_from_the_reply_77"}},
            "ShippingService.CreateShipment": {
                "fail_if_payload": {"field": "address", "equals": "nowhere"},
                "fail": "FAILED_PRECONDITION",
                "message": "address not deliverable",
            },
        },
        tmp_path,
    )
    server = Server(tmp_path, participant.port)
    try:
        yield server, participant
    finally:
        server.stop()
        participant.stop()


def _run(server: Server, payload: dict[str, Any]) -> dict[str, Any]:
    started = requests.post(
        f"{server.url}/api/v1/sagas",
        json={"workflow_name": "order-fulfillment", "payload": payload},
        timeout=10,
    )
    assert started.status_code == 201, started.text
    saga_id = started.json()["saga_id"]

    def ended() -> dict[str, Any] | None:
        detail: dict[str, Any] = requests.get(
            f"{server.url}/api/v1/sagas/{saga_id}", timeout=10
        ).json()
        return detail if detail["saga"]["status"] in TERMINAL else None

    return wait_until(ended, 30, interval=0.1, what="the saga to end")


def _calls(participant: ParticipantProcess, saga_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (c["path"], c["request"])
        for c in participant.calls()
        if c["metadata"].get("x-saga-id") == saga_id
    ]


def test_the_refund_receives_the_charge_id_only_the_payment_reply_held(
    flow: tuple[Server, ParticipantProcess],
) -> None:
    """An order that cannot be shipped is compensated, and the refund's request carries the
    charge id that only the payment's response contained (and its step log shows it)."""
    server, participant = flow
    detail = _run(server, {"order_id": "A-9", "amount": 30, "card": "ok", "address": "nowhere"})
    assert detail["saga"]["status"] == "FAILED"
    calls = _calls(participant, detail["saga"]["saga_id"])
    assert ("/PaymentService/Charge", {"order_id": "A-9", "amount": 30, "card": "ok"}) in calls
    assert (
        "/PaymentService/Refund",
        {"order_id": "A-9", "charge_id": "ch_from_the_reply_77"},
    ) in calls
    refund = next(
        g
        for g in detail["step_logs"]
        if g["step_name"] == "process-payment" and g["action"] == "COMPENSATE"
    )
    assert refund["request_payload"] == {"order_id": "A-9", "charge_id": "ch_from_the_reply_77"}
    charge = next(
        g
        for g in detail["step_logs"]
        if g["step_name"] == "process-payment" and g["action"] == "EXECUTE"
    )
    assert charge["response_payload"] == {"charge_id": "ch_from_the_reply_77"}


def test_a_digital_order_skips_shipping_without_calling_it(
    flow: tuple[Server, ParticipantProcess],
) -> None:
    """`when: !(payload.digital)` is false for a digital order: arrange-shipping is logged
    EXECUTE/SKIPPED, its participant never hears of the saga, and the saga completes."""
    server, participant = flow
    detail = _run(server, {"order_id": "D-1", "amount": 5, "card": "ok", "digital": True})
    assert detail["saga"]["status"] == "COMPLETED"
    trail = [(g["step_name"], g["action"], g["status"]) for g in detail["step_logs"]]
    assert trail == [
        ("reserve-inventory", "EXECUTE", "SUCCESS"),
        ("process-payment", "EXECUTE", "SUCCESS"),
        ("arrange-shipping", "EXECUTE", "SKIPPED"),
    ]
    paths = [path for path, _ in _calls(participant, detail["saga"]["saga_id"])]
    assert "/ShippingService/CreateShipment" not in paths
