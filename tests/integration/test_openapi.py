"""The OpenAPI document against the app it describes: the same routes both ways, and real
responses (over a loopback socket, from an engine executing sagas against a participant)
validating against the document's own schemas."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from flask import Flask
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.serving import make_server

from saga_http.app import create_app
from saga_http.console import BLUEPRINT as CONSOLE_BLUEPRINT
from saga_http.openapi import openapi_document
from workers.adapters.store.memory import MemoryStore
from workers.config import Config, load_config
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

DOC_URI = "urn:saga:openapi"
METHODS = ("get", "post", "put", "patch", "delete")
WORKFLOW_YAML = """\
name: doc-order
steps:
  - name: reserve
    service: shop
    method: Shop.Reserve
    compensate: Shop.Release
    timeout_secs: 5
    retry: {max_attempts: 1}
  - name: charge
    service: shop
    method: Shop.Charge
    timeout_secs: 5
    retry: {max_attempts: 1}
"""
SLOW_YAML = """\
name: doc-slow
steps:
  - name: wait
    service: shop
    method: Slow.Wait
    timeout_secs: 10
    retry: {max_attempts: 1}
"""
PAUSING_YAML = """\
name: doc-pausing
on_failure: pause
deadline_secs: 600
steps:
  - name: reserve
    service: shop
    method: Shop.Reserve
    compensate: Shop.Release
    timeout_secs: 5
    retry: {max_attempts: 1}
  - name: wait
    service: shop
    method: Slow.Wait
    timeout_secs: 10
    retry: {max_attempts: 1}
  - name: decline
    service: shop
    method: Shop.Decline
    timeout_secs: 5
    retry: {max_attempts: 1}
"""
BEHAVIOUR = {
    "Shop.Decline": {"fail": "FAILED_PRECONDITION", "message": "declined"},
    "Shop.Charge": {
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "payment declined",
    },
    "Slow.Wait": {"sleep_ms": 2000},
}


def write_config(directory: Path, participant_port: int) -> Config:
    data = {
        "services": {"shop": {"host": "127.0.0.1", "port": participant_port}},
        "saga": {
            "sqlite_path": str(directory / "saga.sqlite3"),
            "workflow_dir": str(directory / "no-workflows"),
            "execute": True,
            "claim_interval_ms": 50,
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_config(str(path))


class LoopbackServer:
    """A Flask app on a real 127.0.0.1 socket (werkzeug, threaded)."""

    def __init__(self, app: Flask) -> None:
        self.http = make_server("127.0.0.1", 0, app, threaded=True)
        self.base = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.thread.join(timeout=10)
        self.http.server_close()


class Exchange:
    """One real request and response, with the route template and method it went to."""

    def __init__(self, template: str | None, method: str, response: requests.Response) -> None:
        self.template = template
        self.method = method
        self.response = response

    def __repr__(self) -> str:
        return f"{self.method.upper()} {self.template} -> {self.response.status_code}"


class Recorder:
    def __init__(self, base: str) -> None:
        self.base = base
        self.exchanges: list[Exchange] = []

    def call(
        self, method: str, path: str, template: str | None = None, **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", 15)
        response = requests.request(method, self.base + path, **kwargs)
        self.exchanges.append(Exchange(template or path.split("?")[0], method.lower(), response))
        return response

    def wait_terminal(self, saga_id: str) -> None:
        self.wait_status(saga_id, "COMPLETED", "FAILED", "CANCELLED")

    def wait_status(self, saga_id: str, *statuses: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = requests.get(f"{self.base}/api/v1/sagas/{saga_id}", timeout=10).json()
            if status["saga"]["status"] in statuses:
                return
            time.sleep(0.05)
        raise AssertionError(f"saga {saga_id} did not reach {statuses} in time")


class _BrokenStore(MemoryStore):
    def ping(self) -> None:
        raise ConnectionError("down")

    def list_sagas(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    participant, port = start_participant_server(BEHAVIOUR)
    try:
        yield write_config(tmp_path_factory.mktemp("openapi"), port)
    finally:
        participant.stop(grace=None).wait(5)


@pytest.fixture(scope="module")
def app(config: Config) -> Iterator[Flask]:
    engine = Engine.from_config(config)
    engine.start()
    try:
        yield create_app(config, engine)
    finally:
        engine.close(grace_secs=2)


@pytest.fixture(scope="module")
def exchanges(app: Flask, config: Config) -> list[Exchange]:
    """Every endpoint called for each status it can give on a healthy server."""
    server = LoopbackServer(app)
    broken = LoopbackServer(create_app(config, Engine(config, _BrokenStore(), execute=False)))
    try:
        r = Recorder(server.base)
        sagas = "/api/v1/sagas"
        one = "/api/v1/sagas/{saga_id}"
        r.call("GET", "/healthz")
        r.call("GET", "/readyz")
        r.call("GET", "/metrics")
        r.call("GET", "/api/v1/openapi.json")
        r.call("POST", "/api/v1/workflows", json={"workflow_yaml": WORKFLOW_YAML})
        r.call("POST", "/api/v1/workflows", json={"workflow_yaml": SLOW_YAML})
        r.call("POST", "/api/v1/workflows", json={"workflow_yaml": PAUSING_YAML})
        r.call("POST", "/api/v1/workflows", json={"workflow_yaml": "steps: ["})
        r.call("POST", "/api/v1/workflows", data=b"{" * (2 * 1024 * 1024))
        r.call("GET", "/api/v1/workflows")
        r.call("GET", "/api/v1/stats")
        key = {"Idempotency-Key": str(uuid.uuid4())}
        body = {"workflow_name": "doc-order", "payload": {"n": 1}, "correlation_id": "doc"}
        done = r.call("POST", sagas, json=body, headers=key).json()["saga_id"]
        failed = r.call(
            "POST", sagas, json={"workflow_name": "doc-order", "payload": {"card": "declined"}}
        ).json()["saga_id"]
        r.wait_terminal(done)
        r.wait_terminal(failed)
        r.call("POST", sagas, json=body, headers=key)  # replay: 200
        r.call("POST", sagas, json=body | {"payload": {"n": 2}}, headers=key)  # 409
        r.call("POST", sagas, json={"workflow_name": "nope"})
        r.call("POST", sagas, json={"payload": {}})
        r.call("POST", sagas, data=b"[" * (1024 * 1024 + 10))
        r.call("GET", f"{sagas}?page_size=1&correlation_id=doc", sagas)
        r.call("GET", sagas)
        r.call("GET", f"{sagas}?page=0", sagas)
        for saga_id in (done, failed):
            r.call("GET", f"{sagas}/{saga_id}", one)
        r.call("GET", f"{sagas}/{uuid.uuid4()}", one)
        r.call("GET", f"{sagas}/bad-id", one)
        for action in ("cancel", "compensate"):
            template = f"{one}/{action}"
            slow = r.call("POST", sagas, json={"workflow_name": "doc-slow"}).json()["saga_id"]
            r.call("POST", f"{sagas}/{slow}/{action}", template)
            r.call("POST", f"{sagas}/{done}/{action}", template)
            r.call("POST", f"{sagas}/{uuid.uuid4()}/{action}", template)
            r.call("POST", f"{sagas}/bad-id/{action}", template)
            r.wait_terminal(slow)
        named = "/api/v1/workflows/{name}"
        r.call("GET", "/api/v1/workflows/doc-pausing", named)
        r.call("GET", "/api/v1/workflows/doc-order?version=1", named)
        r.call("GET", "/api/v1/workflows/doc-order?version=7", named)
        r.call("GET", "/api/v1/workflows/doc-order?version=0", named)
        r.call("GET", "/api/v1/workflows/doc-order?page=1", named)
        r.call("GET", "/api/v1/workflows/no-such-workflow", named)
        # Pause a running saga at its next boundary, then resume it with no body (continue).
        pause, resume = f"{one}/pause", f"{one}/resume"
        paused = r.call("POST", sagas, json={"workflow_name": "doc-pausing"}).json()["saga_id"]
        r.wait_status(paused, "RUNNING")
        r.call("POST", f"{sagas}/{paused}/pause", pause)
        r.wait_status(paused, "PAUSED")
        r.call("POST", f"{sagas}/{paused}/pause", pause)  # 409: already PAUSED
        r.call("POST", f"{sagas}/{paused}/resume", resume, json={"action": "later"})  # 400
        r.call("POST", f"{sagas}/{paused}/resume", resume, json={"action": "retry"})  # 409
        r.call("POST", f"{sagas}/{paused}/resume", resume)
        # The last step fails and pauses it (on_failure: pause); compensate it from there.
        r.wait_status(paused, "PAUSED")
        r.call("POST", f"{sagas}/{paused}/resume", resume, json={"action": "compensate"})
        r.wait_terminal(paused)
        r.call("GET", f"{sagas}/{paused}", one)
        r.call("POST", f"{sagas}/{paused}/resume", resume)  # 409: FAILED
        r.call("POST", f"{sagas}/{done}/pause", pause)  # 409: COMPLETED
        r.call("POST", f"{sagas}/{uuid.uuid4()}/pause", pause)
        r.call("POST", f"{sagas}/{uuid.uuid4()}/resume", resume)
        r.call("POST", f"{sagas}/bad-id/pause", pause)
        r.call("POST", f"{sagas}/bad-id/resume", resume)
        r.call("POST", f"{sagas}/{done}/resume", resume, data=b"{" * (2 * 1024 * 1024))
        r.call("GET", "/nowhere", "<unmatched>")
        r.call("PATCH", sagas, "<unmatched>")
        b = Recorder(broken.base)
        b.call("GET", "/readyz")
        b.call("GET", sagas)
        return r.exchanges + b.exchanges
    finally:
        server.close()
        broken.close()


def _flask_routes(app: Flask) -> set[tuple[str, str]]:
    """The app's API routes: everything but the web console's pages (its own blueprint)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(f"{CONSOLE_BLUEPRINT}."):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method.lower()))
    return routes


def _document_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class SchemaCheck:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)

    def errors(self, instance: Any, pointer: str) -> list[str]:
        validator = Draft202012Validator({"$ref": DOC_URI + "#" + pointer}, registry=self.registry)
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(instance)
        ]


@pytest.fixture(scope="module")
def document(config: Config) -> dict[str, Any]:
    return openapi_document(config)


def test_routes_match_the_document(app: Flask, document: dict[str, Any]) -> None:
    """Every Flask route (path and method) is in the document, and every documented one is
    a Flask route."""
    assert _flask_routes(app) == _document_routes(document)


def test_document_is_openapi_31_with_valid_schemas(document: dict[str, Any]) -> None:
    """The document says OpenAPI 3.1, each component schema is valid JSON Schema 2020-12,
    every $ref resolves, and every operation has a unique operationId."""
    assert document["openapi"] == "3.1.0"
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(document)
    assert refs
    for ref in refs:
        assert _resolve(document, {"$ref": ref})
    ids = [
        op["operationId"]
        for item in document["paths"].values()
        for method, op in item.items()
        if method in METHODS
    ]
    assert len(ids) == len(set(ids))


def test_response_shapes_are_closed(document: dict[str, Any]) -> None:
    """Every object schema of a response is closed (additionalProperties: false), except the
    JSON objects that carry client payloads."""
    open_ok = {"JsonObject", "Payload", "StartSagaRequest", "RegisterWorkflowRequest"}
    for name, schema in document["components"]["schemas"].items():
        if schema.get("type") == "object" and name not in open_ok:
            assert schema.get("additionalProperties") is False, name


def test_served_document_is_the_document(
    exchanges: list[Exchange], document: dict[str, Any]
) -> None:
    """GET /api/v1/openapi.json serves exactly the document."""
    served = [e for e in exchanges if e.template == "/api/v1/openapi.json"]
    assert served and served[0].response.json() == json.loads(json.dumps(document))


def test_real_responses_validate_against_the_document(
    exchanges: list[Exchange], document: dict[str, Any]
) -> None:
    """Each real response's status is documented for its operation, its body validates against
    the documented schema, and it carries X-Request-Id; unrouted errors match the Error schema."""
    check = SchemaCheck(document)
    problems: list[str] = []
    for exchange in exchanges:
        response = exchange.response
        if not response.headers.get("X-Request-Id"):
            problems.append(f"{exchange}: no X-Request-Id")
        if exchange.template == "<unmatched>":
            pointer = _pointer("components", "schemas", "Error")
            problems += [f"{exchange}: {p}" for p in check.errors(response.json(), pointer)]
            continue
        operation = document["paths"][exchange.template][exchange.method]
        status = str(response.status_code)
        if status not in operation["responses"]:
            problems.append(f"{exchange}: status not documented ({response.text[:200]})")
            continue
        documented = _resolve(document, operation["responses"][status])
        content = documented.get("content", {})
        if "application/json" in content:
            assert response.headers["Content-Type"] == "application/json", exchange
            ref = operation["responses"][status].get("$ref")
            if ref:
                pointer = ref[1:] + _pointer("content", "application/json", "schema")
            else:
                pointer = _pointer(
                    "paths",
                    exchange.template,
                    exchange.method,
                    "responses",
                    status,
                    "content",
                    "application/json",
                    "schema",
                )
            problems += [f"{exchange}: {p}" for p in check.errors(response.json(), pointer)]
        else:
            assert response.headers["Content-Type"].startswith("text/plain"), exchange
    assert not problems, "\n".join(problems)


def test_every_documented_success_was_exercised(
    exchanges: list[Exchange], document: dict[str, Any]
) -> None:
    """Every documented 2xx/503 response of every operation was seen from the real server, so
    the validation above covers the whole success surface."""
    seen = {(e.template, e.method, str(e.response.status_code)) for e in exchanges}
    documented = {
        (path, method, status)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
        for status in op["responses"]
        if status.startswith("2") or status == "503"
    }
    assert documented <= seen, sorted(documented - seen)
    errors = {s for (_, _, s) in seen if s[0] in "45"}
    assert errors >= {"400", "404", "405", "409", "413", "500"}


def test_step_logs_carry_their_saga_id(exchanges: list[Exchange], document: dict[str, Any]) -> None:
    """StepLog requires saga_id (a SagaId), and every step log the server sent carries the id
    of the saga it belongs to (SPEC §4)."""
    step_log = document["components"]["schemas"]["StepLog"]
    assert "saga_id" in step_log["required"]
    assert step_log["properties"]["saga_id"] == {"$ref": "#/components/schemas/SagaId"}
    details = [
        e.response.json()
        for e in exchanges
        if e.template == "/api/v1/sagas/{saga_id}" and e.response.status_code == 200
    ]
    logs = [(d["saga"]["saga_id"], g) for d in details for g in d["step_logs"]]
    assert logs
    assert all(g["saga_id"] == saga_id for saga_id, g in logs)
