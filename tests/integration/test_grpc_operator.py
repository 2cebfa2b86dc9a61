"""PauseSaga, ResumeSaga and the operator actions of GetSaga (SPEC §5, §11) against a real gRPC
server on 127.0.0.1: an `Engine` on a temporary SQLite file executing sagas against an
in-process participant, and a client built from the proto."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from saga_grpc.server import build_server
from tests.integration.test_grpc_api import as_datetime, make_config, rpc_error
from workers.config import Config
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

WAIT_SECS = 15.0
BEHAVIOUR: dict[str, Any] = {
    "Slow.Hang": {"sleep_ms": 1200},
    "Payment.Charge": {
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "payment declined",
    },
}
PAUSING_WORKFLOW = """\
name: pausing-order
on_failure: pause
steps:
  - name: reserve
    service: inventory-service
    method: Inventory.Reserve
    compensate: Inventory.Release
    retry: {max_attempts: 1}
  - name: charge
    service: payment-service
    method: Payment.Charge
    retry: {max_attempts: 1}
"""


@pytest.fixture(scope="module")
def participant_port() -> Iterator[int]:
    server, port = start_participant_server(BEHAVIOUR)
    try:
        yield port
    finally:
        server.stop(grace=None).wait()


@pytest.fixture
def config(tmp_path: Path, participant_port: int) -> Config:
    config = make_config(tmp_path, participant_port)
    Path(config.saga.workflow_dir, "pausing-order.yaml").write_text(PAUSING_WORKFLOW)
    return config


@pytest.fixture
def engine(config: Config) -> Iterator[Engine]:
    created = Engine.from_config(config, execute=True)
    created.start()
    try:
        yield created
    finally:
        created.close(grace_secs=5.0)


@pytest.fixture
def stub(config: Config, engine: Engine) -> Iterator[saga_pb2_grpc.SagaServiceStub]:
    server, port = build_server(config, engine)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield saga_pb2_grpc.SagaServiceStub(channel)
    finally:
        channel.close()
        server.stop(grace=None).wait()


def start(stub: saga_pb2_grpc.SagaServiceStub, workflow: str, payload: dict[str, Any]) -> str:
    request = saga_pb2.StartSagaRequest(
        workflow_name=workflow, payload=json.dumps(payload).encode()
    )
    return str(stub.StartSaga(request, timeout=5).saga_id)


def wait_for(
    stub: saga_pb2_grpc.SagaServiceStub, saga_id: str, *statuses: str
) -> saga_pb2.GetSagaResponse:
    deadline = time.monotonic() + WAIT_SECS
    while True:
        reply = stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), timeout=5)
        if reply.saga.status in statuses:
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"saga {saga_id} stuck in {reply.saga.status}")
        time.sleep(0.02)


def actions(reply: saga_pb2.GetSagaResponse) -> list[tuple[str, str, bool, str]]:
    return [(a.action, a.resume_action, a.payload_replaced, a.by) for a in reply.operator_actions]


def steps(reply: saga_pb2.GetSagaResponse) -> list[tuple[str, str, str]]:
    return [(g.step_name, g.action, g.status) for g in reply.step_logs]


def test_pause_takes_effect_at_the_boundary_and_resume_continues(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """PauseSaga during a slow step answers at once; the step finishes and the saga is PAUSED
    (status_enum UNSPECIFIED) before the next one; ResumeSaga with no action continues it to
    COMPLETED, and GetSaga lists both actions, oldest first, with their times."""
    saga_id = start(stub, "slow-order", {"card": "ok"})
    wait_for(stub, saga_id, "RUNNING")
    before = datetime.now(UTC) - timedelta(seconds=1)
    paused = stub.PauseSaga(saga_pb2.PauseSagaRequest(saga_id=saga_id), timeout=5)
    assert (paused.success, paused.message) == (True, f"saga {saga_id} pause requested")

    reply = wait_for(stub, saga_id, "PAUSED")
    assert reply.saga.status_enum == saga_pb2.SAGA_STATUS_UNSPECIFIED
    assert reply.saga.current_step == 1
    assert steps(reply) == [("hold", "EXECUTE", "SUCCESS")]
    time.sleep(0.3)  # nothing runs while it is paused
    assert steps(stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), timeout=5)) == steps(reply)

    resumed = stub.ResumeSaga(saga_pb2.ResumeSagaRequest(saga_id=saga_id), timeout=5)
    assert resumed.success and resumed.status == "RUNNING"
    assert resumed.message == f"saga {saga_id} resumed with continue; now RUNNING"
    done = wait_for(stub, saga_id, "COMPLETED", "FAILED", "CANCELLED")
    assert done.saga.status == "COMPLETED"
    assert actions(done) == [("pause", "", False, ""), ("resume", "continue", False, "")]
    times = [as_datetime(a.at) for a in done.operator_actions]
    assert before <= times[0] <= times[1] <= datetime.now(UTC)


@pytest.mark.parametrize("encoding", ["json", "struct"])
def test_resume_retry_with_a_replaced_payload(
    stub: saga_pb2_grpc.SagaServiceStub, encoding: str
) -> None:
    """A declined payment pauses the saga (on_failure: pause); ResumeSaga with retry and a
    replacement payload (JSON bytes or an encoded Struct) runs the payment again with it, to
    COMPLETED, and the audit says the payload was replaced."""
    saga_id = start(stub, "pausing-order", {"order": "g-1", "card": "declined"})
    reply = wait_for(stub, saga_id, "PAUSED")
    assert "payment declined" in reply.saga.error_message
    replacement = {"order": "g-1", "card": "ok"}
    if encoding == "json":
        raw = json.dumps(replacement).encode()
    else:
        struct = struct_pb2.Struct()
        struct.update(replacement)
        raw = struct.SerializeToString()
    resumed = stub.ResumeSaga(
        saga_pb2.ResumeSagaRequest(saga_id=saga_id, action="retry", payload=raw), timeout=5
    )
    assert resumed.status == "RUNNING"
    assert "retry" in resumed.message and "replaced payload" in resumed.message
    done = wait_for(stub, saga_id, "COMPLETED", "FAILED", "CANCELLED")
    assert done.saga.status == "COMPLETED"
    assert json.loads(done.saga.payload) == replacement
    assert steps(done) == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "FAILED"),
        ("charge", "EXECUTE", "SUCCESS"),
    ]
    assert json.loads(done.step_logs[2].request_payload) == replacement
    assert actions(done) == [("resume", "retry", True, "")]


def test_resume_compensate_and_cancel_of_a_paused_saga(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """From PAUSED, ResumeSaga compensate answers COMPENSATING and the saga ends FAILED with its
    completed step compensated; CancelSaga of another PAUSED saga ends it CANCELLED, compensated
    too; both are in the audit."""
    first = start(stub, "pausing-order", {"card": "declined"})
    second = start(stub, "pausing-order", {"card": "declined"})
    wait_for(stub, first, "PAUSED")
    wait_for(stub, second, "PAUSED")
    resumed = stub.ResumeSaga(
        saga_pb2.ResumeSagaRequest(saga_id=first, action="compensate"), timeout=5
    )
    assert resumed.status == "COMPENSATING"
    cancelled = stub.CancelSaga(saga_pb2.CancelSagaRequest(saga_id=second), timeout=5)
    assert cancelled.success
    one = wait_for(stub, first, "FAILED", "CANCELLED", "COMPLETED")
    two = wait_for(stub, second, "FAILED", "CANCELLED", "COMPLETED")
    assert (one.saga.status, two.saga.status) == ("FAILED", "CANCELLED")
    for reply in (one, two):
        assert ("reserve", "COMPENSATE", "SUCCESS") in steps(reply)
    assert actions(one) == [("resume", "compensate", False, "")]
    assert actions(two) == [("cancel", "", False, "")]


def test_operator_errors_map_to_status_codes(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """A pause of a terminal or PAUSED saga and a resume of a saga that is not PAUSED (or with
    an action that does not fit) are FAILED_PRECONDITION with the reason; unknown ids are
    NOT_FOUND; a malformed id, an unknown action or a payload that is not a JSON object is
    INVALID_ARGUMENT naming the field."""
    done = start(stub, "fast-order", {})
    wait_for(stub, done, "COMPLETED")
    paused = start(stub, "pausing-order", {"card": "declined"})
    wait_for(stub, paused, "PAUSED")

    cases: list[tuple[Any, Any, grpc.StatusCode, str]] = [
        (
            stub.PauseSaga,
            saga_pb2.PauseSagaRequest(saga_id=done),
            grpc.StatusCode.FAILED_PRECONDITION,
            "COMPLETED",
        ),
        (
            stub.PauseSaga,
            saga_pb2.PauseSagaRequest(saga_id=paused),
            grpc.StatusCode.FAILED_PRECONDITION,
            "PAUSED",
        ),
        (
            stub.ResumeSaga,
            saga_pb2.ResumeSagaRequest(saga_id=done),
            grpc.StatusCode.FAILED_PRECONDITION,
            "only PAUSED",
        ),
        (
            stub.ResumeSaga,
            saga_pb2.ResumeSagaRequest(saga_id=paused, action="continue"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "retry, skip or compensate",
        ),
        (
            stub.PauseSaga,
            saga_pb2.PauseSagaRequest(saga_id="7d7a8a52-4b0c-4cb6-9a3c-0d2d9f7e1a11"),
            grpc.StatusCode.NOT_FOUND,
            "saga not found",
        ),
        (
            stub.ResumeSaga,
            saga_pb2.ResumeSagaRequest(saga_id="7d7a8a52-4b0c-4cb6-9a3c-0d2d9f7e1a11"),
            grpc.StatusCode.NOT_FOUND,
            "saga not found",
        ),
        (
            stub.PauseSaga,
            saga_pb2.PauseSagaRequest(saga_id="not-a-uuid"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "saga_id",
        ),
        (
            stub.ResumeSaga,
            saga_pb2.ResumeSagaRequest(saga_id=paused, action="later"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "action",
        ),
        (
            stub.ResumeSaga,
            saga_pb2.ResumeSagaRequest(saga_id=paused, payload=b"[1, 2]"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "payload",
        ),
        (
            stub.ResumeSaga,
            saga_pb2.ResumeSagaRequest(saga_id=paused, payload=b"\xff\x00garbage"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "payload",
        ),
    ]
    for call, request, code, text in cases:
        error = rpc_error(call, request)
        assert error.code() == code, (request, error.details())
        assert text in (error.details() or ""), (request, error.details())
    # None of the refusals changed the paused saga.
    still = stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=paused), timeout=5)
    assert still.saga.status == "PAUSED" and list(still.operator_actions) == []
