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

Without a `telemetry` section (and for a saga not sampled) no OpenTelemetry span is made: each
attempt only gets a fresh random span id in its `traceparent`, a string format per call.

Nothing here raises for what a client sent: an invalid `traceparent` starts a new trace.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs
import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from saga.events import CallParticipant
from saga.model import SagaState, StepLog, StepStatus
from workers.adapters.participant import CallResult
from workers.config import TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

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


class _Ids(IdGenerator):
    """Random ids, except the ones the saga span must have: it is made by whichever executor
    ends the saga, with the ids fixed when the saga started (`fixed`)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._fixed = threading.local()

    @contextmanager
    def fixed(self, trace_id: int, span_id: int) -> Iterator[None]:
        self._fixed.ids = (trace_id, span_id)
        try:
            yield
        finally:
            self._fixed.ids = None

    def generate_span_id(self) -> int:
        ids = getattr(self._fixed, "ids", None)
        return ids[1] if ids else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        ids = getattr(self._fixed, "ids", None)
        return ids[0] if ids else self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return True


class Attempt:
    """One attempt of a participant call: the metadata it adds, and its span (None: no span
    is recorded)."""

    __slots__ = ("metadata", "_span")

    def __init__(self, metadata: tuple[tuple[str, str], ...], span: Any = None) -> None:
        self.metadata = metadata
        self._span = span

    def end(self, result: CallResult) -> None:
        """The attempt answered (gRPC client conventions: the status code, ERROR unless OK)."""
        span = self._span
        if span is None:
            return
        if result.ok:
            span.set_attribute("rpc.grpc.status_code", 0)
        else:
            code = result.code or "UNKNOWN"
            number = _GRPC_CODES.get(code)
            if number is not None:
                span.set_attribute("rpc.grpc.status_code", number)
            span.set_attribute("error.type", code)
            span.set_status(Status(StatusCode.ERROR, result.message[:_MAX_DESCRIPTION]))
        span.end()


class RunTrace:
    """The trace of one saga while this executor holds it: its context, and the span of the
    step execution (or compensation) in progress. Used by one thread at a time, like the
    saga itself."""

    __slots__ = ("context", "_tracer", "_ids", "_parent", "_extra", "_step", "_step_key", "_saga")

    def __init__(self, state: SagaState, tracer: Any = None, ids: _Ids | None = None) -> None:
        self.context = ctx = trace_of(state)
        self._tracer = tracer if ctx.sampled else None
        self._ids = ids
        self._extra: tuple[tuple[str, str], ...] = (
            ((TRACESTATE, ctx.tracestate),) if ctx.tracestate else ()
        )
        self._step: Any = None
        self._step_key: tuple[int, str] | None = None
        self._saga = {"saga.id": state.saga_id, "saga.workflow": state.workflow_name}
        self._parent: Context | None = None
        if self._tracer is not None:
            self._parent = trace.set_span_in_context(
                trace.NonRecordingSpan(self._span_context(ctx.span_id))
            )

    def _span_context(self, span_id: int) -> trace.SpanContext:
        ctx = self.context
        return trace.SpanContext(
            ctx.trace_id,
            span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            trace_state=trace.TraceState.from_header([ctx.tracestate]) if ctx.tracestate else None,
        )

    def attempt(self, call: CallParticipant) -> Attempt:
        """Start one attempt of `call` (and, at its first attempt, the step's span): the
        `traceparent` (and `tracestate`) it sends carry the saga's trace and this attempt's
        span id."""
        tracer = self._tracer
        if tracer is None:
            header = self.context.traceparent(_random_id(64))
            return Attempt(((TRACEPARENT, header), *self._extra))
        key = (call.step_index, call.action.value)
        if call.attempt == 1 or self._step_key != key:
            self.abandon()
            self._step = tracer.start_span(
                f"{call.action.value.lower()} {call.step_name}",
                context=self._parent,
                attributes={
                    **self._saga,
                    "saga.step": call.step_name,
                    "saga.step_index": call.step_index,
                    "saga.action": call.action.value,
                },
            )
            self._step_key = key
        service, method = _rpc_names(call.method)
        span = tracer.start_span(
            f"{service}/{method}",
            context=trace.set_span_in_context(self._step),
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
                **self._saga,
                "saga.step": call.step_name,
                "saga.action": call.action.value,
                "saga.attempt": call.attempt,
            },
        )
        header = self.context.traceparent(span.get_span_context().span_id)
        return Attempt(((TRACEPARENT, header), *self._extra), span)

    def logged(self, logs: Sequence[StepLog]) -> None:
        """Step logs were committed: the step span they close ends, with the log's status."""
        if self._step is None:
            return
        for log in logs:
            if (log.step_index, log.action.value) != self._step_key:
                continue
            span, self._step, self._step_key = self._step, None, None
            span.set_attribute("saga.step.status", log.status.value)
            if log.status in (StepStatus.FAILED, StepStatus.TIMEOUT):
                text = (log.error_message or log.status.value)[:_MAX_DESCRIPTION]
                span.set_status(Status(StatusCode.ERROR, text))
            span.end()
            return

    def abandon(self) -> None:
        """The saga leaves this executor (or the step starts over) before the step's log: its
        span ends unfinished."""
        if self._step is not None:
            span, self._step, self._step_key = self._step, None, None
            span.set_attribute("saga.step.unfinished", True)
            span.end()

    def ended(self, state: SagaState) -> None:
        """The saga reached its terminal status: report its own span, with the stored ids."""
        self.abandon()
        if self._tracer is None or self._ids is None:
            return
        ctx = self.context
        parent = Context()
        if ctx.parent_span_id is not None:
            parent = trace.set_span_in_context(
                trace.NonRecordingSpan(self._span_context(ctx.parent_span_id))
            )
        with self._ids.fixed(ctx.trace_id, ctx.span_id):
            span = self._tracer.start_span(
                f"saga {state.workflow_name}",
                context=parent,
                attributes={**self._saga, "saga.status": state.status.value},
                start_time=_ns(state.created_at),
            )
        if state.error_message:
            span.set_status(Status(StatusCode.ERROR, state.error_message[:_MAX_DESCRIPTION]))
        span.end()  # now: the terminal state was just written


class Tracing:
    """An executor's tracing: trace context on every call always; spans, exported over OTLP
    by a background batch processor, only with a `telemetry` section."""

    def __init__(self, provider: TracerProvider | None = None, ids: _Ids | None = None) -> None:
        self._provider = provider
        self._ids = ids
        self._tracer = provider.get_tracer("saga-server") if provider is not None else None

    @classmethod
    def from_config(cls, telemetry: TelemetryConfig | None) -> Tracing:
        """Propagation only without `telemetry`; else a tracer provider exporting to its
        `otlp_endpoint` (plaintext for http://, TLS for https://)."""
        if telemetry is None:
            return cls()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

        ids = _Ids()
        provider = TracerProvider(
            resource=Resource.create({"service.name": telemetry.service_name}),
            # Every span here has the saga's span as its parent, whose stored flag decides.
            sampler=ParentBased(ALWAYS_ON),
            id_generator=ids,
        )
        exporter = OTLPSpanExporter(
            endpoint=telemetry.otlp_endpoint,
            insecure=telemetry.otlp_endpoint.startswith("http://"),
            # Each export (with its retries) gives up after this long, so a collector that is
            # down delays a clean stop by at most about this much; its spans are dropped.
            timeout=_EXPORT_TIMEOUT_SECS,
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, ids)

    @property
    def exporting(self) -> bool:
        return self._provider is not None

    def run(self, state: SagaState) -> RunTrace:
        """The trace of `state` for the executor that just claimed it."""
        return RunTrace(state, self._tracer, self._ids)

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Export every span ended so far (tests, shutdown)."""
        if self._provider is None:
            return True
        return self._provider.force_flush(timeout_millis)

    def close(self) -> None:
        """Export what is left and stop the exporter."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self._tracer = None
