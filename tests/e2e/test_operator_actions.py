"""Operator actions end to end (SPEC §11), as an operator meets them: real participants in their
own process, `saga serve` (REST in gunicorn workers, the executor in the serve process: every
pause and resume is made in another process than the one executing), the `saga` CLI, and two
API processes and a `saga worker` on one PostgreSQL.

Each test registers its own workflows over REST and sets the participant's behaviour first
(`ParticipantProcess.reset`), so a participant can be "fixed" halfway through a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.e2e.test_serve_and_cli import SAGA, Server
from tests.harness import (
    ParticipantProcess,
    WorkerProcess,
    free_port,
    wait_until,
    write_config,
)

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
SLOW_MS = 1500
DECLINED = {
    "fail_if_payload": {"field": "card", "equals": "declined"},
    "fail": "FAILED_PRECONDITION",
    "message": "payment declined",
}
# The participants as they behave unless a test says otherwise.
BEHAVIOUR: dict[str, Any] = {
    "PaymentService.Charge": DECLINED,
    "ShippingService.CreateShipment": {
        "fail_if_payload": {"field": "address", "equals": "nowhere"},
        "fail": "FAILED_PRECONDITION",
        "message": "no carrier delivers there",
    },
    "InventoryService.Hold": {"sleep_ms": SLOW_MS},
    "InventoryService.LongHold": {"sleep_ms": 3000},
}
# The refund service is down: every refund is refused.
REFUND_DOWN = {"fail": "UNAVAILABLE", "message": "refund service down"}


def step(
    name: str, service: str, method: str, compensate: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A workflow step tried once (a failure is for good at once)."""
    doc: dict[str, Any] = {"name": name, "service": service, "method": method}
    if compensate:
        doc["compensate"] = compensate
    return {**doc, "retry": {"max_attempts": 1}, **extra}


RESERVE = step(
    "reserve", "inventory-service", "InventoryService.Reserve", "InventoryService.Release"
)
CHARGE = step("charge", "payment-service", "PaymentService.Charge", "PaymentService.Refund")
SHIP = step("ship", "shipping-service", "ShippingService.CreateShipment")
HOLD = step("hold", "inventory-service", "InventoryService.Hold", "InventoryService.Unhold")
NOTE = step("note", "inventory-service", "InventoryService.Note", "InventoryService.Unnote")
# Longer than the deadlines below: a call in flight when the deadline passes.
LONG = step("long", "inventory-service", "InventoryService.LongHold", "InventoryService.Unhold")
DEADLINE_SECS = 1.5


class Operator:
    """What an operator does over REST against one API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 15)
        return requests.request(method, self.url + path, **kwargs)

    def register(self, name: str, steps: list[dict[str, Any]], **top: Any) -> str:
        """Register a workflow under a fresh name; return that name."""
        unique = f"{name}-{uuid.uuid4().hex[:6]}"
        text = yaml.safe_dump({"name": unique, **top, "steps": steps}, sort_keys=False)
        response = self.call("POST", "/api/v1/workflows", json={"workflow_yaml": text})
        assert response.status_code == 201, response.text
        return unique

    def start(self, workflow: str, payload: dict[str, Any]) -> str:
        response = self.call(
            "POST", "/api/v1/sagas", json={"workflow_name": workflow, "payload": payload}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["saga_id"])

    def detail(self, saga_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/api/v1/sagas/{saga_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, saga_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.detail(saga_id))
            return found["saga"]["status"] in statuses

        wait_until(reached, timeout, what=f"saga {saga_id} to be {' or '.join(statuses)}")
        return found

    def pause(self, saga_id: str) -> requests.Response:
        return self.call("POST", f"/api/v1/sagas/{saga_id}/pause")

    def resume(self, saga_id: str, body: dict[str, Any] | None = None) -> requests.Response:
        return self.call("POST", f"/api/v1/sagas/{saga_id}/resume", json=body or {})

    def cancel(self, saga_id: str) -> requests.Response:
        return self.call("POST", f"/api/v1/sagas/{saga_id}/cancel")


def logs(detail: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(g["step_name"], g["action"], g["status"]) for g in detail["step_logs"]]


def audit(detail: dict[str, Any]) -> list[tuple[str, str | None, bool]]:
    return [
        (a["action"], a["resume_action"], a["payload_replaced"]) for a in detail["operator_actions"]
    ]


def calls_of(participant: ParticipantProcess, saga_id: str) -> list[tuple[str, str, Any]]:
    """This saga's participant calls: (method path, idempotency key, request)."""
    return [
        (c["path"], c["metadata"].get("idempotency-key", ""), c["request"])
        for c in participant.calls()
        if c["metadata"].get("x-saga-id") == saga_id
    ]


def assert_conflict(response: requests.Response, *words: str) -> None:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "SYS_SAGA_CONFLICT"
    for word in words:
        assert word in error["message"], error["message"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def participant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParticipantProcess]:
    proc = ParticipantProcess(BEHAVIOUR, tmp_path_factory.mktemp("participant"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, participant: ParticipantProcess
) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("serve"), participant.port)
    try:
        yield srv
    finally:
        assert srv.stop() == 0


@pytest.fixture
def op(server: Server, participant: ParticipantProcess) -> Operator:
    participant.reset(BEHAVIOUR)
    return Operator(server.url)


# ----------------------------------------------------------------------------- failures


def test_a_declined_payment_pauses_and_a_retry_with_a_new_payload_completes(
    op: Operator, participant: ParticipantProcess
) -> None:
    """With on_failure: pause, a declined payment leaves the saga PAUSED (its FAILED log kept,
    the reason in error_message, nothing compensated, nothing more called); resume with retry
    and a replacement payload runs the payment again under the same idempotency key with the new
    payload, then the rest, to COMPLETED."""
    flow = op.register("pay-pause", [RESERVE, CHARGE, SHIP], on_failure="pause")
    saga_id = op.start(flow, {"order": "E-1", "card": "declined"})
    paused = op.wait(saga_id, "PAUSED")
    assert logs(paused) == [("reserve", "EXECUTE", "SUCCESS"), ("charge", "EXECUTE", "FAILED")]
    assert "payment declined" in paused["saga"]["error_message"]
    assert paused["saga"]["current_step"] == 1
    time.sleep(0.5)  # nothing runs while it is paused
    assert logs(op.detail(saga_id)) == logs(paused)
    assert [c[0] for c in calls_of(participant, saga_id)] == [
        "/InventoryService/Reserve",
        "/PaymentService/Charge",
    ]

    fixed = {"order": "E-1", "card": "ok"}
    answer = op.resume(saga_id, {"action": "retry", "payload": fixed})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "success": True,
        "status": "RUNNING",
        "message": f"saga {saga_id} resumed with retry and a replaced payload; now RUNNING",
    }
    done = op.wait(saga_id, *TERMINAL)
    assert done["saga"]["status"] == "COMPLETED", done
    assert done["saga"]["payload"] == fixed and done["saga"]["error_message"] is None
    assert logs(done) == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "FAILED"),
        ("charge", "EXECUTE", "SUCCESS"),
        ("ship", "EXECUTE", "SUCCESS"),
    ]
    charges = [c for c in calls_of(participant, saga_id) if c[0] == "/PaymentService/Charge"]
    assert [key for _, key, _ in charges] == [f"{saga_id}:1:EXECUTE"] * 2
    assert charges[1][2] == fixed
    assert audit(done) == [("resume", "retry", True)]


def test_compensate_from_a_pause_undoes_the_completed_steps(
    op: Operator, participant: ParticipantProcess
) -> None:
    """Resume with compensate from a failure pause compensates the completed steps, newest
    first (not the failed one), and the saga ends FAILED with the failure's reason."""
    flow = op.register("pay-comp", [RESERVE, NOTE, CHARGE, SHIP], on_failure="pause")
    saga_id = op.start(flow, {"card": "declined"})
    op.wait(saga_id, "PAUSED")
    answer = op.resume(saga_id, {"action": "compensate"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "COMPENSATING"
    done = op.wait(saga_id, *TERMINAL)
    assert done["saga"]["status"] == "FAILED"
    assert "payment declined" in done["saga"]["error_message"]
    assert logs(done) == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("note", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "FAILED"),
        ("note", "COMPENSATE", "SUCCESS"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    paths = [c[0] for c in calls_of(participant, saga_id)]
    assert paths[-2:] == ["/InventoryService/Unnote", "/InventoryService/Release"]
    assert "/PaymentService/Refund" not in paths and "/ShippingService/CreateShipment" not in paths
    assert audit(done) == [("resume", "compensate", False)]


def test_a_failed_compensation_pauses_and_a_retry_after_the_fix_finishes_it(
    op: Operator, participant: ParticipantProcess
) -> None:
    """With on_compensation_failure: pause, a refund that fails for good pauses the saga before
    the earlier compensations; once the refund service is fixed, retry runs the refund again
    (same idempotency key) and then the rest: FAILED with every compensation done and none
    named as failed."""
    flow = op.register("comp-pause", [RESERVE, CHARGE, SHIP], on_compensation_failure="pause")
    participant.reset(BEHAVIOUR | {"PaymentService.Refund": REFUND_DOWN})
    saga_id = op.start(flow, {"card": "ok", "address": "nowhere"})
    paused = op.wait(saga_id, "PAUSED")
    assert logs(paused) == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "SUCCESS"),
        ("ship", "EXECUTE", "FAILED"),
        ("charge", "COMPENSATE", "FAILED"),
    ]
    assert "refund service down" in paused["saga"]["error_message"]
    time.sleep(0.5)
    assert "/InventoryService/Release" not in [c[0] for c in calls_of(participant, saga_id)]

    participant.reset(BEHAVIOUR)  # the refund service is back
    answer = op.resume(saga_id, {"action": "retry"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "COMPENSATING"
    done = op.wait(saga_id, *TERMINAL)
    assert done["saga"]["status"] == "FAILED"
    assert logs(done)[4:] == [
        ("charge", "COMPENSATE", "SUCCESS"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    assert "no carrier delivers there" in done["saga"]["error_message"]
    assert "compensation failed" not in done["saga"]["error_message"]
    after_fix = calls_of(participant, saga_id)
    assert [(path, key) for path, key, _ in after_fix] == [
        ("/PaymentService/Refund", f"{saga_id}:1:COMPENSATE"),
        ("/InventoryService/Release", f"{saga_id}:0:COMPENSATE"),
    ]
    assert audit(done) == [("resume", "retry", False)]


# ----------------------------------------------------------------------------- pause requests


def test_a_pause_request_mid_step_stops_at_the_next_boundary(
    op: Operator, participant: ParticipantProcess
) -> None:
    """A pause asked for while a slow step is in flight answers 200 at once; the call is not
    cut (it finishes and is logged SUCCESS), the saga is PAUSED before the next step and calls
    nothing more; continue (the default) runs the rest to COMPLETED."""
    flow = op.register("pause-mid", [RESERVE, HOLD, CHARGE])
    saga_id = op.start(flow, {"card": "ok"})
    wait_until(
        lambda: "/InventoryService/Hold" in [c[0] for c in calls_of(participant, saga_id)],
        20,
        what="the slow step to be called",
    )
    asked = time.monotonic()
    answer = op.pause(saga_id)
    assert time.monotonic() - asked < SLOW_MS / 1000 / 2
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True, "message": f"saga {saga_id} pause requested"}
    paused = op.wait(saga_id, "PAUSED")
    assert logs(paused) == [("reserve", "EXECUTE", "SUCCESS"), ("hold", "EXECUTE", "SUCCESS")]
    assert paused["saga"]["current_step"] == 2 and paused["saga"]["error_message"] is None
    time.sleep(0.5)
    assert "/PaymentService/Charge" not in [c[0] for c in calls_of(participant, saga_id)]

    answer = op.resume(saga_id)
    assert answer.status_code == 200 and answer.json()["status"] == "RUNNING", answer.text
    done = op.wait(saga_id, *TERMINAL)
    assert done["saga"]["status"] == "COMPLETED"
    assert logs(done)[-1] == ("charge", "EXECUTE", "SUCCESS")
    assert audit(done) == [("pause", None, False), ("resume", "continue", False)]


def test_a_paused_saga_can_be_cancelled_and_compensates(
    op: Operator, participant: ParticipantProcess
) -> None:
    """A saga PAUSED in its forward phase accepts a cancel: it compensates what it did and ends
    CANCELLED, and the cancel is in the audit."""
    flow = op.register("pause-cancel", [RESERVE, CHARGE], on_failure="pause")
    saga_id = op.start(flow, {"card": "declined"})
    op.wait(saga_id, "PAUSED")
    answer = op.cancel(saga_id)
    assert answer.status_code == 200, answer.text
    done = op.wait(saga_id, *TERMINAL)
    assert done["saga"]["status"] == "CANCELLED"
    assert logs(done)[-1] == ("reserve", "COMPENSATE", "SUCCESS")
    assert audit(done) == [("cancel", None, False)]


# ----------------------------------------------------------------------------- deadlines


def test_a_deadline_that_expires_mid_saga_fails_the_next_step(
    op: Operator, participant: ParticipantProcess
) -> None:
    """With deadline_secs shorter than a slow step, the step in flight is not cut (it succeeds
    and is compensated with the others); the next step is never called and fails with
    `deadline exceeded`, and the saga ends FAILED, compensated."""
    flow = op.register("deadline", [RESERVE, LONG, CHARGE], deadline_secs=DEADLINE_SECS)
    saga_id = op.start(flow, {"card": "ok"})
    done = op.wait(saga_id, *TERMINAL)
    assert done["saga"]["status"] == "FAILED"
    assert logs(done) == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("long", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "FAILED"),
        ("long", "COMPENSATE", "SUCCESS"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    long, charge = done["step_logs"][1:3]
    created = datetime.fromisoformat(done["saga"]["created_at"])
    assert datetime.fromisoformat(long["completed_at"]) - created > timedelta(seconds=DEADLINE_SECS)
    assert "deadline exceeded" in charge["error_message"]
    assert "deadline exceeded" in done["saga"]["error_message"]
    assert "/PaymentService/Charge" not in [c[0] for c in calls_of(participant, saga_id)]


def test_a_deadline_with_on_failure_pause_waits_for_the_operator(
    op: Operator, participant: ParticipantProcess
) -> None:
    """With on_failure: pause, the step a deadline fails pauses the saga instead; a retry cannot
    beat the deadline (the step fails again, uncalled, and pauses again); compensate ends it
    FAILED with the completed steps undone."""
    flow = op.register(
        "deadline-pause", [RESERVE, LONG, CHARGE], deadline_secs=DEADLINE_SECS, on_failure="pause"
    )
    saga_id = op.start(flow, {"card": "ok"})
    paused = op.wait(saga_id, "PAUSED")
    assert "deadline exceeded" in paused["saga"]["error_message"]
    assert op.resume(saga_id, {"action": "retry"}).status_code == 200
    again = op.wait(saga_id, "PAUSED")
    assert [g for g in logs(again) if g[0] == "charge"] == [("charge", "EXECUTE", "FAILED")] * 2
    assert op.resume(saga_id, {"action": "compensate"}).status_code == 200
    done = op.wait(saga_id, *TERMINAL)
    assert done["saga"]["status"] == "FAILED"
    assert logs(done)[-2:] == [
        ("long", "COMPENSATE", "SUCCESS"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    assert "/PaymentService/Charge" not in [c[0] for c in calls_of(participant, saga_id)]
    assert audit(done) == [("resume", "retry", False), ("resume", "compensate", False)]


# ----------------------------------------------------------------------------- 409


def test_every_refused_operator_action_is_a_409(
    op: Operator, participant: ParticipantProcess
) -> None:
    """Each action SPEC §11 refuses is a 409 with the reason, changing nothing: pause of a
    PAUSED or ended saga, resume of one not PAUSED, continue after a failure, retry or skip
    with nothing failed, and compensate, a payload or a cancel while paused compensating."""
    flow = op.register(
        "conflicts", [RESERVE, CHARGE, SHIP], on_failure="pause", on_compensation_failure="pause"
    )
    slow = op.register("conflicts-slow", [RESERVE, HOLD])
    participant.reset(BEHAVIOUR | {"PaymentService.Refund": REFUND_DOWN})
    forward = op.start(flow, {"card": "declined"})
    backward = op.start(flow, {"card": "ok", "address": "nowhere"})
    requested = op.start(slow, {})
    completed = op.start(flow, {"card": "ok"})
    op.wait(forward, "PAUSED")
    op.wait(backward, "PAUSED")  # ship failed on_failure: pause; compensate it, refund fails
    assert op.resume(backward, {"action": "compensate"}).status_code == 200
    assert logs(op.wait(backward, "PAUSED"))[-1] == ("charge", "COMPENSATE", "FAILED")
    op.wait(requested, "RUNNING")
    assert op.pause(requested).status_code == 200
    op.wait(requested, "PAUSED")
    op.wait(completed, "COMPLETED")
    failed = op.start(op.register("conflicts-fail", [RESERVE, CHARGE]), {"card": "declined"})
    cancelled = op.start(slow, {})
    op.wait(cancelled, "RUNNING")
    assert op.cancel(cancelled).status_code == 200
    op.wait(failed, "FAILED")
    op.wait(cancelled, "CANCELLED")
    running = op.start(op.register("conflicts-long", [RESERVE, LONG]), {})
    op.wait(running, "RUNNING")

    before = {s: op.detail(s) for s in (forward, backward, requested)}
    for saga_id in (forward, backward, requested):
        assert_conflict(op.pause(saga_id), "PAUSED")
    for saga_id, status in ((completed, "COMPLETED"), (failed, "FAILED"), (cancelled, "CANCELLED")):
        assert_conflict(op.pause(saga_id), status)
        assert_conflict(op.resume(saga_id), status, "only PAUSED")
        assert_conflict(op.cancel(saga_id), status)
    assert_conflict(op.resume(running), "RUNNING", "only PAUSED")
    assert_conflict(op.resume(forward, {"action": "continue"}), "retry, skip or compensate")
    assert_conflict(op.resume(requested, {"action": "retry"}), "nothing failed")
    assert_conflict(op.resume(requested, {"action": "skip"}), "nothing failed")
    assert_conflict(op.resume(backward, {"action": "continue"}), "retry or skip")
    assert_conflict(op.resume(backward, {"action": "compensate"}), "already compensating")
    assert_conflict(op.resume(backward, {"action": "retry", "payload": {"card": "x"}}), "payload")
    assert_conflict(op.cancel(backward), "compensating")
    for saga_id, detail in before.items():
        assert op.detail(saga_id) == detail
    assert op.wait(running, *TERMINAL)["operator_actions"] == []


# ----------------------------------------------------------------------------- metrics


def paused_gauge(op: Operator, workflow: str) -> float | None:
    for line in op.call("GET", "/metrics").text.splitlines():
        if line.startswith(f'saga_paused{{workflow="{workflow}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


def scrapes(op: Operator, workflow: str) -> set[float | None]:
    """What 40 scrapes, 4 at a time (so that every REST worker answers some), say."""
    with ThreadPoolExecutor(4) as pool:
        return set(pool.map(lambda _: paused_gauge(op, workflow), range(40)))


def test_saga_paused_on_every_rest_worker_is_the_count_now(op: Operator) -> None:
    """Whichever gunicorn worker answers /metrics, saga_paused{workflow} is the number of that
    workflow's sagas PAUSED now: 2 while two are (every worker asked), 0 once both ended, even
    when the worker that answers is not the one that counted 2 last."""
    flow = op.register("gauge", [CHARGE], on_failure="pause")
    ids = [op.start(flow, {"card": "declined"}) for _ in range(2)]
    for saga_id in ids:
        op.wait(saga_id, "PAUSED")
    assert scrapes(op, flow) == {2}
    for saga_id in ids:
        assert op.resume(saga_id, {"action": "compensate"}).status_code == 200
        op.wait(saga_id, *TERMINAL)
    # One scrape at a time, as Prometheus does: each answered by whichever worker is free.
    assert {paused_gauge(op, flow) for _ in range(5)} <= {0, None}


# ----------------------------------------------------------------------------- the CLI


def test_cli_pause_resume_and_get_show_the_operator_actions(
    server: Server, op: Operator, tmp_path: Path
) -> None:
    """`saga resume ID --action retry --payload @file` resumes a failed saga with the file's
    payload; `saga get` lists the resume in the timeline; `saga pause` of an ended saga exits
    non-zero with the server's code and reason; a bad --payload exits 2 sending nothing."""
    flow = op.register("cli-one", [RESERVE, CHARGE], on_failure="pause")
    saga_id = op.start(flow, {"card": "declined"})
    op.wait(saga_id, "PAUSED")
    bad = server.cli("resume", saga_id, "--payload", "{not json")
    assert bad.returncode == 2 and "--payload: not valid JSON" in bad.stderr
    assert op.detail(saga_id)["operator_actions"] == []
    payload = tmp_path / "fixed.json"
    payload.write_text(json.dumps({"card": "ok"}))
    resumed = server.cli("resume", saga_id, "--action", "retry", "--payload", f"@{payload}")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == (
        f"saga {saga_id} resumed with retry and a replaced payload; now RUNNING"
    )
    op.wait(saga_id, "COMPLETED")
    shown = server.cli("get", saga_id)
    assert shown.returncode == 0, shown.stderr
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    operator = [line for line in lines if "OPERATOR" in line]
    assert len(operator) == 1 and "resume retry (payload replaced) by -" in operator[0]
    # In time order: after the failed charge, before the charge that succeeded.
    order = [
        line.split()[1:3] for line in lines if line.split()[1:2] in (["EXECUTE"], ["OPERATOR"])
    ]
    assert order == [
        ["EXECUTE", "reserve"],
        ["EXECUTE", "charge"],
        ["OPERATOR", "resume"],
        ["EXECUTE", "charge"],
    ]
    as_json = json.loads(server.cli("get", saga_id, "--json").stdout)
    assert [a["resume_action"] for a in as_json["operator_actions"]] == ["retry"]

    refused = server.cli("pause", saga_id)
    assert refused.returncode != 0
    assert "SYS_SAGA_CONFLICT" in refused.stderr and "COMPLETED" in refused.stderr
    running = op.start(op.register("cli-slow", [RESERVE, HOLD]), {})
    op.wait(running, "RUNNING")
    paused = server.cli("pause", running)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == f"saga {running} pause requested"
    op.wait(running, "PAUSED")
    assert server.cli("resume", running).returncode == 0
    op.wait(running, "COMPLETED")


def test_cli_bulk_resume_walks_every_page_and_reports_each_saga(
    server: Server, op: Operator, participant: ParticipantProcess
) -> None:
    """`saga resume --status PAUSED --workflow W --action compensate` resumes every PAUSED saga
    of W over more than one page of the list, printing one line per saga (its id, ok or 409,
    the message); the one it cannot resume makes the exit status 1; sagas of other workflows
    are left alone."""
    flow = op.register(
        "bulk", [RESERVE, CHARGE], on_failure="pause", on_compensation_failure="pause"
    )
    other = op.register("bulk-other", [RESERVE, CHARGE], on_failure="pause")
    participant.reset(
        BEHAVIOUR
        | {
            "InventoryService.Release": {
                "fail_if_payload": {"field": "release", "equals": "broken"},
                "fail": "FAILED_PRECONDITION",
                "message": "release refused",
            }
        }
    )
    # One saga PAUSED while compensating: compensate does not fit it (409).
    stuck = op.start(flow, {"card": "declined", "release": "broken"})
    op.wait(stuck, "PAUSED")
    assert op.resume(stuck, {"action": "compensate"}).status_code == 200
    assert logs(op.wait(stuck, "PAUSED"))[-1] == ("reserve", "COMPENSATE", "FAILED")
    ids = [op.start(flow, {"card": "declined", "n": n}) for n in range(101)]
    untouched = op.start(other, {"card": "declined"})
    for saga_id in [*ids, untouched]:
        op.wait(saga_id, "PAUSED", timeout=60)

    result = server.cli(
        "resume", "--status", "PAUSED", "--workflow", flow, "--action", "compensate"
    )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "101 resumed, 1 failed"
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[:-1]}
    assert set(rows) == {*ids, stuck}
    for saga_id in ids:
        assert rows[saga_id] == ["ok", f"saga {saga_id} resumed with compensate; now COMPENSATING"]
    assert rows[stuck][0] == "409" and "already compensating" in rows[stuck][1]
    for saga_id in ids:
        done = op.wait(saga_id, *TERMINAL)
        assert done["saga"]["status"] == "FAILED"
        assert logs(done)[-1] == ("reserve", "COMPENSATE", "SUCCESS")
    assert op.detail(untouched)["saga"]["status"] == "PAUSED"
    assert op.detail(untouched)["operator_actions"] == []

    usage = server.cli("resume", ids[0], "--workflow", flow)
    assert usage.returncode == 2 and "not both" in usage.stderr
    other_status = server.cli("resume", "--status", "FAILED", "--workflow", flow)
    assert other_status.returncode == 2 and "only PAUSED" in other_status.stderr
    many = server.cli("resume", "--workflow", flow, "--payload", "{}")
    assert many.returncode == 2 and "--payload: only with one saga id" in many.stderr


# ----------------------------------------------------------------------------- other processes


class ApiProcess:
    """`saga serve` that only serves (saga.execute: false) on a shared PostgreSQL."""

    def __init__(self, tmp: Path, name: str, participant_port: int, database_url: str) -> None:
        self.rest, self.grpc = free_port(), free_port()
        config = write_config(
            tmp / f"{name}.yaml",
            port=participant_port,
            database_url=database_url,
            workflow_dir=tmp / "no-workflows",
            extra={
                "server": {"host": "127.0.0.1", "port": self.rest, "workers": 1},
                "grpc": {"host": "127.0.0.1", "port": self.grpc},
                "saga": {"execute": False},
            },
        )
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "DATABASE_URL" and not k.startswith("SAGA_SAGA")
        }
        self.proc = subprocess.Popen(
            [*SAGA, "serve", "--config", str(config)],
            cwd=tmp,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.rest}"

        def ready() -> bool:
            assert self.proc.poll() is None, (tmp / f"{name}.log").read_text()
            try:
                return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, interval=0.2, what=f"{name} to be ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def test_pause_and_resume_through_other_processes_on_postgres(
    tmp_path: Path, postgres_database: str
) -> None:
    """Two API processes and one `saga worker` on one PostgreSQL: a saga the worker paused on a
    failure is resumed with a new payload through one API and completes in the worker; a pause
    asked through the other API is seen by the worker and the saga is resumed through the first;
    both APIs show the same audit."""
    participant = ParticipantProcess(BEHAVIOUR, tmp_path)
    started: list[Any] = [participant]
    try:
        first = ApiProcess(tmp_path, "api-1", participant.port, postgres_database)
        started.append(first)
        second = ApiProcess(tmp_path, "api-2", participant.port, postgres_database)
        started.append(second)
        worker_config = write_config(
            tmp_path / "worker.yaml",
            port=participant.port,
            database_url=postgres_database,
            workflow_dir=tmp_path / "no-workflows",
        )
        worker = WorkerProcess(worker_config, tmp_path / "worker.log")
        started.append(worker)
        one, two = Operator(first.url), Operator(second.url)

        flow = one.register("scaled", [RESERVE, HOLD, CHARGE], on_failure="pause")
        failing = one.start(flow, {"card": "declined"})
        two.wait(failing, "PAUSED")
        answer = two.resume(failing, {"payload": {"card": "ok"}})
        assert answer.status_code == 200, answer.text
        done = one.wait(failing, *TERMINAL)
        assert done["saga"]["status"] == "COMPLETED"
        assert audit(done) == [("resume", "retry", True)]

        slow = two.start(flow, {"card": "ok"})
        wait_until(
            lambda: "/InventoryService/Hold" in [c[0] for c in calls_of(participant, slow)],
            20,
            what="the slow step to be called",
        )
        assert two.pause(slow).status_code == 200
        paused = one.wait(slow, "PAUSED")
        assert paused["operator_actions"][0]["action"] == "pause"
        time.sleep(0.5)
        assert one.detail(slow)["saga"]["status"] == "PAUSED"
        assert one.resume(slow).status_code == 200
        done = two.wait(slow, *TERMINAL)
        assert done["saga"]["status"] == "COMPLETED"
        assert audit(done) == [("pause", None, False), ("resume", "continue", False)]
        assert one.detail(slow) == two.detail(slow)
        calls = calls_of(participant, slow)
        assert [path for path, _, _ in calls].count("/PaymentService/Charge") == 1
        assert worker.proc.poll() is None, worker.log_text()
    finally:
        for proc in reversed(started):
            proc.stop()
