"""SAGA_PAUSED and SAGA_RESUMED through the outbox relay to a real Kafka broker (SPEC §6, §11),
read back with a kafka-python consumer: in order per saga among the saga's other events, with
the SPEC §6 body, `status` the saga's status after the change (SAGA_RESUMED: the status it
resumed into) and `payload` the payload as it was then (a replaced one from the resume on)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.model import SagaState
from tests.integration.test_events_kafka import (
    RFC3339_MS,
    SPEC_FIELDS,
    by_saga,
    kafka_config,
    new_topic,
)
from tests.services import require_kafka
from workers.adapters.store.sqlite import SqliteStore
from workers.config import Config, SagaSection, ServiceEndpoint
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

WORKFLOW = """\
name: ev-pause
on_failure: pause
steps:
  - name: reserve
    service: svc
    method: Svc.Reserve
    compensate: Svc.Undo
    retry: {max_attempts: 1}
  - name: hold
    service: svc
    method: Svc.Slow
    retry: {max_attempts: 1}
  - name: charge
    service: svc
    method: Svc.Charge
    retry: {max_attempts: 1}
"""
BEHAVIOUR = {
    "Svc.Charge": {
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "card declined",
    },
    "Svc.Slow": {"sleep_ms": 800},
}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    bootstrap = require_kafka()
    participant, port = start_participant_server(BEHAVIOUR)
    config = Config(
        kafka=kafka_config(bootstrap, new_topic()),
        services={"svc": ServiceEndpoint("127.0.0.1", port)},
        saga=SagaSection(
            sqlite_path=str(tmp_path / "saga.sqlite3"),
            workflow_dir=str(tmp_path / "none"),
            claim_interval_ms=50,
        ),
    )
    made = Engine(config, SqliteStore(config.saga.sqlite_path, outbox=True))
    made.start()
    made.register_workflow(WORKFLOW)
    try:
        yield made
    finally:
        made.close(grace_secs=5)
        participant.stop(0)


def wait_status(engine: Engine, saga_id: str, *statuses: str, timeout: float = 20) -> SagaState:
    deadline = time.monotonic() + timeout
    while True:
        state, _ = engine.get_saga(saga_id)
        if state.status.value in statuses:
            return state
        assert time.monotonic() < deadline, f"saga {saga_id} still {state.status.value}"
        time.sleep(0.03)


def consume_until_ended(
    bootstrap: str, topic: str, saga_ids: set[str], timeout: float, settle: float = 1.5
) -> list[tuple[bytes, dict[str, Any]]]:
    """Every message of `topic` as (key, JSON value), in partition order, read until each saga
    in `saga_ids` published the event of its end (then `settle` seconds more)."""
    from kafka import KafkaConsumer

    ends = {"SAGA_COMPLETED", "SAGA_FAILED", "SAGA_CANCELLED"}
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[bootstrap],
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    messages: list[tuple[bytes, dict[str, Any]]] = []
    ended: set[str] = set()
    try:
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            for records in consumer.poll(timeout_ms=250).values():
                for record in records:
                    body = json.loads(record.value)
                    messages.append((record.key, body))
                    if body["event_type"] in ends:
                        ended.add(body["saga_id"])
            if settle_until is None and saga_ids <= ended:
                settle_until = time.monotonic() + settle
    finally:
        consumer.close()
    assert saga_ids <= ended, f"{len(saga_ids - ended)} sagas' end events never arrived"
    return messages


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["event_type"], e["status"]) for e in events]


@pytest.mark.kafka
def test_paused_and_resumed_events_arrive_in_order_with_the_spec_body(engine: Engine) -> None:
    """A saga paused by a failure and resumed with retry and a new payload publishes RUNNING,
    PAUSED, RESUMED (RUNNING), COMPLETED; one resumed with compensate publishes RUNNING, PAUSED,
    RESUMED (COMPENSATING), COMPENSATING, FAILED; one paused on request and resumed publishes
    PAUSED and RESUMED around its pause; each with every SPEC §6 field."""
    assert engine.config.kafka is not None
    topic = engine.config.kafka.topics.publish
    retried, _ = engine.start_saga("ev-pause", {"card": "declined"}, correlation_id="ev-retry")
    compensated, _ = engine.start_saga("ev-pause", {"card": "declined"}, correlation_id="ev-comp")
    requested, _ = engine.start_saga("ev-pause", {"card": "ok"}, correlation_id="ev-request")
    wait_status(engine, requested.saga_id, "RUNNING")
    engine.pause_saga(requested.saga_id)
    wait_status(engine, retried.saga_id, "PAUSED")
    wait_status(engine, compensated.saga_id, "PAUSED")
    wait_status(engine, requested.saga_id, "PAUSED")
    engine.resume_saga(retried.saga_id, "retry", {"card": "ok", "second": True})
    engine.resume_saga(compensated.saga_id, "compensate")
    engine.resume_saga(requested.saga_id)
    final = {
        s.saga_id: wait_status(engine, s.saga_id, "COMPLETED", "FAILED", "CANCELLED")
        for s in (retried, compensated, requested)
    }
    assert [final[s.saga_id].status.value for s in (retried, compensated, requested)] == [
        "COMPLETED",
        "FAILED",
        "COMPLETED",
    ]

    messages = consume_until_ended(require_kafka(), topic, set(final), timeout=30)
    grouped = by_saga(messages)

    assert kinds(grouped[retried.saga_id]) == [
        ("SAGA_RUNNING", "RUNNING"),
        ("SAGA_PAUSED", "PAUSED"),
        ("SAGA_RESUMED", "RUNNING"),
        ("SAGA_COMPLETED", "COMPLETED"),
    ]
    assert kinds(grouped[compensated.saga_id]) == [
        ("SAGA_RUNNING", "RUNNING"),
        ("SAGA_PAUSED", "PAUSED"),
        ("SAGA_RESUMED", "COMPENSATING"),
        ("SAGA_COMPENSATING", "COMPENSATING"),
        ("SAGA_FAILED", "FAILED"),
    ]
    assert kinds(grouped[requested.saga_id]) == [
        ("SAGA_RUNNING", "RUNNING"),
        ("SAGA_PAUSED", "PAUSED"),
        ("SAGA_RESUMED", "RUNNING"),
        ("SAGA_COMPLETED", "COMPLETED"),
    ]
    for saga_id, events in grouped.items():
        stamps = [e["timestamp"] for e in events]
        assert stamps == sorted(stamps)
        for event in events:
            assert set(event) == SPEC_FIELDS
            assert event["saga_id"] == saga_id and event["workflow_name"] == "ev-pause"
            assert RFC3339_MS.fullmatch(event["timestamp"])
    paused, resumed = grouped[retried.saga_id][1:3]
    assert "card declined" in paused["error_message"] and paused["current_step"] == 2
    assert paused["payload"] == {"card": "declined"}
    assert resumed["payload"] == {"card": "ok", "second": True}
    assert resumed["error_message"] is None and resumed["current_step"] == 2
    assert grouped[retried.saga_id][-1]["payload"] == {"card": "ok", "second": True}
