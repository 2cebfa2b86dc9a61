"""Tracing (SPEC §12): each saga's W3C Trace Context, passed on in every participant call, and
OpenTelemetry spans exported over OTLP when a `telemetry` section asks for them.

A span object lives in one process, but a saga is started by one process (an API) and driven
by others, one after the other when an executor dies. So no span is held open across
processes. When the saga is created, `start_context` fixes its trace once: the caller's trace
id when the request carried a valid `traceparent` (else a new one), the span id of the saga's
own span, the caller's span it hangs from, the sampling decision and the caller's
`tracestate`; the store keeps that text with the saga (`SagaState.trace_context`, never
changed). Any executor holding the saga rebuilds the saga's span from it as a remote parent,
so the step spans of a recovered saga hang from the same span as those made before the crash,
and the executor that ends the saga reports the saga's span itself, with the stored ids, from
the saga's `created_at` to the commit of its terminal status (a saga that never ends reports
no saga span; its step spans are reported as they end).

Spans: `saga <workflow>` per saga; `execute <step>` / `compensate <step>` per step execution
or compensation (from its first attempt to its step log: retries add attempts, not steps); and
a gRPC client span `<service>/<method>` per attempt, whose span id is the one the participant
gets in `traceparent`. Sampling is decided once, when the saga starts (the caller's sampled
flag, else `sample_ratio` on the new trace id, 1 where the starting process has no telemetry
section), and every executor follows the stored decision.

Without a `telemetry` section (and for a saga not sampled) no span is recorded: each attempt
only gets a fresh random span id in its `traceparent`, a string format per call.

Exporting costs the executor's CPU, on the cores it shares with the store and the participants,
so it is kept lean (`python -m bench.tracing_cost` measures it; with live SDK spans and the
SDK's encoder it cost a third of the throughput). A span being recorded is a small object with
its ids, start time and attributes; when it ends, it is written (one tuple, `_Record`)
straight into the OTLP protobuf wire format (`Encoder`: the same bytes as the SDK's encoder
makes for the same SDK spans, each recurring attribute entry, like `saga.id` or `rpc.system`,
encoded once) and queued (`_Batches`: batching as the SDK's BatchSpanProcessor does, with its
OTEL_BSP_* settings); the export thread sends each batch's request, as bytes, with the SDK's
OTLP/gRPC exporter.

Nothing here raises for what a client sent: an invalid `traceparent` starts a new trace.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import random
import struct
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs
import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from saga.events import CallParticipant
from saga.model import SagaState, StepLog, StepStatus
from workers.adapters.participant import CallResult
from workers.config import TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_SPAN_ID_MASK = 2**64 - 1
_GRPC_CODES = {code.name: code.value[0] for code in grpc.StatusCode}
_EXPORT_TIMEOUT_SECS = 3.0
# An error message on a span is a hint, not the step log: kept short.
_MAX_DESCRIPTION = 256


def _random_id(bits: int) -> int:
    while True:  # W3C: an all-zero id is invalid
        value = random.getrandbits(bits)
        if value:
            return value


@attrs.frozen
class SagaTrace:
    """A saga's trace context as stored: its trace, its own span, the caller's span it hangs
    from (None: the saga started the trace), whether it is sampled, the caller's tracestate."""

    trace_id: int
    span_id: int
    sampled: bool
    parent_span_id: int | None = None
    tracestate: str | None = None

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    def traceparent(self, span_id: int) -> str:
        """The W3C `traceparent` of span `span_id` in this trace."""
        return f"00-{self.trace_id:032x}-{span_id:016x}-{'01' if self.sampled else '00'}"

    def encode(self) -> str:
        """The stored text: the saga span's own `traceparent`, the caller's span id and its
        `tracestate` (the last two only when there are)."""
        data = {TRACEPARENT: self.traceparent(self.span_id)}
        if self.parent_span_id is not None:
            data["parent_span_id"] = f"{self.parent_span_id:016x}"
        if self.tracestate:
            data[TRACESTATE] = self.tracestate
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> SagaTrace:
        """The inverse of `encode`; ValueError for text it did not make."""
        try:
            data = json.loads(text)
            _, trace_id, span_id, flags = data[TRACEPARENT].split("-")
            parent = data.get("parent_span_id")
            return cls(
                trace_id=int(trace_id, 16),
                span_id=int(span_id, 16),
                sampled=bool(int(flags, 16) & 1),
                parent_span_id=None if parent is None else int(parent, 16),
                tracestate=data.get(TRACESTATE),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a stored trace context: {text[:80]!r}") from exc


def _ratio_samples(trace_id: int, ratio: float) -> bool:
    # The same test as OpenTelemetry's TraceIdRatioBased sampler, on the same bits.
    return trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < TraceIdRatioBased.get_bound_for_rate(ratio)


def start_context(traceparent: Any, tracestate: Any = None, sample_ratio: float = 1.0) -> str:
    """The trace context of a saga being started, as stored: joining the caller's trace when
    `traceparent` is valid W3C (then its `tracestate` too), else a new trace sampled at
    `sample_ratio`. Any header value (missing, not a string, malformed) is fine."""
    carrier: dict[str, str] = {}
    if isinstance(traceparent, str):
        carrier[TRACEPARENT] = traceparent
        if isinstance(tracestate, str) and tracestate:
            carrier[TRACESTATE] = tracestate
    caller = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    span_id = _random_id(64)
    if caller.is_valid:
        return SagaTrace(
            trace_id=caller.trace_id,
            span_id=span_id,
            sampled=caller.trace_flags.sampled,
            parent_span_id=caller.span_id,
            tracestate=caller.trace_state.to_header() or None,
        ).encode()
    trace_id = _random_id(128)
    return SagaTrace(trace_id, span_id, _ratio_samples(trace_id, sample_ratio)).encode()


def trace_of(state: SagaState) -> SagaTrace:
    """The saga's stored trace context. A saga stored without one (created before the store
    kept them) gets a trace derived from its id, the same in every process and every time."""
    if state.trace_context:
        try:
            return SagaTrace.decode(state.trace_context)
        except ValueError:
            pass
    number = uuid.UUID(state.saga_id).int
    return SagaTrace(number, (number & _SPAN_ID_MASK) or 1, True)


def trace_id_of(state: SagaState) -> str:
    """The saga's trace id, 32 hex digits (SPEC §12)."""
    return trace_of(state).trace_id_hex


@functools.lru_cache(maxsize=4096)
def _rpc_names(method: str) -> tuple[str, str]:
    # `pkg.Service.Method` is the gRPC path /pkg.Service/Method (SPEC §3).
    service, _, name = method.rpartition(".")
    return service or method, name


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


# A span record, as `Encoder.span` takes it when the span ends: what an SDK span holds by then,
# the parts every span of a trace or a step shares already encoded (no object per span beyond
# it and its `_Open`):
#   (the trace: `Encoder.trace`, span id, parent span id | None, parent is remote, name,
#    kind (OTLP number), start ns, end ns, attributes: `Encoder.attribute`s in order,
#    status code (OTLP number), description | None)
_Record = tuple[
    tuple[bytes, bytes], int, int | None, bool, str, int, int, int, bytes, int, str | None
]
_INTERNAL, _CLIENT = 1, 3  # OTLP Span.SpanKind
_UNSET, _ERROR = 0, 2  # OTLP Status.StatusCode (the SDK's StatusCode values)


class _Open:
    """A span not ended yet: its ids, start time and attributes so far."""

    __slots__ = ("out", "span_id", "parent_id", "remote", "name", "kind", "start", "attributes")

    def __init__(
        self,
        out: _Out,
        parent_id: int,
        remote: bool,
        name: str,
        kind: int,
        attributes: bytes,
    ) -> None:
        self.out = out
        self.span_id = _random_id(64)
        self.parent_id = parent_id
        self.remote = remote
        self.name = name
        self.kind = kind
        self.start = time.time_ns()
        self.attributes = attributes

    def end(self, more: bytes = b"", code: int = _UNSET, description: str | None = None) -> None:
        """The span ends now, with the attributes `more` added."""
        out = self.out
        out.batches.add(
            (
                out.trace,
                self.span_id,
                self.parent_id,
                self.remote,
                self.name,
                self.kind,
                self.start,
                time.time_ns(),
                self.attributes + more,
                code,
                description,
            )
        )


class _Out:
    """Where the spans of one saga's trace go, and what they all share, encoded once."""

    __slots__ = ("batches", "encoder", "trace", "saga")

    trace: tuple[bytes, bytes]

    def __init__(self, batches: _Batches, ctx: SagaTrace, state: SagaState) -> None:
        self.batches = batches
        self.encoder = encoder = batches.encoder
        # Every span below the saga's inherits the tracestate, as the SDK's spans do: the
        # stored header as the SDK parses it (invalid entries dropped) and writes it.
        text = ""
        if ctx.tracestate:
            parsed = TraceState.from_header([ctx.tracestate])
            text = ",".join(f"{key}={value}" for key, value in parsed.items())
        self.trace = encoder.trace(ctx.trace_id, text)
        attribute = encoder.attribute
        self.saga = attribute("saga.id", state.saga_id) + attribute(
            "saga.workflow", state.workflow_name
        )


class Attempt:
    """One attempt of a participant call: the metadata it adds, and its span (None: no span
    is recorded)."""

    __slots__ = ("metadata", "_span")

    def __init__(self, metadata: tuple[tuple[str, str], ...], span: _Open | None = None) -> None:
        self.metadata = metadata
        self._span = span

    def end(self, result: CallResult) -> None:
        """The attempt answered (gRPC client conventions: the status code, ERROR unless OK)."""
        span, self._span = self._span, None
        if span is None:
            return
        attribute = span.out.encoder.attribute
        if result.ok:
            span.end(attribute("rpc.grpc.status_code", 0))
            return
        code = result.code or "UNKNOWN"
        number = _GRPC_CODES.get(code)
        more = attribute("error.type", code)
        if number is not None:
            more = attribute("rpc.grpc.status_code", number) + more
        span.end(more, _ERROR, result.message[:_MAX_DESCRIPTION])


class RunTrace:
    """The trace of one saga while this executor holds it: its context, and the span of the
    step execution (or compensation) in progress. Used by one thread at a time, like the
    saga itself (an attempt's span may end on the thread its answer comes on)."""

    __slots__ = ("context", "_out", "_extra", "_step", "_step_key")

    def __init__(self, state: SagaState, batches: _Batches | None = None) -> None:
        self.context = ctx = trace_of(state)
        self._extra: tuple[tuple[str, str], ...] = (
            ((TRACESTATE, ctx.tracestate),) if ctx.tracestate else ()
        )
        self._step: _Open | None = None
        self._step_key: tuple[int, str] | None = None
        self._out = _Out(batches, ctx, state) if batches is not None and ctx.sampled else None

    def attempt(self, call: CallParticipant) -> Attempt:
        """Start one attempt of `call` (and, at its first attempt, the step's span): the
        `traceparent` (and `tracestate`) it sends carry the saga's trace and this attempt's
        span id."""
        out = self._out
        if out is None:
            header = self.context.traceparent(_random_id(64))
            return Attempt(((TRACEPARENT, header), *self._extra))
        attribute = out.encoder.attribute
        action = call.action.value
        key = (call.step_index, action)
        step = self._step
        if step is None or call.attempt == 1 or self._step_key != key:
            self.abandon()
            # The step's span hangs from the saga's own span (whoever reports it): remote.
            step = self._step = _Open(
                out,
                self.context.span_id,
                True,
                f"{action.lower()} {call.step_name}",
                _INTERNAL,
                out.saga
                + attribute("saga.step", call.step_name)
                + attribute("saga.step_index", call.step_index)
                + attribute("saga.action", action),
            )
            self._step_key = key
        service, method = _rpc_names(call.method)
        span = _Open(
            out,
            step.span_id,
            False,
            f"{service}/{method}",
            _CLIENT,
            out.encoder.rpc(service, method)
            + out.saga
            + attribute("saga.step", call.step_name)
            + attribute("saga.action", action)
            + attribute("saga.attempt", call.attempt),
        )
        header = self.context.traceparent(span.span_id)
        return Attempt(((TRACEPARENT, header), *self._extra), span)

    def logged(self, logs: Sequence[StepLog]) -> None:
        """Step logs were committed: the step span they close ends, with the log's status."""
        if self._step is None:
            return
        for log in logs:
            if (log.step_index, log.action.value) != self._step_key:
                continue
            span, self._step, self._step_key = self._step, None, None
            more = span.out.encoder.attribute("saga.step.status", log.status.value)
            if log.status in (StepStatus.FAILED, StepStatus.TIMEOUT):
                text = (log.error_message or log.status.value)[:_MAX_DESCRIPTION]
                span.end(more, _ERROR, text)
            else:
                span.end(more)
            return

    def abandon(self) -> None:
        """The saga leaves this executor (or the step starts over) before the step's log: its
        span ends unfinished."""
        if self._step is not None:
            span, self._step, self._step_key = self._step, None, None
            span.end(span.out.encoder.attribute("saga.step.unfinished", True))

    def ended(self, state: SagaState) -> None:
        """The saga reached its terminal status: report its own span, with the stored ids,
        from the saga's creation to now (the terminal state was just written)."""
        self.abandon()
        out = self._out
        if out is None:
            return
        ctx = self.context
        error = state.error_message
        out.batches.add(
            (
                # A saga that started its trace has no parent to inherit a tracestate from.
                out.trace
                if ctx.parent_span_id is not None
                else out.encoder.trace(ctx.trace_id, ""),
                ctx.span_id,
                ctx.parent_span_id,
                True,
                f"saga {state.workflow_name}",
                _INTERNAL,
                _ns(state.created_at),
                time.time_ns(),
                out.saga + out.encoder.attribute("saga.status", state.status.value),
                _ERROR if error else _UNSET,
                error[:_MAX_DESCRIPTION] if error else None,
            )
        )


# --------------------------------------------------------------------------- export


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number > 0:
        return number
    log.warning("%s=%r is not a positive integer; using %d", name, value, default)
    return default


class _Batches:
    """Ended spans, encoded, waiting for export, and the thread exporting them in batches, as
    the SDK's `BatchSpanProcessor` does and with its settings (OTEL_BSP_SCHEDULE_DELAY ms
    between exports, OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE; the same
    defaults), minus its cost per span: adding one is encoding it and appending the bytes to a
    deque."""

    def __init__(self, exporter: Any, encoder: Encoder) -> None:
        from opentelemetry.sdk.environment_variables import (
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
            OTEL_BSP_MAX_QUEUE_SIZE,
            OTEL_BSP_SCHEDULE_DELAY,
        )
        from opentelemetry.sdk.trace.export import SpanExportResult

        self._exporter = exporter
        self.encoder = encoder
        self._success = SpanExportResult.SUCCESS
        self._delay = _env_int(OTEL_BSP_SCHEDULE_DELAY, 5000) / 1000
        self._max_queue = _env_int(OTEL_BSP_MAX_QUEUE_SIZE, 2048)
        self._max_batch = min(_env_int(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512), self._max_queue)
        self._queue: collections.deque[bytes] = collections.deque()
        self._dropped = 0
        self._stopped = False
        self._wake = threading.Event()
        self._exporting = threading.Lock()  # one export at a time: the thread's or a flush
        self._thread = threading.Thread(target=self._run, name="saga-span-export", daemon=True)
        self._thread.start()

    def add(self, record: _Record) -> None:
        queue = self._queue
        if self._stopped or len(queue) >= self._max_queue:
            self._dropped += 1  # counted (and logged) on the export thread
            return
        try:
            span = self.encoder.span(record)
        except Exception:  # never the executor's problem: the span is lost, said so
            log.exception("span %r could not be encoded; dropped", record[0])
            return
        queue.append(span)
        if len(queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            # Woken by a full batch: full batches only (the spans still coming in fill the
            # next one; sending what trickles in meanwhile made a request of a few spans each
            # time, and a request has a cost of its own, here and at the collector). Else the
            # delay is up: everything.
            full = self._wake.wait(self._delay)
            self._wake.clear()
            self._export(full_batches=full)
        self._export()  # what is left

    def _export(self, full_batches: bool = False) -> None:
        """Export what is queued (all of it, or its full batches), in batches; once stopping,
        until an export fails (so a collector that is down delays a clean stop by about one
        export's timeout)."""
        queue = self._queue
        size = self._max_batch
        with self._exporting:
            while queue and (len(queue) >= size or not full_batches):
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                try:
                    ok = self._exporter.export(batch) is self._success
                except Exception:
                    log.exception("exporting %d spans failed", len(batch))
                    ok = False
                if not ok and self._stopped:
                    self._dropped += len(queue)
                    queue.clear()
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                log.warning("%d spans dropped: the export queue was full or stopped", dropped)

    def flush(self) -> bool:
        """Export every span added so far (what the thread is exporting now included)."""
        self._export()
        return True

    def shutdown(self, timeout_secs: float = 30.0) -> None:
        """Export what is left and stop the thread and the exporter."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout_secs)
        self._exporter.shutdown()


# --------------------------------------------------------------------------- OTLP encoding
# The OTLP protobuf wire format of `ExportTraceServiceRequest` (opentelemetry-proto), written
# directly: field tags as bytes, lengths as varints. It is the bytes the SDK's own encoder
# (`encode_spans(...).SerializeToString()`) makes for the same spans as SDK spans, which
# tests/integration/test_tracing.py checks; the resource and scope around them are encoded by
# the SDK's encoder itself, once.

_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_SPAN_ID = _PARENT = struct.Struct(">2sQ").pack  # Span.span_id = 2, parent_span_id = 4
_TIMES = struct.Struct("<sQsQ").pack  # Span.start_time_unix_nano = 7, end = 8 (fixed64)
_KIND_FIELDS = {kind: bytes((0x30, kind)) for kind in range(1, 6)}  # Span.kind = 6
# Span.flags (fixed32, field 16): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE, and IS_REMOTE when the
# parent span is remote.
_FLAGS_LOCAL = b"\x85\x01" + _FIXED32(0x100)
_FLAGS_REMOTE = b"\x85\x01" + _FIXED32(0x300)
_STATUS_UNSET = b"\x7a\x00"  # Span.status present and empty, as the SDK sends it
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MEMO_LIMIT = 8192


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field."""
    n = len(data)
    if n < 0x80:
        return tag + bytes((n,)) + data
    if n < 0x4000:
        return tag + bytes(((n & 0x7F) | 0x80, n >> 7)) + data
    return tag + _varint(n) + data


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: protobuf strings are UTF-8
        return text.encode(errors="replace")


def _attribute(key: str, value: Any) -> bytes:
    """A `Span.attributes` entry (field 9): KeyValue {key = 1; AnyValue value = 2}, the value
    as the SDK encodes it (a bool, str, int64 or float; anything else as its str)."""
    kind = type(value)
    if kind is bool:
        any_value = b"\x10\x01" if value else b"\x10\x00"
    elif kind is int and _INT64_MIN <= value <= _INT64_MAX:
        any_value = b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    elif kind is float:
        any_value = b"\x21" + _DOUBLE(value)
    else:
        any_value = _field(b"\x0a", _utf8(value if kind is str else str(value)))
    key_field = _field(b"\x0a", _utf8(key)) if key else b""
    return _field(b"\x4a", key_field + _field(b"\x12", any_value))


class Encoder:
    """Spans of one resource and instrumentation scope to the bytes of an
    `ExportTraceServiceRequest`: each span as it ends (its data still in the CPU's caches:
    encoded later, on the export thread, it cost twice as much), with the parts a trace or a
    step shares encoded once and the attribute entries that recur (`rpc.system`, a step's
    name, ...) remembered; the request around a batch of them. Any thread may use it (its
    memos are only read, written and emptied whole)."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace import ReadableSpan

        # What the SDK's encoder puts around the spans of this resource and scope.
        probe = ReadableSpan(
            "", trace.SpanContext(1, 1, False), resource=resource, instrumentation_scope=scope
        )
        [resource_spans] = encode_spans([probe]).resource_spans
        [scope_spans] = resource_spans.scope_spans
        self._resource = _field(b"\x0a", resource_spans.resource.SerializeToString())
        self._resource_schema = (
            _field(b"\x1a", _utf8(resource_spans.schema_url)) if resource_spans.schema_url else b""
        )
        self._scope = _field(b"\x0a", scope_spans.scope.SerializeToString())
        self._scope_schema = (
            _field(b"\x1a", _utf8(scope_spans.schema_url)) if scope_spans.schema_url else b""
        )
        self._attributes: dict[tuple[str, Any], tuple[type, bytes]] = {}
        self._names: dict[str, bytes] = {}
        self._rpcs: dict[tuple[str, str], bytes] = {}

    def trace(self, trace_id: int, trace_state: str) -> tuple[bytes, bytes]:
        """What each span of a trace starts with: its trace id field, and its tracestate
        field (the SDK's text of it; b"" for none)."""
        return (
            b"\x0a\x10" + trace_id.to_bytes(16, "big"),
            _field(b"\x1a", _utf8(trace_state)) if trace_state else b"",
        )

    def attribute(self, key: str, value: Any) -> bytes:
        """One attribute entry of a span."""
        memo = self._attributes
        known = memo.get((key, value))
        if known is None or known[0] is not type(value):  # True == 1 as a dict key
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            known = memo[(key, value)] = (type(value), _attribute(key, value))
        return known[1]

    def rpc(self, service: str, method: str) -> bytes:
        """The entries of a gRPC client span: rpc.system, rpc.service, rpc.method."""
        found = self._rpcs.get((service, method))
        if found is None:
            if len(self._rpcs) >= _MEMO_LIMIT:
                self._rpcs.clear()
            found = self._rpcs[(service, method)] = (
                self.attribute("rpc.system", "grpc")
                + self.attribute("rpc.service", service)
                + self.attribute("rpc.method", method)
            )
        return found

    def span(self, record: _Record) -> bytes:
        """A `ScopeSpans.spans` entry (field 2): one Span."""
        (
            (trace_id, trace_state),
            span_id,
            parent_id,
            remote,
            name,
            kind,
            start,
            end,
            attributes,
            code,
            description,
        ) = record
        name_field = self._names.get(name)
        if name_field is None:
            if len(self._names) >= _MEMO_LIMIT:
                self._names.clear()
            name_field = self._names[name] = _field(b"\x2a", _utf8(name)) if name else b""
        if code or description:  # Status {string message = 2; StatusCode code = 3}
            message = _field(b"\x12", _utf8(description)) if description else b""
            status = _field(b"\x7a", message + (bytes((0x18, code)) if code else b""))
        else:
            status = _STATUS_UNSET
        if parent_id is None:
            parent, flags = b"", _FLAGS_LOCAL
        else:
            parent, flags = (
                _PARENT(b"\x22\x08", parent_id),
                _FLAGS_REMOTE if remote else _FLAGS_LOCAL,
            )
        return _field(
            b"\x12",
            b"".join(
                (
                    trace_id,
                    _SPAN_ID(b"\x12\x08", span_id),
                    trace_state,
                    parent,
                    name_field,
                    _KIND_FIELDS[kind],
                    _TIMES(b"\x39", start, b"\x41", end),
                    attributes,
                    status,
                    flags,
                )
            ),
        )

    def request(self, spans: Sequence[bytes]) -> bytes:
        """The request exporting `spans` (each from `span`)."""
        if not spans:
            return b""
        scope_spans = _field(b"\x12", self._scope + b"".join(spans) + self._scope_schema)
        return _field(b"\x0a", self._resource + scope_spans + self._resource_schema)


def _exporter_class() -> type:
    """The SDK's OTLP/gRPC span exporter (its endpoint, TLS, headers, timeout, compression and
    retries; the OTEL_EXPORTER_OTLP_* settings), taking encoded spans: each batch's request is
    made by `Encoder` and sent as those bytes (no protobuf message is built to be serialised
    again). Imported when a telemetry section asks for it."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    class RawStub:
        """TraceService's Export, its request already serialised."""

        def __init__(self, channel: grpc.Channel) -> None:
            self.Export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=None,
                response_deserializer=ExportTraceServiceResponse.FromString,
            )

    class Exporter(OTLPSpanExporter):
        def __init__(self, encoder: Encoder, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._encoder = encoder
            # The exporter makes its client from `_stub` (again when it reconnects).
            self._stub = RawStub
            self._client = RawStub(self._channel)  # type: ignore[assignment]

        def _translate_data(self, data: Sequence[bytes]) -> Any:  # type: ignore[override]
            request = self._encoder.request(data)
            if isinstance(self._client, RawStub):
                return request
            # A client of the exporter's own making takes a message.
            message: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(request)
            return message

    return Exporter


class Tracing:
    """An executor's tracing: trace context on every call always; spans, exported over OTLP
    by a background thread, only with a `telemetry` section."""

    def __init__(self, batches: _Batches | None = None) -> None:
        self._batches = batches

    @classmethod
    def from_config(cls, telemetry: TelemetryConfig | None) -> Tracing:
        """Propagation only without `telemetry`; else span batches exported to its
        `otlp_endpoint` (plaintext for http://, TLS for https://)."""
        if telemetry is None:
            return cls()
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        encoder = Encoder(
            Resource.create({"service.name": telemetry.service_name}),
            # What TracerProvider.get_tracer("saga-server") gives.
            InstrumentationScope("saga-server", ""),
        )
        exporter = _exporter_class()(
            encoder,
            endpoint=telemetry.otlp_endpoint,
            insecure=telemetry.otlp_endpoint.startswith("http://"),
            # Each export (with its retries) gives up after this long, so a collector that is
            # down delays a clean stop by at most about this much; its spans are dropped.
            timeout=_EXPORT_TIMEOUT_SECS,
        )
        return cls(_Batches(exporter, encoder))

    @property
    def exporting(self) -> bool:
        return self._batches is not None

    def run(self, state: SagaState) -> RunTrace:
        """The trace of `state` for the executor that just claimed it."""
        return RunTrace(state, self._batches)

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Export every span ended so far (tests, shutdown)."""
        if self._batches is None:
            return True
        return self._batches.flush()

    def close(self) -> None:
        """Export what is left and stop the exporter."""
        if self._batches is not None:
            self._batches.shutdown()
            self._batches = None
