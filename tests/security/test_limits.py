"""Limits that only a running engine shows: concurrent sagas per process, the gRPC send cap
of the API, the gRPC receive cap of participant calls, and the config checks of every limit.
Real SQLite file, real gRPC server on loopback, real participant."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from saga_grpc.server import build_api
from tests.integration.test_rest_api import write_config
from workers.config import ConfigError, load_config
from workers.service.engine import Engine

SLOW_YAML = """\
name: slow-flow
steps:
  - name: wait
    service: shop
    method: Slow.Wait
    timeout_secs: 5
    retry: {max_attempts: 1}
"""
BIG_YAML = """\
name: big-flow
steps:
  - name: reserve
    service: shop
    method: Shop.Reserve
    compensate: Shop.Release
    timeout_secs: 5
    retry: {max_attempts: 1}
  - name: fetch
    service: shop
    method: Big.Reply
    timeout_secs: 5
    retry: {max_attempts: 1}
"""
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def _engine(directory: Path, participant_port: int, **sections: dict[str, object]) -> Engine:
    path = write_config(directory, participant_port, **sections)
    for name, text in (("slow-flow", SLOW_YAML), ("big-flow", BIG_YAML)):
        (directory / "workflows" / f"{name}.yaml").write_text(text, encoding="utf-8")
    engine = Engine.from_config(load_config(str(path)))
    engine.start()
    return engine


@pytest.fixture
def limited(tmp_path: Path, participant_port: int) -> Iterator[Engine]:
    engine = _engine(
        tmp_path,
        participant_port,
        saga={"max_concurrent": 2},
        # Participant replies over 128 KiB stop at the transport; the stored-reply limit is
        # higher, so this shows the gRPC cap itself. The API may send at most 64 KiB.
        limits={
            "grpc_receive_bytes": 128 * 1024,
            "participant_response_bytes": 1024 * 1024,
            "grpc_send_bytes": 64 * 1024,
        },
    )
    try:
        yield engine
    finally:
        engine.close(grace_secs=2)


def _wait(engine: Engine, saga_id: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state, _ = engine.get_saga(saga_id)
        if state.status.value in TERMINAL:
            return state.status.value
        assert time.monotonic() < deadline, state.status
        time.sleep(0.02)


def test_max_concurrent_bounds_the_sagas_driven_at_once(limited: Engine) -> None:
    """With saga.max_concurrent 2, at most 2 sagas are held or RUNNING at any moment; the
    others wait in the store as STARTED and all complete in the end."""
    ids = [limited.start_saga("slow-flow")[0].saga_id for _ in range(8)]
    assert limited.executor is not None
    peak_held = peak_running = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        peak_held = max(peak_held, limited.executor.held())
        running = limited.list_sagas(status="RUNNING", page_size=100).total_count
        peak_running = max(peak_running, running)
        if all(limited.get_saga(i)[0].status.value in TERMINAL for i in ids):
            break
        time.sleep(0.01)
    assert [_wait(limited, i) for i in ids] == ["COMPLETED"] * 8
    assert peak_held == 2
    assert 1 <= peak_running <= 2


def test_participant_reply_over_the_grpc_receive_cap_fails_the_step(limited: Engine) -> None:
    """A participant reply over limits.grpc_receive_bytes is cut off by the transport:
    the step fails with RESOURCE_EXHAUSTED, the saga compensates and ends FAILED."""
    state, _ = limited.start_saga("big-flow")
    assert _wait(limited, state.saga_id) == "FAILED"
    _, logs = limited.get_saga(state.saga_id)
    assert [(g.step_name, g.action.value, g.status.value) for g in logs] == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("fetch", "EXECUTE", "FAILED"),
        # An unusable reply may mean the work was done (SPEC §3): fetch is compensated too
        # (it has no compensate method, so its compensation is SKIPPED).
        ("fetch", "COMPENSATE", "SKIPPED"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    assert "RESOURCE_EXHAUSTED" in (logs[1].error_message or "") or "larger than max" in (
        logs[1].error_message or ""
    )
    assert logs[1].response_payload is None


def test_grpc_reply_over_the_send_cap_is_resource_exhausted(limited: Engine) -> None:
    """A GetSaga reply over limits.grpc_send_bytes is RESOURCE_EXHAUSTED for that call (no
    hang, no crash) and the server answers the next call."""
    state, _ = limited.start_saga("slow-flow", {"pad": "x" * (100 * 1024)})
    _wait(limited, state.saga_id)
    api = build_api(limited.config, limited)
    api.server.start()
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{api.port}", options=[("grpc.max_receive_message_length", 8 << 20)]
        ) as channel:
            stub = saga_pb2_grpc.SagaServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=state.saga_id), timeout=10)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.ListWorkflows(saga_pb2.ListWorkflowsRequest(), timeout=10).workflows
    finally:
        api.server.stop(grace=None).wait(5)


@pytest.mark.parametrize(
    "field",
    [
        "request_body_bytes",
        "payload_bytes",
        "json_depth",
        "string_length",
        "page_size",
        "workflow_bytes",
        "workflow_steps",
        "grpc_receive_bytes",
        "grpc_send_bytes",
        "participant_response_bytes",
    ],
)
def test_every_limit_must_be_positive(tmp_path: Path, field: str) -> None:
    """A limit of 0 stops the program at start with a line naming limits.<field>."""
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"limits": {field: 0}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"limits.{field}"):
        load_config(str(path))


def test_concurrent_hostile_requests_do_not_starve_the_api(limited: Engine, tmp_path: Path) -> None:
    """Many threads sending deep JSON payloads at once over gRPC all get INVALID_ARGUMENT
    promptly, and a well-formed call still succeeds."""
    api = build_api(limited.config, limited)
    api.server.start()
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{api.port}") as channel:
            stub = saga_pb2_grpc.SagaServiceStub(channel)
            deep = b"[" * 60_000 + b"]" * 60_000

            def hammer() -> None:
                for _ in range(5):
                    try:
                        stub.StartSaga(
                            saga_pb2.StartSagaRequest(workflow_name="slow-flow", payload=deep),
                            timeout=10,
                        )
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as exc:
                        code = exc.code()
                    with lock:
                        codes.append(code)

            threads = [threading.Thread(target=hammer) for _ in range(8)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert time.monotonic() - started < 30
            assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 40
            assert stub.ListWorkflows(saga_pb2.ListWorkflowsRequest(), timeout=10).workflows
    finally:
        api.server.stop(grace=None).wait(5)
