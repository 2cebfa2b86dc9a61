"""Saga events through the outbox relay to a real Kafka broker (SPEC §6), read back with a
kafka-python consumer: content and order per saga, a broker outage, a kill -9 between commit and
publish, two relays on one store, and no outbox without a `kafka` section.

Each test publishes to its own topic (the broker auto-creates it). The outage test stops and
restarts the shared test broker (`scripts/kafka.sh`), always restarting it in a `finally`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.codec import format_timestamp
from saga.model import EventType, SagaState, event_id
from tests.services import REPO_ROOT, require_kafka, require_postgres
from workers.adapters.relay import OutboxRelay
from workers.adapters.store.base import Store
from workers.adapters.store.sqlite import SqliteStore
from workers.config import (
    Config,
    KafkaConfig,
    SagaSection,
    ServiceEndpoint,
    TopicsConfig,
)
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine, open_store

KAFKA_SH = REPO_ROOT / "scripts" / "kafka.sh"
KAFKA_ENV = REPO_ROOT / ".services" / "kafka.env"

SPEC_FIELDS = {
    "event_id",
    "event_type",
    "saga_id",
    "workflow_name",
    "status",
    "current_step",
    "correlation_id",
    "error_message",
    "payload",
    "timestamp",
}
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
STATUS_AFTER = {
    "SAGA_RUNNING": "RUNNING",
    "SAGA_COMPLETED": "COMPLETED",
    "SAGA_COMPENSATING": "COMPENSATING",
    "SAGA_FAILED": "FAILED",
    "SAGA_CANCELLED": "CANCELLED",
}
COMPLETED = ("SAGA_RUNNING", "SAGA_COMPLETED")
FAILED = ("SAGA_RUNNING", "SAGA_COMPENSATING", "SAGA_FAILED")
CANCELLED = ("SAGA_RUNNING", "SAGA_COMPENSATING", "SAGA_CANCELLED")

_STEP = """
  - name: {name}
    service: svc
    method: {method}
    compensate: Svc.Undo
    retry:
      max_attempts: 1
"""
WORKFLOWS = {
    "relay-one": ["Svc.Reserve"],
    "relay-ok": ["Svc.Reserve", "Svc.Charge"],
    "relay-fail": ["Svc.Reserve", "Svc.Decline"],
    "relay-slow": ["Svc.Slow", "Svc.Charge"],
}
BEHAVIOUR = {
    "Svc.Decline": {"fail": "FAILED_PRECONDITION", "message": "card declined"},
    "Svc.Slow": {"sleep_ms": 1500},
}


# ---------------------------------------------------------------- helpers


def write_workflows(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, methods in WORKFLOWS.items():
        steps = "".join(
            _STEP.format(name=f"step-{i}", method=method) for i, method in enumerate(methods)
        )
        (directory / f"{name}.yaml").write_text(f"name: {name}\nsteps:{steps}", encoding="utf-8")
    return directory


def new_topic() -> str:
    return f"t-{uuid.uuid4().hex}"


def kafka_config(bootstrap: str, topic: str) -> KafkaConfig:
    return KafkaConfig(brokers=[bootstrap], topics=TopicsConfig(publish=topic))


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_terminal(store: Store, saga_ids: list[str], timeout: float) -> dict[str, SagaState]:
    """The final states of these sagas; fails when one is not terminal within `timeout`."""
    done: dict[str, SagaState] = {}

    def all_done() -> bool:
        for saga_id in saga_ids:
            if saga_id not in done:
                state = store.get_saga(saga_id)
                if state is not None and state.terminal:
                    done[saga_id] = state
        return len(done) == len(saga_ids)

    wait_until(all_done, timeout, f"{len(saga_ids)} sagas to end", interval=0.1)
    return done


def expected_ids(types_by_saga: dict[str, tuple[str, ...]]) -> set[str]:
    return {
        event_id(saga_id, EventType(kind))
        for saga_id, kinds in types_by_saga.items()
        for kind in kinds
    }


def consume(
    bootstrap: str, topic: str, want: set[str], timeout: float, settle: float = 1.0
) -> list[tuple[bytes, dict[str, Any]]]:
    """Every message of `topic` as (key, JSON value), in partition order, read until each
    event id in `want` arrived (then `settle` seconds more, to see duplicates) or `timeout`."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[bootstrap],
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    messages: list[tuple[bytes, dict[str, Any]]] = []
    seen: set[str] = set()
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
                    seen.add(body["event_id"])
            if settle_until is None and want <= seen:
                settle_until = time.monotonic() + settle
    finally:
        consumer.close()
    missing = want - seen
    assert not missing, f"{len(missing)} of {len(want)} events never arrived within {timeout}s"
    return messages


def by_saga(messages: list[tuple[bytes, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Per saga, its events in arrival order with duplicates (same event_id) dropped, after
    checking that every duplicate is byte-for-byte the same event under the same key."""
    first: dict[str, tuple[bytes, dict[str, Any]]] = {}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for key, body in messages:
        known = first.get(body["event_id"])
        if known is not None:
            assert known == (key, body), f"duplicate {body['event_id']} differs from the first"
            continue
        first[body["event_id"]] = (key, body)
        assert key == body["saga_id"].encode(), "message key is not the saga id"
        grouped.setdefault(body["saga_id"], []).append(body)
    return grouped


def assert_order(
    grouped: dict[str, list[dict[str, Any]]], expected: dict[str, tuple[str, ...]]
) -> None:
    for saga_id, kinds in expected.items():
        got = tuple(e["event_type"] for e in grouped.get(saga_id, []))
        assert got == kinds, f"saga {saga_id}: events {got}, expected {kinds}"
    assert set(grouped) == set(expected), "events of unexpected sagas on the topic"


def publish_errors() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("saga_outbox_publish_errors_total") or 0.0


def kafka_sh(command: str) -> str:
    done = subprocess.run(
        ["bash", str(KAFKA_SH), command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"kafka.sh {command} failed: {done.stdout}{done.stderr}"
    return done.stdout.strip()


@pytest.fixture
def participant() -> Iterator[int]:
    server, port = start_participant_server(BEHAVIOUR)
    try:
        yield port
    finally:
        server.stop(0)


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return write_workflows(tmp_path / "workflows")


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines made by a test; closed (relay stopped before the store) at its end."""
    made: list[Engine] = []
    try:
        yield made
    finally:
        for engine in made:
            engine.close(grace_secs=5)


def make_config(tmp_path: Path, workflow_dir: Path, port: int, kafka: KafkaConfig | None) -> Config:
    return Config(
        kafka=kafka,
        services={"svc": ServiceEndpoint("127.0.0.1", port)},
        saga=SagaSection(
            sqlite_path=str(tmp_path / "saga.sqlite3"),
            workflow_dir=str(workflow_dir),
            claim_interval_ms=50,
        ),
    )


# ---------------------------------------------------------------- tests


@pytest.mark.kafka
def test_completed_failed_and_cancelled_sagas_publish_their_events_in_order_with_every_field(
    tmp_path: Path, workflow_dir: Path, participant: int, engines: list[Engine]
) -> None:
    """Per saga, the events of its status changes arrive in order, keyed by saga id, with every
    SPEC §6 field set from the saga as it was after the change."""
    bootstrap = require_kafka()
    topic = new_topic()
    config = make_config(tmp_path, workflow_dir, participant, kafka_config(bootstrap, topic))
    engine = Engine(config, SqliteStore(config.saga.sqlite_path, outbox=True))
    engines.append(engine)
    engine.start()

    payloads = {
        "relay-ok": {"order": "o-1", "amount": 12.5, "items": [1, 2]},
        "relay-fail": {"order": "o-2", "card": "declined"},
        "relay-slow": {"order": "o-3", "note": "cancel me"},
    }
    ids: dict[str, str] = {}
    for name, payload in payloads.items():
        saga, _ = engine.start_saga(name, payload, correlation_id=f"corr-{name}")
        ids[name] = saga.saga_id
    slow = ids["relay-slow"]
    wait_until(
        lambda: engine.store.get_saga(slow).status.value == "RUNNING",  # type: ignore[union-attr]
        10,
        "the slow saga to run",
        interval=0.01,
    )
    engine.cancel_saga(slow)
    final = wait_terminal(engine.store, list(ids.values()), 30)
    assert {name: final[sid].status.value for name, sid in ids.items()} == {
        "relay-ok": "COMPLETED",
        "relay-fail": "FAILED",
        "relay-slow": "CANCELLED",
    }

    expected = {ids["relay-ok"]: COMPLETED, ids["relay-fail"]: FAILED, slow: CANCELLED}
    messages = consume(bootstrap, topic, expected_ids(expected), timeout=30)
    event_ids = [body["event_id"] for _, body in messages]
    assert len(event_ids) == len(set(event_ids)) == 8, "an event is missing or duplicated"
    grouped = by_saga(messages)
    assert_order(grouped, expected)

    for name, saga_id in ids.items():
        events = grouped[saga_id]
        state = final[saga_id]
        stamps = [e["timestamp"] for e in events]
        assert stamps == sorted(stamps), f"{name}: timestamps go backwards: {stamps}"
        for event in events:
            assert set(event) == SPEC_FIELDS, f"{name}: fields {sorted(event)}"
            kind = event["event_type"]
            assert event["event_id"] == event_id(saga_id, EventType(kind))
            assert event["saga_id"] == saga_id
            assert event["workflow_name"] == name
            assert event["status"] == STATUS_AFTER[kind], f"{name} {kind}: {event['status']}"
            assert event["correlation_id"] == f"corr-{name}"
            assert event["payload"] == payloads[name]
            assert RFC3339_MS.fullmatch(event["timestamp"]), event["timestamp"]
            assert isinstance(event["current_step"], int)
            assert event["error_message"] is None or isinstance(event["error_message"], str)
        running, *_, last = events
        assert running["current_step"] == 0 and running["error_message"] is None
        assert last["status"] == state.status.value
        assert last["current_step"] == state.current_step
        assert last["error_message"] == state.error_message
        assert last["timestamp"] == format_timestamp(state.updated_at)
    fail_events = grouped[ids["relay-fail"]]
    assert "card declined" in (fail_events[1]["error_message"] or ""), fail_events[1]
    assert "card declined" in (fail_events[2]["error_message"] or ""), fail_events[2]
    assert grouped[ids["relay-ok"]][-1]["current_step"] == 2
    wait_until(lambda: engine.store.outbox_stats() == (0, None), 10, "the outbox to drain")


@pytest.mark.kafka
@pytest.mark.slow
def test_broker_outage_delays_events_but_loses_none_and_sagas_keep_running(
    tmp_path: Path, workflow_dir: Path, participant: int, engines: list[Engine]
) -> None:
    """With the broker stopped, 200 sagas still run to their end and the API answers; once it
    is back, every one of their events arrives (duplicates, if any, share an event_id)."""
    bootstrap = require_kafka()
    topic = new_topic()
    config = make_config(tmp_path, workflow_dir, participant, kafka_config(bootstrap, topic))
    config.saga.max_concurrent = 200
    engine = Engine(config, SqliteStore(config.saga.sqlite_path, outbox=True))
    engines.append(engine)
    engine.start()

    # A saga published before the outage: the relay holds a live producer when the broker goes.
    warm, _ = engine.start_saga("relay-ok", {"n": -1})
    wait_terminal(engine.store, [warm.saga_id], 15)
    expected: dict[str, tuple[str, ...]] = {warm.saga_id: COMPLETED}
    consume(bootstrap, topic, expected_ids(expected), timeout=30, settle=0)

    errors_before = publish_errors()
    t_stop = time.monotonic()
    try:
        kafka_sh("stop")
        stopped = time.monotonic()
        slowest_call = 0.0
        ids: list[str] = []
        for n in range(200):
            name = "relay-ok" if n % 2 else "relay-fail"
            began = time.monotonic()
            saga, _ = engine.start_saga(name, {"n": n})
            slowest_call = max(slowest_call, time.monotonic() - began)
            ids.append(saga.saga_id)
            expected[saga.saga_id] = COMPLETED if n % 2 else FAILED
        final = wait_terminal(engine.store, ids, 120)
        ran = time.monotonic() - stopped
        assert sum(s.status.value == "COMPLETED" for s in final.values()) == 100
        assert sum(s.status.value == "FAILED" for s in final.values()) == 100
        assert slowest_call < 2.0, f"start_saga took {slowest_call:.2f}s with the broker down"
        page = engine.list_sagas(page_size=100)
        assert page.total_count == 201
        state, logs = engine.get_saga(ids[0])
        assert state.terminal and logs
        waiting, oldest = engine.store.outbox_stats()
        assert waiting == 500, f"{waiting} unpublished rows, expected 500 (none published)"
        assert oldest is not None
        print(f"\n200 sagas ended in {ran:.1f}s with the broker down; outbox backlog {waiting}")
        # Stay down until the relay has given up on its sends (delivery timeout), so the way
        # back goes through a failed batch, back-off and a new producer, not just a buffer.
        wait_until(lambda: publish_errors() > errors_before, 60, "the relay to report failures")
        print(f"relay reported send failures {time.monotonic() - stopped:.1f}s into the outage")
        time.sleep(3)  # and at least one failed reconnect
    finally:
        started = time.monotonic()
        kafka_sh("start")
        print(f"broker restarted in {time.monotonic() - started:.1f}s")
    restarted = time.monotonic()
    address = KAFKA_ENV.read_text(encoding="utf-8").strip().partition("=")[2]
    assert address == bootstrap, f"the broker came back at {address}, not {bootstrap}"

    messages = consume(bootstrap, topic, expected_ids(expected), timeout=120)
    arrived = time.monotonic() - restarted
    assert_order(by_saga(messages), expected)
    unique = {body["event_id"] for _, body in messages}
    assert len(unique) == 502
    wait_until(lambda: engine.store.outbox_stats() == (0, None), 30, "the outbox to drain")
    print(
        f"all {len(unique)} events arrived {arrived:.1f}s after the restart "
        f"({len(messages) - len(unique)} duplicates); outage test took "
        f"{time.monotonic() - t_stop:.1f}s from stop"
    )


@pytest.mark.kafka
def test_events_committed_by_a_process_killed_before_publishing_are_published_after_restart(
    tmp_path: Path, workflow_dir: Path
) -> None:
    """kill -9 of a relaying process between commit and publish loses no event: a relay
    started later on the same store publishes exactly what was committed."""
    bootstrap = require_kafka()
    topic = new_topic()
    path = str(tmp_path / "saga.sqlite3")
    with socket_port() as dead:  # nothing listens here: the child's relay cannot publish
        dead_broker = f"127.0.0.1:{dead}"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.relay_child",
            path,
            str(workflow_dir),
            topic,
            dead_broker,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = read_lines_until(child, "committed", timeout=60)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert any(" COMPLETED outbox 2" in line for line in lines), lines

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT saga_id, body, published_at FROM outbox ORDER BY seq").fetchall()
    assert len(rows) == 2 and all(published is None for _, _, published in rows), rows
    committed = [(saga_id.encode(), json.loads(body)) for saga_id, body, _ in rows]
    assert [body["event_type"] for _, body in committed] == list(COMPLETED)

    store = SqliteStore(path, outbox=True)
    relay = OutboxRelay(store, kafka_config(bootstrap, topic))
    relay.start()
    try:
        messages = consume(
            bootstrap, topic, {body["event_id"] for _, body in committed}, timeout=30
        )
        assert messages == committed
        wait_until(lambda: store.outbox_stats() == (0, None), 10, "the rows to be marked")
    finally:
        relay.stop(5)
        store.close()


@pytest.mark.kafka
def test_two_relays_on_one_store_keep_per_saga_order_and_lose_nothing(
    tmp_path: Path, workflow_dir: Path, participant: int, engines: list[Engine]
) -> None:
    """Two relays (different owners) draining one store's outbox while 100 sagas run: every
    event arrives and, per saga, in commit order."""
    bootstrap = require_kafka()
    topic = new_topic()
    kafka = kafka_config(bootstrap, topic)
    config = make_config(tmp_path, workflow_dir, participant, kafka)
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    try:
        from workers.adapters.store.postgres import PostgresStore
    except ImportError:
        kind = "sqlite"
        stores: list[Store] = [SqliteStore(config.saga.sqlite_path, outbox=True) for _ in "ab"]
    else:
        kind = "postgres"
        url = require_postgres()
        schema = f"t_{uuid.uuid4().hex[:8]}"
        stores = [PostgresStore(url, schema=schema, outbox=True) for _ in "ab"]

        def cleanup() -> None:
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    print(f"\ntwo relays on a {kind} store")
    relays = [
        OutboxRelay(store, kafka, owner=f"relay-{name}", batch=8, poll_interval_secs=0.02)
        for store, name in zip(stores, "ab", strict=True)
    ]
    engine = Engine(config, stores[0], relay=False)
    engines.append(engine)
    try:
        engine.start()
        for relay in relays:
            relay.start()
        expected: dict[str, tuple[str, ...]] = {}
        for n in range(100):
            name = "relay-ok" if n % 3 else "relay-fail"
            saga, _ = engine.start_saga(name, {"n": n})
            expected[saga.saga_id] = COMPLETED if n % 3 else FAILED
        wait_terminal(engine.store, list(expected), 60)
        messages = consume(bootstrap, topic, expected_ids(expected), timeout=60)
        assert_order(by_saga(messages), expected)
        wait_until(lambda: stores[1].outbox_stats() == (0, None), 10, "the outbox to drain")
        shares = [relay.published for relay in relays]
        total = sum(len(kinds) for kinds in expected.values())
        print(f"published per relay: {shares} of {total}; {len(messages)} messages")
        assert sum(shares) >= total
        assert all(shares), f"one relay published nothing: {shares}"
    finally:
        for relay in relays:
            relay.stop(5)
        stores[1].close()
        engine.close(grace_secs=5)
        engines.remove(engine)
        cleanup()


@pytest.mark.kafka
def test_an_event_the_producer_refuses_holds_back_only_its_own_saga(tmp_path: Path) -> None:
    """A row that can never be sent (over the producer's size limit) stops only its saga's
    events, without duplicates of its later rows; other sagas' events keep flowing."""
    bootstrap = require_kafka()
    topic = new_topic()
    path = str(tmp_path / "saga.sqlite3")
    store = SqliteStore(path, outbox=True)
    stuck, flowing = str(uuid.uuid4()), str(uuid.uuid4())

    def body(saga_id: str, kind: str, pad: int = 0) -> dict[str, Any]:
        return {
            "event_id": event_id(saga_id, EventType(kind)),
            "saga_id": saga_id,
            "pad": "x" * pad,
        }

    rows = [
        (stuck, "SAGA_RUNNING", body(stuck, "SAGA_RUNNING", pad=2_000_000)),
        (flowing, "SAGA_RUNNING", body(flowing, "SAGA_RUNNING")),
        (stuck, "SAGA_COMPLETED", body(stuck, "SAGA_COMPLETED")),
        (flowing, "SAGA_COMPLETED", body(flowing, "SAGA_COMPLETED")),
    ]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO outbox (event_id, saga_id, event_type, body, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(b["event_id"], sid, kind, json.dumps(b), time.time()) for sid, kind, b in rows],
        )
    errors_before = publish_errors()
    relay = OutboxRelay(store, kafka_config(bootstrap, topic), poll_interval_secs=0.02)
    relay.start()
    try:
        want = {rows[1][2]["event_id"], rows[3][2]["event_id"]}
        wait_until(lambda: publish_errors() >= errors_before + 5, 30, "repeated send failures")
        messages = consume(bootstrap, topic, want, timeout=30, settle=2.0)
        assert [(key, b["event_id"]) for key, b in messages] == [
            (flowing.encode(), rows[1][2]["event_id"]),
            (flowing.encode(), rows[3][2]["event_id"]),
        ], "the stuck saga's later event went out, or something was sent twice"
        assert relay.published == 2
        assert store.outbox_stats()[0] == 2
    finally:
        relay.stop(5)
        store.close()


def test_without_a_kafka_section_no_outbox_rows_are_written(
    tmp_path: Path, workflow_dir: Path, participant: int, engines: list[Engine]
) -> None:
    """Without a `kafka` section the engine has no relay and its sagas leave the outbox empty."""
    config = make_config(tmp_path, workflow_dir, participant, kafka=None)
    engine = Engine(config, open_store(config))
    engines.append(engine)
    assert engine.relay is None
    engine.start()
    ids = [engine.start_saga(name, {"n": 1})[0].saga_id for name in ("relay-ok", "relay-fail")]
    final = wait_terminal(engine.store, ids, 30)
    assert {s.status.value for s in final.values()} == {"COMPLETED", "FAILED"}
    assert engine.store.outbox_stats() == (0, None)
    with sqlite3.connect(config.saga.sqlite_path) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)


# ---------------------------------------------------------------- process helpers


class socket_port:
    """A free loopback port, closed again on exit (so nothing listens there)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def read_lines_until(child: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """The child's stdout lines up to `marker`; fails if it does not come within `timeout`."""
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.rstrip("\n"))
            if line.strip() == marker:
                found.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    if not found.wait(timeout):
        raise AssertionError(f"child did not print {marker!r} within {timeout}s: {lines}")
    return lines
