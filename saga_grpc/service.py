"""The gRPC edge of the saga server (SPEC §5): `SagaService` requests become `Engine` calls,
results become proto messages and domain errors become status codes.

It must never hold a business rule: every check on what a client sent lives in
`workers.inputs` / `Engine`, every token check in `workers.auth`. The only decoding done here
is what proto3 forces on us: payloads travel as JSON bytes, strings cannot be null
("" ↔ None), a zero in `Pagination` means "use the default", and a request that does not
parse as its message (e.g. a string field that is not UTF-8) is INVALID_ARGUMENT, not the
INTERNAL grpcio would answer for a failed deserializer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from saga.errors import Conflict, NotFound, ValidationError
from saga.model import SagaState, StepLog, Workflow
from saga_grpc.gen.k1s0.system.common.v1 import types_pb2
from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from workers.auth import READ, WRITE, Forbidden, Principal, TokenVerifier, Unauthenticated
from workers.engine import Engine
from workers.metrics import GRPC_REQUESTS

log = logging.getLogger("saga.grpc")

SERVICE_NAME = saga_pb2.DESCRIPTOR.services_by_name["SagaService"].full_name
INTERNAL_MESSAGE = "internal error"

# The access each RPC needs is `workers.auth.READ` or `WRITE` (SPEC §4 roles: auditors read,
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
            request_deserializer=tolerant_parser(
                getattr(saga_pb2, method.input_type.name)  # type: ignore[arg-type]
            ),
            response_serializer=getattr(saga_pb2, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


Reply = TypeVar("Reply")


class SagaServicer(saga_pb2_grpc.SagaServiceServicer):
    """`k1s0.system.saga.v1.SagaService` on top of one `Engine`."""

    def __init__(self, engine: Engine, authorize: Authorizer = allow_all) -> None:
        self._engine = engine
        self._authorize = authorize

    # ------------------------------------------------------------------ the RPCs

    def StartSaga(
        self, request: saga_pb2.StartSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.StartSagaResponse:
        def run(principal: Principal | None) -> saga_pb2.StartSagaResponse:
            state, _ = self._engine.start_saga(
                request.workflow_name,
                decode_payload(request.payload),
                correlation_id=request.correlation_id or None,
                initiated_by=request.initiated_by or None,
                principal=principal.sub if principal is not None else None,
            )
            return saga_pb2.StartSagaResponse(saga_id=state.saga_id, status=state.status.value)

        return self._call("StartSaga", WRITE, request, context, run)

    def GetSaga(
        self, request: saga_pb2.GetSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.GetSagaResponse:
        def run(_: Principal | None) -> saga_pb2.GetSagaResponse:
            state, logs = self._engine.get_saga(request.saga_id)
            return saga_pb2.GetSagaResponse(
                saga=saga_message(state), step_logs=[step_log_message(g) for g in logs]
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
                sagas=[saga_message(s) for s in result.sagas],
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
        def run(_: Principal | None) -> saga_pb2.CancelSagaResponse:
            state = self._engine.cancel_saga(request.saga_id)
            return saga_pb2.CancelSagaResponse(
                success=True, message=f"saga {state.saga_id} cancelled"
            )

        return self._call("CancelSaga", WRITE, request, context, run)

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


def decode_payload(raw: bytes) -> Any:
    """The StartSaga payload: UTF-8 JSON bytes, empty meaning `{}`; must be a JSON object."""
    if not raw:
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationError("payload: must be UTF-8 encoded JSON") from None
    if not isinstance(value, dict):
        raise ValidationError("payload: must be a JSON object")
    return value


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> types_pb2.Timestamp:
    """Seconds and nanoseconds since the Unix epoch, exact to the microsecond."""
    delta = value.astimezone(UTC) - _EPOCH
    return types_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def saga_message(state: SagaState) -> saga_pb2.SagaStateProto:
    return saga_pb2.SagaStateProto(
        id=state.saga_id,
        workflow_name=state.workflow_name,
        current_step=state.current_step,
        status=state.status.value,
        payload=encode_json(state.payload),
        correlation_id=state.correlation_id or "",
        initiated_by=state.initiated_by or "",
        error_message=state.error_message or "",
        created_at=timestamp(state.created_at),
        updated_at=timestamp(state.updated_at),
    )


def step_log_message(entry: StepLog) -> saga_pb2.SagaStepLogProto:
    message = saga_pb2.SagaStepLogProto(
        id=entry.id,
        saga_id=entry.saga_id,
        step_index=entry.step_index,
        step_name=entry.step_name,
        action=entry.action.value,
        status=entry.status.value,
        request_payload=encode_json(entry.request_payload),
        response_payload=encode_json(entry.response_payload),
        error_message=entry.error_message or "",
        started_at=timestamp(entry.started_at),
    )
    if entry.completed_at is not None:
        message.completed_at.CopyFrom(timestamp(entry.completed_at))
    return message


def workflow_summary(workflow: Workflow) -> saga_pb2.WorkflowSummary:
    return saga_pb2.WorkflowSummary(
        name=workflow.name, step_count=len(workflow.steps), step_names=list(workflow.step_names)
    )
