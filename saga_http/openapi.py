"""The OpenAPI 3.1 description of the REST API (SPEC §4), served at `/api/v1/openapi.json`.

It describes the wire contract only; it never drives validation (the `Engine` does that).
Response shapes are closed (`additionalProperties: false`): a client may rely on every field
listed and on no other. Request bodies stay open: unknown fields are ignored, as the original
server did. Limits (page size, string length) come from the config being served, and so does
security: each operation's access level comes from `saga_http.routes.ROUTES`; protected ones list
the bearer scheme and their 401/403 answers (given only when an `auth` section is configured).
"""

from __future__ import annotations

import copy
from typing import Any

from saga.model import (
    GRPC_CODE_NAMES,
    Backoff,
    OnCompensationFailure,
    OnFailure,
    ResumeAction,
    SagaStatus,
)
from saga_http.codes import ERROR_CODES
from workers.adapters.auth import PUBLIC, ROLES_FOR
from workers.config import Config
from workers.service.engine import MAX_VERSION

_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Strings the server takes hold no NUL (PostgreSQL cannot store one); lone surrogates, which
# no regex dialect names alike, are refused too (said in the descriptions).
_NO_NUL = "^[^\\u0000]*$"
_NO_NUL_TEXT = "no NUL characters or lone surrogates"
# `Engine.list_sagas` refuses a page past this (a 400, never a clamp).
MAX_PAGE = 10_000_000
# Idempotency-Key: 1..255 printable ASCII characters; HTTP drops surrounding spaces.
_IDEMPOTENCY_KEY = "^[!-~]([ -~]*[!-~])?$"
_TIMESTAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


def _text(max_length: int, *, min_length: int = 0, nullable: bool = False) -> dict[str, Any]:
    """A request string as the server takes it: bounded, and without NUL."""
    schema: dict[str, Any] = {
        "type": ["string", "null"] if nullable else "string",
        "maxLength": max_length,
        "pattern": _NO_NUL,
        "description": _NO_NUL_TEXT,
    }
    if min_length:
        schema["minLength"] = min_length
    return schema


def _example_workflow(config: Config) -> str:
    """A workflow the server being described accepts: it names a configured service."""
    service = next(iter(sorted(config.services)), "inventory-service")
    return (
        "name: example-order\n"
        "steps:\n"
        "  - &reserve\n"
        "    name: reserve\n"
        f"    service: {service}\n"
        "    method: Inventory.Reserve\n"
        "    compensate: Inventory.Release\n"
        "    retry: {max_attempts: 3, backoff: exponential, initial_interval_ms: 1000}\n"
        "  - <<: *reserve\n"
        "    name: charge\n"
        "    method: Payment.Charge\n"
        "    compensate: Payment.Refund\n"
    )


def _schemas(config: Config) -> dict[str, Any]:
    limits = config.limits
    statuses = [s.value for s in SagaStatus]
    resume_actions = [a.value for a in ResumeAction]
    return {
        "Timestamp": {
            "type": "string",
            "description": "RFC 3339 in UTC with milliseconds and Z, e.g. 2026-02-20T10:30:05.123Z",
            "pattern": _TIMESTAMP,
        },
        "SagaId": {"type": "string", "description": "lower-case UUID", "pattern": _UUID},
        "SagaStatus": {"type": "string", "enum": statuses},
        "JsonObject": {"type": "object", "description": "any JSON object"},
        # Keywords apply by type: strings take `pattern`, arrays `items`, objects the rest.
        "JsonValue": {
            "description": f"any JSON value; strings and keys with {_NO_NUL_TEXT}",
            "pattern": _NO_NUL,
            "items": _ref("JsonValue"),
            "propertyNames": {"pattern": _NO_NUL},
            "additionalProperties": _ref("JsonValue"),
        },
        "Payload": {
            "type": "object",
            "description": (
                f"a JSON object of at most {limits.payload_bytes} bytes serialised and "
                f"{limits.json_depth} levels deep; strings and keys with {_NO_NUL_TEXT}"
            ),
            "propertyNames": {"pattern": _NO_NUL},
            "additionalProperties": _ref("JsonValue"),
        },
        "Error": _closed(
            {
                "error": _closed(
                    {
                        "code": {"type": "string", "enum": list(ERROR_CODES)},
                        "message": {"type": "string"},
                        "request_id": {
                            "type": "string",
                            "description": "the X-Request-Id of the response",
                        },
                        "details": {"type": "array", "items": {}},
                    }
                )
            }
        ),
        "Health": _closed({"status": {"const": "ok"}}),
        "Ready": _closed({"status": {"const": "ready"}}),
        "NotReady": _closed(
            {"status": {"const": "not ready"}, "reason": {"type": "string"}}, ["status"]
        ),
        "Saga": _closed(
            {
                "saga_id": _ref("SagaId"),
                "workflow_name": {"type": "string"},
                "current_step": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "index of the next forward step; the step count once done",
                },
                "status": _ref("SagaStatus"),
                "payload": _ref("JsonObject"),
                "correlation_id": {"type": ["string", "null"]},
                "initiated_by": {"type": ["string", "null"]},
                "error_message": {"type": ["string", "null"]},
                "created_at": _ref("Timestamp"),
                "updated_at": _ref("Timestamp"),
                "trace_id": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{32}$",
                    "description": "the W3C trace id of the saga: the caller's when the start "
                    "request carried a valid traceparent, else a new one (SPEC §12)",
                },
            }
        ),
        "StepLog": _closed(
            {
                "id": {"type": "string", "pattern": _UUID},
                "saga_id": _ref("SagaId"),
                "step_index": {"type": "integer", "minimum": 0},
                "step_name": {"type": "string"},
                "action": {"type": "string", "enum": ["EXECUTE", "COMPENSATE"]},
                "status": {"type": "string", "enum": ["SUCCESS", "FAILED", "TIMEOUT", "SKIPPED"]},
                "request_payload": _nullable(_ref("JsonObject")),
                "response_payload": _nullable(_ref("JsonObject")),
                "error_message": {"type": ["string", "null"]},
                "started_at": _ref("Timestamp"),
                "completed_at": _nullable(_ref("Timestamp")),
            }
        ),
        "OperatorAction": _closed(
            {
                "action": {"type": "string", "enum": ["pause", "resume", "cancel"]},
                "resume_action": {
                    "type": ["string", "null"],
                    "enum": [*resume_actions, None],
                    "description": "the action a resume took (its default resolved); null "
                    "for a pause or cancel",
                },
                "payload_replaced": {"type": "boolean"},
                "by": {
                    "type": ["string", "null"],
                    "description": "the bearer token's sub; null when the API is open",
                },
                "at": _ref("Timestamp"),
            }
        ),
        "SagaDetail": _closed(
            {
                "saga": _ref("Saga"),
                "step_logs": {
                    "type": "array",
                    "items": _ref("StepLog"),
                    "description": "in time order",
                },
                "operator_actions": {
                    "type": "array",
                    "items": _ref("OperatorAction"),
                    "description": "every pause, resume and cancel asked for, oldest first",
                },
            }
        ),
        "Pagination": _closed(
            {
                "total_count": {"type": "integer", "minimum": 0},
                "page": {"type": "integer", "minimum": 1},
                "page_size": {"type": "integer", "minimum": 1, "maximum": limits.page_size},
                "has_next": {"type": "boolean"},
            }
        ),
        "SagaList": _closed(
            {
                "sagas": {"type": "array", "items": _ref("Saga"), "description": "newest first"},
                "pagination": _ref("Pagination"),
            }
        ),
        "StartSagaRequest": {
            "type": "object",
            "description": "unknown fields are ignored",
            "properties": {
                "workflow_name": _text(limits.string_length, min_length=1),
                "payload": {
                    "oneOf": [_ref("Payload"), {"type": "null"}],
                    "description": "default (and null): {}",
                },
                "correlation_id": _text(limits.string_length, nullable=True),
                "initiated_by": _text(limits.string_length, nullable=True),
            },
            "required": ["workflow_name"],
        },
        "StartSagaResponse": _closed({"saga_id": _ref("SagaId"), "status": _ref("SagaStatus")}),
        "CancelSagaResponse": _closed(
            {
                "success": {"const": True},
                "message": {"type": "string", "description": "saga <id> cancelled"},
            }
        ),
        "PauseSagaResponse": _closed(
            {
                "success": {"const": True},
                "message": {"type": "string", "description": "saga <id> pause requested"},
            }
        ),
        "ResumeSagaRequest": {
            "type": "object",
            "description": (
                "optional: no body (or {}) takes the default action and keeps the payload; "
                "a field other than these two is a 400"
            ),
            "properties": {
                "action": {
                    "type": ["string", "null"],
                    "enum": [*resume_actions, None],
                    "description": (
                        "retry: run the failed step or compensation again; continue: go on "
                        "where it stopped; skip: log the failed step or compensation SKIPPED "
                        "and go on; compensate (forward phase only): compensate now, the saga "
                        "ends FAILED. Default (absent or null): retry after a failure, "
                        "continue after a pause request. One that does not fit the saga is a 409"
                    ),
                },
                "payload": {
                    "oneOf": [_ref("Payload"), {"type": "null"}],
                    "description": (
                        "replaces the saga's payload first (forward phase only, else a 409); "
                        "absent or null: kept"
                    ),
                },
            },
            "additionalProperties": False,
        },
        "ResumeSagaResponse": _closed(
            {
                "success": {"const": True},
                "status": {
                    "type": "string",
                    "enum": ["RUNNING", "COMPENSATING"],
                    "description": "the saga's status now",
                },
                "message": {"type": "string"},
            }
        ),
        "RetryPolicy": _closed(
            {
                "max_attempts": {"type": "integer", "minimum": 1},
                "backoff": {"type": "string", "enum": [b.value for b in Backoff]},
                "initial_interval_ms": {"type": "integer", "minimum": 0},
                "max_interval_ms": {"type": ["integer", "null"], "minimum": 1},
                "jitter": {"type": "boolean"},
                "non_retryable_codes": {
                    "type": "array",
                    "items": {"type": "string", "enum": sorted(GRPC_CODE_NAMES)},
                },
            }
        ),
        "WorkflowStep": _closed(
            {
                "name": {"type": "string"},
                "service": {"type": "string"},
                "method": {"type": "string"},
                "compensate": {"type": ["string", "null"]},
                "timeout_secs": {"type": "number", "exclusiveMinimum": 0},
                "retry": _ref("RetryPolicy"),
                "input": {"type": ["string", "null"], "description": "JMESPath (SPEC §10)"},
                "when": {"type": ["string", "null"], "description": "JMESPath (SPEC §10)"},
                "compensate_input": {
                    "type": ["string", "null"],
                    "description": "JMESPath (SPEC §10)",
                },
                "on_failure": {
                    "type": ["string", "null"],
                    "enum": [*(c.value for c in OnFailure), None],
                    "description": "null: the workflow's",
                },
                "on_compensation_failure": {
                    "type": ["string", "null"],
                    "enum": [*(c.value for c in OnCompensationFailure), None],
                    "description": "null: the workflow's",
                },
            }
        ),
        "Workflow": _closed(
            {
                "name": {"type": "string"},
                "version": {"type": "integer", "minimum": 1},
                "steps": {"type": "array", "items": _ref("WorkflowStep"), "minItems": 1},
                "on_failure": {"type": "string", "enum": [c.value for c in OnFailure]},
                "on_compensation_failure": {
                    "type": "string",
                    "enum": [c.value for c in OnCompensationFailure],
                },
                "deadline_secs": {"type": ["number", "null"], "exclusiveMinimum": 0},
                "workflow_yaml": {
                    "type": "string",
                    "contentMediaType": "application/yaml",
                    "description": (
                        "this definition as a workflow document, every default written out "
                        "(the server keeps the parsed definition, not the registered text); "
                        "registering it again gives the same definition as a new version"
                    ),
                },
            }
        ),
        "RegisterWorkflowRequest": {
            "type": "object",
            "description": "unknown fields are ignored",
            "properties": {
                "workflow_yaml": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": limits.workflow_bytes,
                    "pattern": _NO_NUL,
                    "contentMediaType": "application/yaml",
                    "description": (
                        "a workflow definition (SPEC §2): one YAML document that is a mapping "
                        "with name and steps, each step naming a configured service, at most "
                        f"{limits.workflow_bytes} bytes (UTF-8) and {limits.workflow_steps} "
                        f"steps; {_NO_NUL_TEXT}, in the text or made by an escape. Anchors, "
                        "aliases and merge keys mean what YAML says (at most 10000 nodes "
                        "added by aliases); only YAML's standard tags. JSON Schema cannot say "
                        "which texts are workflows: any other text is a 400 naming the field."
                    ),
                    "examples": [_example_workflow(config)],
                }
            },
            "required": ["workflow_yaml"],
        },
        "RegisterWorkflowResponse": _closed(
            {
                "name": {"type": "string"},
                "step_count": {"type": "integer", "minimum": 1},
                "version": {"type": "integer", "minimum": 1},
            }
        ),
        "WorkflowSummary": _closed(
            {
                "name": {"type": "string"},
                "step_count": {"type": "integer", "minimum": 1},
                "step_names": {"type": "array", "items": {"type": "string"}},
                "version": {"type": "integer", "minimum": 1, "description": "latest version"},
            }
        ),
        "WorkflowList": _closed({"workflows": {"type": "array", "items": _ref("WorkflowSummary")}}),
        "Stats": _closed(
            {
                "counts": _closed(
                    {s.value: {"type": "integer", "minimum": 0} for s in SagaStatus},
                    [s.value for s in SagaStatus],
                ),
                "activity": {
                    "type": "array",
                    "description": "the last 60 minutes, oldest first, the current minute last",
                    "items": _closed(
                        {
                            "minute": {"type": "string", "format": "date-time"},
                            "started": {"type": "integer", "minimum": 0},
                            "ended": {
                                "type": "integer",
                                "minimum": 0,
                                "description": "sagas that reached a terminal status",
                            },
                        },
                        ["minute", "started", "ended"],
                    ),
                },
                "outbox": _closed(
                    {
                        "backlog": {"type": "integer", "minimum": 0},
                        "oldest_age_secs": {"type": ["number", "null"], "minimum": 0},
                    },
                    ["backlog", "oldest_age_secs"],
                ),
            },
            ["counts", "activity", "outbox"],
        ),
    }


_ERROR_TEXT = {
    "400": "validation error (SYS_SAGA_VALIDATION_ERROR)",
    "401": (
        "no bearer token, or one that does not verify (SYS_AUTH_MISSING_CLAIMS); only when "
        "auth is configured"
    ),
    "403": (
        "the token lacks the role this operation needs (SYS_AUTH_PERMISSION_DENIED); only when "
        "auth is configured"
    ),
    "404": "not found (SYS_SAGA_NOT_FOUND)",
    "409": "conflict (SYS_SAGA_CONFLICT)",
    "413": "request body over the limit (SYS_SAGA_PAYLOAD_TOO_LARGE)",
    "500": "internal error (SYS_SAGA_INTERNAL_ERROR)",
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/XRequestId"}},
    }
    if schema is not None:
        response["content"] = _json_content(schema)
    return response


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, dict[str, Any]],
    *,
    errors: tuple[str, ...] = ("500",),
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = True,
    tag: str = "sagas",
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "parameters": [{"$ref": "#/components/parameters/XRequestId"}, *(parameters or [])],
        "responses": dict(responses),
    }
    for status in errors:
        operation["responses"][status] = {"$ref": f"#/components/responses/Error{status}"}
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": _json_content(_ref(body)),
        }
    return operation


def _paths() -> dict[str, Any]:
    saga_id = {"$ref": "#/components/parameters/SagaIdPath"}

    def cancel(operation_id: str, summary: str) -> dict[str, Any]:
        return _operation(
            operation_id,
            summary,
            {"200": _response("cancel requested", _ref("CancelSagaResponse"))},
            errors=("400", "404", "409", "500"),
            parameters=[saga_id],
        )

    return {
        "/healthz": {
            "get": _operation(
                "healthz",
                "Liveness: the process answers",
                {"200": _response("alive", _ref("Health"))},
                tag="operations",
            )
        },
        "/readyz": {
            "get": _operation(
                "readyz",
                "Readiness: the saga store answers",
                {
                    "200": _response("ready", _ref("Ready")),
                    "503": _response("not ready", _ref("NotReady")),
                },
                tag="operations",
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics (text exposition format)",
                {
                    "200": {
                        "description": "metrics",
                        "headers": {"X-Request-Id": {"$ref": "#/components/headers/XRequestId"}},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                tag="operations",
            )
        },
        "/api/v1/sagas": {
            "post": _operation(
                "startSaga",
                "Start a saga; it runs asynchronously",
                {
                    "201": _response("started", _ref("StartSagaResponse")),
                    "200": _response(
                        "Idempotency-Key replay with the same body: the first saga and its "
                        "current status",
                        _ref("StartSagaResponse"),
                    ),
                },
                errors=("400", "404", "409", "413", "500"),
                parameters=[
                    {"$ref": f"#/components/parameters/{name}"}
                    for name in ("IdempotencyKey", "Traceparent", "Tracestate")
                ],
                body="StartSagaRequest",
            ),
            "get": _operation(
                "listSagas",
                "List sagas, newest first",
                {"200": _response("a page of sagas", _ref("SagaList"))},
                errors=("400", "500"),
                parameters=[
                    {"$ref": f"#/components/parameters/{name}"}
                    for name in ("Page", "PageSize", "WorkflowName", "Status", "CorrelationId")
                ],
            ),
        },
        "/api/v1/sagas/{saga_id}": {
            "get": _operation(
                "getSaga",
                "A saga and its step logs",
                {"200": _response("the saga", _ref("SagaDetail"))},
                errors=("400", "404", "500"),
                parameters=[saga_id],
            )
        },
        "/api/v1/sagas/{saga_id}/cancel": {
            "post": cancel(
                "cancelSaga", "Cancel a STARTED or RUNNING saga, or one PAUSED before compensating"
            )
        },
        "/api/v1/sagas/{saga_id}/compensate": {
            "post": cancel("compensateSaga", "Alias of /cancel")
        },
        "/api/v1/sagas/{saga_id}/pause": {
            "post": _operation(
                "pauseSaga",
                "Pause a STARTED, RUNNING or COMPENSATING saga at its next step boundary",
                {"200": _response("pause requested", _ref("PauseSagaResponse"))},
                errors=("400", "404", "409", "500"),
                parameters=[saga_id],
            )
        },
        "/api/v1/sagas/{saga_id}/resume": {
            "post": _operation(
                "resumeSaga",
                "Resume a PAUSED saga: retry, continue, skip or compensate, optionally with a "
                "replaced payload",
                {"200": _response("resumed", _ref("ResumeSagaResponse"))},
                errors=("400", "404", "409", "413", "500"),
                parameters=[saga_id],
                body="ResumeSagaRequest",
                body_required=False,
            )
        },
        "/api/v1/workflows": {
            "post": _operation(
                "registerWorkflow",
                "Register a workflow (a new version when the name exists)",
                {"201": _response("registered", _ref("RegisterWorkflowResponse"))},
                errors=("400", "413", "500"),
                body="RegisterWorkflowRequest",
                tag="workflows",
            ),
            "get": _operation(
                "listWorkflows",
                "The latest version of every workflow",
                {"200": _response("workflows", _ref("WorkflowList"))},
                tag="workflows",
            ),
        },
        "/api/v1/workflows/{name}": {
            "get": _operation(
                "getWorkflow",
                "One workflow's definition: the latest version, or ?version=N",
                {"200": _response("the definition", _ref("Workflow"))},
                errors=("400", "404", "500"),
                parameters=[
                    {"$ref": "#/components/parameters/WorkflowNamePath"},
                    {"$ref": "#/components/parameters/Version"},
                ],
                tag="workflows",
            )
        },
        "/api/v1/stats": {
            "get": _operation(
                "getStats",
                "Sagas by status, started and ended per minute over the last hour, outbox backlog",
                {"200": _response("the figures", _ref("Stats"))},
                errors=("400", "500"),
                tag="operations",
            )
        },
        "/api/v1/openapi.json": {
            "get": _operation(
                "openapi",
                "This document",
                {"200": _response("the OpenAPI document", {"type": "object"})},
                tag="operations",
            )
        },
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _secure(paths: dict[str, Any], config: Config) -> None:
    """Mark each operation with the access its route needs (saga_http.routes.ROUTES): public
    ones need no token; the others list the bearer scheme (optional when the API is open),
    the roles that may call them, and the 401/403 they may answer."""
    from saga_http.routes import ROUTES

    bearer = [{"bearerAuth": []}] if config.auth is not None else [{}, {"bearerAuth": []}]
    for route in ROUTES:
        operation = paths[route.template][route.method.lower()]
        if route.access == PUBLIC:
            operation["security"] = []
            continue
        roles = ", ".join(sorted(ROLES_FOR[route.access]))
        operation["security"] = copy.deepcopy(bearer)
        operation["description"] = f"Needs a bearer token with one of the roles {roles}."
        operation["x-roles"] = sorted(ROLES_FOR[route.access])
        for status in ("401", "403"):
            operation["responses"][status] = {"$ref": f"#/components/responses/Error{status}"}
        operation["responses"] = dict(sorted(operation["responses"].items()))


def openapi_document(config: Config) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the REST API served with `config`."""
    limits = config.limits
    paths = _paths()
    _secure(paths, config)
    document = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Saga orchestration server",
            "version": config.app.version,
            "description": (
                "REST API of the saga server (SPEC §4). Every response carries X-Request-Id; "
                "every error is the Error envelope. Unknown query parameters are a 400. "
                "With an auth section, every /api/v1 operation but this document needs an "
                "RS256 or ES256 bearer token (roles in realm_access.roles: sys_auditor reads, "
                "sys_operator reads and writes, sys_admin everything); without one the API is "
                "open. /healthz, /readyz and /metrics are always public."
            ),
        },
        "tags": [{"name": "sagas"}, {"name": "workflows"}, {"name": "operations"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "A JWT signed with RS256 or ES256 by a key of the configured JWKS "
                        "endpoint, with exp, iss and aud checked and roles in "
                        "realm_access.roles"
                    ),
                }
            },
            "schemas": _schemas(config),
            "headers": {
                "XRequestId": {
                    "description": "the request's own X-Request-Id if valid, else a fresh one",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                }
            },
            "parameters": {
                "XRequestId": {
                    "name": "X-Request-Id",
                    "in": "header",
                    "required": False,
                    "description": "echoed when 1..128 printable ASCII characters",
                    "schema": {"type": "string"},
                },
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": (
                        "1..255 printable ASCII characters; the same key and body return the "
                        "first saga (200), the same key with another body is a 409"
                    ),
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": _IDEMPOTENCY_KEY,
                    },
                },
                "Traceparent": {
                    "name": "traceparent",
                    "in": "header",
                    "required": False,
                    "description": (
                        "W3C Trace Context: the saga joins this trace (its trace_id); a value "
                        "that is not valid W3C starts a new trace and is never an error"
                    ),
                    "schema": {"type": "string"},
                },
                "Tracestate": {
                    "name": "tracestate",
                    "in": "header",
                    "required": False,
                    "description": "W3C tracestate, passed on to participants with traceparent",
                    "schema": {"type": "string"},
                },
                "SagaIdPath": {
                    "name": "saga_id",
                    "in": "path",
                    "required": True,
                    "description": "a UUID (anything else is a 400)",
                    "schema": {"type": "string", "format": "uuid"},
                },
                "WorkflowNamePath": {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "description": "a workflow name (URL-encoded; it may hold a /)",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                },
                "Version": _query(
                    "version",
                    {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
                    "that version (default: the latest); an unknown one is a 404",
                ),
                "Page": _query(
                    "page",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
                    "1-based page; out of range is a 400, never a clamp",
                ),
                "PageSize": _query(
                    "page_size",
                    {"type": "integer", "minimum": 1, "maximum": limits.page_size, "default": 20},
                    "sagas per page; out of range is a 400, never a clamp",
                ),
                "WorkflowName": _query(
                    "workflow_name",
                    _text(limits.string_length),
                    "only sagas of this workflow (empty: no filter)",
                ),
                "Status": _query("status", _ref("SagaStatus"), "only sagas in this status"),
                "CorrelationId": _query(
                    "correlation_id",
                    _text(limits.string_length),
                    "only sagas with this correlation id (empty: no filter)",
                ),
            },
            "responses": {
                f"Error{status}": {
                    "description": text,
                    "headers": {"X-Request-Id": {"$ref": "#/components/headers/XRequestId"}}
                    | (
                        {
                            "WWW-Authenticate": {
                                "description": "Bearer challenge",
                                "schema": {"type": "string"},
                            }
                        }
                        if status == "401"
                        else {}
                    ),
                    "content": _json_content(_ref("Error")),
                }
                for status, text in _ERROR_TEXT.items()
            },
        },
    }
    return copy.deepcopy(document)
