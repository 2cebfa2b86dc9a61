"""The REST API (SPEC §4) as a Flask app: `create_app(config, engine)`.

Thin on purpose: each view turns a request into one `Engine` call and the result (or a domain
error) into JSON. No business rule lives here, nothing here talks to the store directly, and
nothing connects at import time: `create_app` is called once per process, after gunicorn forks
(see `saga_http.wsgi`).

Every response carries `X-Request-Id`; every error, whoever raised it (a view, the router, the
body-size limit, a bug), leaves as the one envelope
`{"error": {"code", "message", "request_id", "details": []}}`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from saga.errors import Conflict, NotFound, ValidationError
from saga.values import check_text
from saga_http.codes import (
    AUTH_MISSING_CLAIMS,
    AUTH_PERMISSION_DENIED,
    CONFLICT,
    INTERNAL_ERROR,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    VALIDATION_ERROR,
)
from saga_http.console import console_blueprint
from saga_http.routes import ROUTES
from workers.adapters import metrics
from workers.adapters.auth import PUBLIC, Forbidden, TokenVerifier, Unauthenticated
from workers.config import Config
from workers.service import views
from workers.service.engine import Engine

log = logging.getLogger("saga.http")

REQUEST_ID_HEADER = "X-Request-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_REQUEST_ID_MAX = 128
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LIST_QUERY = ("page", "page_size", "status", "workflow_name", "correlation_id")
_RESUME_FIELDS = ("action", "payload")

_DOMAIN_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (ValidationError, 400, VALIDATION_ERROR),
    (NotFound, 404, NOT_FOUND),
    (Conflict, 409, CONFLICT),
    (Unauthenticated, 401, AUTH_MISSING_CLAIMS),
    (Forbidden, 403, AUTH_PERMISSION_DENIED),
)

_warned_open = False


class PayloadTooLarge(Exception):
    """The request body is over `limits.request_body_bytes` (413)."""


def create_app(config: Config, engine: Engine | None = None) -> Flask:
    """The Flask app serving SPEC §4 over `engine`.

    Without an engine, one is built from `config` and started here (load `workflow_dir`, start
    the executor when `saga.execute`): call this in the process that serves, after any fork.
    A given engine belongs to the caller, who starts and closes it (e.g. one engine shared by
    REST and gRPC). Either way the engine is at `app.extensions["saga_engine"]`.
    """
    verifier: TokenVerifier | None = None
    if config.auth is not None:
        verifier = TokenVerifier.from_config(config.auth)
        log.info(
            "REST API: bearer tokens required (issuer %s, audience %s, keys from %s)",
            config.auth.issuer,
            config.auth.audience,
            config.auth.jwks_url,
        )
    else:
        _warn_open_once()
    if engine is None:
        engine = Engine.from_config(config)
        try:
            engine.start()
        except BaseException:
            engine.close(grace_secs=0)
            raise

    app = Flask("saga_http", static_folder=None)
    # One byte over the limit: werkzeug stops a chunked body at exactly MAX_CONTENT_LENGTH
    # without an error, so reading limit + 1 bytes is how `read_json_object` sees the excess.
    app.config["MAX_CONTENT_LENGTH"] = config.limits.request_body_bytes + 1
    app.extensions["saga_engine"] = engine
    app.extensions["saga_config"] = config
    api = _Api(config, engine)
    for route in ROUTES:
        view: Callable[..., Response] = getattr(api, route.view)
        # The one place where per-route access is enforced: PUBLIC routes stay unwrapped.
        if verifier is not None and route.access != PUBLIC:
            view = _guarded(view, route.access, verifier)
        app.add_url_rule(
            route.rule,
            endpoint=route.endpoint,
            view_func=view,
            methods=[route.method],
            provide_automatic_options=False,
        )
    app.register_blueprint(console_blueprint())  # the web console at /ui/: static files only
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _any_error)
    app.after_request(_finish)
    return app


def _guarded(
    view: Callable[..., Response], access: str, verifier: TokenVerifier
) -> Callable[..., Response]:
    """`view`, run only for a caller whose bearer token grants `access`; the caller is
    `g.principal`. A refusal raises Unauthenticated (401) or Forbidden (403) before the body
    is read."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Response:
        g.principal = verifier.authorize(request.headers.get("Authorization"), access)
        return view(*args, **kwargs)

    return guarded


def _warn_open_once() -> None:
    global _warned_open
    if not _warned_open:
        _warned_open = True
        log.warning(
            "no auth section configured: the REST API is open to every caller "
            "(development default; configure auth before exposing it)"
        )


# ------------------------------------------------------------------------- the views


class _Api:
    def __init__(self, config: Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self._openapi: bytes | None = None
        self._paused_labels: set[str] = set()

    def healthz(self) -> Response:
        return reply({"status": "ok"})

    def readyz(self) -> Response:
        reason = self.engine.not_ready_reason()
        if reason is None:
            return reply({"status": "ready"})
        return reply({"status": "not ready", "reason": reason}, 503)

    def metrics(self) -> Response:
        self._count_paused()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            text = generate_latest(registry)
        else:
            text = generate_latest(REGISTRY)
        return Response(text, 200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _count_paused(self) -> None:
        """Set the `saga_paused` gauge from the store, as of this scrape: one label per
        workflow with PAUSED sagas. A workflow that has none any more goes; under gunicorn
        (multiprocess files, where a label cannot be removed and another worker may hold an
        older count) every known workflow without one is set to 0 instead. A store that does
        not answer leaves the gauge as it was: /metrics still answers."""
        try:
            paused = self.engine.paused_by_workflow()
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                known = {w.name for w in self.engine.list_workflows()}
                for workflow in sorted(known - set(paused)):
                    metrics.PAUSED.labels(workflow).set(0)
            else:
                for workflow in self._paused_labels - set(paused):
                    metrics.PAUSED.remove(workflow)
        except Exception:
            log.warning("saga_paused not updated: the saga store does not answer", exc_info=True)
            return
        for workflow, count in paused.items():
            metrics.PAUSED.labels(workflow).set(count)
        self._paused_labels = set(paused)

    def start_saga(self) -> Response:
        body = read_json_object(self.config)
        state, created = self.engine.start_saga(
            body.get("workflow_name"),
            body.get("payload"),
            correlation_id=body.get("correlation_id"),
            initiated_by=body.get("initiated_by"),
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
            principal=_caller(),
            # W3C Trace Context (SPEC §12); several tracestate fields are one list (RFC 9110).
            traceparent=request.headers.get("traceparent"),
            tracestate=",".join(request.headers.getlist("tracestate")) or None,
        )
        if not created:
            # A replay: answer with the first saga as it is now, not as it was created.
            state, _ = self.engine.get_saga(state.saga_id)
        return reply(
            {"saga_id": state.saga_id, "status": state.status.value}, 201 if created else 200
        )

    def list_sagas(self) -> Response:
        args = request.args
        unknown = sorted(set(args) - set(_LIST_QUERY))
        if unknown:
            raise ValidationError(
                f"unknown query parameter(s): {', '.join(unknown)}; "
                f"allowed: {', '.join(_LIST_QUERY)}"
            )
        for name in _LIST_QUERY:
            if len(args.getlist(name)) > 1:
                raise ValidationError(f"{name}: given more than once")
        page = self.engine.list_sagas(
            page=args.get("page"),
            page_size=args.get("page_size"),
            workflow_name=args.get("workflow_name"),
            status=args.get("status"),
            correlation_id=args.get("correlation_id"),
        )
        return reply(views.saga_page_view(page))

    def get_saga(self, saga_id: str) -> Response:
        state, logs, actions = self.engine.get_saga_detail(saga_id)
        return reply(views.saga_detail_view(state, logs, actions))

    def cancel_saga(self, saga_id: str) -> Response:
        state = self.engine.cancel_saga(saga_id, by=_caller())
        return reply({"success": True, "message": f"saga {state.saga_id} cancelled"})

    def pause_saga(self, saga_id: str) -> Response:
        """Pause at the next step boundary (SPEC §11); any body is ignored."""
        state = self.engine.pause_saga(saga_id, by=_caller())
        return reply({"success": True, "message": f"saga {state.saga_id} pause requested"})

    def resume_saga(self, saga_id: str) -> Response:
        """Resume a PAUSED saga (SPEC §11). The body is optional: none (or `{}`) takes the
        default action and keeps the payload; `action` and `payload` are its only fields."""
        body = read_json_object(self.config, optional=True)
        unknown = sorted(set(body) - set(_RESUME_FIELDS))
        if unknown:
            raise ValidationError(
                f"unknown field(s): {', '.join(u[:64] for u in unknown[:5])}; "
                f"allowed: {', '.join(_RESUME_FIELDS)}"
            )
        state = self.engine.resume_saga(
            saga_id, body.get("action"), body.get("payload"), by=_caller()
        )
        actions = self.engine.operator_actions(state.saga_id)
        return reply(
            {
                "success": True,
                "status": state.status.value,
                "message": views.resume_message(state, actions),
            }
        )

    def register_workflow(self) -> Response:
        body = read_json_object(self.config)
        text = body.get("workflow_yaml")
        if isinstance(text, str):
            check_text(text, "workflow_yaml")
        workflow = self.engine.register_workflow(text)
        return reply(
            {"name": workflow.name, "step_count": len(workflow.steps), "version": workflow.version},
            201,
        )

    def list_workflows(self) -> Response:
        workflows = self.engine.list_workflows()
        return reply({"workflows": [views.workflow_summary_view(w) for w in workflows]})

    def get_workflow(self, name: str) -> Response:
        """One workflow's definition: the latest version, or `?version=N`."""
        args = request.args
        unknown = sorted(set(args) - {"version"})
        if unknown:
            raise ValidationError(
                f"unknown query parameter(s): {', '.join(unknown)}; allowed: version"
            )
        if len(args.getlist("version")) > 1:
            raise ValidationError("version: given more than once")
        workflow = self.engine.get_workflow(name, args.get("version"))
        return reply(views.workflow_view(workflow))

    def stats(self) -> Response:
        if request.args:
            raise ValidationError(
                f"unknown query parameter(s): {', '.join(sorted(request.args))}; none allowed"
            )
        return reply(self.engine.stats())

    def openapi(self) -> Response:
        if self._openapi is None:
            from saga_http.openapi import openapi_document

            self._openapi = json.dumps(openapi_document(self.config), indent=2).encode()
        return Response(self._openapi, 200, mimetype="application/json")


# ------------------------------------------------------------------------- requests


def request_id() -> str:
    """This request's id: the client's `X-Request-Id` when it is 1..128 printable ASCII
    characters, else a fresh `req_<hex>`."""
    rid: str | None = g.get("request_id")
    if rid is None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        if 0 < len(sent) <= _REQUEST_ID_MAX and all(" " <= c <= "~" for c in sent):
            rid = sent
        else:
            rid = "req_" + uuid.uuid4().hex
        g.request_id = rid
    return rid


def _caller() -> str | None:
    """The authenticated caller's `sub` (None when the API is open): who an operator action
    is recorded as (SPEC §11)."""
    principal = g.get("principal")
    return principal.sub if principal is not None else None


def read_json_object(config: Config, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, within the size and nesting limits; a 400 for
    anything else (wrong Content-Type, not UTF-8, malformed JSON, not an object). With
    `optional`, an empty body (of any Content-Type) is `{}`."""
    mimetype = request.mimetype
    wrong_type = (
        bool(mimetype) and mimetype != "application/json" and not mimetype.endswith("+json")
    )
    if wrong_type and not optional:
        raise ValidationError(f"Content-Type must be application/json, not {mimetype[:100]}")
    limit = config.limits.request_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge()
    # Werkzeug reads at most MAX_CONTENT_LENGTH (limit + 1) bytes, of a chunked body too; a
    # body with neither Content-Length nor chunking is read as empty.
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise PayloadTooLarge()
    if not raw.strip():
        if optional:
            return {}
        raise ValidationError("request body: must be a JSON object")
    if wrong_type:
        raise ValidationError(f"Content-Type must be application/json, not {mimetype[:100]}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("request body: is not valid UTF-8") from None
    max_depth = config.limits.json_depth
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValidationError(f"request body: nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError:  # e.g. an integer over Python's 4300-digit conversion limit
        raise ValidationError("malformed JSON: a number is too long") from None
    if not isinstance(value, dict):
        raise ValidationError("request body: must be a JSON object")
    for name, field in value.items():
        if name != "payload":  # the engine checks the payload itself, naming it
            _check_depth(field, name, max_depth)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValidationError(f"malformed JSON: {name} is not a JSON value")


def _check_depth(value: Any, field: str, max_depth: int) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise ValidationError(f"{field[:64]}: nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


# ------------------------------------------------------------------------- responses


def reply(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")) + "\n", status, mimetype="application/json"
    )


def error_reply(status: int, code: str, message: str) -> Response:
    return reply(
        {
            "error": {
                "code": code,
                "message": message,
                "request_id": request_id(),
                "details": [],
            }
        },
        status,
    )


def _http_error(exc: HTTPException) -> Response:
    """Router and protocol errors (404, 405, 413, ...) in the envelope."""
    status = exc.code or 500
    if status == 404:
        response = error_reply(404, NOT_FOUND, f"no such endpoint: {request.path[:200]}")
    elif status == 405:
        response = error_reply(405, VALIDATION_ERROR, f"method {request.method} not allowed")
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    elif status == 413:
        response = _too_large()
    elif status < 500:
        response = error_reply(status, VALIDATION_ERROR, exc.description or exc.name)
    else:
        response = error_reply(status, INTERNAL_ERROR, "internal error")
    return response


def _too_large() -> Response:
    config: Config = current_app.extensions["saga_config"]
    limit = config.limits.request_body_bytes
    return error_reply(413, PAYLOAD_TOO_LARGE, f"request body is over the {limit}-byte limit")


def _any_error(exc: Exception) -> Response:
    for kind, status, code in _DOMAIN_ERRORS:
        if isinstance(exc, kind):
            response = error_reply(status, code, getattr(exc, "message", None) or str(exc))
            if status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="saga"'
            return response
    if isinstance(exc, PayloadTooLarge):
        return _too_large()
    log.error(
        "unhandled error in %s %s (request %s)",
        request.method,
        _route_label(),
        request_id(),
        exc_info=exc,
        extra={"request_id": request_id()},
    )
    return error_reply(500, INTERNAL_ERROR, "internal error; the server log has the details")


def _route_label() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"


def _finish(response: Response) -> Response:
    """Stamp the request id and count the request by route template, method and status."""
    response.headers[REQUEST_ID_HEADER] = request_id()
    method = request.method if request.method in _METHODS else "OTHER"
    metrics.HTTP_REQUESTS.labels(_route_label(), method, str(response.status_code)).inc()
    return response
