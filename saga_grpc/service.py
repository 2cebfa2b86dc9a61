"""The gRPC edge of the saga server (SPEC §5): `SagaService` requests become `Engine` calls,
results become proto messages and domain errors become status codes.

It must never hold a business rule: every check on what a client sent lives in
`workers.inputs` / `Engine`. The only decoding done here is what proto3 forces on us:
payloads travel as JSON bytes, strings cannot be null ("" ↔ None), and a zero in
`Pagination` means "use the default".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc

from saga.errors import Conflict, NotFound, ValidationError
from saga.model import SagaState, StepLog, Workflow
from saga_grpc.gen.k1s0.system.common.v1 import types_pb2
from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from workers.engine import Engine
from workers.metrics import GRPC_REQUESTS

log = logging.getLogger("saga.grpc")

SERVICE_NAME = saga_pb2.DESCRIPTOR.services_by_name["SagaService"].full_name
INTERNAL_MESSAGE = "internal error"

# The access each RPC needs (SPEC §4 roles: auditors read, operators and admins also write).
READ = "read"
WRITE = "write"


class Denied(Exception):
    """Raised by an authorizer to refuse a call with UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# An authorizer sees the call's context (its `authorization` metadata) and the access the RPC
# needs; it returns to allow the call and raises `Denied` to refuse it.
Authorizer = Callable[[grpc.ServicerContext, str], None]


def allow_all(context: grpc.ServicerContext, access: str) -> None:
    """The authorizer used when no `auth` section is configured: the API is open."""


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
        def run() -> saga_pb2.StartSagaResponse:
            state, _ = self._engine.start_saga(
                request.workflow_name,
                decode_payload(request.payload),
                correlation_id=request.correlation_id or None,
                initiated_by=request.initiated_by or None,
            )
            return saga_pb2.StartSagaResponse(saga_id=state.saga_id, status=state.status.value)

        return self._call("StartSaga", WRITE, context, run)

    def GetSaga(
        self, request: saga_pb2.GetSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.GetSagaResponse:
        def run() -> saga_pb2.GetSagaResponse:
            state, logs = self._engine.get_saga(request.saga_id)
            return saga_pb2.GetSagaResponse(
                saga=saga_message(state), step_logs=[step_log_message(g) for g in logs]
            )

        return self._call("GetSaga", READ, context, run)

    def ListSagas(
        self, request: saga_pb2.ListSagasRequest, context: grpc.ServicerContext
    ) -> saga_pb2.ListSagasResponse:
        def run() -> saga_pb2.ListSagasResponse:
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

        return self._call("ListSagas", READ, context, run)

    def CancelSaga(
        self, request: saga_pb2.CancelSagaRequest, context: grpc.ServicerContext
    ) -> saga_pb2.CancelSagaResponse:
        def run() -> saga_pb2.CancelSagaResponse:
            state = self._engine.cancel_saga(request.saga_id)
            return saga_pb2.CancelSagaResponse(
                success=True, message=f"saga {state.saga_id} cancelled"
            )

        return self._call("CancelSaga", WRITE, context, run)

    def RegisterWorkflow(
        self, request: saga_pb2.RegisterWorkflowRequest, context: grpc.ServicerContext
    ) -> saga_pb2.RegisterWorkflowResponse:
        def run() -> saga_pb2.RegisterWorkflowResponse:
            workflow = self._engine.register_workflow(request.workflow_yaml)
            return saga_pb2.RegisterWorkflowResponse(
                name=workflow.name, step_count=len(workflow.steps)
            )

        return self._call("RegisterWorkflow", WRITE, context, run)

    def ListWorkflows(
        self, request: saga_pb2.ListWorkflowsRequest, context: grpc.ServicerContext
    ) -> saga_pb2.ListWorkflowsResponse:
        def run() -> saga_pb2.ListWorkflowsResponse:
            return saga_pb2.ListWorkflowsResponse(
                workflows=[workflow_summary(w) for w in self._engine.list_workflows()]
            )

        return self._call("ListWorkflows", READ, context, run)

    # ------------------------------------------------------------------ the one wrapper

    def _call(
        self,
        method: str,
        access: str,
        context: grpc.ServicerContext,
        run: Callable[[], Reply],
    ) -> Reply:
        """Authorize, run, count, and turn any failure into a status code and a message that
        leaks nothing (the exception itself goes to the log)."""
        code = grpc.StatusCode.OK
        message = ""
        try:
            # The one place access is checked: a JWT authorizer (SPEC §4 roles, read from the
            # `authorization` metadata) is passed in as `authorize` and raises `Denied`.
            self._authorize(context, access)
            return run()
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
