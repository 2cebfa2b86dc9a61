"""Tracing (SPEC §12) end to end in one process: sagas started over REST and gRPC with W3C
Trace Context, real participant processes recording the `traceparent` of every call, and a
real OTLP/gRPC receiver on 127.0.0.1 getting the spans."""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest
import requests
import yaml
from werkzeug.serving import make_server

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from saga_grpc.server import build_server
from saga_http.app import create_app
from tests.harness import (
    ParticipantProcess,
    fresh_saga,
    step,
    wait_until,
    workflow_file,
    write_config,
)
from tests.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from workers.adapters import tracing
from workers.config import ConfigError, load_config
from workers.service.engine import Engine

# reserve succeeds; charge fails once (retried); ship fails for good; then charge and reserve
# are compensated: six participant calls, five step logs, one saga ending FAILED.
STEPS = [
    step("reserve", "inventory-service", "shop.Inventory.Reserve", "shop.Inventory.Release"),
    step(
        "charge",
        "payment-service",
        "Payment.Charge",
        "Payment.Refund",
        retry={"max_attempts": 3, "initial_interval_ms": 50},
    ),
    step("ship", "shipping-service", "Shipping.Create", "Shipping.Cancel"),
]
BEHAVIOUR = {
    "Payment.Charge": {"fail_times": 1, "fail": "UNAVAILABLE"},
    "Shipping.Create": {"fail": "FAILED_PRECONDITION", "message": "no courier"},
}
# (path, attempt) of every call the saga above makes, in order.
CALLS = [
    ("/shop.Inventory/Reserve", "1"),
    ("/Payment/Charge", "1"),
    ("/Payment/Charge", "2"),
    ("/Shipping/Create", "1"),
    ("/Payment/Refund", "1"),
    ("/shop.Inventory/Release", "1"),
]
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
SPAN_KIND_CLIENT = 3  # OTLP's Span.SpanKind
STATUS_ERROR = 2


def new_traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """A caller's (traceparent, trace id, span id)."""
    trace_id = f"{random.getrandbits(128) | 1:032x}"
    span_id = f"{random.getrandbits(64) | 1:016x}"
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


class World:
    """An executing engine with REST and gRPC in front, participants in their own process."""

    def __init__(self, tmp: Path, receiver: OtlpReceiver | None, **telemetry: Any) -> None:
        self.participant = ParticipantProcess(BEHAVIOUR, tmp)
        workflow_file(tmp / "wf", "traced", STEPS)
        extra = {}
        if receiver is not None:
            extra["telemetry"] = {
                "otlp_endpoint": receiver.endpoint,
                "service_name": "saga-under-test",
                **telemetry,
            }
        path = write_config(
            tmp / "c.yaml", port=self.participant.port, workflow_dir=tmp / "wf", extra=extra
        )
        self.engine = Engine.from_config(load_config(str(path), environ={}), execute=True)
        self.engine.start()
        self.http = make_server(
            "127.0.0.1", 0, create_app(self.engine.config, self.engine), threaded=True
        )
        self.base = f"http://127.0.0.1:{self.http.server_port}"
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()
        self.grpc_server, grpc_port = build_server(self.engine.config, self.engine)
        self.grpc_server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = saga_pb2_grpc.SagaServiceStub(self.channel)

    def start_rest(self, headers: dict[str, str] | None = None) -> str:
        response = requests.post(
            f"{self.base}/api/v1/sagas",
            json={"workflow_name": "traced", "payload": {"order": 1}},
            headers=headers or {},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["saga_id"])

    def saga(self, saga_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.base}/api/v1/sagas/{saga_id}", timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json()["saga"])

    def finish(self, saga_id: str) -> dict[str, Any]:
        wait_until(
            lambda: self.saga(saga_id)["status"] == "FAILED", 20, what=f"saga {saga_id} to end"
        )
        return self.saga(saga_id)

    def calls_of(self, saga_id: str) -> list[dict[str, Any]]:
        return [c for c in self.participant.calls() if c["metadata"].get("x-saga-id") == saga_id]

    def close(self) -> None:
        self.channel.close()
        self.grpc_server.stop(grace=None).wait()
        self.http.shutdown()
        self._thread.join(timeout=10)
        self.http.server_close()
        self.engine.close(grace_secs=5)
        self.participant.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[World]:
    made = World(tmp_path_factory.mktemp("traced"), receiver)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def traced(world: World, receiver: OtlpReceiver) -> dict[str, Any]:
    """One saga started over REST with a sampled caller's traceparent and a tracestate, run to
    its end, with the spans it exported."""
    traceparent, trace_id, caller_span = new_traceparent()
    saga_id = world.start_rest({"traceparent": traceparent, "tracestate": "vendor=abc,other=1"})
    view = world.finish(saga_id)
    world.engine.tracing.flush()  # type: ignore[union-attr]
    receiver.wait_for(trace_id, "saga ")
    return {
        "saga_id": saga_id,
        "trace_id": trace_id,
        "caller_span": caller_span,
        "view": view,
        "calls": world.calls_of(saga_id),
        "spans": receiver.spans(trace_id),
    }


def by_name(spans: list[ReceivedSpan], prefix: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_ns)


# ------------------------------------------------------------------ propagation


def test_every_participant_call_carries_the_callers_trace(traced: dict[str, Any]) -> None:
    """Each of the saga's six calls (retry and compensations too) carries traceparent with the caller's trace id, its own span id, and the tracestate."""
    calls = traced["calls"]
    assert [(c["path"], c["metadata"]["x-saga-attempt"]) for c in calls] == CALLS
    parsed = [TRACEPARENT.match(c["metadata"].get("traceparent", "")) for c in calls]
    assert all(parsed), [c["metadata"] for c in calls]
    assert {m.group(1) for m in parsed if m} == {traced["trace_id"]}
    assert {m.group(3) for m in parsed if m} == {"01"}
    span_ids = [m.group(2) for m in parsed if m]
    assert len(set(span_ids)) == len(calls) and traced["caller_span"] not in span_ids
    assert {c["metadata"].get("tracestate") for c in calls} == {"vendor=abc,other=1"}


def test_the_saga_view_shows_the_callers_trace_id(traced: dict[str, Any]) -> None:
    """GET /api/v1/sagas/<id> shows trace_id: the 32 hex digits of the caller's trace."""
    assert traced["view"]["trace_id"] == traced["trace_id"]


# ------------------------------------------------------------------ the span tree


def test_the_span_tree_is_saga_then_step_then_attempt(traced: dict[str, Any]) -> None:
    """The receiver gets one saga span under the caller's span, five step spans under it, and one client span per attempt under its step."""
    spans = traced["spans"]
    [saga] = by_name(spans, "saga ")
    steps = by_name(spans, "execute ") + by_name(spans, "compensate ")
    attempts = [s for s in spans if s.kind == SPAN_KIND_CLIENT]
    assert len(spans) == 1 + len(steps) + len(attempts)
    assert saga.name == "saga traced" and saga.parent_span_id == traced["caller_span"]
    assert sorted(s.name for s in steps) == sorted(
        [
            "execute reserve",
            "execute charge",
            "execute ship",
            "compensate charge",
            "compensate reserve",
        ]
    )
    assert {s.parent_span_id for s in steps} == {saga.span_id}
    step_of = {s.span_id: s for s in steps}
    assert all(a.parent_span_id in step_of for a in attempts)
    per_step = {s.name: 0 for s in steps}
    for a in attempts:
        per_step[step_of[a.parent_span_id].name] += 1
    assert per_step == {
        "execute reserve": 1,
        "execute charge": 2,
        "execute ship": 1,
        "compensate charge": 1,
        "compensate reserve": 1,
    }
    # What each participant got is the span id of one attempt span, one to one.
    sent = sorted(c["metadata"]["traceparent"].split("-")[2] for c in traced["calls"])
    assert sent == sorted(a.span_id for a in attempts)
    # Children lie within their parents in time.
    assert all(saga.start_ns <= s.start_ns and s.end_ns <= saga.end_ns for s in steps)
    assert all(
        step_of[a.parent_span_id].start_ns <= a.start_ns <= a.end_ns
        and a.end_ns <= step_of[a.parent_span_id].end_ns
        for a in attempts
    )


def test_spans_carry_the_saga_and_grpc_client_attributes(traced: dict[str, Any]) -> None:
    """Every span names the saga and workflow; attempt spans follow the gRPC client conventions and say step, action and attempt."""
    spans = traced["spans"]
    saga_id = traced["saga_id"]
    assert {s.service_name for s in spans} == {"saga-under-test"}
    assert all(
        s.attributes["saga.id"] == saga_id and s.attributes["saga.workflow"] == "traced"
        for s in spans
    )
    [saga] = by_name(spans, "saga ")
    assert saga.attributes["saga.status"] == "FAILED" and saga.status_code == STATUS_ERROR
    attempts = sorted((s for s in spans if s.kind == SPAN_KIND_CLIENT), key=lambda s: s.start_ns)
    seen = [
        (
            a.name,
            a.attributes["rpc.system"],
            a.attributes["rpc.service"],
            a.attributes["rpc.method"],
            a.attributes["rpc.grpc.status_code"],
            a.attributes["saga.step"],
            a.attributes["saga.action"],
            a.attributes["saga.attempt"],
            a.status_code == STATUS_ERROR,
        )
        for a in attempts
    ]
    assert seen == [
        ("shop.Inventory/Reserve", "grpc", "shop.Inventory", "Reserve", 0, "reserve", "EXECUTE", 1, False),
        ("Payment/Charge", "grpc", "Payment", "Charge", 14, "charge", "EXECUTE", 1, True),
        ("Payment/Charge", "grpc", "Payment", "Charge", 0, "charge", "EXECUTE", 2, False),
        ("Shipping/Create", "grpc", "Shipping", "Create", 9, "ship", "EXECUTE", 1, True),
        ("Payment/Refund", "grpc", "Payment", "Refund", 0, "charge", "COMPENSATE", 1, False),
        ("shop.Inventory/Release", "grpc", "shop.Inventory", "Release", 0, "reserve", "COMPENSATE", 1, False),
    ]  # fmt: skip
    steps = {s.name: s for s in spans if s.name.split(" ")[0] in ("execute", "compensate")}
    assert steps["execute ship"].attributes["saga.step.status"] == "FAILED"
    assert steps["execute ship"].status_code == STATUS_ERROR
    assert steps["execute charge"].attributes["saga.step.status"] == "SUCCESS"
    assert steps["compensate reserve"].attributes["saga.action"] == "COMPENSATE"
    assert steps["compensate reserve"].attributes["saga.step_index"] == 0


# ------------------------------------------------------------------ what a start request sends

INVALID = [
    "garbage",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "00-" + "a" * 600,
]


@pytest.mark.parametrize("header", INVALID)
def test_an_invalid_traceparent_starts_a_new_trace(world: World, header: str) -> None:
    """A start with a traceparent that is not valid W3C is a 201; the saga gets a new trace id, passed on to participants, and the tracestate is dropped."""
    saga_id = world.start_rest({"traceparent": header, "tracestate": "vendor=abc"})
    world.finish(saga_id)
    trace_id = world.saga(saga_id)["trace_id"]
    assert HEX32.match(trace_id) and trace_id not in header.lower()
    calls = world.calls_of(saga_id)
    assert len(calls) == len(CALLS)
    assert {c["metadata"]["traceparent"].split("-")[1] for c in calls} == {trace_id}
    assert all("tracestate" not in c["metadata"] for c in calls)


def test_a_start_without_traceparent_gets_a_trace_of_its_own(world: World) -> None:
    """Two sagas started without trace context get two different trace ids, each on its own calls."""
    first, second = world.start_rest(), world.start_rest()
    ids = [world.finish(s)["trace_id"] for s in (first, second)]
    assert ids[0] != ids[1] and all(HEX32.match(i) for i in ids)
    for saga_id, trace_id in zip((first, second), ids, strict=True):
        got = {c["metadata"]["traceparent"].split("-")[1] for c in world.calls_of(saga_id)}
        assert got == {trace_id}


def test_grpc_start_joins_the_trace_of_its_metadata(world: World, receiver: OtlpReceiver) -> None:
    """StartSaga with traceparent metadata: GetSaga's trace_id (field 12) is the caller's, participants get it, and the saga span hangs from the caller's span."""
    traceparent, trace_id, caller_span = new_traceparent()
    started = world.stub.StartSaga(
        saga_pb2.StartSagaRequest(workflow_name="traced", payload=b'{"order": 2}'),
        metadata=(("traceparent", traceparent),),
        timeout=10,
    )
    world.finish(started.saga_id)
    got = world.stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=started.saga_id), timeout=10)
    assert got.saga.trace_id == trace_id
    calls = world.calls_of(started.saga_id)
    assert {c["metadata"]["traceparent"].split("-")[1] for c in calls} == {trace_id}
    world.engine.tracing.flush()  # type: ignore[union-attr]
    [saga] = receiver.wait_for(trace_id, "saga ")
    assert saga.parent_span_id == caller_span


def test_a_caller_that_did_not_sample_gets_no_spans(world: World, receiver: OtlpReceiver) -> None:
    """A traceparent with the sampled flag off: participants get the trace with flag 00, and nothing of it is exported."""
    traceparent, trace_id, _ = new_traceparent(sampled=False)
    saga_id = world.start_rest({"traceparent": traceparent})
    world.finish(saga_id)
    flags = {c["metadata"]["traceparent"].rsplit("-", 1)[1] for c in world.calls_of(saga_id)}
    assert flags == {"00"}
    world.engine.tracing.flush()  # type: ignore[union-attr]
    assert receiver.spans(trace_id) == []


def test_the_list_shows_each_sagas_trace_id(world: World, traced: dict[str, Any]) -> None:
    """GET /api/v1/sagas shows each saga's trace_id too."""
    response = requests.get(f"{world.base}/api/v1/sagas", params={"page_size": 100}, timeout=10)
    listed = {s["saga_id"]: s["trace_id"] for s in response.json()["sagas"]}
    assert listed[traced["saga_id"]] == traced["trace_id"]


# ------------------------------------------------------------------ configuration


def test_without_telemetry_nothing_is_exported_and_context_still_flows(
    tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no telemetry section (even with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a receiver) no span is exported, and participants still get the trace."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    world = World(tmp_path, None)
    try:
        traceparent, trace_id, _ = new_traceparent()
        saga_id = world.start_rest({"traceparent": traceparent})
        assert world.finish(saga_id)["trace_id"] == trace_id
        calls = world.calls_of(saga_id)
        assert len(calls) == len(CALLS)
        assert {c["metadata"]["traceparent"].split("-")[1] for c in calls} == {trace_id}
        assert len({c["metadata"]["traceparent"] for c in calls}) == len(CALLS)
        assert world.engine.tracing is not None and not world.engine.tracing.exporting
    finally:
        world.close()
    assert receiver.spans(trace_id) == []


def test_sample_ratio_zero_samples_no_new_trace_but_follows_a_sampled_caller(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """With sample_ratio 0 a saga that starts its own trace exports nothing (flag 00), while one joining a sampled caller is exported."""
    world = World(tmp_path, receiver, sample_ratio=0.0)
    try:
        own = world.start_rest()
        traceparent, joined_trace, _ = new_traceparent()
        joined = world.start_rest({"traceparent": traceparent})
        own_trace = world.finish(own)["trace_id"]
        world.finish(joined)
        flags = {c["metadata"]["traceparent"][-2:] for c in world.calls_of(own)}
        assert flags == {"00"}
        world.engine.tracing.flush()  # type: ignore[union-attr]
        receiver.wait_for(joined_trace, "saga ")
    finally:
        world.close()
    assert receiver.spans(own_trace) == []


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"service_name": "x"}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": "collector:4317"}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": "http://collector:4317/v1/traces"}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": "http://collector:4317", "sample_ratio": 1.5}, "telemetry.sample_ratio"),
        ({"otlp_endpoint": "http://collector:4317", "sample_ratio": "x"}, "telemetry.sample_ratio"),
        ({"otlp_endpoint": "http://collector:4317", "service_name": " "}, "telemetry.service_name"),
        ({"otlp_endpoint": "http://collector:4317", "colour": 1}, "telemetry"),
    ],
)
def test_a_bad_telemetry_section_is_one_line_naming_the_key(
    tmp_path: Path, section: dict[str, Any], key: str
) -> None:
    """A telemetry section with a missing or bad key stops the load with a message naming it."""
    path = tmp_path / "c.yaml"
    path.write_text(f"telemetry: {json.dumps(section)}\n")  # JSON is YAML
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    message = str(caught.value)
    assert f"{path}: {key}" in message and "\n" not in message


def test_telemetry_may_come_from_the_environment(tmp_path: Path) -> None:
    """SAGA_TELEMETRY_OTLP_ENDPOINT and SAGA_TELEMETRY_SAMPLE_RATIO set the section."""
    path = tmp_path / "c.yaml"
    path.write_text("saga: {execute: false}\n")
    config = load_config(
        str(path),
        environ={
            "SAGA_TELEMETRY_OTLP_ENDPOINT": "https://collector.internal:4317",
            "SAGA_TELEMETRY_SAMPLE_RATIO": "0.25",
        },
    )
    assert config.telemetry is not None
    assert config.telemetry.otlp_endpoint == "https://collector.internal:4317"
    assert config.telemetry.sample_ratio == 0.25


# ------------------------------------------------------------------ the OTLP encoding


class Records:
    """Stands for the export queue: keeps the span records a RunTrace hands it."""

    def __init__(self, encoder: tracing.Encoder) -> None:
        self.encoder = encoder
        self.records: list[Any] = []

    def add(self, record: Any) -> None:
        self.records.append(record)


def values(record: Any) -> tuple[Any, ...]:
    """A span record with its encoded parts (trace id and tracestate, attributes) read back
    with opentelemetry-proto: (name, trace id, span id, parent span id, parent is remote,
    tracestate, kind, start, end, attributes, status code, description)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    (
        (trace_field, state_field),
        span_id,
        parent_id,
        remote,
        name,
        kind,
        start,
        end,
        entries,
        code,
        text,
    ) = record
    head = Span.FromString(trace_field + state_field)
    attributes = {
        kv.key: getattr(kv.value, str(kv.value.WhichOneof("value")))
        for kv in Span.FromString(entries).attributes
    }
    trace_id = int.from_bytes(head.trace_id, "big")
    return (name, trace_id, span_id, parent_id, remote, head.trace_state, kind, start, end,
            attributes, code, text)  # fmt: skip


def sdk_encoding(spans: list[tuple[Any, ...]], resource: Any) -> bytes:
    """What the OpenTelemetry SDK sends for these spans (as `values` gives them) made as live
    SDK spans (a tracer, the same ids, parents, attributes, status and times) and encoded by
    its own encoder."""
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    class Ids(IdGenerator):
        next = (0, 0)

        def generate_span_id(self) -> int:
            return self.next[1]

        def generate_trace_id(self) -> int:
            return self.next[0]

    ids = Ids()
    provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON), id_generator=ids)
    kept = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("saga-server")
    sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    for (
        name,
        trace_id,
        span_id,
        parent_id,
        remote,
        state,
        kind,
        start,
        end,
        entries,
        code,
        text,
    ) in spans:
        context = Context()
        if parent_id is not None:
            parent = trace.SpanContext(
                trace_id,
                parent_id,
                remote,
                sampled,
                trace.TraceState.from_header([state]) if state else None,
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        ids.next = (trace_id, span_id)
        span = tracer.start_span(
            name,
            context=context,
            kind=trace.SpanKind(kind - 1),
            attributes=entries,
            start_time=start,
        )
        if code:
            span.set_status(trace.Status(trace.StatusCode(code), text))
        span.end(end_time=end)
    return bytes(encode_spans(kept.get_finished_spans()).SerializeToString())


def test_the_export_is_byte_for_byte_what_the_sdk_sends() -> None:
    """The spans of sagas with a caller and tracestate, a retry, failures and compensations, one starting its own trace and a step left unfinished are encoded into the very bytes the SDK's encoder makes of the same spans made as SDK spans."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from saga.events import CallParticipant
    from saga.model import Action, SagaStatus, StepLog, StepStatus
    from saga.workflow import parse_workflow
    from workers.adapters.participant import CallResult

    steps = [step(f"s{i}", "svc", f"pkg.S{i}.M", f"pkg.S{i}.Undo") for i in range(3)]
    workflow = parse_workflow(yaml.safe_dump({"name": "traced", "steps": steps}))
    resource = Resource.create({"service.name": "saga-under-test"})
    encoder = tracing.Encoder(resource, InstrumentationScope("saga-server", ""))
    records = Records(encoder)
    run_tracing = tracing.Tracing(records)  # type: ignore[arg-type]
    ok = CallResult(True, {}, None, "", 1.0)

    def saga(traceparent: str | None, tracestate: str | None = None) -> Any:
        return fresh_saga(workflow, trace_context=tracing.start_context(traceparent, tracestate))

    def attempt(run: Any, state: Any, i: int, action: Action, n: int, result: Any) -> None:
        call = CallParticipant(
            state.saga_id, i, f"s{i}", action, n, "svc", f"pkg.S{i}.M", {}, 5.0, "key"
        )
        run.attempt(call).end(result)

    def logged(run: Any, state: Any, i: int, action: Action, status: StepStatus) -> None:
        at = state.created_at
        run.logged(
            [StepLog("id", state.saga_id, i, f"s{i}", action, status, None, None, "x", at, at)]
        )

    joined, _, _ = new_traceparent()
    state = saga(joined, "vendor=abc,other=1")
    run = run_tracing.run(state)
    attempt(run, state, 0, Action.EXECUTE, 1, ok)
    logged(run, state, 0, Action.EXECUTE, StepStatus.SUCCESS)
    attempt(run, state, 1, Action.EXECUTE, 1, CallResult(False, {}, "UNAVAILABLE", "down", 1.0))
    attempt(run, state, 1, Action.EXECUTE, 2, CallResult(False, {}, "NOT_A_CODE", "é" * 300, 1))
    logged(run, state, 1, Action.EXECUTE, StepStatus.FAILED)
    attempt(run, state, 0, Action.COMPENSATE, 1, ok)
    logged(run, state, 0, Action.COMPENSATE, StepStatus.TIMEOUT)
    run.ended(attrs.evolve(state, status=SagaStatus.FAILED, error_message="s1 failed: down"))
    state = saga(None)  # its own trace
    run = run_tracing.run(state)
    attempt(run, state, 0, Action.EXECUTE, 1, ok)
    logged(run, state, 0, Action.EXECUTE, StepStatus.SUCCESS)
    attempt(run, state, 1, Action.EXECUTE, 1, ok)
    run.abandon()  # the executor let it go before the step's log
    run.ended(attrs.evolve(state, status=SagaStatus.COMPLETED))

    got = records.records
    assert len(got) == 8 + 5  # attempts, steps and the saga of each
    spans = [values(r) for r in got]
    first_attempt = spans[0][9]
    assert first_attempt["saga.attempt"] == 1 and first_attempt["rpc.grpc.status_code"] == 0
    assert encoder.request([encoder.span(r) for r in got]) == sdk_encoding(spans, resource)
    # Values of every kind an attribute may take, names longer than one length byte, a
    # request of many spans; and the same batch again (recurring entries remembered).
    edge = {"e": "", "s": "ß", "f": False, "t": True, "0": 0, "-1": -1, "max": 2**63 - 1, "x": 1.5}
    encoded = b"".join(encoder.attribute(key, value) for key, value in edge.items())
    record = (got[1][0], *got[1][1:4], "ü" * 200, *got[1][5:8], encoded, *got[1][9:])
    many = [*got, record] * 40
    expected = sdk_encoding(
        [*spans, ("ü" * 200, *spans[1][1:9], edge, *spans[1][10:])] * 40, resource
    )
    assert encoder.request([encoder.span(r) for r in many]) == expected
    assert encoder.request([encoder.span(r) for r in many]) == expected
