"""Tracing across a crash (SPEC §12): sagas started with a caller's `traceparent`, their
`saga worker` killed with kill -9 mid-saga, another worker taking them over. The trace is stored
with the saga, so every participant call before and after the crash carries the caller's
trace, and the spans both workers export to a real OTLP receiver form one tree per saga."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.model import SagaStatus
from tests.harness import (
    ParticipantProcess,
    WorkerProcess,
    step,
    wait_until,
    workflow_file,
    write_config,
)
from tests.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from workers.adapters.tracing import trace_id_of
from workers.config import load_config
from workers.service.engine import Engine

STEPS = [
    step("reserve", "inventory-service", "Inventory.Reserve", "Inventory.Release"),
    step("charge", "payment-service", "Payment.Charge", "Payment.Refund"),
    step("ship", "shipping-service", "Shipping.Create", "Shipping.Cancel"),
]
SAGAS = 5
# Workers export what they have every 100 ms, so the first one's spans reach the receiver
# before it is killed.
WORKER_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


def test_a_recovered_saga_stays_in_its_callers_trace(
    tmp_path: Path, backend: dict[str, Any], receiver: OtlpReceiver
) -> None:
    """kill -9 while five traced sagas wait on step 2: after another worker takes over, every call, before and after, carries the caller's trace id, and the step spans of both workers hang from the same saga span."""
    participant = ParticipantProcess({"Payment.Charge": {"sleep_ms": 1500}}, tmp_path)
    workflow_file(tmp_path / "wf", "three", STEPS)
    config_path = write_config(
        tmp_path / "c.yaml",
        port=participant.port,
        workflow_dir=tmp_path / "wf",
        extra={"telemetry": {"otlp_endpoint": receiver.endpoint, "service_name": "saga-worker"}},
        **backend,
    )
    client = Engine.from_config(load_config(str(config_path), environ={}), execute=False)
    client.start()
    workers: list[WorkerProcess] = []
    try:
        callers: dict[str, tuple[str, str]] = {}  # saga id -> (trace id, caller's span id)
        for n in range(SAGAS):
            trace_id = f"{random.getrandbits(128) | 1:032x}"
            span_id = f"{random.getrandbits(64) | 1:016x}"
            state, _ = client.start_saga(
                "three", {"n": n}, traceparent=f"00-{trace_id}-{span_id}-01"
            )
            assert trace_id_of(state) == trace_id
            callers[state.saga_id] = (trace_id, span_id)

        first = WorkerProcess(config_path, tmp_path / "worker-0.log", env=WORKER_ENV)
        workers.append(first)
        wait_until(
            lambda: sum(c["path"] == "/Payment/Charge" for c in participant.calls()) >= SAGAS,
            30,
            what="every charge in flight",
        )
        for trace_id, _ in callers.values():
            receiver.wait_for(trace_id, "execute reserve")
        first.kill9()
        before = len(participant.calls())

        second = WorkerProcess(config_path, tmp_path / "worker-1.log", env=WORKER_ENV)
        workers.append(second)

        def all_ended() -> bool:
            return all(client.get_saga(s)[0].terminal for s in callers)

        wait_until(all_ended, 60, interval=0.2, what="every saga to end")
        assert second.stop() == 0  # a clean stop exports what is left
        for saga_id in callers:
            state, _ = client.get_saga(saga_id)
            assert state.status is SagaStatus.COMPLETED
            assert trace_id_of(state) == callers[saga_id][0]

        calls = participant.calls()
        after = calls[before:]
        assert Counter(c["path"] for c in after) == {
            "/Payment/Charge": SAGAS,
            "/Shipping/Create": SAGAS,
        }, "each charge was re-sent once by the second worker, then shipped"
        for call in calls:
            trace_id, _ = callers[call["metadata"]["x-saga-id"]]
            version, sent_trace, _, flags = call["metadata"]["traceparent"].split("-")
            assert (version, sent_trace, flags) == ("00", trace_id, "01"), call["metadata"]

        for saga_id, (trace_id, caller_span) in callers.items():
            spans = receiver.wait_for(trace_id, "saga ")
            assert_one_tree(receiver.spans(trace_id), caller_span)
            # The calls made after the crash are the attempts the second worker reported.
            mine = {c["metadata"]["traceparent"].split("-")[2] for c in after if ours(c, saga_id)}
            reported = {s.span_id for s in receiver.spans(trace_id) if s.kind == 3}
            assert mine <= reported
            assert spans[0].attributes["saga.status"] == "COMPLETED"
    finally:
        for worker in workers:
            worker.stop()
        client.close()
        participant.stop()


def ours(call: dict[str, Any], saga_id: str) -> bool:
    return bool(call["metadata"].get("x-saga-id") == saga_id)


def assert_one_tree(spans: list[ReceivedSpan], caller_span: str) -> None:
    """One saga span under the caller's; the step spans of both workers under it (the charge
    the first worker never finished reports no span); each attempt under a step span."""
    [saga] = [s for s in spans if s.name.startswith("saga ")]
    assert saga.parent_span_id == caller_span
    steps = [s for s in spans if s.name.split(" ")[0] in ("execute", "compensate")]
    assert sorted(s.name for s in steps) == [
        "execute charge",
        "execute reserve",
        "execute ship",
    ]
    assert {s.parent_span_id for s in steps} == {saga.span_id}
    step_ids = {s.span_id for s in steps}
    attempts = [s for s in spans if s.kind == 3]
    assert {a.parent_span_id for a in attempts} <= step_ids
    assert sorted(a.attributes["saga.step"] for a in attempts) == ["charge", "reserve", "ship"]
