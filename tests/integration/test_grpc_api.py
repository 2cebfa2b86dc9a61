"""The gRPC API (SPEC §5) against a real server on 127.0.0.1: an `Engine` on a temporary SQLite
file executing sagas against an in-process participant, and a client built from the proto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from saga_grpc.gen.k1s0.system.common.v1 import types_pb2
from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from saga_grpc.server import build_api, build_server, serve
from tests.harness import free_port
from workers.config import Config, GrpcConfig, SagaSection, ServiceEndpoint
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

REPO = Path(__file__).resolve().parents[2]
SERVICE = "k1s0.system.saga.v1.SagaService"
WAIT_SECS = 15.0
SLOW_MS = 1500

BEHAVIOUR: dict[str, Any] = {"Slow.Hang": {"sleep_ms": SLOW_MS}}

FAST_WORKFLOW = """\
name: fast-order
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

SLOW_WORKFLOW = """\
name: slow-order
steps:
  - name: hold
    service: slow-service
    method: Slow.Hang
    compensate: Slow.Release
    retry: {max_attempts: 1}
  - name: charge
    service: payment-service
    method: Payment.Charge
    retry: {max_attempts: 1}
"""


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def participant_port() -> Iterator[int]:
    server, port = start_participant_server(BEHAVIOUR)
    try:
        yield port
    finally:
        server.stop(grace=None).wait()


def make_config(tmp_path: Path, participant_port: int, grpc_port: int = 0) -> Config:
    workflow_dir = tmp_path / "workflows"
    workflow_dir.mkdir(exist_ok=True)
    (workflow_dir / "fast-order.yaml").write_text(FAST_WORKFLOW, encoding="utf-8")
    (workflow_dir / "slow-order.yaml").write_text(SLOW_WORKFLOW, encoding="utf-8")
    endpoint = ServiceEndpoint("127.0.0.1", participant_port)
    return Config(
        grpc=GrpcConfig(host="127.0.0.1", port=grpc_port, max_workers=8),
        services={
            "inventory-service": endpoint,
            "payment-service": endpoint,
            "slow-service": endpoint,
        },
        saga=SagaSection(
            sqlite_path=str(tmp_path / "saga.sqlite3"),
            workflow_dir=str(workflow_dir),
            execute=True,
            claim_interval_ms=20,
        ),
    )


@pytest.fixture
def config(tmp_path: Path, participant_port: int) -> Config:
    return make_config(tmp_path, participant_port)


@pytest.fixture
def engine(config: Config) -> Iterator[Engine]:
    created = Engine.from_config(config, execute=True)
    created.start()
    try:
        yield created
    finally:
        created.close(grace_secs=5.0)


@pytest.fixture
def channel(config: Config, engine: Engine) -> Iterator[grpc.Channel]:
    server, port = build_server(config, engine)
    server.start()
    client = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield client
    finally:
        client.close()
        server.stop(grace=None).wait()


@pytest.fixture
def stub(channel: grpc.Channel) -> saga_pb2_grpc.SagaServiceStub:
    return saga_pb2_grpc.SagaServiceStub(channel)


# ---------------------------------------------------------------------- helpers


def start(
    stub: saga_pb2_grpc.SagaServiceStub,
    workflow: str = "fast-order",
    payload: dict[str, Any] | None = None,
    **fields: str,
) -> str:
    body = b"" if payload is None else json.dumps(payload).encode()
    reply = stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name=workflow, payload=body, **fields), timeout=5
    )
    return reply.saga_id


def wait_for(
    stub: saga_pb2_grpc.SagaServiceStub, saga_id: str, statuses: set[str]
) -> saga_pb2.GetSagaResponse:
    deadline = time.monotonic() + WAIT_SECS
    while True:
        reply = stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), timeout=5)
        if reply.saga.status in statuses:
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"saga {saga_id} stuck in {reply.saga.status}")
        time.sleep(0.02)


def rpc_error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return caught.value


def as_datetime(ts: types_pb2.Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds, UTC) + timedelta(microseconds=ts.nanos // 1000)


def grpc_count(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("saga_grpc_requests_total", {"method": method, "code": code})
    return value or 0.0


def health_status(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as client:
        reply = health_pb2_grpc.HealthStub(client).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    return int(reply.status)


# ---------------------------------------------------------------------- StartSaga / GetSaga


def test_start_returns_a_uuid_and_started(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """StartSaga answers with a canonical UUID and the status STARTED."""
    reply = stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name="fast-order", payload=b'{"order": 1}'), timeout=5
    )
    assert str(uuid.UUID(reply.saga_id)) == reply.saga_id
    assert reply.status == "STARTED"


def test_get_round_trips_payload_and_optional_strings(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """The payload comes back as compact UTF-8 JSON equal to what was sent, with the optional strings."""
    payload = {
        "order_id": "o-1",
        "amount": 12.5,
        "items": [{"sku": "x", "qty": 2}],
        "note": "日本語",
    }
    saga_id = start(stub, payload=payload, correlation_id="corr-1", initiated_by="alice")
    saga = stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), timeout=5).saga
    assert json.loads(saga.payload) == payload
    assert "日本語".encode() in saga.payload
    assert b", " not in saga.payload and b": " not in saga.payload
    assert (saga.id, saga.workflow_name) == (saga_id, "fast-order")
    assert (saga.correlation_id, saga.initiated_by) == ("corr-1", "alice")


def test_empty_payload_and_strings_mean_absent(
    stub: saga_pb2_grpc.SagaServiceStub, engine: Engine
) -> None:
    """Empty payload bytes start a saga with {}, and empty correlation_id/initiated_by are stored as null."""
    saga_id = start(stub)
    state, _ = engine.get_saga(saga_id)
    assert dict(state.payload) == {}
    assert state.correlation_id is None and state.initiated_by is None
    saga = stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), timeout=5).saga
    assert saga.payload == b"{}"
    assert (saga.correlation_id, saga.initiated_by, saga.error_message) == ("", "", "")


def test_timestamps_are_now_and_keep_sub_second_precision(
    stub: saga_pb2_grpc.SagaServiceStub, engine: Engine
) -> None:
    """created_at/updated_at are within a second of now and carry the stored time to the microsecond."""
    saga_id = start(stub)
    now = datetime.now(UTC)
    saga = stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), timeout=5).saga
    state, _ = engine.get_saga(saga_id)
    for ts in (saga.created_at, saga.updated_at):
        assert 0 <= ts.nanos < 1_000_000_000
        assert abs(as_datetime(ts) - now) < timedelta(seconds=1)
    assert as_datetime(saga.created_at) == state.created_at
    assert saga.created_at.nanos // 1_000_000 == state.created_at.microsecond // 1000


def test_completed_saga_has_full_step_logs(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """After completion every step log carries ids, names, action, status, both payloads and both timestamps."""
    payload = {"order": 7}
    saga_id = start(stub, payload=payload)
    reply = wait_for(stub, saga_id, {"COMPLETED", "FAILED", "CANCELLED"})
    assert reply.saga.status == "COMPLETED"
    assert reply.saga.current_step == 2
    assert [(g.step_index, g.step_name, g.action, g.status) for g in reply.step_logs] == [
        (0, "reserve", "EXECUTE", "SUCCESS"),
        (1, "charge", "EXECUTE", "SUCCESS"),
    ]
    now = datetime.now(UTC)
    for entry in reply.step_logs:
        assert uuid.UUID(entry.id) and entry.saga_id == saga_id
        assert json.loads(entry.request_payload) == payload
        assert json.loads(entry.response_payload) == {**payload, "ok": True}
        assert entry.error_message == ""
        assert entry.HasField("started_at") and entry.HasField("completed_at")
        started, completed = as_datetime(entry.started_at), as_datetime(entry.completed_at)
        assert started <= completed and abs(completed - now) < timedelta(seconds=WAIT_SECS)


def test_payload_that_is_not_json_is_invalid_argument(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """Payload bytes that are not UTF-8 JSON, or JSON that is not an object, are INVALID_ARGUMENT naming payload."""
    for body in (b"not json", b"\xff\xfe", b"[1, 2]", b"null", b'"text"'):
        error = rpc_error(
            stub.StartSaga, saga_pb2.StartSagaRequest(workflow_name="fast-order", payload=body)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, body
        assert "payload" in error.details(), body


def test_payload_over_the_limits_is_invalid_argument(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """A payload nested deeper than 64 levels or over 256 KiB is INVALID_ARGUMENT naming payload."""
    deep = b'{"a":' * 70 + b"1" + b"}" * 70
    very_deep = b"[" * 500_000  # deeper than the JSON parser's own recursion limit
    large = json.dumps({"blob": "x" * (300 * 1024)}).encode()
    for body in (deep, very_deep, large):
        error = rpc_error(
            stub.StartSaga, saga_pb2.StartSagaRequest(workflow_name="fast-order", payload=body)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("payload:")


def test_start_validation_and_unknown_workflow(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """A missing workflow_name is INVALID_ARGUMENT; an unknown workflow is NOT_FOUND naming it."""
    missing = rpc_error(stub.StartSaga, saga_pb2.StartSagaRequest())
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workflow_name" in missing.details()
    unknown = rpc_error(stub.StartSaga, saga_pb2.StartSagaRequest(workflow_name="no-such-flow"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert unknown.details() == "workflow not found: no-such-flow"


def test_get_unknown_and_malformed_ids(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """GetSaga of an unknown UUID is NOT_FOUND; of a non-UUID or empty id, INVALID_ARGUMENT."""
    assert (
        rpc_error(stub.GetSaga, saga_pb2.GetSagaRequest(saga_id=str(uuid.uuid4()))).code()
        == grpc.StatusCode.NOT_FOUND
    )
    for bad in ("not-a-uuid", ""):
        error = rpc_error(stub.GetSaga, saga_pb2.GetSagaRequest(saga_id=bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "saga_id" in error.details()


# ---------------------------------------------------------------------- ListSagas


def test_list_paginates_newest_first(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """ListSagas pages through every match once, reporting total_count and has_next per page."""
    started = [start(stub, correlation_id="paging") for _ in range(5)]
    seen: list[str] = []
    for page, expected_size, has_next in ((1, 2, True), (2, 2, True), (3, 1, False)):
        reply = stub.ListSagas(
            saga_pb2.ListSagasRequest(
                pagination=types_pb2.Pagination(page=page, page_size=2), correlation_id="paging"
            ),
            timeout=5,
        )
        assert len(reply.sagas) == expected_size
        assert (
            reply.pagination.total_count,
            reply.pagination.page,
            reply.pagination.page_size,
            reply.pagination.has_next,
        ) == (5, page, 2, has_next)
        seen.extend(s.id for s in reply.sagas)
    assert sorted(seen) == sorted(started)
    created = [
        as_datetime(s.created_at)
        for s in stub.ListSagas(saga_pb2.ListSagasRequest(correlation_id="paging"), timeout=5).sagas
    ]
    assert created == sorted(created, reverse=True)


def test_list_zero_pagination_means_defaults(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """An absent or all-zero Pagination gives page 1 of size 20."""
    start(stub)
    for request in (
        saga_pb2.ListSagasRequest(),
        saga_pb2.ListSagasRequest(pagination=types_pb2.Pagination(page=0, page_size=0)),
    ):
        reply = stub.ListSagas(request, timeout=5)
        assert (reply.pagination.page, reply.pagination.page_size) == (1, 20)
        assert reply.pagination.total_count == 1 and not reply.pagination.has_next


def test_list_out_of_range_is_invalid_argument(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """A negative page, a page_size over 100 or an unknown status is INVALID_ARGUMENT, not a clamp."""
    for request, field in (
        (saga_pb2.ListSagasRequest(pagination=types_pb2.Pagination(page=-1)), "page"),
        (saga_pb2.ListSagasRequest(pagination=types_pb2.Pagination(page_size=-5)), "page_size"),
        (saga_pb2.ListSagasRequest(pagination=types_pb2.Pagination(page_size=101)), "page_size"),
        (saga_pb2.ListSagasRequest(status="DONE"), "status"),
    ):
        error = rpc_error(stub.ListSagas, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(field + ":")


def test_list_filters_by_workflow_status_and_correlation(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """workflow_name, status and correlation_id each narrow the list; an empty status is no filter."""
    fast = [start(stub, correlation_id="filter-a") for _ in range(2)]
    other = start(stub, correlation_id="filter-b")
    for saga_id in (*fast, other):
        wait_for(stub, saga_id, {"COMPLETED"})

    def ids(**fields: str) -> set[str]:
        return {s.id for s in stub.ListSagas(saga_pb2.ListSagasRequest(**fields), timeout=5).sagas}

    assert ids(correlation_id="filter-a") == set(fast)
    assert ids(correlation_id="filter-b", status="") == {other}
    assert ids(workflow_name="fast-order", status="COMPLETED") == {*fast, other}
    assert ids(workflow_name="slow-order") == set()
    assert ids(status="RUNNING") == set()


# ---------------------------------------------------------------------- CancelSaga


def test_cancel_a_saga_waiting_in_a_slow_step(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """Cancelling a RUNNING saga succeeds, and the step in flight is compensated once it returns."""
    saga_id = start(stub, "slow-order", {"order": 3})
    wait_for(stub, saga_id, {"RUNNING"})
    reply = stub.CancelSaga(saga_pb2.CancelSagaRequest(saga_id=saga_id), timeout=5)
    assert reply.success is True
    assert reply.message == f"saga {saga_id} cancelled"
    done = wait_for(stub, saga_id, {"COMPLETED", "FAILED", "CANCELLED"})
    assert done.saga.status == "CANCELLED"
    assert [(g.step_index, g.action, g.status) for g in done.step_logs] == [
        (0, "EXECUTE", "SUCCESS"),
        (0, "COMPENSATE", "SUCCESS"),
    ]


def test_cancel_a_terminal_saga_is_failed_precondition(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """Cancelling a COMPLETED saga is FAILED_PRECONDITION and leaves it COMPLETED."""
    saga_id = start(stub)
    wait_for(stub, saga_id, {"COMPLETED"})
    error = rpc_error(stub.CancelSaga, saga_pb2.CancelSagaRequest(saga_id=saga_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "COMPLETED" in error.details()
    assert stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id)).saga.status == "COMPLETED"


def test_cancel_unknown_and_malformed_ids(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """CancelSaga of an unknown UUID is NOT_FOUND; of a non-UUID, INVALID_ARGUMENT."""
    unknown = rpc_error(stub.CancelSaga, saga_pb2.CancelSagaRequest(saga_id=str(uuid.uuid4())))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    bad = rpc_error(stub.CancelSaga, saga_pb2.CancelSagaRequest(saga_id="12345"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------- workflows


def test_register_and_list_workflows(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """RegisterWorkflow answers name and step_count; ListWorkflows then shows it with its step names."""
    yaml_text = FAST_WORKFLOW.replace("name: fast-order", "name: registered-flow")
    reply = stub.RegisterWorkflow(
        saga_pb2.RegisterWorkflowRequest(workflow_yaml=yaml_text), timeout=5
    )
    assert (reply.name, reply.step_count) == ("registered-flow", 2)
    listed = {
        w.name: (w.step_count, list(w.step_names))
        for w in stub.ListWorkflows(saga_pb2.ListWorkflowsRequest(), timeout=5).workflows
    }
    assert listed == {
        "fast-order": (2, ["reserve", "charge"]),
        "slow-order": (2, ["hold", "charge"]),
        "registered-flow": (2, ["reserve", "charge"]),
    }
    saga_id = start(stub, "registered-flow")
    assert wait_for(stub, saga_id, {"COMPLETED"}).saga.workflow_name == "registered-flow"


def test_register_rejects_bad_yaml_and_unknown_services(
    stub: saga_pb2_grpc.SagaServiceStub,
) -> None:
    """Bad YAML, an empty document and a service missing from the config are INVALID_ARGUMENT."""
    unknown_service = FAST_WORKFLOW.replace("payment-service", "billing-service")
    for text, needle in (
        ("name: [unclosed\nsteps: {", ""),
        ("", "workflow_yaml"),
        (unknown_service, "billing-service"),
    ):
        error = rpc_error(
            stub.RegisterWorkflow, saga_pb2.RegisterWorkflowRequest(workflow_yaml=text)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, text
        assert needle in error.details()


# ---------------------------------------------------------------------- both APIs, one engine


def test_grpc_and_engine_see_the_same_sagas(
    stub: saga_pb2_grpc.SagaServiceStub, engine: Engine
) -> None:
    """A saga started over gRPC is visible through Engine.get_saga, and one started on the Engine over gRPC."""
    over_grpc = start(stub, payload={"via": "grpc"}, correlation_id="both")
    state, _ = engine.get_saga(over_grpc)
    assert (dict(state.payload), state.correlation_id) == ({"via": "grpc"}, "both")

    direct, _ = engine.start_saga("fast-order", {"via": "engine"}, correlation_id="both")
    saga = stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=direct.saga_id), timeout=5).saga
    assert json.loads(saga.payload) == {"via": "engine"}
    listed = stub.ListSagas(saga_pb2.ListSagasRequest(correlation_id="both"), timeout=5)
    assert {s.id for s in listed.sagas} == {over_grpc, direct.saga_id}


# ---------------------------------------------------------------------- errors and metrics


class BrokenEngine:
    """An engine whose store fails with a message that must never reach a client."""

    def list_workflows(self) -> list[Any]:
        raise RuntimeError("SELECT secret FROM saga.workflow_definitions -- boom")


def test_unexpected_errors_are_internal_without_details(config: Config) -> None:
    """An unexpected exception is INTERNAL with a generic message: no SQL, no stack trace."""
    server, port = build_server(config, BrokenEngine())  # type: ignore[arg-type]
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as client:
            error = rpc_error(
                saga_pb2_grpc.SagaServiceStub(client).ListWorkflows,
                saga_pb2.ListWorkflowsRequest(),
            )
    finally:
        server.stop(grace=None).wait()
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"


def test_requests_are_counted_by_method_and_code(stub: saga_pb2_grpc.SagaServiceStub) -> None:
    """saga_grpc_requests_total counts each call under its method and status code name."""
    ok_before = grpc_count("ListWorkflows", "OK")
    missing_before = grpc_count("GetSaga", "NOT_FOUND")
    stub.ListWorkflows(saga_pb2.ListWorkflowsRequest(), timeout=5)
    rpc_error(stub.GetSaga, saga_pb2.GetSagaRequest(saga_id=str(uuid.uuid4())))
    assert grpc_count("ListWorkflows", "OK") == ok_before + 1
    assert grpc_count("GetSaga", "NOT_FOUND") == missing_before + 1


# ---------------------------------------------------------------------- reflection and health


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    """Server reflection lists SagaService, the health service and reflection itself."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_reflection_describes_the_saga_service(channel: grpc.Channel) -> None:
    """Reflection serves the file defining SagaService, so tools like grpcurl can call it."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [response] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]), timeout=5
    )
    assert response.file_descriptor_response.file_descriptor_proto


def test_health_answers_serving(channel: grpc.Channel) -> None:
    """The standard health service answers SERVING for the server and for SagaService."""
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_goes_not_serving_on_graceful_shutdown(config: Config, engine: Engine) -> None:
    """Once shutdown begins, health answers NOT_SERVING for the server and SagaService."""
    api = build_api(config, engine)
    api.server.start()
    try:
        assert health_status(api.port, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        api.health.enter_graceful_shutdown()
        for service in ("", SERVICE):
            assert health_status(api.port, service) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        api.server.stop(grace=None).wait()


# ---------------------------------------------------------------------- serve()


def test_serve_runs_until_stopped_then_shuts_down(tmp_path: Path, participant_port: int) -> None:
    """serve() answers health checks while running and returns promptly once asked to stop."""
    port = free_port()
    config = make_config(tmp_path, participant_port, grpc_port=port)
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            serve(config, stop=stop)
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_SECS
        while True:
            try:
                assert health_status(port, SERVICE) == health_pb2.HealthCheckResponse.SERVING
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise
                time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=WAIT_SECS)
    assert not thread.is_alive() and failures == []


def test_python_m_saga_grpc_serves_and_exits_on_sigterm(
    tmp_path: Path, participant_port: int
) -> None:
    """`python -m saga_grpc` serves on the configured port and exits 0 on SIGTERM."""
    port = free_port()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        json.dumps(
            {
                "grpc": {"host": "127.0.0.1", "port": port},
                "saga": {
                    "sqlite_path": str(tmp_path / "saga.sqlite3"),
                    "workflow_dir": str(REPO / "workflows"),
                },
            }
        ),
        encoding="utf-8",
    )
    log_file = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "saga_grpc"],
        cwd=REPO,
        env={**os.environ, "CONFIG_PATH": str(config_file)},
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + WAIT_SECS
        while True:
            try:
                assert health_status(port) == health_pb2.HealthCheckResponse.SERVING
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_SECS) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log_file.close()
