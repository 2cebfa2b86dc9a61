"""A scriptable participant service: a real gRPC server for tests, the demo and benchmarks.

It serves any ``/Service/Method`` path with raw bytes (JSON in, JSON out) and behaves as a
JSON behaviour document says, per method path or ``Service.Method`` (``*`` for any other):

- ``{"reply": {...}}``                      reply with this object (default: the request + ``ok``)
- ``{"reply_raw": "text"}``                 reply with these bytes, JSON or not
- ``{"reply_bytes": N}``                    reply with a JSON object padded to N bytes
- ``{"fail": "CODE", "message": "..."}``    always fail with this gRPC status
- ``{"fail_times": N, "fail": "CODE"}``     fail the first N calls per idempotency key
- ``{"fail_if_payload": {"field": F, "equals": V}, "fail": "CODE"}``  fail when request[F] == V
- ``{"sleep_ms": N}``                       hang N ms first (combines with the others)

Like a well-behaved participant it makes its side exactly-once: a call whose
``idempotency-key`` was already handled successfully gets the stored reply back and applies
nothing again. ``/participant.Control/Calls`` returns what it saw as
``{"calls": [...], "applied": {key: times applied}}``; ``/participant.Control/Reset`` forgets
it all (a body ``{"behaviour": {...}}`` also swaps the rules).

Run it as its own process::

    python -m workers.scripted_participants --port 0 --port-file /tmp/p.port \\
        --behaviour '{"InventoryService.Reserve": {"fail_times": 2, "fail": "UNAVAILABLE"}}'

This module must never be imported by the saga server's own code paths (only by tests, the
demo and benchmarks), and it never persists anything: its state lives and dies with the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import grpc

from saga.workflow import grpc_path

CONTROL_CALLS = "/participant.Control/Calls"
CONTROL_RESET = "/participant.Control/Reset"
WILDCARD = "*"
MAX_WORKERS = 32
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_RULE_KEYS = frozenset(
    {
        "reply",
        "reply_raw",
        "fail",
        "message",
        "fail_times",
        "sleep_ms",
        "reply_bytes",
        "fail_if_payload",
    }
)

log = logging.getLogger("workers.scripted_participants")


@attrs.frozen
class Rule:
    """How the participant answers one method."""

    reply: dict[str, Any] | None = None
    reply_raw: str | None = None
    fail: grpc.StatusCode | None = None
    message: str = ""
    fail_times: int | None = None
    sleep_ms: int = 0
    reply_bytes: int | None = None
    fail_if_field: str | None = None
    fail_if_equals: Any = None

    def should_fail(self, request: Mapping[str, Any], failures_so_far: int) -> bool:
        """Tell whether this call fails, given the failures already served for its key."""
        if self.fail is None:
            return False
        if self.fail_if_field is not None:
            return (
                self.fail_if_field in request and request[self.fail_if_field] == self.fail_if_equals
            )
        if self.fail_times is not None:
            return failures_so_far < self.fail_times
        return True


def _status_code(name: object, where: str) -> grpc.StatusCode:
    if not isinstance(name, str) or name not in grpc.StatusCode.__members__ or name == "OK":
        raise ValueError(
            f"{where}: 'fail' must be a gRPC status code name other than OK, got {name!r}"
        )
    return grpc.StatusCode[name]


def _non_negative_int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where} must be a non-negative integer, got {value!r}")
    return value


def parse_rule(key: str, raw: object) -> Rule:
    """Turn one behaviour entry into a Rule; raise ValueError naming the bad field."""
    if not isinstance(raw, dict):
        raise ValueError(f"behaviour[{key!r}] must be a JSON object")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise ValueError(f"behaviour[{key!r}]: unknown keys {unknown}")
    where = f"behaviour[{key!r}]"
    reply = raw.get("reply")
    if reply is not None and not isinstance(reply, dict):
        raise ValueError(f"{where}.reply must be a JSON object")
    reply_raw = raw.get("reply_raw")
    if reply_raw is not None and not isinstance(reply_raw, str):
        raise ValueError(f"{where}.reply_raw must be a string")
    fail = _status_code(raw["fail"], where) if "fail" in raw else None
    message = raw.get("message", "")
    if not isinstance(message, str):
        raise ValueError(f"{where}.message must be a string")
    fail_times = raw.get("fail_times")
    if fail_times is not None:
        fail_times = _non_negative_int(fail_times, f"{where}.fail_times")
        if fail is None:
            fail = grpc.StatusCode.UNAVAILABLE
    reply_bytes = raw.get("reply_bytes")
    if reply_bytes is not None:
        reply_bytes = _non_negative_int(reply_bytes, f"{where}.reply_bytes")
    field: str | None = None
    equals: Any = None
    condition = raw.get("fail_if_payload")
    if condition is not None:
        if (
            not isinstance(condition, dict)
            or set(condition) != {"field", "equals"}
            or not isinstance(condition["field"], str)
        ):
            raise ValueError(f"{where}.fail_if_payload must be {{'field': str, 'equals': value}}")
        if fail is None:
            raise ValueError(f"{where}: fail_if_payload needs 'fail'")
        field, equals = condition["field"], condition["equals"]
    return Rule(
        reply=reply,
        reply_raw=reply_raw,
        fail=fail,
        message=message,
        fail_times=fail_times,
        sleep_ms=_non_negative_int(raw.get("sleep_ms", 0), f"{where}.sleep_ms"),
        reply_bytes=reply_bytes,
        fail_if_field=field,
        fail_if_equals=equals,
    )


def parse_behaviour(raw: object) -> dict[str, Rule]:
    """Turn a behaviour document into rules keyed by gRPC path (``*`` matches any path)."""
    if not isinstance(raw, dict):
        raise ValueError("behaviour must be a JSON object mapping a method to a rule")
    rules: dict[str, Rule] = {}
    for key, value in raw.items():
        path = key if key == WILDCARD or key.startswith("/") else grpc_path(key)
        rules[path] = parse_rule(key, value)
    return rules


def padded_reply(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (or the smallest one possible, if bigger)."""
    base = json.dumps({"ok": True, "pad": ""}, separators=(",", ":")).encode()
    return json.dumps(
        {"ok": True, "pad": "x" * max(0, size - len(base))}, separators=(",", ":")
    ).encode()


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Participant:
    """The participant's state: rules, the call record, and replies stored per idempotency key."""

    def __init__(self, behaviour: Mapping[str, object]) -> None:
        self._lock = threading.Lock()
        self._rules = parse_behaviour(dict(behaviour))
        self._calls: list[dict[str, Any]] = []
        self._applied: dict[str, int] = {}
        self._stored: dict[str, bytes] = {}
        self._failures: dict[tuple[str, str], int] = {}

    def reset(self, behaviour: Mapping[str, object] | None = None) -> None:
        """Forget every call and stored reply; replace the rules when a behaviour is given."""
        rules = parse_behaviour(dict(behaviour)) if behaviour is not None else None
        with self._lock:
            if rules is not None:
                self._rules = rules
            self._calls.clear()
            self._applied.clear()
            self._stored.clear()
            self._failures.clear()

    def record(self) -> dict[str, Any]:
        """Every call seen so far and how many times each idempotency key was applied."""
        with self._lock:
            return {"calls": list(self._calls), "applied": dict(self._applied)}

    def handle(self, path: str, metadata: dict[str, str], body: bytes) -> bytes:
        """Answer one call; raise _Abort for a scripted or input failure."""
        try:
            request: Any = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, ValueError):
            request = None
        with self._lock:
            self._calls.append(
                {
                    "path": path,
                    "metadata": metadata,
                    "request": request if request is not None else body.decode("utf-8", "replace"),
                    "received_at": time.time(),
                }
            )
            rule = self._rules.get(path) or self._rules.get(WILDCARD) or Rule()
        if rule.sleep_ms:
            time.sleep(rule.sleep_ms / 1000.0)
        if not isinstance(request, dict):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "request is not a JSON object")
        key = metadata.get("idempotency-key", "")
        with self._lock:
            if key and key in self._stored:
                return self._stored[key]  # already applied: same reply, no second effect
            failures = self._failures.get((path, key), 0)
            if rule.fail is not None and rule.should_fail(request, failures):
                self._failures[(path, key)] = failures + 1
                raise _Abort(rule.fail, rule.message or f"{path} failed with {rule.fail.name}")
            if rule.reply_raw is not None:
                reply = rule.reply_raw.encode("utf-8")
            elif rule.reply_bytes is not None:
                reply = padded_reply(rule.reply_bytes)
            elif rule.reply is not None:
                reply = json.dumps(rule.reply).encode()
            else:
                reply = json.dumps({**request, "ok": True}).encode()
            self._applied[key] = self._applied.get(key, 0) + 1
            if key:
                self._stored[key] = reply
            return reply


class _Handler(grpc.GenericRpcHandler):
    """Routes every path to the participant, and the control paths to its record."""

    def __init__(self, participant: Participant) -> None:
        self._participant = participant
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._lock = threading.Lock()

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        path: str = handler_call_details.method
        found = self._handlers.get(path)
        if found is None:
            with self._lock:
                found = self._handlers.setdefault(
                    path, grpc.unary_unary_rpc_method_handler(self._behaviour_for(path))
                )
        return found

    def _behaviour_for(self, path: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        participant = self._participant

        if path == CONTROL_CALLS:
            return lambda body, context: json.dumps(participant.record()).encode()

        if path == CONTROL_RESET:

            def reset(body: bytes, context: grpc.ServicerContext) -> bytes:
                try:
                    document = json.loads(body) if body else {}
                    participant.reset(document.get("behaviour"))
                except (ValueError, AttributeError) as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad reset: {exc}")
                return b'{"ok":true}'

            return reset

        def serve(body: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = {item.key: str(item.value) for item in context.invocation_metadata()}
            try:
                return participant.handle(path, metadata, body)
            except _Abort as failure:
                context.abort(failure.code, failure.message)
                raise  # not reached: abort raises

        return serve


def start_participant_server(
    behaviour: Mapping[str, object], port: int = 0, host: str = "127.0.0.1"
) -> tuple[grpc.Server, int]:
    """Start a participant server in this process; return it and the port it listens on."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="participant"),
        handlers=[_Handler(Participant(behaviour))],
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ],
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    return server, bound


def _load_behaviour(text: str) -> object:
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    return json.loads(text)


def _write_port_file(path: Path, port: int) -> None:
    # Write then rename, so a reader never sees a half-written number.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(f"{port}\n", encoding="utf-8")
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    """Run a participant server until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m workers.scripted_participants", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 binds a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--behaviour", default="{}", help="behaviour JSON, or @file holding it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s participant %(message)s")
    try:
        behaviour = _load_behaviour(args.behaviour)
        if not isinstance(behaviour, dict):
            raise ValueError("behaviour must be a JSON object")
        server, port = start_participant_server(behaviour, args.port, args.host)
    except (OSError, ValueError) as exc:
        print(f"participant: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.port_file is not None:
        _write_port_file(args.port_file, port)
    log.info("listening on %s:%d", args.host, port)
    while not stop.wait(0.5):
        pass
    server.stop(grace=1.0).wait()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
