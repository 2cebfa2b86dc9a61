"""Hostile inputs over real HTTP (gunicorn) and real gRPC, sent by an authenticated admin:
each gets its documented status and code, the server stays up and answers the next request,
and no saga, step log or workflow is half-written (rows counted before and after)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2
from tests.integration.test_rest_api import assert_error
from tests.security.conftest import REPLY_LIMIT, SecureGrpc, SecureRest, metadata
from tests.security.jwks import Keys

JSON = {"Content-Type": "application/json"}
MARKER = Path("/tmp") / f"saga-security-pwned-{uuid.uuid4().hex}"

BILLION_LAUGHS = """\
name: lol
steps: &a [{name: a, service: shop, method: Shop.Reserve}]
x0: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
x1: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
x2: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
x3: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
x4: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
x5: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
x6: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
x7: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
x8: [*i, *i, *i, *i, *i, *i, *i, *i, *i, *i]
"""
PYTHON_TAG = f"""\
name: !!python/object/apply:os.system ["touch {MARKER}"]
steps:
  - name: a
    service: shop
    method: Shop.Reserve
"""


def workflow(service: str = "shop", method: str = "Shop.Reserve", name: str = "hostile") -> str:
    return f"name: {name}\nsteps:\n  - name: a\n    service: {service}\n    method: {method}\n"


# (what, yaml, a word the 400 message must contain)
HOSTILE_WORKFLOWS = [
    ("billion laughs", BILLION_LAUGHS, "aliases expand"),
    ("recursive alias", "name: x\nsteps: &a [*a]\n", "alias refers to a node that contains it"),
    ("python object/apply tag", PYTHON_TAG, "tags"),
    ("python name tag", "name: !!python/name:os.system\nsteps: []\n", "tags"),
    ("binary tag", "name: !!binary aGk=\nsteps: []\n", "tags"),
    ("undefined alias", "name: x\nsteps: *nothing\n", "undefined alias"),
    ("NUL escape", workflow(name='"a\\0b"'), "name: contains a NUL character"),
    ("surrogate escape", workflow(name='"a\\ud800"'), "name: contains a lone surrogate"),
    ("unconfigured service", workflow(service="billing"), "service not registered"),
    ("address as service", workflow(service="'10.0.0.1:50051'"), "not a service name"),
    ("url as service", workflow(service="'http://evil.test'"), "not a service name"),
    ("path as method", workflow(method="'/etc/passwd'"), "Service.Method"),
    ("method without service", workflow(method="Reserve"), "Service.Method"),
    ("method with slash", workflow(method="'Shop/Reserve'"), "Service.Method"),
    (
        "too many steps",
        "name: big\nsteps:\n"
        + "".join(f"  - {{name: s{i}, service: shop, method: Shop.Reserve}}\n" for i in range(201)),
        "200",
    ),
    ("over 64 KiB", workflow() + "#" * (64 * 1024), "65536"),
    ("NUL", "name: a\x00b\nsteps: []\n", "NUL"),
    ("lone surrogate", "name: a\ud800b\nsteps: []\n", "surrogate"),
]


@pytest.mark.parametrize(
    ("what", "text", "message"), HOSTILE_WORKFLOWS, ids=[w for w, *_ in HOSTILE_WORKFLOWS]
)
def test_rest_refuses_hostile_workflows(
    rest: SecureRest, what: str, text: str, message: str
) -> None:
    """A hostile workflow document is a 400 naming the problem; nothing is registered or run."""
    before = rest.counts()
    body = json.dumps({"workflow_yaml": text}).encode()  # \\ud800 stays an escape
    response = rest.request("POST", "/api/v1/workflows", data=body, headers=JSON)
    assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", message)
    assert rest.counts() == before
    assert not MARKER.exists()
    rest.assert_up()


def test_rest_billion_laughs_is_refused_in_well_under_a_second(rest: SecureRest) -> None:
    """A billion-laughs workflow (10^9 nodes once expanded) is a 400 in under a second, and
    the server answers the next request at once."""
    body = json.dumps({"workflow_yaml": BILLION_LAUGHS}).encode()
    started = time.monotonic()
    response = rest.request("POST", "/api/v1/workflows", data=body, headers=JSON)
    elapsed = time.monotonic() - started
    assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", "aliases expand")
    assert elapsed < 1.0, elapsed
    rest.assert_up()


def test_rest_ten_megabyte_body_is_413(rest: SecureRest) -> None:
    """A 10 MB body is a 413 envelope whether its length is declared or chunked; nothing is
    written and the server answers the next request."""
    before = rest.counts()
    big = b'{"workflow_name": "rest-order", "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    declared = rest.request("POST", "/api/v1/sagas", data=big, headers=JSON)
    assert_error(declared, 413, "SYS_SAGA_PAYLOAD_TOO_LARGE")
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    try:
        chunked = rest.request("POST", "/api/v1/sagas", data=chunks, headers=JSON)
    except requests.ConnectionError:
        chunked = None  # the server may close once it has answered; that is allowed
    if chunked is not None:
        assert_error(chunked, 413, "SYS_SAGA_PAYLOAD_TOO_LARGE")
    assert rest.counts() == before
    rest.assert_up()


def test_rest_unauthenticated_ten_megabyte_body_is_401_unread(rest: SecureRest) -> None:
    """Without a token, a 10 MB body is refused with 401 before it is read."""
    big = b"{" + b" " * (10 * 1024 * 1024) + b"}"
    response = rest.request("POST", "/api/v1/sagas", token=None, data=big, headers=JSON)
    assert_error(response, 401, "SYS_AUTH_MISSING_CLAIMS")
    rest.assert_up()


DEEP = 100_000
HOSTILE_BODIES = [
    ("array nested 100,000 deep", b"[" * DEEP + b"]" * DEEP, "nested"),
    ("object nested 100,000 deep", b'{"a":' * DEEP + b"1" + b"}" * DEEP, "nested"),
    (
        "payload nested 100,000 deep",
        b'{"workflow_name": "rest-order", "payload": ' + b'{"a":' * DEEP + b"1" + b"}" * (DEEP + 1),
        "nested",
    ),
    ("NUL in workflow_name", b'{"workflow_name": "rest-order\\u0000"}', "NUL"),
    (
        "NUL in a payload key",
        b'{"workflow_name": "rest-order", "payload": {"a\\u0000": 1}}',
        "NUL",
    ),
    (
        "NUL in correlation_id",
        b'{"workflow_name": "rest-order", "correlation_id": "x\\u0000"}',
        "NUL",
    ),
    ("raw NUL byte", b'{"workflow_name": "rest-order\x00"}', "malformed JSON"),
    (
        "lone high surrogate",
        b'{"workflow_name": "rest-order", "payload": {"s": "\\ud83d"}}',
        "surrogate",
    ),
    ("lone low surrogate in name", b'{"workflow_name": "\\udc00"}', "surrogate"),
    (
        "lone surrogate in initiated_by",
        b'{"workflow_name": "rest-order", "initiated_by": "\\ud800x"}',
        "surrogate",
    ),
    ("encoded surrogate bytes", b'{"workflow_name": "\xed\xa0\x80"}', "UTF-8"),
    ("overlong name", b'{"workflow_name": "' + b"w" * 256 + b'"}', "workflow_name"),
    (
        "payload over 256 KiB",
        b'{"workflow_name": "rest-order", "payload": {"p": "' + b"x" * (300 * 1024) + b'"}}',
        "payload",
    ),
    (
        "huge integer",
        b'{"workflow_name": "rest-order", "payload": {"n": ' + b"9" * 10_000 + b"}}",
        "number",
    ),
    ("Infinity", b'{"workflow_name": "rest-order", "payload": {"n": Infinity}}', "Infinity"),
]


@pytest.mark.parametrize(
    ("what", "body", "message"), HOSTILE_BODIES, ids=[w for w, *_ in HOSTILE_BODIES]
)
def test_rest_refuses_hostile_start_bodies(
    rest: SecureRest, what: str, body: bytes, message: str
) -> None:
    """A hostile start body is a 400 naming the problem; no saga is written."""
    before = rest.counts()
    response = rest.request("POST", "/api/v1/sagas", data=body, headers=JSON)
    assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", message)
    assert rest.counts() == before
    rest.assert_up()


HOSTILE_QUERIES = [
    ("status=RUNNING' OR 1=1--", 400, "status"),
    ("status=RUNNING%27%20OR%201%3D1--", 400, "status"),
    ("page_size=1e12", 400, "page_size"),
    ("page_size=1000000000000", 400, "page_size"),
    ("page=1e12", 400, "page"),
    ("page=99999999999999999999", 400, "page"),
    ("page_size=-1", 400, "page_size"),
    ("page_size=%EF%BC%95", 400, "page_size"),  # a full-width digit
    ("correlation_id=%00", 400, "NUL"),
    ("workflow_name=" + "w" * 3000, 400, "workflow_name"),
    ("order_by=created_at;DROP TABLE saga_states", 400, "order_by"),
]


@pytest.mark.parametrize(("query", "status", "message"), HOSTILE_QUERIES)
def test_rest_refuses_hostile_list_queries(
    rest: SecureRest, query: str, status: int, message: str
) -> None:
    """A hostile list query is a 400 naming the parameter, never a clamp or a 500."""
    response = rest.request("GET", f"/api/v1/sagas?{query}")
    assert_error(response, status, "SYS_SAGA_VALIDATION_ERROR", message)
    rest.assert_up()


@pytest.mark.parametrize(
    "value",
    [
        "x' OR '1'='1",
        "x'; DROP TABLE saga_states;--",
        'rest-order" OR ""="',
        "%' OR 1=1 --",
    ],
)
def test_rest_filters_are_bound_as_parameters(rest: SecureRest, value: str) -> None:
    """SQL in a filter value is only a value: it matches no saga and the tables survive."""
    before = rest.counts()
    for name in ("workflow_name", "correlation_id"):
        response = rest.request("GET", "/api/v1/sagas", params={name: value})
        assert response.status_code == 200, response.text
        assert response.json()["pagination"]["total_count"] == 0
    assert rest.counts() == before


def test_rest_ten_kilobyte_saga_id(rest: SecureRest) -> None:
    """A 10 kB saga id is refused before any query: gunicorn answers its own bare 414 for a
    request line that long (SPEC §4 allows it), a shorter long id gets the 400 envelope."""
    before = rest.counts()
    for path in ("/api/v1/sagas/{}", "/api/v1/sagas/{}/cancel"):
        method = "GET" if path.endswith("}") else "POST"
        response = rest.request(method, path.format("a" * 10_240))
        assert response.status_code in (400, 414), response.text
        if response.status_code == 400:
            assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", "saga_id")
        long_id = rest.request(method, path.format("b" * 3000))
        assert_error(long_id, 400, "SYS_SAGA_VALIDATION_ERROR", "saga_id")
        quoted = rest.request(method, path.format("1%27%20OR%201%3D1--"))
        assert_error(quoted, 400, "SYS_SAGA_VALIDATION_ERROR", "saga_id")
    assert rest.counts() == before
    rest.assert_up()


def test_rest_participant_reply_over_the_limit_fails_the_step(rest: SecureRest) -> None:
    """A participant reply over limits.participant_response_bytes fails its step with
    INVALID_RESPONSE (RESOURCE_EXHAUSTED) at once (no retry), the saga compensates and ends
    FAILED, and the oversized reply is stored nowhere."""
    response = rest.request("POST", "/api/v1/sagas", json={"workflow_name": "big-reply"})
    assert response.status_code == 201, response.text
    detail = rest.wait_terminal(response.json()["saga_id"])
    saga = detail["saga"]
    assert saga["status"] == "FAILED"
    logs = detail["step_logs"]
    assert [(g["step_name"], g["action"], g["status"]) for g in logs] == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("fetch", "EXECUTE", "FAILED"),
        # An unusable reply may mean the work was done (SPEC §3): fetch is compensated too
        # (it has no compensate method, so its compensation is SKIPPED).
        ("fetch", "COMPENSATE", "SKIPPED"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    failed = logs[1]
    assert failed["error_message"].startswith("INVALID_RESPONSE: ")
    assert "RESOURCE_EXHAUSTED" in failed["error_message"]
    assert str(REPLY_LIMIT) in failed["error_message"]
    assert failed["response_payload"] is None
    assert len(json.dumps(detail)) < REPLY_LIMIT
    rest.assert_up()


def test_rest_garbage_on_the_socket_leaves_the_server_up(rest: SecureRest) -> None:
    """Bytes that are not HTTP get an error from the server (or a closed socket), and the
    server answers the next request."""
    host, port = rest.base.removeprefix("http://").split(":")
    for junk in (b"\x00\xff" * 512 + b"\r\n\r\n", b"GET /" + b"A" * 20_000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(junk)
            conn.shutdown(socket.SHUT_WR)
            try:
                answer = conn.recv(4096)
            except ConnectionResetError:
                answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    rest.assert_up()


# ----------------------------------------------------------------------------- gRPC


def _invalid(secure_grpc: SecureGrpc, keys: Keys, method: str, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        getattr(secure_grpc.stub, method)(
            request, metadata=metadata(keys.token(("sys_admin",))), timeout=10
        )
    return caught.value


GRPC_HOSTILE = [
    (
        "NUL in workflow_name",
        "StartSaga",
        saga_pb2.StartSagaRequest(workflow_name="rest-order\x00"),
    ),
    (
        "NUL in correlation_id",
        "StartSaga",
        saga_pb2.StartSagaRequest(workflow_name="rest-order", correlation_id="a\x00"),
    ),
    (
        "NUL in initiated_by",
        "StartSaga",
        saga_pb2.StartSagaRequest(workflow_name="rest-order", initiated_by="\x00"),
    ),
    (
        "NUL in the payload",
        "StartSaga",
        saga_pb2.StartSagaRequest(workflow_name="rest-order", payload=b'{"k": "\\u0000"}'),
    ),
    (
        "surrogate in the payload",
        "StartSaga",
        saga_pb2.StartSagaRequest(workflow_name="rest-order", payload=b'{"k": "\\udfff"}'),
    ),
    (
        "payload nested 100,000 deep",
        "StartSaga",
        saga_pb2.StartSagaRequest(workflow_name="rest-order", payload=b"[" * DEEP + b"]" * DEEP),
    ),
    (
        "payload over 256 KiB",
        "StartSaga",
        saga_pb2.StartSagaRequest(
            workflow_name="rest-order", payload=b'{"p": "' + b"x" * (300 * 1024) + b'"}'
        ),
    ),
    ("10 kB saga id", "GetSaga", saga_pb2.GetSagaRequest(saga_id="a" * 10_240)),
    ("10 kB saga id (cancel)", "CancelSaga", saga_pb2.CancelSagaRequest(saga_id="a" * 10_240)),
    ("SQL as saga id", "GetSaga", saga_pb2.GetSagaRequest(saga_id="1' OR 1=1--")),
    ("SQL as status", "ListSagas", saga_pb2.ListSagasRequest(status="RUNNING' OR 1=1--")),
    (
        "page_size 2^31-1",
        "ListSagas",
        saga_pb2.ListSagasRequest(pagination={"page": 1, "page_size": 2**31 - 1}),
    ),
    ("NUL in a filter", "ListSagas", saga_pb2.ListSagasRequest(correlation_id="\x00")),
    *[
        (
            f"workflow: {what}",
            "RegisterWorkflow",
            saga_pb2.RegisterWorkflowRequest(workflow_yaml=text),
        )
        for what, text, _ in HOSTILE_WORKFLOWS
        if what != "lone surrogate"  # proto3 strings cannot carry one (the client refuses)
    ],
]


@pytest.mark.parametrize(
    ("what", "method", "request_"), GRPC_HOSTILE, ids=[w for w, *_ in GRPC_HOSTILE]
)
def test_grpc_refuses_hostile_requests(
    secure_grpc: SecureGrpc, keys: Keys, what: str, method: str, request_: Any
) -> None:
    """A hostile gRPC request is INVALID_ARGUMENT with a message, writes nothing, and the
    server answers the next call."""
    before = secure_grpc.counts()
    error = _invalid(secure_grpc, keys, method, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details()
    assert secure_grpc.counts() == before
    assert not MARKER.exists()
    reply = secure_grpc.stub.ListWorkflows(
        saga_pb2.ListWorkflowsRequest(), metadata=metadata(keys.token()), timeout=10
    )
    assert reply.workflows


def _raw_call(secure_grpc: SecureGrpc, keys: Keys, method: str, body: bytes) -> grpc.RpcError:
    call = secure_grpc.channel.unary_unary(
        f"/k1s0.system.saga.v1.SagaService/{method}",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as caught:
        call(body, metadata=metadata(keys.token()), timeout=10)
    return caught.value


@pytest.mark.parametrize(
    ("what", "body"),
    [
        ("string field with invalid UTF-8", b"\x0a\x03\xff\xfe\xfd"),
        ("string field with a CESU surrogate", b"\x0a\x03\xed\xa0\x80"),
        ("truncated message", b"\x0a\x10abc"),
        ("garbage", b"\xff" * 64),
    ],
)
def test_grpc_malformed_messages_are_invalid_argument(
    secure_grpc: SecureGrpc, keys: Keys, what: str, body: bytes
) -> None:
    """Bytes that do not parse as the request message (bad UTF-8 in a string, truncation,
    garbage) are INVALID_ARGUMENT, not INTERNAL."""
    before = secure_grpc.counts()
    error = _raw_call(secure_grpc, keys, "StartSaga", body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "StartSagaRequest" in (error.details() or "")
    assert secure_grpc.counts() == before


def test_grpc_malformed_message_without_token_is_unauthenticated(secure_grpc: SecureGrpc) -> None:
    """An unparseable request without a token learns nothing: UNAUTHENTICATED comes first."""
    call = secure_grpc.channel.unary_unary(
        "/k1s0.system.saga.v1.SagaService/StartSaga",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\xff" * 64, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_message_over_the_receive_limit(secure_grpc: SecureGrpc, keys: Keys) -> None:
    """A request over limits.grpc_receive_bytes (2 MiB here) is RESOURCE_EXHAUSTED from the
    transport; nothing is written and the server answers the next call."""
    before = secure_grpc.counts()
    request = saga_pb2.StartSagaRequest(
        workflow_name="rest-order", payload=b'{"p": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    )
    error = _invalid(secure_grpc, keys, "StartSaga", request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert secure_grpc.counts() == before
    reply = secure_grpc.stub.ListWorkflows(
        saga_pb2.ListWorkflowsRequest(), metadata=metadata(keys.token()), timeout=10
    )
    assert reply.workflows


def test_grpc_participant_reply_over_the_limit_fails_the_step(
    secure_grpc: SecureGrpc, keys: Keys
) -> None:
    """Over gRPC too, an oversized participant reply fails its step with RESOURCE_EXHAUSTED,
    the saga compensates and ends FAILED, and the reply is not stored."""
    token = metadata(keys.token())
    started = secure_grpc.stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name="big-reply"), metadata=token, timeout=10
    )
    deadline = time.monotonic() + 20
    while True:
        got = secure_grpc.stub.GetSaga(
            saga_pb2.GetSagaRequest(saga_id=started.saga_id), metadata=token, timeout=10
        )
        if got.saga.status in ("COMPLETED", "FAILED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, got.saga.status
        time.sleep(0.05)
    assert got.saga.status == "FAILED"
    steps = [(g.step_name, g.action, g.status) for g in got.step_logs]
    assert steps == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("fetch", "EXECUTE", "FAILED"),
        # An unusable reply may mean the work was done (SPEC §3): fetch is compensated too
        # (it has no compensate method, so its compensation is SKIPPED).
        ("fetch", "COMPENSATE", "SKIPPED"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    assert "RESOURCE_EXHAUSTED" in got.step_logs[1].error_message
    assert got.step_logs[1].response_payload == b""
