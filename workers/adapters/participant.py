"""The participant caller: one generic gRPC call of a saga step, JSON bytes in, JSON object out.

SPEC §3: method ``A.B`` is the path ``/A/B`` (``pkg.A.B`` is ``/pkg.A/B``), the request is the
saga payload as UTF-8 JSON bytes, the reply is parsed as a JSON object (empty body: ``{}``).
No proto file is needed on either side: requests and replies travel as raw bytes.

This module must never raise for a remote failure (every outcome, including deadlines and
malformed replies, becomes a ``CallResult``), never set up a channel or a stub per call (one
channel per endpoint, one callable per path, both cached), and never decide what a failure
means for the saga: it reports facts (a gRPC status, or one of the core's caller codes:
``SERVICE_NOT_REGISTERED``, ``INVALID_METHOD``, ``INVALID_RESPONSE`` for a reply that came but
cannot be used, too large included), and retrying or not is decided in ``saga.decide``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import grpc

from saga.errors import ValidationError
from saga.model import INVALID_METHOD, INVALID_RESPONSE, SERVICE_NOT_REGISTERED
from saga.values import check_json, storable_text
from saga.workflow import grpc_path, method_is_valid

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_REPLY_BYTES = 1024 * 1024
_MAX_REPLY_DEPTH = 256

# The code of a call that never went out because the caller was closed (a gRPC status name).
CALLER_CLOSED = "CANCELLED"

# SPEC §3: a participant's status detail is stored without NUL and at most this long.
MAX_DETAIL_CHARS = 1024
# gRPC's own text for a failed transport names resolved addresses (`ipv4:10.0.0.5:50051`);
# these phrases are how it says the connection, not the participant, failed.
_ADDRESS = re.compile(r"\b(?:ipv4|ipv6|unix|unix-abstract|vsock):[^\s,;]+", re.IGNORECASE)
_TRANSPORT_PHRASES = (
    "failed to connect to all addresses",
    "dns resolution failed",
    "empty address list",
    "connection refused",
    "connection reset",
    "connections to all backends failing",
    "socket closed",
    "broken pipe",
    "endpoint closing",
    "goaway",
    "keepalive watchdog timeout",
)


@attrs.frozen
class CallResult:
    """The outcome of one attempt: a parsed JSON reply, or a status code name and details."""

    ok: bool
    response: dict[str, Any]
    code: str | None
    message: str
    duration_ms: float
    size: int = 0  # bytes of the reply body


def participant_detail(text: str) -> str:
    """A status detail as it may be stored and shown: NUL and lone surrogates replaced by
    U+FFFD, cut to `MAX_DETAIL_CHARS` characters (the last one an ellipsis when cut)."""
    cleaned = storable_text(text)
    if len(cleaned) > MAX_DETAIL_CHARS:
        cleaned = cleaned[: MAX_DETAIL_CHARS - 1] + "\u2026"
    return cleaned


def _failure_detail(service: str, endpoint: str, code: str, details: str) -> str:
    """The stored text of a failed call: gRPC's own words for a transport failure become one
    line naming the service (never its address); a participant's own detail is kept, cleaned."""
    lowered = details.lower()
    transport = (
        endpoint in details
        or _ADDRESS.search(details) is not None
        or any(phrase in lowered for phrase in _TRANSPORT_PHRASES)
    )
    if code == "UNAVAILABLE" and transport:
        return f"participant unavailable ({service})"
    if transport:  # another code, in gRPC's words: keep them, without the addresses
        details = _ADDRESS.sub(service, details.replace(endpoint, service))
    return participant_detail(details)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_reply(body: bytes) -> dict[str, Any] | str:
    """Return the reply as a dict, or a message saying why it is not a JSON object."""
    if not body:
        return {}
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        return f"participant reply is not valid UTF-8: {exc}"
    except (ValueError, RecursionError) as exc:
        return f"participant reply is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return f"participant reply is not a JSON object (got {type(value).__name__})"
    try:
        # A NUL or a lone surrogate could not be stored (PostgreSQL refuses them in JSONB), and
        # a reply nested past any sane depth is refused the same way: a step log must be writable.
        check_json(value, "participant reply", max_depth=_MAX_REPLY_DEPTH)
    except ValidationError as exc:
        return exc.message
    return value


class ParticipantCaller:
    """Calls participant methods over gRPC, keeping one channel per endpoint for all threads."""

    def __init__(
        self,
        services: Mapping[str, tuple[str, int]],
        max_send_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_receive_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self._max_reply = max_reply_bytes
        self._endpoints: dict[str, str] = {
            name: f"{host}:{port}" for name, (host, port) in services.items()
        }
        self._options = (
            ("grpc.max_send_message_length", max_send_bytes),
            ("grpc.max_receive_message_length", max_receive_bytes),
        )
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._callables: dict[tuple[str, str], grpc.UnaryUnaryMultiCallable] = {}
        self._closed = False
        self.channels_created = 0

    def __enter__(self) -> ParticipantCaller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _callable(self, endpoint: str, path: str) -> grpc.UnaryUnaryMultiCallable | None:
        key = (endpoint, path)
        found = self._callables.get(key)  # lock-free fast path; dict reads are atomic
        if found is not None:
            return found
        with self._lock:
            if self._closed:
                return None
            found = self._callables.get(key)
            if found is None:
                channel = self._channels.get(endpoint)
                if channel is None:
                    channel = grpc.insecure_channel(endpoint, options=self._options)
                    self._channels[endpoint] = channel
                    self.channels_created += 1
                # No serializers: the request and the reply are raw bytes.
                found = channel.unary_unary(
                    path, request_serializer=None, response_deserializer=None
                )
                self._callables[key] = found
            return found

    def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout_s: float,
        metadata: Sequence[tuple[str, str]],
    ) -> CallResult:
        """Call ``method`` of ``service`` once with a deadline of ``timeout_s`` and wait for the
        result; never raise for a remote failure."""
        done = threading.Event()
        box: list[CallResult] = []

        def finished(result: CallResult) -> None:
            box.append(result)
            done.set()

        self.call_async(service, method, payload, timeout_s, metadata, finished)
        done.wait()
        return box[0]

    def call_async(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout_s: float,
        metadata: Sequence[tuple[str, str]],
        done: Callable[[CallResult], None],
    ) -> None:
        """Start the same call as `call` without holding a thread while it is in flight;
        `done` gets the result on a gRPC thread (it must not block for long)."""
        started = time.perf_counter()

        def failed(code: str, message: str) -> CallResult:
            return CallResult(False, {}, code, message, (time.perf_counter() - started) * 1000.0)

        endpoint = self._endpoints.get(service)
        if endpoint is None:
            done(failed(SERVICE_NOT_REGISTERED, f"service not registered: {service}"))
            return
        if not method_is_valid(method):
            done(failed(INVALID_METHOD, f"invalid method name: {method!r}"))
            return
        invoke = self._callable(endpoint, grpc_path(method))
        if invoke is None:
            done(failed(CALLER_CLOSED, "participant caller is closed"))
            return
        try:
            future = invoke.future(payload, timeout=timeout_s, metadata=tuple(metadata))
        except ValueError:
            if not self._closed:
                raise
            done(failed(CALLER_CLOSED, "participant caller is closed"))
            return

        def finished(fut: Any) -> None:
            try:
                body = fut.result()
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                details = exc.details() if isinstance(exc, grpc.Call) else None
                text = details or str(exc)
                if name == "RESOURCE_EXHAUSTED" and "larger than max" in text:
                    # The transport cut off a reply over its receive cap: a reply came, unusable.
                    text = f"participant reply too large (RESOURCE_EXHAUSTED: {text})"
                    done(failed(INVALID_RESPONSE, _failure_detail(service, endpoint, name, text)))
                    return
                done(failed(name, _failure_detail(service, endpoint, name, text)))
                return
            except grpc.FutureCancelledError:
                done(failed(CALLER_CLOSED, "call cancelled"))
                return
            if len(body) > self._max_reply:
                done(
                    failed(
                        INVALID_RESPONSE,
                        f"participant reply is {len(body)} bytes, over the {self._max_reply}-byte"
                        " limit (RESOURCE_EXHAUSTED)",
                    )
                )
                return
            reply = _parse_reply(body)
            if isinstance(reply, str):
                done(
                    failed(
                        INVALID_RESPONSE, participant_detail(f"{reply} (from {service} {method})")
                    )
                )
                return
            elapsed = (time.perf_counter() - started) * 1000.0
            done(CallResult(True, reply, None, "", elapsed, len(body)))

        future.add_done_callback(finished)

    def close(self) -> None:
        """Close every channel; later calls fail with ``CANCELLED`` instead of reconnecting."""
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._callables.clear()
        for channel in channels:
            channel.close()
