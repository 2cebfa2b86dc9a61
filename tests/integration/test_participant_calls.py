"""The participant caller against a real participant process on 127.0.0.1 (SPEC §3)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from saga.model import INVALID_RESPONSE, SERVICE_NOT_REGISTERED
from saga.workflow import grpc_path, method_is_valid
from workers.adapters.participant import CallResult, ParticipantCaller
from workers.scripted_participants import start_participant_server

REPO = Path(__file__).resolve().parents[2]
BEHAVIOUR: dict[str, Any] = {
    "Orders.Fail": {"fail": "FAILED_PRECONDITION", "message": "order rejected"},
    "Card.Charge": {
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "payment declined",
    },
    "Slow.Hang": {"sleep_ms": 3000},
    "Big.Reply": {"reply_bytes": 100_000},
    "Small.Reply": {"reply_bytes": 1_000},
    "Text.Reply": {"reply_raw": "this is not json"},
    "List.Reply": {"reply_raw": "[1, 2, 3]"},
    "Flaky.Call": {"fail_times": 2, "fail": "UNAVAILABLE"},
    "/pkg.inner.Service/Method": {"reply": {"routed": "pkg"}},
}


def _metadata(key: str, attempt: int = 1) -> list[tuple[str, str]]:
    return [
        ("x-saga-id", "saga-1"),
        ("x-saga-step", "0"),
        ("x-saga-action", "EXECUTE"),
        ("x-saga-attempt", str(attempt)),
        ("idempotency-key", key),
    ]


class ParticipantProcess:
    """A `python -m workers.scripted_participants` child process and the port it listens on."""

    def __init__(self, tmp: Path, behaviour: dict[str, Any]) -> None:
        self.port_file = tmp / "participant.port"
        self.log = (tmp / "participant.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.scripted_participants",
                "--port",
                "0",
                "--port-file",
                str(self.port_file),
                "--behaviour",
                json.dumps(behaviour),
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"participant exited early with {self.proc.returncode}")
            if self.port_file.exists():
                return int(self.port_file.read_text())
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("participant did not write its port file in time")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it lingers; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def participant_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParticipantProcess]:
    process = ParticipantProcess(tmp_path_factory.mktemp("participant"), BEHAVIOUR)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def caller(participant_process: ParticipantProcess) -> Iterator[ParticipantCaller]:
    endpoint = ("127.0.0.1", participant_process.port)
    with ParticipantCaller(
        {"shop": endpoint, "shop-alias": endpoint, "control": endpoint},
        max_receive_bytes=64 * 1024,
    ) as created:
        reset = created.call("control", "participant.Control.Reset", b"", 5.0, [])
        assert reset.ok, reset
        yield created


def _record(caller: ParticipantCaller) -> dict[str, Any]:
    result = caller.call("control", "participant.Control.Calls", b"", 5.0, [])
    assert result.ok, result
    return result.response


def test_success_round_trips_json_and_delivers_all_metadata(caller: ParticipantCaller) -> None:
    """A successful call returns the parsed JSON reply, and the participant sees the payload and every saga metadata key."""
    payload = {"order": 1, "items": ["a", "b"], "note": "ünïcödé", "nested": {"x": None}}
    result = caller.call(
        "shop", "Echo.Do", json.dumps(payload).encode(), 5.0, _metadata("saga-1:0:EXECUTE")
    )
    reply_size = len(json.dumps({**payload, "ok": True}).encode())
    assert result == CallResult(
        True, {**payload, "ok": True}, None, "", result.duration_ms, reply_size
    )
    assert result.duration_ms > 0
    [call] = _record(caller)["calls"]
    assert call["path"] == "/Echo/Do"
    assert call["request"] == payload
    assert {k: call["metadata"][k] for k, _ in _metadata("")} == {
        "x-saga-id": "saga-1",
        "x-saga-step": "0",
        "x-saga-action": "EXECUTE",
        "x-saga-attempt": "1",
        "idempotency-key": "saga-1:0:EXECUTE",
    }


def test_empty_reply_body_is_an_empty_object() -> None:
    """An empty reply body parses as {} (SPEC §3)."""
    server, port = start_participant_server({"Empty.Reply": {"reply_raw": ""}})
    try:
        with ParticipantCaller({"svc": ("127.0.0.1", port)}) as caller:
            result = caller.call("svc", "Empty.Reply", b"{}", 5.0, [])
        assert result.ok and result.response == {}
    finally:
        server.stop(grace=None)


def test_failing_participant_is_classified_by_status_name(caller: ParticipantCaller) -> None:
    """A participant failure comes back as ok=False with the gRPC status name and its details."""
    result = caller.call("shop", "Orders.Fail", b"{}", 5.0, _metadata("k-fail"))
    assert (result.ok, result.response, result.code, result.message) == (
        False,
        {},
        "FAILED_PRECONDITION",
        "order rejected",
    )


def test_payload_driven_failure_only_hits_matching_payloads(caller: ParticipantCaller) -> None:
    """A fail_if_payload rule fails the call only when the named field has the given value."""
    declined = caller.call("shop", "Card.Charge", b'{"card": "declined"}', 5.0, _metadata("k1"))
    accepted = caller.call("shop", "Card.Charge", b'{"card": "visa"}', 5.0, _metadata("k2"))
    assert (declined.code, declined.message) == ("FAILED_PRECONDITION", "payment declined")
    assert accepted.ok and accepted.response == {"card": "visa", "ok": True}


def test_hanging_participant_hits_the_deadline(caller: ParticipantCaller) -> None:
    """A participant slower than the timeout gives DEADLINE_EXCEEDED after about the deadline."""
    started = time.monotonic()
    result = caller.call("shop", "Slow.Hang", b"{}", 0.5, _metadata("k-slow"))
    elapsed = time.monotonic() - started
    assert result.code == "DEADLINE_EXCEEDED" and not result.ok
    assert 0.45 <= elapsed < 1.5
    assert 450 <= result.duration_ms < 1500


def test_unreachable_participant_is_unavailable() -> None:
    """A registered service with nothing listening gives UNAVAILABLE well before the deadline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    with ParticipantCaller({"gone": ("127.0.0.1", free_port)}) as caller:
        result = caller.call("gone", "Any.Call", b"{}", 5.0, [])
    assert result.code == "UNAVAILABLE" and not result.ok
    assert result.duration_ms < 4000


def test_unknown_service_fails_without_a_channel(caller: ParticipantCaller) -> None:
    """A service missing from the map fails with SERVICE_NOT_REGISTERED and opens no channel."""
    before = caller.channels_created
    result = caller.call("nowhere", "Echo.Do", b"{}", 5.0, [])
    assert (result.ok, result.code, result.message) == (
        False,
        SERVICE_NOT_REGISTERED,
        "service not registered: nowhere",
    )
    assert caller.channels_created == before


@pytest.mark.parametrize("method", ["Text.Reply", "List.Reply"])
def test_reply_that_is_not_a_json_object_is_invalid(caller: ParticipantCaller, method: str) -> None:
    """A reply that is not a JSON object fails with INVALID_RESPONSE and a message saying why."""
    result = caller.call("shop", method, b"{}", 5.0, _metadata("k-" + method))
    assert (result.ok, result.code, result.response) == (False, INVALID_RESPONSE, {})
    assert "not valid JSON" in result.message or "not a JSON object" in result.message


def test_oversize_reply_is_an_unusable_reply(caller: ParticipantCaller) -> None:
    """A reply over the caller's receive cap is reported as a reply that came and cannot be used
    (INVALID_RESPONSE, naming the transport's RESOURCE_EXHAUSTED); one under it passes."""
    big = caller.call("shop", "Big.Reply", b"{}", 5.0, _metadata("k-big"))
    small = caller.call("shop", "Small.Reply", b"{}", 5.0, _metadata("k-small"))
    assert (big.ok, big.code) == (False, INVALID_RESPONSE)
    assert "RESOURCE_EXHAUSTED" in big.message
    assert small.ok and small.response["ok"] is True


def test_one_channel_per_endpoint_shared_by_threads(
    participant_process: ParticipantProcess,
) -> None:
    """8 threads x 50 calls through two service names on one endpoint use exactly one channel."""
    endpoint = ("127.0.0.1", participant_process.port)
    with ParticipantCaller({"a": endpoint, "b": endpoint}) as caller:

        def work(thread: int) -> list[CallResult]:
            return [
                caller.call(
                    "ab"[i % 2],
                    "Threads.Call",
                    json.dumps({"t": thread, "i": i}).encode(),
                    5.0,
                    _metadata(f"t{thread}:{i}"),
                )
                for i in range(50)
            ]

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = [r for batch in pool.map(work, range(8)) for r in batch]
        assert len(results) == 400 and all(r.ok for r in results)
        assert caller.channels_created == 1


def test_grpc_path_maps_service_and_package_names() -> None:
    """Service.Method maps to /Service/Method and pkg.Service.Method to /pkg.Service/Method."""
    assert grpc_path("A.B") == "/A/B"
    assert grpc_path("InventoryService.Reserve") == "/InventoryService/Reserve"
    assert grpc_path("pkg.A.B") == "/pkg.A/B"
    assert grpc_path("k1s0.inventory.v1.InventoryService.Reserve") == (
        "/k1s0.inventory.v1.InventoryService/Reserve"
    )
    for bad in ["A", "", ".A.B", "A.", "A..", "A.B\n", "A/B", "1A.B", "A.1B", "Ä.B", "A.B C"]:
        assert not method_is_valid(bad), bad
        with pytest.raises(ValueError):
            grpc_path(bad)


def test_package_qualified_method_reaches_its_path(caller: ParticipantCaller) -> None:
    """A pkg.Service.Method step reaches the participant on /pkg.Service/Method."""
    result = caller.call("shop", "pkg.inner.Service.Method", b"{}", 5.0, _metadata("k-pkg"))
    assert result.ok and result.response == {"routed": "pkg"}
    assert [c["path"] for c in _record(caller)["calls"]] == ["/pkg.inner.Service/Method"]


def test_participant_applies_each_idempotency_key_once(caller: ParticipantCaller) -> None:
    """Retries and replays with one idempotency key apply the effect once and return the stored reply."""
    outcomes = [
        caller.call("shop", "Flaky.Call", b'{"n": 1}', 5.0, _metadata("s:0:EXECUTE", attempt))
        for attempt in range(1, 5)
    ]
    assert [o.code for o in outcomes] == ["UNAVAILABLE", "UNAVAILABLE", None, None]
    assert outcomes[2].response == outcomes[3].response == {"n": 1, "ok": True}
    replay = caller.call("shop", "Echo.Do", b'{"v": 1}', 5.0, _metadata("s:1:EXECUTE"))
    again = caller.call("shop", "Echo.Do", b'{"v": 2}', 5.0, _metadata("s:1:EXECUTE"))
    other = caller.call("shop", "Flaky.Call", b"{}", 5.0, _metadata("s:0:COMPENSATE"))
    assert replay.response == again.response == {"v": 1, "ok": True}
    assert other.code == "UNAVAILABLE"  # a fresh key starts its own failure count
    record = _record(caller)
    assert record["applied"] == {"s:0:EXECUTE": 1, "s:1:EXECUTE": 1}
    assert len(record["calls"]) == 7


def test_closed_caller_fails_calls_instead_of_reconnecting(
    participant_process: ParticipantProcess,
) -> None:
    """After close() a call fails with CANCELLED and opens no new channel."""
    caller = ParticipantCaller({"shop": ("127.0.0.1", participant_process.port)})
    assert caller.call("shop", "Echo.Do", b"{}", 5.0, []).ok
    caller.close()
    result = caller.call("shop", "Echo.Do", b"{}", 5.0, [])
    assert (result.ok, result.code) == (False, "CANCELLED")
    assert caller.channels_created == 1


def test_participant_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The participant process exits 0 on SIGTERM."""
    process = ParticipantProcess(tmp_path, {})
    assert process.port > 0
    assert process.stop() == 0


@pytest.mark.parametrize("raw", ['{"note": "a\\u0000b"}', '{"note": "\\ud800"}', '{"\\udfff": 1}'])
def test_reply_that_no_store_could_keep_is_refused(raw: str) -> None:
    """A reply carrying a NUL or a lone surrogate fails as INVALID_RESPONSE instead of poisoning a commit."""
    server, port = start_participant_server({"Bad.Reply": {"reply_raw": raw}})
    try:
        with ParticipantCaller({"bad": ("127.0.0.1", port)}) as caller:
            result = caller.call("bad", "Bad.Reply", b"{}", 5.0, [])
        assert not result.ok
        assert result.code == "INVALID_RESPONSE"
        assert "NUL" in result.message or "surrogate" in result.message
    finally:
        server.stop(None)
