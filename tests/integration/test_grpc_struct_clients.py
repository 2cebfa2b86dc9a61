"""Both generations of k1s0 gRPC clients against one real server (SPEC §5), in both
`grpc.payload_encoding` settings.

The later client is generated at test time from tests/protos (payload fields as
`google.protobuf.Struct`, enum mirrors, CompensateSaga) and runs as its own program
(`struct_client.py`); the original client is the stub generated from saga_grpc/protos (JSON
bytes). Requests from either are accepted under either setting; responses follow the setting:
`json` is what the original client reads, `struct` what the later one reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from attrs import evolve
from google.protobuf import struct_pb2

from saga.model import Action, SagaStatus, StepLog, StepStatus, Workflow, new_saga
from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from saga_grpc.server import build_api
from saga_grpc.service import saga_message, step_log_message, struct_payload
from tests.integration.test_grpc_api import BEHAVIOUR, make_config
from workers.config import ConfigError, load_config
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

REPO = Path(__file__).resolve().parents[2]
LATER_PROTO = REPO / "tests" / "protos" / "k1s0" / "system" / "saga" / "v1" / "saga.proto"
COMMON_PROTO = REPO / "saga_grpc" / "protos" / "k1s0" / "system" / "common" / "v1" / "types.proto"
CLIENT = Path(__file__).with_name("struct_client.py")
WAIT_SECS = 15.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
PAYLOAD: dict[str, Any] = {
    "order_id": "o-1",
    "amount": 12.5,
    "qty": 2,
    "items": [{"sku": "x", "tags": ["a", "b"]}],
    "gift": False,
    "note": None,
    "text": "日本語",
}


# ---------------------------------------------------------------------- the later client


@pytest.fixture(scope="module")
def later_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python code for the later proto, generated now with grpcio-tools (a test dependency)."""
    out = tmp_path_factory.mktemp("later-proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'tests' / 'protos'}",
            f"-I{REPO / 'saga_grpc' / 'protos'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(LATER_PROTO),
            str(COMMON_PROTO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


class LaterClient:
    """The later-proto client program, answering one JSON line per call."""

    def __init__(self, code: Path, port: int, log: Path) -> None:
        self._log = log
        self._stderr = log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, str(CLIENT), str(code), f"127.0.0.1:{port}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONPATH": ""},
        )

    def call(self, rpc: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"rpc": rpc, "request": request or {}}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the later client died: {self._log.read_text(encoding='utf-8')}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ok(self, rpc: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.call(rpc, request)
        assert "ok" in answer, (rpc, answer)
        result: dict[str, Any] = answer["ok"]
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._stderr.close()


class Api(NamedTuple):
    encoding: str
    engine: Engine
    stub: saga_pb2_grpc.SagaServiceStub
    later: LaterClient


@pytest.fixture(scope="module")
def participant_port() -> Iterator[int]:
    server, port = start_participant_server(BEHAVIOUR)
    try:
        yield port
    finally:
        server.stop(grace=None).wait()


@pytest.fixture(scope="module", params=["json", "struct"])
def api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    participant_port: int,
    later_code: Path,
) -> Iterator[Api]:
    """A real server (engine on SQLite, executing against a participant) answering in one
    payload encoding, with an original stub and a later client connected to it."""
    encoding: str = request.param
    tmp = tmp_path_factory.mktemp(f"grpc-{encoding}")
    config = make_config(tmp, participant_port)
    config.grpc.payload_encoding = encoding
    engine = Engine.from_config(config, execute=True)
    engine.start()
    server = build_api(config, engine)
    server.server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    later = LaterClient(later_code, server.port, tmp / "later-client.log")
    try:
        yield Api(encoding, engine, saga_pb2_grpc.SagaServiceStub(channel), later)
    finally:
        later.close()
        channel.close()
        server.server.stop(grace=None).wait()
        engine.close(grace_secs=5.0)


# ---------------------------------------------------------------------- helpers


def wait_done(api: Api, saga_id: str) -> SagaStatus:
    deadline = time.monotonic() + WAIT_SECS
    while True:
        state, _ = api.engine.get_saga(saga_id)
        if state.status.value in TERMINAL:
            return state.status
        assert time.monotonic() < deadline, f"saga {saga_id} still {state.status.value}"
        time.sleep(0.02)


def wait_running(api: Api, saga_id: str) -> None:
    deadline = time.monotonic() + WAIT_SECS
    while api.engine.get_saga(saga_id)[0].status is not SagaStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def read_payload(api: Api, raw: bytes) -> Any:
    """What an original-stub reader finds in a payload field under this encoding."""
    if api.encoding == "json":
        return json.loads(raw)
    return struct_payload(raw)


def start_old(api: Api, payload: dict[str, Any], **fields: str) -> str:
    reply = api.stub.StartSaga(
        saga_pb2.StartSagaRequest(
            workflow_name="fast-order", payload=json.dumps(payload).encode(), **fields
        ),
        timeout=5,
    )
    return reply.saga_id


def saga_count(api: Api) -> int:
    return api.engine.list_sagas(page_size=1).total_count


# ---------------------------------------------------------------------- StartSaga


def test_later_client_starts_a_saga_with_a_struct_payload(api: Api) -> None:
    """A StartSaga payload sent as a Struct is stored as the same JSON object (whole numbers
    as integers), under either encoding, and the saga runs to COMPLETED."""
    reply = api.later.ok("StartSaga", {"workflow_name": "fast-order", "payload": PAYLOAD})
    assert reply["status"] == "STARTED"
    state, _ = api.engine.get_saga(reply["saga_id"])
    assert dict(state.payload) == PAYLOAD
    assert type(state.payload["qty"]) is int
    assert wait_done(api, reply["saga_id"]) is SagaStatus.COMPLETED


def test_original_client_starts_with_json_bytes_in_either_setting(api: Api) -> None:
    """JSON bytes from the original client are read as JSON whatever the response encoding."""
    saga_id = start_old(api, PAYLOAD)
    assert dict(api.engine.get_saga(saga_id)[0].payload) == PAYLOAD


def test_an_empty_or_absent_payload_is_an_empty_object(api: Api) -> None:
    """No payload, an empty Struct and empty bytes all start a saga with {}."""
    for request in (
        {"workflow_name": "fast-order"},
        {"workflow_name": "fast-order", "payload": {}},
    ):
        saga_id = api.later.ok("StartSaga", request)["saga_id"]
        assert dict(api.engine.get_saga(saga_id)[0].payload) == {}
    assert dict(api.engine.get_saga(start_old(api, {}))[0].payload) == {}


NOT_A_PAYLOAD = [
    ("text", b"not json"),
    ("invalid UTF-8", b"\xff\xfe"),
    ("a map entry without a value", b"\n\x03\n\x01a"),
    ("a Value without a kind", b"\n\x05\n\x01a\x12\x00"),
    (
        "an unknown field",
        struct_pb2.Struct(fields={"a": struct_pb2.Value(bool_value=True)}).SerializeToString()
        + b"\x18\x01",
    ),
    ("a truncated Struct", b"\n\x07\n\x01a\x12\x02 "),
    ("a JSON array", b"[1, 2]"),
]


@pytest.mark.parametrize(("what", "raw"), NOT_A_PAYLOAD, ids=[w for w, _ in NOT_A_PAYLOAD])
def test_a_payload_that_is_neither_is_invalid_argument(api: Api, what: str, raw: bytes) -> None:
    """Bytes that are neither a JSON object nor a strict Struct are INVALID_ARGUMENT naming
    payload, and no saga is written."""
    before = saga_count(api)
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.StartSaga(
            saga_pb2.StartSagaRequest(workflow_name="fast-order", payload=raw), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("payload:")
    assert saga_count(api) == before


# ---------------------------------------------------------------------- GetSaga / ListSagas


def test_get_saga_answers_in_the_configured_encoding(api: Api) -> None:
    """`json`: payloads are JSON bytes, which the later client cannot parse; `struct`: they are
    Structs, which the later client reads as the payload and step-log payloads. Both see the
    enum mirrors filled."""
    saga_id = start_old(api, PAYLOAD, correlation_id=f"get-{api.encoding}")
    wait_done(api, saga_id)
    old = api.stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), timeout=5)
    assert old.saga.status_enum == saga_pb2.SAGA_STATUS_COMPLETED
    assert read_payload(api, old.saga.payload) == PAYLOAD
    for entry in old.step_logs:
        assert entry.action_enum == saga_pb2.SAGA_STEP_ACTION_EXECUTE
        assert entry.status_enum == saga_pb2.SAGA_STEP_STATUS_SUCCESS
        assert read_payload(api, entry.request_payload) == PAYLOAD
        assert read_payload(api, entry.response_payload) == {**PAYLOAD, "ok": True}
    later = api.later.call("GetSaga", {"saga_id": saga_id})
    if api.encoding == "json":
        assert later == {"error": {"code": "INTERNAL", "details": later["error"]["details"]}}
        return
    saga = later["ok"]["saga"]
    assert (saga["id"], saga["status"], saga["status_enum"]) == (
        saga_id,
        "COMPLETED",
        "SAGA_STATUS_COMPLETED",
    )
    assert saga["payload"] == PAYLOAD
    logs = later["ok"]["step_logs"]
    assert [(g["step_name"], g["action_enum"], g["status_enum"]) for g in logs] == [
        ("reserve", "SAGA_STEP_ACTION_EXECUTE", "SAGA_STEP_STATUS_SUCCESS"),
        ("charge", "SAGA_STEP_ACTION_EXECUTE", "SAGA_STEP_STATUS_SUCCESS"),
    ]
    for entry in logs:
        assert entry["saga_id"] == saga_id
        assert entry["request_payload"] == PAYLOAD
        assert entry["response_payload"] == {**PAYLOAD, "ok": True}


def test_list_sagas_answers_in_the_configured_encoding(api: Api) -> None:
    """ListSagas carries each saga's payload in the configured encoding, with status_enum."""
    correlation = f"list-{api.encoding}-{uuid.uuid4().hex[:6]}"
    ids = {start_old(api, {"n": i}, correlation_id=correlation) for i in range(3)}
    for saga_id in ids:
        wait_done(api, saga_id)
    old = api.stub.ListSagas(saga_pb2.ListSagasRequest(correlation_id=correlation), timeout=5)
    assert {s.id for s in old.sagas} == ids
    assert {s.status_enum for s in old.sagas} == {saga_pb2.SAGA_STATUS_COMPLETED}
    assert sorted(read_payload(api, s.payload)["n"] for s in old.sagas) == [0, 1, 2]
    later = api.later.call("ListSagas", {"correlation_id": correlation})
    if api.encoding == "json":
        assert later["error"]["code"] == "INTERNAL"
        return
    sagas = later["ok"]["sagas"]
    assert {s["id"] for s in sagas} == ids
    assert sorted(s["payload"]["n"] for s in sagas) == [0, 1, 2]
    assert later["ok"]["pagination"]["total_count"] == 3


# ---------------------------------------------------------------------- Cancel / Compensate


@pytest.mark.parametrize("rpc", ["CancelSaga", "CompensateSaga"])
def test_later_client_cancels_and_compensates(api: Api, rpc: str) -> None:
    """CancelSaga and CompensateSaga from the later client stop a running saga, which ends
    CANCELLED (status_enum COMPENSATED); CompensateSaga also answers the id and status."""
    saga_id = api.later.ok("StartSaga", {"workflow_name": "slow-order", "payload": {"o": 1}})[
        "saga_id"
    ]
    wait_running(api, saga_id)
    reply = api.later.ok(rpc, {"saga_id": saga_id})
    assert reply["success"] is True and reply["message"] == f"saga {saga_id} cancelled"
    if rpc == "CompensateSaga":
        assert reply["saga_id"] == saga_id and reply["status"] == "RUNNING"
    assert wait_done(api, saga_id) is SagaStatus.CANCELLED
    old = api.stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id), timeout=5)
    assert (old.saga.status, old.saga.status_enum) == (
        "CANCELLED",
        saga_pb2.SAGA_STATUS_COMPENSATED,
    )
    assert [(g.action_enum, g.status_enum) for g in old.step_logs] == [
        (saga_pb2.SAGA_STEP_ACTION_EXECUTE, saga_pb2.SAGA_STEP_STATUS_SUCCESS),
        (saga_pb2.SAGA_STEP_ACTION_COMPENSATE, saga_pb2.SAGA_STEP_STATUS_SUCCESS),
    ]


def test_compensate_errors_match_cancel(api: Api) -> None:
    """CompensateSaga of a finished saga is FAILED_PRECONDITION, of an unknown one NOT_FOUND,
    of a malformed id INVALID_ARGUMENT, as CancelSaga; the original stub can call it too."""
    done = start_old(api, {})
    wait_done(api, done)
    for saga_id, code in (
        (done, "FAILED_PRECONDITION"),
        (str(uuid.uuid4()), "NOT_FOUND"),
        ("nope", "INVALID_ARGUMENT"),
    ):
        for rpc in ("CancelSaga", "CompensateSaga"):
            assert api.later.call(rpc, {"saga_id": saga_id})["error"]["code"] == code
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.CompensateSaga(saga_pb2.CompensateSagaRequest(saga_id=done), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---------------------------------------------------------------------- workflows


def test_later_client_registers_and_lists_workflows(api: Api) -> None:
    """RegisterWorkflow and ListWorkflows carry no payload and work for the later client."""
    name = f"later-{api.encoding}"
    yaml_text = (
        f"name: {name}\nsteps:\n  - &s {{name: a, service: inventory-service, "
        "method: Inventory.Reserve}\n  - {<<: *s, name: b}\n"
    )
    assert api.later.ok("RegisterWorkflow", {"workflow_yaml": yaml_text}) == {
        "name": name,
        "step_count": 2,
    }
    listed = {w["name"]: w for w in api.later.ok("ListWorkflows")["workflows"]}
    assert listed[name]["step_names"] == ["a", "b"]


# ---------------------------------------------------------------------- the mappings


def _state(status: SagaStatus) -> Any:
    workflow = Workflow(name="w", steps=())
    state = new_saga(
        saga_id=str(uuid.uuid4()),
        workflow=workflow,
        payload={"a": 1},
        correlation_id=None,
        initiated_by=None,
        at=datetime.now(UTC),
    )
    return evolve(state, status=status)


SPEC_STATUS_ENUM = {
    "STARTED": "SAGA_STATUS_UNSPECIFIED",
    "PAUSED": "SAGA_STATUS_UNSPECIFIED",
    "RUNNING": "SAGA_STATUS_RUNNING",
    "COMPLETED": "SAGA_STATUS_COMPLETED",
    "FAILED": "SAGA_STATUS_FAILED",
    "COMPENSATING": "SAGA_STATUS_COMPENSATING",
    "CANCELLED": "SAGA_STATUS_COMPENSATED",
}


def test_every_status_action_and_step_status_has_its_spec_enum() -> None:
    """status_enum, action_enum and the step status_enum follow SPEC §5 for every value the
    core has (STARTED and PAUSED are UNSPECIFIED, CANCELLED is COMPENSATED)."""
    for status in SagaStatus:
        message = saga_message(_state(status))
        assert saga_pb2.SagaStatus.Name(message.status_enum) == SPEC_STATUS_ENUM[status.value]
    now = datetime.now(UTC)
    for action in Action:
        for step_status in StepStatus:
            entry = StepLog(
                id=str(uuid.uuid4()),
                saga_id=str(uuid.uuid4()),
                step_index=0,
                step_name="a",
                action=action,
                status=step_status,
                request_payload=None,
                response_payload=None,
                error_message=None,
                started_at=now,
                completed_at=None,
            )
            message = step_log_message(entry)
            assert saga_pb2.SagaStepAction.Name(message.action_enum) == (
                f"SAGA_STEP_ACTION_{action.value}"
            )
            assert saga_pb2.SagaStepStatus.Name(message.status_enum) == (
                f"SAGA_STEP_STATUS_{step_status.value}"
            )
            assert not message.HasField("request_payload")


# ---------------------------------------------------------------------- configuration


def test_payload_encoding_is_read_checked_and_overridable(tmp_path: Path) -> None:
    """grpc.payload_encoding defaults to json, takes struct from the file or
    SAGA_GRPC_PAYLOAD_ENCODING, and any other value is one ConfigError line naming the key."""
    path = tmp_path / "config.yaml"
    path.write_text("grpc: {payload_encoding: struct}\n", encoding="utf-8")
    assert load_config(str(path), environ={}).grpc.payload_encoding == "struct"
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n", encoding="utf-8")
    assert load_config(str(empty), environ={}).grpc.payload_encoding == "json"
    overridden = load_config(str(empty), environ={"SAGA_GRPC_PAYLOAD_ENCODING": "struct"})
    assert overridden.grpc.payload_encoding == "struct"
    path.write_text("grpc: {payload_encoding: protobuf}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: grpc.payload_encoding: must be one of json, struct")
    assert "\n" not in message


def test_a_bad_payload_encoding_stops_the_grpc_server_at_start(tmp_path: Path) -> None:
    """`python -m saga_grpc` with a bad grpc.payload_encoding exits 2 with one line."""
    path = tmp_path / "config.yaml"
    path.write_text("grpc: {payload_encoding: xml}\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "saga_grpc"],
        cwd=REPO,
        env={**os.environ, "CONFIG_PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"saga: bad config: {path}: grpc.payload_encoding: must be one of json, struct, not 'xml'"
    )
