"""Bearer-token authentication and the role matrix (SPEC §4, §5), over real HTTP (gunicorn)
and real gRPC, against a real JWKS endpoint on loopback; plus the key cache's behaviour
(rotation, refresh rate limit, outage) checked against that same endpoint."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
import uuid
from functools import partial
from typing import Any

import grpc
import jwt
import pytest

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2
from saga_grpc.server import authorizer
from saga_http import app as app_module
from saga_http import routes as routes_module
from tests.integration.test_rest_api import assert_error
from tests.security.conftest import (
    SecureGrpc,
    SecureRest,
    grpc_code,
    metadata,
)
from tests.security.jwks import AUDIENCE, ISSUER, JwksServer, Keys, auth_section
from workers.adapters.auth import (
    KeySet,
    TokenVerifier,
    Unauthenticated,
    fetch_jwks,
)
from workers.adapters.store.memory import MemoryStore
from workers.config import AuthConfig, Config, load_config
from workers.service.engine import Engine

WORKFLOW_YAML = """\
name: auth-flow-{n}
steps:
  - name: reserve
    service: shop
    method: Shop.Reserve
    retry: {{max_attempts: 1}}
"""


# ----------------------------------------------------------------------------- bad tokens


def bad_tokens(keys: Keys) -> dict[str, str | None]:
    """Every token the API must refuse with 401, by what is wrong with it."""
    return {
        "no token": None,
        "garbage": "not-a-jwt",
        "three garbage parts": "abc.def.ghi",
        "alg none": keys.unsigned(),
        "HS256 keyed with the RSA public key": keys.hs256_with_public_key(),
        "expired": keys.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "not yet valid (nbf)": keys.token(nbf=int(time.time()) + 3600),
        "issued in the future (iat)": keys.token(iat=int(time.time()) + 3600),
        "wrong issuer": keys.token(iss="https://evil.test/realms/k1s0"),
        "wrong audience": keys.token(aud="another-service"),
        "unknown kid": keys.token(kid="rsa-2"),
        "no kid": keys.signed_with_header({"alg": "RS256", "typ": "JWT"}),
        "no exp": keys.token(exp=None),
        "no sub": keys.token(sub=None),  # type: ignore[arg-type]
        "ES256 signature under an RS256 header": keys.signed_with_header(
            {"alg": "RS256", "kid": "rsa-1"}, signer="ec-1"
        ),
        "RS256 header naming the EC key": keys.signed_with_header(
            {"alg": "RS256", "kid": "ec-1"}, signer="rsa-1"
        ),
        "ES256 header naming the RSA key": keys.signed_with_header(
            {"alg": "ES256", "kid": "rsa-1"}, signer="ec-1"
        ),
        "RS512": keys.signed_with_header({"alg": "RS512", "kid": "rsa-1"}),
        "tampered claims": _tampered(keys.token(("sys_auditor",))),
    }


def _tampered(token: str) -> str:
    """The token with its roles raised to sys_admin and the signature kept."""
    header, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["realm_access"] = {"roles": ["sys_admin"]}
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{raw}.{signature}"


BAD_TOKEN_NAMES = [
    "no token",
    "garbage",
    "three garbage parts",
    "alg none",
    "HS256 keyed with the RSA public key",
    "expired",
    "not yet valid (nbf)",
    "issued in the future (iat)",
    "wrong issuer",
    "wrong audience",
    "unknown kid",
    "no kid",
    "no exp",
    "no sub",
    "ES256 signature under an RS256 header",
    "RS256 header naming the EC key",
    "ES256 header naming the RSA key",
    "RS512",
    "tampered claims",
]


@pytest.mark.parametrize("case", BAD_TOKEN_NAMES)
def test_rest_refuses_a_bad_token_with_401(rest: SecureRest, keys: Keys, case: str) -> None:
    """Each kind of bad token gets 401 SYS_AUTH_MISSING_CLAIMS with a Bearer challenge on a
    read and on a write, writes nothing, and the server answers the next request."""
    token = bad_tokens(keys)[case]
    before = rest.counts()
    for method, path, body in (
        ("GET", "/api/v1/sagas", None),
        ("POST", "/api/v1/sagas", {"workflow_name": "rest-order"}),
    ):
        response = rest.request(method, path, token=token, json=body)
        assert_error(response, 401, "SYS_AUTH_MISSING_CLAIMS")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert rest.counts() == before
    rest.assert_up()


@pytest.mark.parametrize(
    "header",
    [
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer",
        "Bearer ",
        "bearer  ",
        "Token abc",
        "Bearer " + "a" * 8100,
    ],
)
def test_rest_refuses_malformed_authorization_headers(rest: SecureRest, header: str) -> None:
    """An Authorization header that is not `Bearer <token>` (or is absurdly long) is a 401."""
    response = rest.request(
        "GET", "/api/v1/workflows", token=None, headers={"Authorization": header}
    )
    assert_error(response, 401, "SYS_AUTH_MISSING_CLAIMS")


def test_rest_accepts_rs256_and_es256_and_lower_case_scheme(rest: SecureRest, keys: Keys) -> None:
    """Valid RS256 and ES256 tokens are accepted, and the scheme name is case-insensitive."""
    for kid in ("rsa-1", "ec-1"):
        token = keys.token(("sys_auditor",), kid=kid)
        assert rest.request("GET", "/api/v1/workflows", token=token).status_code == 200
    response = rest.request(
        "GET",
        "/api/v1/workflows",
        token=None,
        headers={"Authorization": "bearer " + keys.token(("sys_auditor",))},
    )
    assert response.status_code == 200, response.text


def test_rest_token_within_leeway_is_accepted(rest: SecureRest, keys: Keys) -> None:
    """A token that expired less than leeway_secs (5 s) ago is still accepted (clock skew)."""
    token = keys.token(("sys_auditor",), exp=int(time.time()) - 2)
    assert rest.request("GET", "/api/v1/workflows", token=token).status_code == 200


# ----------------------------------------------------------------------------- the matrix

CALLERS = ("anonymous", "garbage", "no roles", "sys_auditor", "sys_operator", "sys_admin")


def caller_token(keys: Keys, caller: str) -> str | None:
    if caller == "anonymous":
        return None
    if caller == "garbage":
        return "garbage.token.value"
    if caller == "no roles":
        return keys.token(None)
    return keys.token((caller,), sub=f"{caller}-user")


def expected_for(access: str, caller: str, success: int) -> int:
    """SPEC §4: public is open; auditors read; operators and admins read and write."""
    if access == "public":
        return success
    if caller in ("anonymous", "garbage"):
        return 401
    if caller == "no roles":
        return 403
    if access == "write" and caller == "sys_auditor":
        return 403
    return success


# (method, path, access, body, the status the view answers when allowed). The cancel, pause and
# resume calls target a COMPLETED saga: a 409 shows the view ran (and changes nothing).
REST_ENDPOINTS: list[tuple[str, str, str, Any, int]] = [
    ("GET", "/healthz", "public", None, 200),
    ("GET", "/readyz", "public", None, 200),
    ("GET", "/metrics", "public", None, 200),
    ("GET", "/api/v1/openapi.json", "public", None, 200),
    ("POST", "/api/v1/sagas", "write", {"workflow_name": "rest-order"}, 201),
    ("GET", "/api/v1/sagas", "read", None, 200),
    ("GET", "/api/v1/sagas/{done}", "read", None, 200),
    ("POST", "/api/v1/sagas/{done}/cancel", "write", None, 409),
    ("POST", "/api/v1/sagas/{done}/compensate", "write", None, 409),
    ("POST", "/api/v1/sagas/{done}/pause", "write", None, 409),
    ("POST", "/api/v1/sagas/{done}/resume", "write", {"action": "retry"}, 409),
    ("POST", "/api/v1/workflows", "write", "workflow", 201),
    ("GET", "/api/v1/workflows", "read", None, 200),
    ("GET", "/api/v1/workflows/rest-order", "read", None, 200),
    ("GET", "/api/v1/stats", "read", None, 200),
]


@pytest.fixture(scope="module")
def done_saga(rest: SecureRest) -> str:
    response = rest.request("POST", "/api/v1/sagas", json={"workflow_name": "rest-order"})
    assert response.status_code == 201, response.text
    saga_id = str(response.json()["saga_id"])
    assert rest.wait_terminal(saga_id)["saga"]["status"] == "COMPLETED"
    return saga_id


def test_routes_table_matches_the_matrix() -> None:
    """The matrix covers every REST route, with the access level the ROUTES table gives it."""
    table = {
        (
            r.method,
            r.rule.replace("<saga_id>", "{done}").replace("<path:name>", "rest-order"),
            r.access,
        )
        for r in routes_module.ROUTES
    }
    assert table == {(m, p, a) for m, p, a, _, _ in REST_ENDPOINTS}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("method", "path", "access", "body", "success"),
    REST_ENDPOINTS,
    ids=[f"{m} {p}" for m, p, *_ in REST_ENDPOINTS],
)
def test_rest_role_matrix(
    rest: SecureRest,
    keys: Keys,
    done_saga: str,
    caller: str,
    method: str,
    path: str,
    access: str,
    body: Any,
    success: int,
) -> None:
    """Every caller against every REST endpoint gets what SPEC §4 says: public routes answer
    anyone, reads need sys_auditor/sys_operator/sys_admin, writes sys_operator/sys_admin;
    no or a bad token is a 401, a valid one without the role a 403 that writes nothing."""
    if body == "workflow":
        body = {"workflow_yaml": WORKFLOW_YAML.format(n=uuid.uuid4().hex[:8])}
    expected = expected_for(access, caller, success)
    before = rest.counts()
    audit_before = rest.request("GET", f"/api/v1/sagas/{done_saga}").json()["operator_actions"]
    response = rest.request(
        method, path.format(done=done_saga), token=caller_token(keys, caller), json=body
    )
    if expected == 401:
        assert_error(response, 401, "SYS_AUTH_MISSING_CLAIMS")
    elif expected == 403:
        assert_error(response, 403, "SYS_AUTH_PERMISSION_DENIED", "role")
    else:
        assert response.status_code == expected, response.text
    if expected in (401, 403):
        assert rest.counts() == before
    audit = rest.request("GET", f"/api/v1/sagas/{done_saga}").json()["operator_actions"]
    assert audit == audit_before  # a refused (or 409) operator action is not recorded


PAUSING_YAML = """\
name: auth-pausing-{n}
on_failure: pause
steps:
  - name: reserve
    service: shop
    method: Shop.Reserve
    compensate: Shop.Release
    retry: {{max_attempts: 1}}
  - name: wait
    service: shop
    method: Slow.Wait
    retry: {{max_attempts: 1}}
  - name: charge
    service: shop
    method: Shop.Charge
    retry: {{max_attempts: 1}}
"""


def _wait_status(rest: SecureRest, saga_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        detail: dict[str, Any] = rest.request("GET", f"/api/v1/sagas/{saga_id}").json()
        if detail["saga"]["status"] == status:
            return detail
        assert time.monotonic() < deadline, f"saga {saga_id} still {detail['saga']['status']}"
        time.sleep(0.05)


def test_rest_operator_actions_are_recorded_as_the_token_sub(rest: SecureRest, keys: Keys) -> None:
    """Pause, resume and cancel are recorded with the sub of the token that asked for them
    (SPEC §11 audit), whoever started the saga."""
    name = f"auth-pausing-{uuid.uuid4().hex[:8]}"
    registered = rest.request(
        "POST", "/api/v1/workflows", json={"workflow_yaml": PAUSING_YAML.format(n=name[13:])}
    )
    assert registered.status_code == 201, registered.text

    def as_(sub: str, role: str = "sys_operator") -> str:
        return keys.token((role,), sub=sub)

    failing = rest.request(
        "POST", "/api/v1/sagas", json={"workflow_name": name, "payload": {"card": "declined"}}
    ).json()["saga_id"]
    _wait_status(rest, failing, "PAUSED")
    resumed = rest.request(
        "POST",
        f"/api/v1/sagas/{failing}/resume",
        token=as_("erin@example.test", "sys_admin"),
        json={"action": "compensate"},
    )
    assert resumed.status_code == 200, resumed.text

    slow = rest.request("POST", "/api/v1/sagas", json={"workflow_name": name}).json()["saga_id"]
    _wait_status(rest, slow, "RUNNING")
    paused = rest.request("POST", f"/api/v1/sagas/{slow}/pause", token=as_("frank"))
    assert paused.status_code == 200, paused.text
    _wait_status(rest, slow, "PAUSED")
    cancelled = rest.request("POST", f"/api/v1/sagas/{slow}/cancel", token=as_("gina"))
    assert cancelled.status_code == 200, cancelled.text

    first = rest.wait_terminal(failing)
    second = rest.wait_terminal(slow)
    assert (first["saga"]["status"], second["saga"]["status"]) == ("FAILED", "CANCELLED")
    assert [(a["action"], a["by"]) for a in first["operator_actions"]] == [
        ("resume", "erin@example.test")
    ]
    assert [(a["action"], a["by"]) for a in second["operator_actions"]] == [
        ("pause", "frank"),
        ("cancel", "gina"),
    ]


def test_rest_principal_is_recorded_as_initiated_by(rest: SecureRest, keys: Keys) -> None:
    """The token's sub becomes initiated_by when the request gives none; a given one wins."""
    token = keys.token(("sys_operator",), sub="carol@example.test")
    implicit = rest.request(
        "POST", "/api/v1/sagas", token=token, json={"workflow_name": "rest-order"}
    )
    explicit = rest.request(
        "POST",
        "/api/v1/sagas",
        token=token,
        json={"workflow_name": "rest-order", "initiated_by": "batch-job"},
    )
    assert implicit.status_code == explicit.status_code == 201
    first = rest.wait_terminal(implicit.json()["saga_id"])["saga"]
    second = rest.wait_terminal(explicit.json()["saga_id"])["saga"]
    assert first["initiated_by"] == "carol@example.test"
    assert second["initiated_by"] == "batch-job"


def test_rest_jwks_refresh_is_rate_limited(rest: SecureRest, keys: Keys, jwks: JwksServer) -> None:
    """A flood of tokens with unknown kids is refused with 401 and costs the JWKS server at
    most one fetch per worker per refresh interval, not one per token."""
    rest.request("GET", "/api/v1/workflows")  # each worker has its keys by now, or soon
    before = jwks.hits
    private = keys.private["rsa-2"]
    for _ in range(40):
        claims = keys.claims()
        token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": uuid.uuid4().hex})
        assert_error(
            rest.request("GET", "/api/v1/workflows", token=token), 401, "SYS_AUTH_MISSING_CLAIMS"
        )
    assert jwks.hits - before <= 2 * len(rest.server.workers) + 2
    rest.assert_up()


def test_rest_jwks_outage_keeps_known_keys_and_refuses_unknown(
    rest: SecureRest, keys: Keys, jwks: JwksServer
) -> None:
    """While the JWKS endpoint fails, tokens signed by cached keys still work and a token
    needing an unknown key is a clean 401 naming the outage, never a 500 or a hang."""
    admin = keys.token(("sys_admin",))
    assert rest.request("GET", "/api/v1/workflows", token=admin).status_code == 200
    time.sleep(5.2)  # past the refresh interval, so the unknown kid triggers a real attempt
    with jwks.down():
        started = time.monotonic()
        unknown = keys.token(kid="ec-2")
        refused = rest.request("GET", "/api/v1/workflows", token=unknown)
        assert_error(refused, 401, "SYS_AUTH_MISSING_CLAIMS")
        assert time.monotonic() - started < 5
        assert rest.request("GET", "/api/v1/workflows", token=admin).status_code == 200
    assert "JWKS fetch failed" in rest.server.log()
    rest.assert_up()


# ----------------------------------------------------------------------------- gRPC


def _grpc_calls(done: str) -> list[tuple[str, str, Any, grpc.StatusCode]]:
    return [
        (
            "StartSaga",
            "write",
            saga_pb2.StartSagaRequest(workflow_name="rest-order"),
            grpc.StatusCode.OK,
        ),
        ("GetSaga", "read", saga_pb2.GetSagaRequest(saga_id=done), grpc.StatusCode.OK),
        ("ListSagas", "read", saga_pb2.ListSagasRequest(), grpc.StatusCode.OK),
        (
            "CancelSaga",
            "write",
            saga_pb2.CancelSagaRequest(saga_id=done),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            "CompensateSaga",
            "write",
            saga_pb2.CompensateSagaRequest(saga_id=done),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        ("RegisterWorkflow", "write", "workflow", grpc.StatusCode.OK),
        ("ListWorkflows", "read", saga_pb2.ListWorkflowsRequest(), grpc.StatusCode.OK),
        (
            "PauseSaga",
            "write",
            saga_pb2.PauseSagaRequest(saga_id=done),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            "ResumeSaga",
            "write",
            saga_pb2.ResumeSagaRequest(saga_id=done, action="retry"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ]


GRPC_METHODS = [
    "StartSaga",
    "GetSaga",
    "ListSagas",
    "CancelSaga",
    "CompensateSaga",
    "RegisterWorkflow",
    "ListWorkflows",
    "PauseSaga",
    "ResumeSaga",
]


def test_grpc_matrix_covers_every_rpc() -> None:
    """The gRPC matrix lists every SagaService RPC, each once."""
    service = saga_pb2.DESCRIPTOR.services_by_name["SagaService"]
    assert sorted(GRPC_METHODS) == sorted(m.name for m in service.methods)
    assert [c[0] for c in _grpc_calls("x")] == GRPC_METHODS


@pytest.fixture(scope="module")
def grpc_done(secure_grpc: SecureGrpc, keys: Keys) -> str:
    token = keys.token(("sys_admin",))
    reply = secure_grpc.stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name="rest-order"), metadata=metadata(token), timeout=10
    )
    deadline = time.monotonic() + 20
    while True:
        got = secure_grpc.stub.GetSaga(
            saga_pb2.GetSagaRequest(saga_id=reply.saga_id), metadata=metadata(token), timeout=10
        )
        if got.saga.status == "COMPLETED":
            return str(reply.saga_id)
        assert time.monotonic() < deadline, got.saga.status
        time.sleep(0.05)


_GRPC_EXPECT = {
    200: None,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("method", GRPC_METHODS)
def test_grpc_role_matrix(
    secure_grpc: SecureGrpc, keys: Keys, grpc_done: str, caller: str, method: str
) -> None:
    """Every caller against every SagaService RPC gets what SPEC §5 says: no or a bad token is
    UNAUTHENTICATED, a valid one without the role PERMISSION_DENIED (writing nothing), the
    right role reaches the RPC."""
    (_, access, request, success) = next(c for c in _grpc_calls(grpc_done) if c[0] == method)
    if request == "workflow":
        request = saga_pb2.RegisterWorkflowRequest(
            workflow_yaml=WORKFLOW_YAML.format(n=uuid.uuid4().hex[:8])
        )
    status = expected_for(access, caller, 200)
    before = secure_grpc.counts()
    code = grpc_code(getattr(secure_grpc.stub, method), request, caller_token(keys, caller))
    assert code == (_GRPC_EXPECT[status] or success)
    if status != 200:
        assert secure_grpc.counts() == before


@pytest.mark.parametrize("case", BAD_TOKEN_NAMES)
def test_grpc_refuses_a_bad_token(secure_grpc: SecureGrpc, keys: Keys, case: str) -> None:
    """Each kind of bad token in the authorization metadata is UNAUTHENTICATED, on a read
    and on a write."""
    token = bad_tokens(keys)[case]
    stub = secure_grpc.stub
    assert grpc_code(stub.ListWorkflows, saga_pb2.ListWorkflowsRequest(), token) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert grpc_code(
        stub.StartSaga, saga_pb2.StartSagaRequest(workflow_name="rest-order"), token
    ) == (grpc.StatusCode.UNAUTHENTICATED)


def test_grpc_two_authorization_values_are_refused(secure_grpc: SecureGrpc, keys: Keys) -> None:
    """Two authorization metadata values (say a valid one and a forged one) are refused."""
    with pytest.raises(grpc.RpcError) as caught:
        secure_grpc.stub.ListWorkflows(
            saga_pb2.ListWorkflowsRequest(),
            metadata=(
                ("authorization", "Bearer " + keys.token(("sys_auditor",))),
                ("authorization", "Bearer " + keys.unsigned()),
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_health_stays_public(secure_grpc: SecureGrpc) -> None:
    """The standard health service answers without a token."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(secure_grpc.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_principal_is_recorded_as_initiated_by(secure_grpc: SecureGrpc, keys: Keys) -> None:
    """Over gRPC too, the token's sub is initiated_by when the request leaves it empty."""
    token = keys.token(("sys_operator",), sub="dave")
    stub = secure_grpc.stub
    implicit = stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name="rest-order"), metadata=metadata(token), timeout=10
    )
    explicit = stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name="rest-order", initiated_by="cron"),
        metadata=metadata(token),
        timeout=10,
    )
    got = [
        stub.GetSaga(
            saga_pb2.GetSagaRequest(saga_id=r.saga_id), metadata=metadata(token), timeout=10
        ).saga.initiated_by
        for r in (implicit, explicit)
    ]
    assert got == ["dave", "cron"]


def test_grpc_operator_actions_are_recorded_as_the_token_sub(
    secure_grpc: SecureGrpc, keys: Keys
) -> None:
    """Over gRPC too, PauseSaga, ResumeSaga and CancelSaga are recorded with the caller's sub."""
    stub = secure_grpc.stub
    admin = metadata(keys.token(("sys_admin",), sub="root"))
    name = f"auth-pausing-{uuid.uuid4().hex[:8]}"
    stub.RegisterWorkflow(
        saga_pb2.RegisterWorkflowRequest(workflow_yaml=PAUSING_YAML.format(n=name[13:])),
        metadata=admin,
        timeout=10,
    )

    def status(saga_id: str) -> saga_pb2.GetSagaResponse:
        return stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), metadata=admin, timeout=10)

    def wait(saga_id: str, *wanted: str) -> saga_pb2.GetSagaResponse:
        deadline = time.monotonic() + 20
        while (got := status(saga_id)).saga.status not in wanted:
            assert time.monotonic() < deadline, got.saga.status
            time.sleep(0.05)
        return got

    failing = stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name=name, payload=b'{"card": "declined"}'),
        metadata=admin,
        timeout=10,
    ).saga_id
    slow = stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name=name), metadata=admin, timeout=10
    ).saga_id
    wait(slow, "RUNNING")
    stub.PauseSaga(
        saga_pb2.PauseSagaRequest(saga_id=slow),
        metadata=metadata(keys.token(("sys_operator",), sub="harry")),
        timeout=10,
    )
    wait(failing, "PAUSED")
    stub.ResumeSaga(
        saga_pb2.ResumeSagaRequest(saga_id=failing, action="compensate"),
        metadata=metadata(keys.token(("sys_operator",), sub="ivy")),
        timeout=10,
    )
    wait(slow, "PAUSED")
    stub.CancelSaga(
        saga_pb2.CancelSagaRequest(saga_id=slow),
        metadata=metadata(keys.token(("sys_admin",), sub="jo")),
        timeout=10,
    )
    first = wait(failing, "FAILED")
    second = wait(slow, "CANCELLED")
    assert [(a.action, a.by) for a in first.operator_actions] == [("resume", "ivy")]
    assert [(a.action, a.by) for a in second.operator_actions] == [
        ("pause", "harry"),
        ("cancel", "jo"),
    ]


# ----------------------------------------------------------------------------- open API warnings


def test_rest_without_auth_warns_that_it_is_open(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an auth section, building the REST app logs a WARNING that the API is open,
    and a request without a token is served."""
    monkeypatch.setattr(app_module, "_warned_open", False)
    config = Config()
    with caplog.at_level(logging.WARNING, logger="saga.http"):
        app = app_module.create_app(config, Engine(config, MemoryStore(), execute=False))
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("open" in r.getMessage() and "auth" in r.getMessage() for r in warned)
    assert app.test_client().get("/api/v1/workflows").status_code == 200


def test_grpc_without_auth_warns_that_it_is_open(caplog: pytest.LogCaptureFixture) -> None:
    """Without an auth section, building the gRPC API logs a WARNING that it is open."""
    with caplog.at_level(logging.WARNING, logger="saga.grpc"):
        authorizer(Config())
    assert any(r.levelno == logging.WARNING and "open" in r.getMessage() for r in caplog.records)


def test_auth_config_is_checked_at_start(tmp_path: Any) -> None:
    """A bad auth section stops the program at start with a line naming the key."""
    from workers.config import ConfigError

    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"auth": auth_section("ftp://x/jwks")}), encoding="utf-8")
    with pytest.raises(ConfigError, match="auth.jwks_url"):
        load_config(str(path))
    path.write_text(json.dumps({"auth": auth_section("http://x/jwks", leeway_secs=-1)}))
    with pytest.raises(ConfigError, match="auth.leeway_secs"):
        load_config(str(path))


# ----------------------------------------------------------------------------- the key cache


def verifier(url: str, **keyset: Any) -> TokenVerifier:
    config = AuthConfig(jwks_url=url, issuer=ISSUER, audience=AUDIENCE, leeway_secs=5)
    return TokenVerifier(config, KeySet(url, config.jwks_cache_ttl_secs, **keyset))


def test_unknown_kid_refreshes_the_keys_once_rotated_in(jwks: JwksServer, keys: Keys) -> None:
    """A key rotated into the JWKS is picked up on the first token that names it, without
    waiting for the cache TTL."""
    check = verifier(jwks.url, min_refresh_secs=0.0)
    assert check.authenticate("Bearer " + keys.token()).sub == "alice"
    fetches = check.keys.fetches
    try:
        keys.published.append("rsa-2")
        principal = check.authenticate("Bearer " + keys.token(("sys_operator",), kid="rsa-2"))
    finally:
        keys.published.remove("rsa-2")
    assert principal.roles == frozenset({"sys_operator"})
    assert check.keys.fetches == fetches + 1


def test_concurrent_unknown_kids_fetch_once(jwks: JwksServer, keys: Keys) -> None:
    """Many threads presenting unknown kids at once cause one JWKS fetch, not one each."""
    check = verifier(jwks.url, min_refresh_secs=60.0)
    check.authenticate("Bearer " + keys.token())
    errors: list[str] = []

    def attempt() -> None:
        try:
            check.authenticate("Bearer " + keys.token(kid="rsa-2"))
        except Unauthenticated as exc:
            errors.append(exc.message)

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(errors) == 20 and all("unknown key" in e for e in errors)
    assert check.keys.fetches == 1


def test_stale_keys_are_used_while_the_jwks_is_down(jwks: JwksServer, keys: Keys) -> None:
    """Past the TTL with the JWKS endpoint failing, cached keys still verify tokens."""
    config = AuthConfig(jwks_url=jwks.url, issuer=ISSUER, audience=AUDIENCE)
    check = TokenVerifier(config, KeySet(jwks.url, ttl_secs=0.0, min_refresh_secs=0.0))
    check.authenticate("Bearer " + keys.token())
    with jwks.down():
        assert check.authenticate("Bearer " + keys.token(kid="ec-1")).sub == "alice"
        with pytest.raises(Unauthenticated, match="unavailable"):
            check.authenticate("Bearer " + keys.token(kid="rsa-2"))


def test_unreachable_jwks_is_a_prompt_401(caplog: pytest.LogCaptureFixture, keys: Keys) -> None:
    """A JWKS endpoint that refuses connections, or accepts and never answers, gives a 401
    within the fetch timeout, and the failure is logged as an error."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}/jwks"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks"
        for url in (refused_url, silent_url):
            check = verifier(url, fetch=partial(fetch_jwks, timeout=0.5))
            started = time.monotonic()
            with caplog.at_level(logging.ERROR, logger="saga.auth"):
                with pytest.raises(Unauthenticated, match="unavailable"):
                    check.authenticate("Bearer " + keys.token())
                # Within the refresh interval: refused at once, without a second fetch.
                with pytest.raises(Unauthenticated, match="unavailable"):
                    check.authenticate("Bearer " + keys.token())
            assert time.monotonic() - started < 3
            assert check.keys.fetches == 1
    assert any("JWKS fetch failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        b'{"keys": "nope"}',
        b'{"keys": [{"kty": "oct", "kid": "rsa-1", "k": "c2VjcmV0"}]}',
        b'{"keys": [{"kty": "RSA", "kid": "rsa-1", "n": "AQAB", "e": "AQAB", "alg": "HS256"}]}',
    ],
)
def test_hostile_jwks_documents_verify_nothing(keys: Keys, document: bytes) -> None:
    """A JWKS answer that is not a key set, or holds only a symmetric (oct) key or a key
    declared for another algorithm, verifies no token (401), and never raises anything else."""
    server = JwksServer(keys)
    server.raw = document
    try:
        check = verifier(server.url)
        for token in (keys.token(), keys.hs256_with_public_key(), keys.unsigned()):
            with pytest.raises(Unauthenticated):
                check.authenticate("Bearer " + token)
    finally:
        server.close()
