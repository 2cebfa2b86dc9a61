"""Property-based fuzzing of the REST API over real HTTP (the gunicorn server with auth):
hypothesis generates methods, paths, path parameters, queries, headers (tokens of every role,
none, garbage) and bodies (JSON of any shape, hostile strings, raw bytes), and every answer
must be a non-5xx that the served OpenAPI document describes, with the right auth outcome.

The budget follows the hypothesis profile (`ci`: 250 examples per test, fixed seed), a few
seconds per test against a local server."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_http.routes import ROUTES
from tests.integration.test_openapi import SchemaCheck
from tests.security.conftest import SecureRest, bearer
from tests.security.jwks import Keys

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
LIST_QUERY = ("page", "page_size", "status", "workflow_name", "correlation_id")
CALLERS = ("anonymous", "garbage", "no roles", "sys_auditor", "sys_operator", "sys_admin")

# Text that HTTP can carry in a URL (no lone surrogates: they have no UTF-8 form).
url_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
# Header values: latin-1, no control characters.
header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, blacklist_categories=("Cc",)),
    max_size=300,
).map(str.lstrip)  # HTTP drops leading whitespace; requests refuses to send it
tricky = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "1e12",
        "99999999999",
        "1.5",
        " 1",
        "RUNNING",
        "COMPLETED",
        "running",
        "RUNNING' OR 1=1--",
        "\x00",
        "a\x00b",
        "%00",
        "null",
        "rest-order",
        "\U0001d518",
        "x" * 256,
    ]
)
scalar_text = st.one_of(tricky, url_text, st.integers().map(str))
# JSON strings may carry anything, lone surrogates included (json.dumps escapes them).
json_text = st.one_of(tricky, st.text(max_size=30), st.sampled_from(["\ud800", "a\udfffb"]))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=25,
)
start_bodies = st.fixed_dictionaries(
    {},
    optional={
        "workflow_name": st.one_of(st.just("rest-order"), st.just("no-such-flow"), json_values),
        "payload": st.one_of(st.dictionaries(json_text, json_values, max_size=5), json_values),
        "correlation_id": json_values,
        "initiated_by": json_values,
        "extra": json_values,
    },
)
yaml_documents = st.one_of(
    json_text,
    st.builds(
        lambda name, service, method, extra: (
            f"name: {json.dumps(name)}\nsteps:\n  - name: a\n    service: {json.dumps(service)}\n"
            f"    method: {json.dumps(method)}\n{extra}"
        ),
        st.one_of(st.just("fuzz-flow"), json_text),
        st.sampled_from(["shop", "billing", "10.0.0.1:50051", "", "shop\x00"]),
        st.sampled_from(["Shop.Reserve", "Reserve", "/a/b", "a.b.C", "Shop.Re serve"]),
        st.sampled_from(["", "x: &a 1\n", "y: *a\n", "z: !!python/name:os.system\n", "<<: {}\n"]),
    ),
)
register_bodies = st.fixed_dictionaries(
    {}, optional={"workflow_yaml": st.one_of(yaml_documents, json_values)}
)


@st.composite
def requests_to_send(draw: st.DrawFn, known_saga: str) -> dict[str, Any]:
    """One request: a route (sometimes the wrong method), its path parameter, query, headers
    and body."""
    route = draw(st.sampled_from(ROUTES))
    method = draw(
        st.one_of(st.just(route.method), st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    )
    saga_id = draw(
        st.one_of(
            st.just(known_saga),
            st.uuids().map(str),
            st.uuids().map(lambda u: str(u).upper()),
            scalar_text.filter(bool),
            st.just("a" * 2000),
        )
    )
    name = draw(st.one_of(st.just("rest-order"), scalar_text.filter(bool)))
    path = route.rule.replace("<saga_id>", quote(saga_id, safe="")).replace(
        "<path:name>", quote(name, safe="")
    )
    query = draw(
        st.dictionaries(
            st.one_of(st.sampled_from(LIST_QUERY), st.sampled_from(["foo", "page[]"])),
            scalar_text,
            max_size=4,
        )
    )
    headers: dict[str, str] = {}
    caller = draw(st.sampled_from(CALLERS))
    content_type = draw(
        st.sampled_from([None, "application/json", "text/plain", "application/problem+json"])
    )
    if content_type:
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(header_text)
    if draw(st.booleans()):
        headers["X-Request-Id"] = draw(header_text)
    body: bytes | None = None
    if method == "POST":
        kind = draw(st.sampled_from(["start", "register", "json", "raw", "none"]))
        if kind == "start":
            body = json.dumps(draw(start_bodies)).encode()
        elif kind == "register":
            body = json.dumps(draw(register_bodies)).encode()
        elif kind == "json":
            body = json.dumps(draw(json_values)).encode()
        elif kind == "raw":
            body = draw(st.binary(max_size=300))
    return {
        "route": route,
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "caller": caller,
        "body": body,
    }


def _token(keys: Keys, caller: str) -> str | None:
    if caller == "anonymous":
        return None
    if caller == "garbage":
        return "garbage.token.value"
    return keys.token(None if caller == "no roles" else (caller,), sub=f"fuzz-{caller}")


def _auth_outcome(access: str, caller: str) -> int | None:
    """The status auth must give (401/403), or None when the caller may call."""
    if access == "public":
        return None
    if caller in ("anonymous", "garbage"):
        return 401
    if caller == "no roles" or (access == "write" and caller == "sys_auditor"):
        return 403
    return None


class Oracle:
    """Checks one real response against the served OpenAPI document and SPEC §4's roles."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.check = SchemaCheck(document)

    def problems(self, sent: dict[str, Any], response: requests.Response) -> list[str]:
        route = sent["route"]
        status = response.status_code
        where = f"{sent['method']} {sent['path'][:120]} ({sent['caller']}) -> {status}"
        found: list[str] = []
        if status >= 500:
            return [f"{where}: server error {response.text[:300]}"]
        if not response.headers.get("X-Request-Id"):
            found.append(f"{where}: no X-Request-Id")
        template = route.template
        operation = self.document["paths"][template].get(sent["method"].lower())
        body: Any = None
        if response.headers.get("Content-Type") == "application/json":
            body = response.json()
        message = body["error"]["message"] if isinstance(body, dict) and "error" in body else ""
        routed = operation is not None and not (
            status in (404, 405)
            and (message.startswith("no such endpoint") or message.startswith("method "))
        )
        if not routed:
            pointer = "/components/schemas/Error"
            found += [f"{where}: {p}" for p in self.check.errors(body, pointer)]
            return found
        # The route that serves it: same rule, the method actually sent.
        served = next(r for r in ROUTES if r.rule == route.rule and r.method == sent["method"])
        expected = _auth_outcome(served.access, sent["caller"])
        if expected is not None and status != expected:
            found.append(f"{where}: auth should have answered {expected}")
        if expected is None and status in (401, 403):
            found.append(f"{where}: refused a caller who may call ({message})")
        responses = operation["responses"]
        if str(status) not in responses:
            return [*found, f"{where}: status not documented ({response.text[:200]})"]
        documented = responses[str(status)]
        if "$ref" in documented:
            pointer = documented["$ref"][1:] + "/content/application~1json/schema"
            content = _resolve(self.document, documented)["content"]
        else:
            escaped = template.replace("~", "~0").replace("/", "~1")
            pointer = (
                f"/paths/{escaped}/{sent['method'].lower()}/responses/{status}"
                "/content/application~1json/schema"
            )
            content = documented.get("content", {})
        if "application/json" in content:
            if body is None:
                return [*found, f"{where}: not JSON ({response.headers.get('Content-Type')})"]
            found += [f"{where}: {p}" for p in self.check.errors(body, pointer)]
        return found


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def _send(rest: SecureRest, keys: Keys, sent: dict[str, Any]) -> requests.Response:
    headers = dict(sent["headers"]) | bearer(_token(keys, sent["caller"]))
    return requests.request(
        sent["method"],
        rest.base + sent["path"],
        params=sent["query"],
        data=sent["body"],
        headers=headers,
        timeout=20,
    )


def _known_saga(rest: SecureRest) -> str:
    response = rest.request("POST", "/api/v1/sagas", json={"workflow_name": "rest-order"})
    assert response.status_code == 201, response.text
    return str(response.json()["saga_id"])


def test_fuzzed_requests_get_documented_non_5xx_answers(rest: SecureRest, keys: Keys) -> None:
    """For any generated request, the answer is not a 5xx, carries X-Request-Id, has a status
    the OpenAPI document lists for the operation (or is a routing 404/405 envelope), a body
    that validates against the documented schema, and the auth outcome the roles dictate."""
    document = requests.get(rest.base + "/api/v1/openapi.json", timeout=10).json()
    oracle = Oracle(document)
    known = _known_saga(rest)

    @settings(suppress_health_check=SUPPRESS)
    @given(sent=requests_to_send(known))
    def check(sent: dict[str, Any]) -> None:
        response = _send(rest, keys, sent)
        problems = oracle.problems(sent, response)
        assert not problems, "\n".join(problems)

    check()
    rest.assert_up()


def test_fuzzed_start_bodies_by_an_operator(rest: SecureRest, keys: Keys) -> None:
    """For any start body an operator sends, the answer is 201/200 with a saga id, or a
    documented 400/404/409/413 envelope; never a 5xx."""
    document = requests.get(rest.base + "/api/v1/openapi.json", timeout=10).json()
    oracle = Oracle(document)
    route = next(r for r in ROUTES if r.endpoint == "start_saga")

    @settings(suppress_health_check=SUPPRESS)
    @given(body=start_bodies, key=st.one_of(st.none(), header_text))
    def check(body: dict[str, Any], key: str | None) -> None:
        sent = {
            "route": route,
            "method": "POST",
            "path": "/api/v1/sagas",
            "query": {},
            "headers": {"Content-Type": "application/json"}
            | ({"Idempotency-Key": key} if key is not None else {}),
            "caller": "sys_operator",
            "body": json.dumps(body).encode(),
        }
        response = _send(rest, keys, sent)
        problems = oracle.problems(sent, response)
        assert not problems, "\n".join(problems)
        assert response.status_code in (200, 201, 400, 404, 409), response.text

    check()
    rest.assert_up()
