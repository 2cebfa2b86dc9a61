"""The gRPC edge of the saga server (SPEC §5): `SagaService` requests become `Engine` calls,
results become proto messages and domain errors become status codes.

It must never hold a business rule: every check on what a client sent lives in
`workers.service.inputs` / `Engine`, every token check in `workers.adapters.auth`. The only decoding done here
is what proto3 forces on us: strings cannot be null ("" ↔ None), a zero in `Pagination` means
"use the default", a request that does not parse as its message (e.g. a string field that is
not UTF-8) is INVALID_ARGUMENT, not the INTERNAL grpcio would answer for a failed deserializer,
and payloads travel in `bytes` fields that two generations of clients fill differently:

- Clients of the original proto send and read UTF-8 JSON bytes.
- Clients of the later k1s0 proto declare the same fields (same numbers, same wire type 2) as
  `google.protobuf.Struct`, so they send and expect an encoded Struct.

A StartSaga payload is read as JSON first, then as a Struct (`decode_payload` says why that
order cannot misread either); responses use the one encoding the server is configured with
(`grpc.payload_encoding`, json by default), because a response cannot know its reader.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError, Message

from saga.errors import Conflict, NotFound, ValidationError
from saga.model import OperatorAction, SagaState, StepLog, Workflow
from saga_grpc.gen.k1s0.system.common.v1 import types_pb2
from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from workers.adapters.auth import READ, WRITE, Forbidden, Principal, TokenVerifier, Unauthenticated
from workers.adapters.metrics import GRPC_REQUESTS
from workers.adapters.tracing import trace_id_of
from workers.service import views
from workers.service.engine import Engine

log = logging.getLogger("saga.grpc")

SERVICE_NAME = saga_pb2.DESCRIPTOR.services_by_name["SagaService"].full_name
INTERNAL_MESSAGE = "internal error"

# The access each RPC needs is `workers.adapters.auth.READ` or `WRITE` (SPEC §4 roles: auditors read,
# operators and admins also write).


class Denied(Exception):
    """Raised by an authorizer to refuse a call with UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# An authorizer sees the call's context (its `authorization` metadata) and the access the RPC
# needs; it returns the caller (None when unknown) to allow the call and raises `Denied` to
# refuse it.
Authorizer = Callable[[grpc.ServicerContext, str], Principal | None]


def allow_all(context: grpc.ServicerContext, access: str) -> Principal | None:
    """The authorizer used when no `auth` section is configured: the API is open."""
    return None


def token_authorizer(verifier: TokenVerifier) -> Authorizer:
    """An authorizer that requires a bearer token in the `authorization` metadata granting
    the RPC's access (SPEC §4 roles); refusals are UNAUTHENTICATED / PERMISSION_DENIED."""

    def authorize(context: grpc.ServicerContext, access: str) -> Principal | None:
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        if len(values) > 1:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "more than one authorization value")
        value = values[0] if values else None
        try:
            return verifier.authorize(value if isinstance(value, str) else None, access)
        except Unauthenticated as exc:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, exc.message) from None
        except Forbidden as exc:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, exc.message) from None

    return authorize


def _trace_metadata(context: grpc.ServicerContext) -> dict[str, str]:
    """The W3C Trace Context of a call's metadata (SPEC §12): its first `traceparent` and its
    `tracestate` values as one list; whether they are valid is the engine's to judge."""
    found: dict[str, list[str]] = {"traceparent": [], "tracestate": []}
    for key, value in context.invocation_metadata() or ():
        if key in found and isinstance(value, str):
            found[key].append(value)
    return {
        key: ",".join(values[:1] if key == "traceparent" else values)
        for key, values in found.items()
        if values
    }


class Malformed:
    """Stands in for a request that did not parse as its message type."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def tolerant_parser(message_type: type[Message]) -> Callable[[bytes], Any]:
    """`message_type.FromString` that returns `Malformed` instead of raising, so the servicer
    can answer INVALID_ARGUMENT (after the access check)."""

    def parse(raw: bytes) -> Any:
        try:
            return message_type.FromString(raw)
        except (DecodeError, ValueError):
            return Malformed(message_type.DESCRIPTOR.full_name)

    return parse


def add_to_server(servicer: SagaServicer, server: grpc.Server) -> None:
    """Register `servicer` like the generated `add_SagaServiceServicer_to_server`, with
    `tolerant_parser` deserializers."""
    service = saga_pb2.DESCRIPTOR.services_by_name["SagaService"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=tolerant_parser(getattr(saga_pb2, method.input_type.name)),
            response_serializer=getattr(saga_pb2, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


Reply = TypeVar("Reply")


class SagaServicer(saga_pb2_grpc.SagaServiceServicer):
    """`k1s0.system.saga.v1.SagaService` on top of one `Engine`; `payload_encoding` ("json"
    or "struct") is how responses carry payload fields."""

    def __init__(
        self, engine: Engine, authorize: Authorizer = allow_all, payload_encoding: str = "json"
    ) -> None:
        if payload_encoding not in ENCODERS:
            raise ValueError(f"unknown payload encoding: {payload_encoding}")
        self._engine = engine
        self._authorize = authorize
        self._encode = ENCODERS[payload_encoding]

    # ------------------------------------------------------------------ the RPCs

    def StartSaga(
        self, request: saga_pb2.StartSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.StartSagaResponse:
        def run(principal: Principal | None) -> saga_pb2.StartSagaResponse:
            trace_context = _trace_metadata(context)
            state, _ = self._engine.start_saga(
                request.workflow_name,
                decode_payload(request.payload),
                correlation_id=request.correlation_id or None,
                initiated_by=request.initiated_by or None,
                principal=principal.sub if principal is not None else None,
                traceparent=trace_context.get("traceparent"),
                tracestate=trace_context.get("tracestate"),
            )
            return saga_pb2.StartSagaResponse(saga_id=state.saga_id, status=state.status.value)

        return self._call("StartSaga", WRITE, request, context, run)

    def GetSaga(
        self, request: saga_pb2.GetSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.GetSagaResponse:
        def run(_: Principal | None) -> saga_pb2.GetSagaResponse:
            state, logs, actions = self._engine.get_saga_detail(request.saga_id)
            return saga_pb2.GetSagaResponse(
                saga=saga_message(state, self._encode),
                step_logs=[step_log_message(g, self._encode) for g in logs],
                operator_actions=[operator_action_message(a) for a in actions],
            )

        return self._call("GetSaga", READ, request, context, run)

    def ListSagas(
        self, request: saga_pb2.ListSagasRequest, context: grpc.ServicerContext
    ) -> saga_pb2.ListSagasResponse:
        def run(_: Principal | None) -> saga_pb2.ListSagasResponse:
            # proto3 cannot tell 0 from "not sent": 0 asks for the default, anything else
            # (negative, too large) goes to the engine's checks and is refused there.
            page = request.pagination.page if request.HasField("pagination") else 0
            size = request.pagination.page_size if request.HasField("pagination") else 0
            result = self._engine.list_sagas(
                page=page or None,
                page_size=size or None,
                workflow_name=request.workflow_name or None,
                status=request.status or None,
                correlation_id=request.correlation_id or None,
            )
            return saga_pb2.ListSagasResponse(
                sagas=[saga_message(s, self._encode) for s in result.sagas],
                pagination=types_pb2.PaginationResult(
                    total_count=result.total_count,
                    page=result.page,
                    page_size=result.page_size,
                    has_next=result.has_next,
                ),
            )

        return self._call("ListSagas", READ, request, context, run)

    def CancelSaga(
        self, request: saga_pb2.CancelSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.CancelSagaResponse:
        def run(principal: Principal | None) -> saga_pb2.CancelSagaResponse:
            state = self._engine.cancel_saga(request.saga_id, by=_sub(principal))
            return saga_pb2.CancelSagaResponse(
                success=True, message=f"saga {state.saga_id} cancelled"
            )

        return self._call("CancelSaga", WRITE, request, context, run)

    def CompensateSaga(
        self, request: saga_pb2.CompensateSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.CompensateSagaResponse:
        """CancelSaga under the later k1s0 proto's name, also answering the saga's id and its
        status when the cancel was accepted (compensation starts at the next step boundary)."""

        def run(principal: Principal | None) -> saga_pb2.CompensateSagaResponse:
            state = self._engine.cancel_saga(request.saga_id, by=_sub(principal))
            return saga_pb2.CompensateSagaResponse(
                success=True,
                status=state.status.value,
                message=f"saga {state.saga_id} cancelled",
                saga_id=state.saga_id,
            )

        return self._call("CompensateSaga", WRITE, request, context, run)

    def PauseSaga(
        self, request: saga_pb2.PauseSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.PauseSagaResponse:
        """Pause at the next step boundary (SPEC §11)."""

        def run(principal: Principal | None) -> saga_pb2.PauseSagaResponse:
            state = self._engine.pause_saga(request.saga_id, by=_sub(principal))
            return saga_pb2.PauseSagaResponse(
                success=True, message=f"saga {state.saga_id} pause requested"
            )

        return self._call("PauseSaga", WRITE, request, context, run)

    def ResumeSaga(
        self, request: saga_pb2.ResumeSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.ResumeSagaResponse:
        """Resume a PAUSED saga (SPEC §11): an empty action is the default one, an empty
        payload keeps the saga's."""

        def run(principal: Principal | None) -> saga_pb2.ResumeSagaResponse:
            payload = decode_payload(request.payload) if request.payload else None
            state = self._engine.resume_saga(
                request.saga_id, request.action or None, payload, by=_sub(principal)
            )
            return saga_pb2.ResumeSagaResponse(
                success=True,
                status=state.status.value,
                message=views.resume_message(state, self._engine.operator_actions(state.saga_id)),
            )

        return self._call("ResumeSaga", WRITE, request, context, run)

    def RegisterWorkflow(
        self, request: saga_pb2.RegisterWorkflowRequest, context: grpc.ServicerContext
    ) -> saga_pb2.RegisterWorkflowResponse:
        def run(_: Principal | None) -> saga_pb2.RegisterWorkflowResponse:
            workflow = self._engine.register_workflow(request.workflow_yaml)
            return saga_pb2.RegisterWorkflowResponse(
                name=workflow.name, step_count=len(workflow.steps)
            )

        return self._call("RegisterWorkflow", WRITE, request, context, run)

    def ListWorkflows(
        self, request: saga_pb2.ListWorkflowsRequest, context: grpc.ServicerContext
    ) -> saga_pb2.ListWorkflowsResponse:
        def run(_: Principal | None) -> saga_pb2.ListWorkflowsResponse:
            return saga_pb2.ListWorkflowsResponse(
                workflows=[workflow_summary(w) for w in self._engine.list_workflows()]
            )

        return self._call("ListWorkflows", READ, request, context, run)

    # ------------------------------------------------------------------ the one wrapper

    def _call(
        self,
        method: str,
        access: str,
        request: Any,
        context: grpc.ServicerContext,
        run: Callable[[Principal | None], Reply],
    ) -> Reply:
        """Authorize, run, count, and turn any failure into a status code and a message that
        leaks nothing (the exception itself goes to the log)."""
        code = grpc.StatusCode.OK
        message = ""
        try:
            # The one place access is checked: `token_authorizer` (SPEC §4 roles, read from
            # the `authorization` metadata) raises `Denied`; the open API allows all.
            principal = self._authorize(context, access)
            if isinstance(request, Malformed):
                raise ValidationError(
                    f"request is not a valid {request.type_name} message "
                    "(string fields must be UTF-8)"
                )
            return run(principal)
        except Denied as exc:
            code, message = exc.code, exc.message
        except ValidationError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, exc.message
        except NotFound as exc:
            code, message = grpc.StatusCode.NOT_FOUND, exc.message
        except Conflict as exc:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, exc.message
        except Exception:
            log.exception("gRPC %s failed", method)
            code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        finally:
            GRPC_REQUESTS.labels(method, code.name).inc()
        context.abort(code, message)
        raise AssertionError("context.abort returned")  # pragma: no cover


# ---------------------------------------------------------------------- translation


def _sub(principal: Principal | None) -> str | None:
    """Who an operator action is recorded as: the token's sub, None when the API is open."""
    return principal.sub if principal is not None else None


def decode_payload(raw: bytes) -> Any:
    """The StartSaga payload: UTF-8 JSON object bytes or an encoded `google.protobuf.Struct`,
    empty meaning `{}` (an empty Struct encodes to no bytes at all, so both agree).

    JSON is tried first, and a text that parses as JSON is taken as JSON. That order cannot
    misread a Struct: every entry of a non-empty Struct is a map entry whose value field has
    the tag byte 0x12, and a valid JSON text never contains that byte (a raw control
    character is allowed neither between tokens nor inside a string), so no Struct an encoder
    writes is also a valid JSON text. The converse does happen: some JSON texts parse as a
    *lax* Struct (`\\n\\r\\n\\t{"abc":1}  ` is one entry whose value has no kind, plus an
    unknown field), and trying JSON first reads them as the JSON they are. Bytes that are not
    JSON must then be a *strict* Struct (`struct_payload`); anything else is INVALID_ARGUMENT
    naming `payload`."""
    if not raw:
        return {}
    nested_too_deeply = False
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        nested_too_deeply = True
    except (UnicodeDecodeError, ValueError):
        pass
    else:
        if not isinstance(value, dict):
            raise ValidationError("payload: must be a JSON object")
        return value
    decoded = struct_payload(raw)
    if decoded is not None:
        return decoded
    if nested_too_deeply:
        raise ValidationError("payload: JSON nested too deeply")
    raise ValidationError(
        "payload: must be UTF-8 encoded JSON (an object) or an encoded google.protobuf.Struct"
    )


class _NotAStruct(Exception):
    """A Value without a kind: not something a Struct encoder writes."""


def struct_payload(raw: bytes) -> dict[str, Any] | None:
    """`raw` as a strict `google.protobuf.Struct`, converted to JSON values; None if it is not one.

    Strict: it parses; every Value has its kind set; and it survives a round trip, i.e. the
    Struct rebuilt from the converted values serialises (deterministically) to the same bytes
    as the parsed message, so no unknown field, out-of-range enum or other stray content was
    carried along. The comparison is of two deterministic serialisations, not of `raw`
    itself: encoders write map entries in any order (Go's in a random one). Integral numbers
    within +/-2^53 come back as integers, as a JSON reader would read them."""
    try:
        message = struct_pb2.Struct.FromString(raw)
        value = {key: _json_value(item) for key, item in message.fields.items()}
    except (DecodeError, RecursionError, _NotAStruct):
        return None
    rebuilt = struct_pb2.Struct()
    rebuilt.update(value)
    if rebuilt.SerializeToString(deterministic=True) != message.SerializeToString(
        deterministic=True
    ):
        return None
    return value


_EXACT_INTEGER = 2**53


def _json_value(item: struct_pb2.Value) -> Any:
    kind = item.WhichOneof("kind")
    if kind == "null_value":
        return None
    if kind == "number_value":
        number = item.number_value
        # -0.0 stays a float: as an integer it would lose its sign (and fail the round trip).
        if number.is_integer() and abs(number) <= _EXACT_INTEGER and math.copysign(1, number) > 0:
            return int(number)
        return number
    if kind == "string_value":
        return item.string_value
    if kind == "bool_value":
        return item.bool_value
    if kind == "struct_value":
        return {key: _json_value(child) for key, child in item.struct_value.fields.items()}
    if kind == "list_value":
        return [_json_value(child) for child in item.list_value.values]
    raise _NotAStruct()


def encode_json(value: Mapping[str, Any] | None) -> bytes:
    """Compact UTF-8 JSON bytes; empty for an absent value."""
    if value is None:
        return b""
    try:
        return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (possible in a participant's reply) has no UTF-8 form: keep it as
        # a JSON escape, which decodes back to the same value.
        return json.dumps(dict(value), separators=(",", ":")).encode("ascii")


def encode_struct(value: Mapping[str, Any] | None) -> bytes:
    """An encoded `google.protobuf.Struct` (deterministic: map keys sorted); empty for an
    absent value. Numbers become doubles, as Struct has no integers (exact to +/-2^53)."""
    if value is None:
        return b""
    message = struct_pb2.Struct()
    try:
        message.update(dict(value))
        return message.SerializeToString(deterministic=True)
    except UnicodeEncodeError:
        # A lone surrogate (possible in an old participant reply) cannot travel in a proto
        # string: it is sent as U+FFFD.
        message = struct_pb2.Struct()
        message.update(_without_surrogates(dict(value)))
        return message.SerializeToString(deterministic=True)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    return value


ENCODERS: dict[str, Callable[[Mapping[str, Any] | None], bytes]] = {
    "json": encode_json,
    "struct": encode_struct,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> types_pb2.Timestamp:
    """Seconds and nanoseconds since the Unix epoch, exact to the microsecond."""
    delta = value.astimezone(UTC) - _EPOCH
    return types_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


# SPEC §5: the later proto's enums. STARTED and PAUSED have no value (UNSPECIFIED);
# CANCELLED is COMPENSATED. The string fields stay authoritative.
SAGA_STATUS_ENUM: dict[str, int] = {
    "RUNNING": saga_pb2.SAGA_STATUS_RUNNING,
    "COMPLETED": saga_pb2.SAGA_STATUS_COMPLETED,
    "FAILED": saga_pb2.SAGA_STATUS_FAILED,
    "COMPENSATING": saga_pb2.SAGA_STATUS_COMPENSATING,
    "CANCELLED": saga_pb2.SAGA_STATUS_COMPENSATED,
}
STEP_ACTION_ENUM: dict[str, int] = {
    "EXECUTE": saga_pb2.SAGA_STEP_ACTION_EXECUTE,
    "COMPENSATE": saga_pb2.SAGA_STEP_ACTION_COMPENSATE,
}
STEP_STATUS_ENUM: dict[str, int] = {
    "SUCCESS": saga_pb2.SAGA_STEP_STATUS_SUCCESS,
    "FAILED": saga_pb2.SAGA_STEP_STATUS_FAILED,
    "TIMEOUT": saga_pb2.SAGA_STEP_STATUS_TIMEOUT,
    "SKIPPED": saga_pb2.SAGA_STEP_STATUS_SKIPPED,
}

Encoder = Callable[[Mapping[str, Any] | None], bytes]


def saga_message(state: SagaState, encode: Encoder = encode_json) -> saga_pb2.SagaStateProto:
    return saga_pb2.SagaStateProto(
        id=state.saga_id,
        workflow_name=state.workflow_name,
        current_step=state.current_step,
        status=state.status.value,
        status_enum=SAGA_STATUS_ENUM.get(state.status.value, saga_pb2.SAGA_STATUS_UNSPECIFIED),
        payload=encode(state.payload),
        correlation_id=state.correlation_id or "",
        initiated_by=state.initiated_by or "",
        error_message=state.error_message or "",
        created_at=timestamp(state.created_at),
        updated_at=timestamp(state.updated_at),
        trace_id=trace_id_of(state),
    )


def step_log_message(entry: StepLog, encode: Encoder = encode_json) -> saga_pb2.SagaStepLogProto:
    """One step log; a payload the log does not have is left absent (no presence bit)."""
    message = saga_pb2.SagaStepLogProto(
        id=entry.id,
        saga_id=entry.saga_id,
        step_index=entry.step_index,
        step_name=entry.step_name,
        action=entry.action.value,
        action_enum=STEP_ACTION_ENUM.get(entry.action.value, 0),
        status=entry.status.value,
        status_enum=STEP_STATUS_ENUM.get(entry.status.value, 0),
        error_message=entry.error_message or "",
        started_at=timestamp(entry.started_at),
    )
    if entry.request_payload is not None:
        message.request_payload = encode(entry.request_payload)
    if entry.response_payload is not None:
        message.response_payload = encode(entry.response_payload)
    if entry.completed_at is not None:
        message.completed_at.CopyFrom(timestamp(entry.completed_at))
    return message


def operator_action_message(action: OperatorAction) -> saga_pb2.OperatorActionProto:
    """One entry of the audit; proto3 strings cannot be null, so absent is empty."""
    return saga_pb2.OperatorActionProto(
        action=action.action,
        resume_action=action.resume_action.value if action.resume_action is not None else "",
        payload_replaced=action.payload_replaced,
        by=action.by or "",
        at=timestamp(action.at),
    )


def workflow_summary(workflow: Workflow) -> saga_pb2.WorkflowSummary:
    return saga_pb2.WorkflowSummary(
        name=workflow.name, step_count=len(workflow.steps), step_names=list(workflow.step_names)
    )
