"""The REST operator actions (SPEC §4, §11) as a client sees them, fast: the app on a real
127.0.0.1 socket over an engine executing sagas on a SQLite file against an in-process
participant. Every 400 names the field, every 409 says why and changes nothing; the saga
detail lists the actions; GET /api/v1/workflows/<name> gives a definition that registers again
as the same one; the saga_paused gauge follows the store."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml

from saga_http.app import create_app
from tests.integration.test_openapi import LoopbackServer
from tests.integration.test_rest_api import assert_error
from workers.config import load_config
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
BEHAVIOUR: dict[str, Any] = {
    "Inventory.Release": {
        "fail_if_payload": {"field": "release", "equals": "broken"},
        "fail": "FAILED_PRECONDITION",
        "message": "release refused",
    },
    "Payment.Charge": {
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "payment declined",
    },
    "Slow.Hang": {"sleep_ms": 500},
}


def _steps(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": "reserve",
            "service": "shop",
            "method": "Inventory.Reserve",
            "compensate": "Inventory.Release",
            "retry": {"max_attempts": 1},
        },
        *extra,
        {
            "name": "charge",
            "service": "shop",
            "method": "Payment.Charge",
            "retry": {"max_attempts": 1},
        },
    ]


WORKFLOWS: dict[str, dict[str, Any]] = {
    # A declined payment pauses the saga (forward phase).
    "op-pay": {"on_failure": "pause", "steps": _steps()},
    # A declined payment compensates; a refused release pauses it (compensating phase).
    "op-comp": {"on_compensation_failure": "pause", "steps": _steps()},
    # A slow middle step, to pause on request.
    "op-slow": {
        "steps": _steps(
            {"name": "hold", "service": "shop", "method": "Slow.Hang", "retry": {"max_attempts": 1}}
        )
    },
}


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 15)
        return requests.request(method, self.base + path, **kwargs)

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

    def wait(self, saga_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            detail = self.detail(saga_id)
            if detail["saga"]["status"] in statuses:
                return detail
            assert time.monotonic() < deadline, f"{saga_id} still {detail['saga']['status']}"
            time.sleep(0.03)

    def pause(self, saga_id: str) -> requests.Response:
        return self.call("POST", f"/api/v1/sagas/{saga_id}/pause")

    def resume(self, saga_id: str, body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        return self.call("POST", f"/api/v1/sagas/{saga_id}/resume", **kwargs)

    def gauge(self) -> dict[str, float]:
        text = self.call("GET", "/metrics").text
        found = {}
        for line in text.splitlines():
            if line.startswith("saga_paused{"):
                labels, value = line.rsplit(" ", 1)
                found[labels[len('saga_paused{workflow="') : -2]] = float(value)
        return found


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    participant, port = start_participant_server(BEHAVIOUR)
    directory = tmp_path_factory.mktemp("operator-rest")
    config_path = directory / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "services": {"shop": {"host": "127.0.0.1", "port": port}},
                "saga": {
                    "sqlite_path": str(directory / "saga.sqlite3"),
                    "workflow_dir": str(directory / "none"),
                    "claim_interval_ms": 30,
                },
            }
        )
    )
    config = load_config(str(config_path))
    engine = Engine.from_config(config)
    engine.start()
    server = LoopbackServer(create_app(config, engine))
    client = Api(server.base)
    try:
        for name, doc in WORKFLOWS.items():
            text = yaml.safe_dump({"name": name, **doc}, sort_keys=False)
            response = client.call("POST", "/api/v1/workflows", json={"workflow_yaml": text})
            assert response.status_code == 201, response.text
        yield client
    finally:
        server.close()
        engine.close(grace_secs=2)
        participant.stop(grace=None).wait(5)


@pytest.fixture(scope="module")
def failed_forward(api: Api) -> str:
    """A saga PAUSED because its payment was declined (forward phase)."""
    saga_id = api.start("op-pay", {"card": "declined"})
    api.wait(saga_id, "PAUSED")
    return saga_id


@pytest.fixture(scope="module")
def failed_compensating(api: Api) -> str:
    """A saga PAUSED because the compensation of reserve was refused (compensating phase)."""
    saga_id = api.start("op-comp", {"card": "declined", "release": "broken"})
    api.wait(saga_id, "PAUSED")
    return saga_id


@pytest.fixture(scope="module")
def requested(api: Api) -> str:
    """A saga PAUSED on a pause request: nothing failed."""
    saga_id = api.start("op-slow", {})
    api.wait(saga_id, "RUNNING")
    assert api.pause(saga_id).status_code == 200
    api.wait(saga_id, "PAUSED")
    return saga_id


@pytest.fixture(scope="module")
def ended(api: Api) -> dict[str, str]:
    """One saga in each terminal status."""
    completed = api.start("op-pay", {"card": "ok"})
    failed = api.start("op-comp", {"card": "declined"})
    cancelled = api.start("op-slow", {})
    api.wait(cancelled, "RUNNING")
    assert api.call("POST", f"/api/v1/sagas/{cancelled}/cancel").status_code == 200
    found = {api.wait(s, *TERMINAL)["saga"]["status"]: s for s in (completed, failed, cancelled)}
    assert set(found) == set(TERMINAL), found
    return found


# ----------------------------------------------------------------------------- 400


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"[1]", "application/json", "request body: must be a JSON object"),
        (b'"retry"', "application/json", "request body: must be a JSON object"),
        (b'{"action": "retry",}', "application/json", "malformed JSON"),
        (b'{"action": "later"}', "application/json", "action: must be one of"),
        (b'{"action": 5}', "application/json", "action: must be one of"),
        (b'{"action": ["retry"]}', "application/json", "action: must be one of"),
        (b'{"payload": 3}', "application/json", "payload: must be a JSON object"),
        (b'{"payload": [1, 2]}', "application/json", "payload: must be a JSON object"),
        (b'{"payload": "x"}', "application/json", "payload: must be a JSON object"),
        (b'{"payload": {"a": "\\u0000"}}', "application/json", "payload"),
        (
            json.dumps({"payload": {"a": "x" * 300_000}}).encode(),
            "application/json",
            "payload: is",
        ),
        (b'{"payload": {"deep": ' + b"[" * 70 + b"]" * 70 + b"}}", "application/json", "payload"),
        (b'{"paylod": {"card": "ok"}}', "application/json", "unknown field(s): paylod"),
        (b'{"action": "retry"}', "text/plain", "Content-Type must be application/json"),
    ],
    ids=[
        "array",
        "string",
        "malformed",
        "unknown action",
        "number action",
        "list action",
        "number payload",
        "list payload",
        "string payload",
        "NUL in payload",
        "payload too large",
        "payload too deep",
        "misspelt field",
        "wrong content type",
    ],
)
def test_a_bad_resume_body_is_a_400_naming_the_field(
    api: Api, failed_forward: str, body: bytes, content_type: str, field: str
) -> None:
    """A resume body that is not an object, an unknown action, a payload that is not a JSON
    object (or over the limits), an unknown field or a wrong Content-Type is a 400 naming what
    is wrong, and the saga stays PAUSED with no action recorded."""
    response = api.resume(failed_forward, data=body, headers={"Content-Type": content_type})
    assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", field)
    detail = api.detail(failed_forward)
    assert detail["saga"]["status"] == "PAUSED"
    assert detail["operator_actions"] == []


def test_bad_ids_are_400_and_unknown_sagas_404(api: Api) -> None:
    """Pause and resume of a malformed id are 400 naming saga_id; of an unknown saga, 404."""
    for path in ("pause", "resume"):
        bad = api.call("POST", f"/api/v1/sagas/not-a-uuid/{path}")
        assert_error(bad, 400, "SYS_SAGA_VALIDATION_ERROR", "saga_id")
        unknown = api.call("POST", f"/api/v1/sagas/{uuid.uuid4()}/{path}")
        assert_error(unknown, 404, "SYS_SAGA_NOT_FOUND", "saga not found")


def test_an_empty_resume_body_is_the_default_action(api: Api) -> None:
    """No body, an empty body of any Content-Type, `{}` and `{"action": null}` all resume with
    the default action: retry after a failure."""
    variants: list[dict[str, Any]] = [
        {},
        {"data": b"", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {"json": {}},
        {"json": {"action": None, "payload": None}},
    ]
    for kwargs in variants:
        saga_id = api.start("op-pay", {"card": "declined"})
        api.wait(saga_id, "PAUSED")
        response = api.resume(saga_id, **kwargs)
        assert response.status_code == 200, (kwargs, response.text)
        body = response.json()
        assert body["success"] is True and body["status"] == "RUNNING"
        assert body["message"] == f"saga {saga_id} resumed with retry; now RUNNING"
        # Still declined: it fails again and pauses again, with a retry and no payload change.
        detail = api.wait(saga_id, "PAUSED")
        assert [
            (a["action"], a["resume_action"], a["payload_replaced"])
            for a in detail["operator_actions"]
        ] == [("resume", "retry", False)]
        assert detail["saga"]["payload"] == {"card": "declined"}


# ----------------------------------------------------------------------------- 409


def _conflict(response: requests.Response, *words: str) -> None:
    error = assert_error(response, 409, "SYS_SAGA_CONFLICT")
    for word in words:
        assert word in error["message"], error["message"]


def test_every_refused_operator_action_is_a_409_that_changes_nothing(
    api: Api,
    failed_forward: str,
    failed_compensating: str,
    requested: str,
    ended: dict[str, str],
) -> None:
    """SPEC §11's 409s, each with its reason: a pause of a PAUSED or terminal saga; a resume of
    a saga that is not PAUSED; continue after a failure; retry or skip when nothing failed;
    compensate, a payload or a cancel while paused compensating; and none of them changes the
    saga or its audit."""
    before = {s: api.detail(s) for s in (failed_forward, failed_compensating, requested)}
    for saga_id in (failed_forward, failed_compensating, requested):
        _conflict(api.pause(saga_id), "PAUSED", "only STARTED, RUNNING or COMPENSATING")
    for status, saga_id in ended.items():
        _conflict(api.pause(saga_id), status)
        _conflict(api.resume(saga_id), status, "only PAUSED")
        _conflict(api.resume(saga_id, {"action": "retry"}), status)
    _conflict(api.resume(failed_forward, {"action": "continue"}), "retry, skip or compensate")
    _conflict(api.resume(failed_compensating, {"action": "continue"}), "retry or skip")
    for action in ("retry", "skip"):
        _conflict(api.resume(requested, {"action": action}), "nothing failed", "continue")
    _conflict(api.resume(failed_compensating, {"action": "compensate"}), "already compensating")
    _conflict(
        api.resume(failed_compensating, {"action": "retry", "payload": {"card": "ok"}}),
        "payload",
    )
    cancel = api.call("POST", f"/api/v1/sagas/{failed_compensating}/cancel")
    _conflict(cancel, "compensating")
    for saga_id, detail in before.items():
        assert api.detail(saga_id) == detail


def test_resume_of_a_running_saga_is_a_409(api: Api) -> None:
    """A saga still running cannot be resumed: 409 naming its status."""
    saga_id = api.start("op-slow", {})
    api.wait(saga_id, "RUNNING")
    _conflict(api.resume(saga_id), "RUNNING", "only PAUSED")
    assert api.wait(saga_id, *TERMINAL)["operator_actions"] == []


# ----------------------------------------------------------------------------- 200


def test_resume_skip_compensating_then_failed_names_it(api: Api) -> None:
    """Skip of a refused compensation logs it SKIPPED, the saga ends FAILED and its
    error_message names the skipped compensation; the detail lists the resume."""
    saga_id = api.start("op-comp", {"card": "declined", "release": "broken"})
    api.wait(saga_id, "PAUSED")
    response = api.resume(saga_id, {"action": "skip"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "COMPENSATING"
    detail = api.wait(saga_id, *TERMINAL)
    assert detail["saga"]["status"] == "FAILED"
    assert "reserve" in detail["saga"]["error_message"]
    logs = [(g["step_name"], g["action"], g["status"]) for g in detail["step_logs"]]
    assert logs[-2:] == [("reserve", "COMPENSATE", "FAILED"), ("reserve", "COMPENSATE", "SKIPPED")]
    assert [(a["action"], a["resume_action"]) for a in detail["operator_actions"]] == [
        ("resume", "skip")
    ]
    assert detail["operator_actions"][0]["by"] is None  # no auth: nobody known


def test_a_cancel_is_recorded_in_the_audit(api: Api) -> None:
    """Cancel of a saga PAUSED going forward answers 200, compensates, ends CANCELLED, and the
    detail lists the cancel with its time."""
    saga_id = api.start("op-pay", {"card": "declined"})
    api.wait(saga_id, "PAUSED")
    response = api.call("POST", f"/api/v1/sagas/{saga_id}/cancel")
    assert response.status_code == 200, response.text
    detail = api.wait(saga_id, *TERMINAL)
    assert detail["saga"]["status"] == "CANCELLED"
    assert ("reserve", "COMPENSATE", "SUCCESS") in [
        (g["step_name"], g["action"], g["status"]) for g in detail["step_logs"]
    ]
    [action] = detail["operator_actions"]
    assert (action["action"], action["resume_action"], action["payload_replaced"]) == (
        "cancel",
        None,
        False,
    )
    assert action["at"] >= detail["saga"]["created_at"]


def test_saga_paused_gauge_follows_the_store(api: Api) -> None:
    """/metrics reports saga_paused per workflow as the store has it at the scrape, and drops a
    workflow once none of its sagas is PAUSED."""
    doc = {"name": "op-gauge", **WORKFLOWS["op-pay"]}
    text = yaml.safe_dump(doc, sort_keys=False)
    assert api.call("POST", "/api/v1/workflows", json={"workflow_yaml": text}).status_code == 201
    assert "op-gauge" not in api.gauge()
    first, second = (api.start("op-gauge", {"card": "declined"}) for _ in range(2))
    api.wait(first, "PAUSED")
    api.wait(second, "PAUSED")
    assert api.gauge()["op-gauge"] == 2
    assert api.resume(first, {"action": "compensate"}).status_code == 200
    api.wait(first, *TERMINAL)
    assert api.gauge()["op-gauge"] == 1
    assert api.resume(second, {"action": "compensate"}).status_code == 200
    api.wait(second, *TERMINAL)
    assert "op-gauge" not in api.gauge()


# ----------------------------------------------------------------------------- workflows


def test_get_workflow_gives_the_definition_and_yaml_that_registers_the_same(api: Api) -> None:
    """GET /api/v1/workflows/<name> gives every key of the latest definition (defaults written
    out, per-step null meaning the workflow's) and its YAML; registering that YAML makes a
    new version with the same definition, and ?version=N still gives the old one."""
    text = """\
name: op/defs
on_failure: pause
deadline_secs: 90
steps:
  - name: reserve
    service: shop
    method: Inventory.Reserve
    compensate: Inventory.Release
    input: "{order: payload.order}"
    on_compensation_failure: pause
  - name: charge
    service: shop
    method: Payment.Charge
    timeout_secs: 2.5
    when: "payload.amount > `0`"
    retry: {max_attempts: 5, backoff: fixed, initial_interval_ms: 10, max_interval_ms: 50,
            jitter: true, non_retryable_codes: [NOT_FOUND]}
    on_failure: compensate
"""
    made = api.call("POST", "/api/v1/workflows", json={"workflow_yaml": text}).json()
    response = api.call("GET", "/api/v1/workflows/op%2Fdefs")
    assert response.status_code == 200, response.text
    got = response.json()
    assert (got["name"], got["version"]) == ("op/defs", made["version"])
    assert (got["on_failure"], got["on_compensation_failure"], got["deadline_secs"]) == (
        "pause",
        "continue",
        90,
    )
    reserve, charge = got["steps"]
    assert reserve == {
        "name": "reserve",
        "service": "shop",
        "method": "Inventory.Reserve",
        "compensate": "Inventory.Release",
        "timeout_secs": 30,
        "retry": {
            "max_attempts": 3,
            "backoff": "exponential",
            "initial_interval_ms": 1000,
            "max_interval_ms": None,
            "jitter": False,
            "non_retryable_codes": [
                "INVALID_ARGUMENT",
                "FAILED_PRECONDITION",
                "NOT_FOUND",
                "PERMISSION_DENIED",
                "UNAUTHENTICATED",
                "UNIMPLEMENTED",
            ],
        },
        "input": "{order: payload.order}",
        "when": None,
        "compensate_input": None,
        "on_failure": None,
        "on_compensation_failure": "pause",
    }
    assert charge["compensate"] is None and charge["timeout_secs"] == 2.5
    assert charge["when"] == "payload.amount > `0`" and charge["on_failure"] == "compensate"
    assert charge["retry"] == {
        "max_attempts": 5,
        "backoff": "fixed",
        "initial_interval_ms": 10,
        "max_interval_ms": 50,
        "jitter": True,
        "non_retryable_codes": ["NOT_FOUND"],
    }

    again = api.call("POST", "/api/v1/workflows", json={"workflow_yaml": got["workflow_yaml"]})
    assert again.status_code == 201, again.text
    assert again.json()["version"] == made["version"] + 1
    latest = api.call("GET", "/api/v1/workflows/op%2Fdefs").json()
    assert latest["version"] == made["version"] + 1
    assert {k: v for k, v in latest.items() if k != "version"} == {
        k: v for k, v in got.items() if k != "version"
    }
    old = api.call("GET", f"/api/v1/workflows/op%2Fdefs?version={made['version']}").json()
    assert old == got


def test_get_workflow_refuses_unknown_names_versions_and_parameters(api: Api) -> None:
    """An unknown workflow or version is a 404 naming it; a version that is not a positive
    integer, or another query parameter, is a 400 naming it."""
    assert_error(
        api.call("GET", "/api/v1/workflows/no-such-flow"),
        404,
        "SYS_SAGA_NOT_FOUND",
        "workflow not found: no-such-flow",
    )
    assert_error(
        api.call("GET", "/api/v1/workflows/op-pay?version=99"),
        404,
        "SYS_SAGA_NOT_FOUND",
        "op-pay version 99",
    )
    for query, field in (
        ("version=0", "version"),
        ("version=-1", "version"),
        ("version=one", "version"),
        ("version=1&version=2", "version"),
        ("page=1", "unknown query parameter(s): page"),
    ):
        response = api.call("GET", f"/api/v1/workflows/op-pay?{query}")
        assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", field)
    assert api.call("GET", "/api/v1/workflows/op-pay?version=1").json()["version"] == 1


def test_workflow_yaml_is_plain_yaml_of_the_document(api: Api) -> None:
    """The YAML of a definition parses (safe loader) to the same keys as the JSON, without
    nulls, version or the YAML itself."""
    got = api.call("GET", "/api/v1/workflows/op-comp").json()
    document = yaml.safe_load(got["workflow_yaml"])
    assert set(document) == {"name", "steps", "on_failure", "on_compensation_failure"}
    assert document["on_compensation_failure"] == "pause"
    assert [s["name"] for s in document["steps"]] == ["reserve", "charge"]
    assert all(value is not None for step in document["steps"] for value in step.values())


def test_a_saga_paused_before_its_first_step_resumes_running(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A pause asked for before any executor took the saga pauses it before its first step;
    resume answers 200 with status RUNNING (SPEC §11: the saga goes RUNNING or COMPENSATING)
    and the saga completes."""
    participant, port = start_participant_server({})
    directory = tmp_path_factory.mktemp("paused-before-start")
    config_path = directory / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "services": {"shop": {"host": "127.0.0.1", "port": port}},
                "saga": {
                    "sqlite_path": str(directory / "saga.sqlite3"),
                    "workflow_dir": str(directory / "none"),
                    "claim_interval_ms": 30,
                },
            }
        )
    )
    config = load_config(str(config_path))
    serving = Engine.from_config(config, execute=False)  # an API process: executes nothing
    serving.start()
    server = LoopbackServer(create_app(config, serving))
    executing: Engine | None = None
    try:
        client = Api(server.base)
        text = yaml.safe_dump({"name": "op-first", "steps": _steps()}, sort_keys=False)
        assert client.call("POST", "/api/v1/workflows", json={"workflow_yaml": text}).ok
        saga_id = client.start("op-first", {"card": "ok"})
        assert client.pause(saga_id).status_code == 200
        executing = Engine.from_config(config)  # a worker comes up and takes the saga
        executing.start()
        paused = client.wait(saga_id, "PAUSED")
        assert paused["step_logs"] == []
        answer = client.resume(saga_id)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "RUNNING"
        assert client.wait(saga_id, *TERMINAL)["saga"]["status"] == "COMPLETED"
    finally:
        server.close()
        if executing is not None:
            executing.close(grace_secs=2)
        serving.close(grace_secs=2)
        participant.stop(grace=None).wait(5)
