"""The scaled-out topology of the README: gunicorn API processes that only serve, `saga worker`
processes that only execute, one PostgreSQL, events to Kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import requests

from tests.harness import (
    ROOT,
    ParticipantProcess,
    WorkerProcess,
    free_port,
    wait_until,
    write_config,
)
from tests.services import require_kafka


def test_api_processes_and_workers_share_one_postgres_and_publish_to_kafka(
    tmp_path: Path, postgres_database: str
) -> None:
    """2 API-only gunicorn workers + 2 saga workers: 60 sagas through REST all end, every event is in Kafka."""
    from kafka import KafkaConsumer

    bootstrap = require_kafka()
    topic = f"saga-scaled-{uuid.uuid4().hex[:8]}"
    participant = ParticipantProcess(
        {
            "PaymentService.Charge": {
                "fail_if_payload": {"field": "card", "equals": "declined"},
                "fail": "FAILED_PRECONDITION",
            }
        },
        tmp_path,
    )
    port = free_port()
    config = write_config(
        tmp_path / "scaled.yaml",
        port=participant.port,
        database_url=postgres_database,
        workflow_dir=ROOT / "workflows",
        lease_secs=5,
        extra={
            "server": {"host": "127.0.0.1", "port": port, "workers": 2},
            "saga": {"execute": False},
            "kafka": {"brokers": [bootstrap], "topics": {"publish": topic}},
        },
    )
    env = {**os.environ, "CONFIG_PATH": str(config)}
    env.pop("DATABASE_URL", None)
    api_log = open(tmp_path / "api.log", "wb")  # noqa: SIM115
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "saga_http" / "gunicorn.conf.py"),
            "saga_http.wsgi:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=api_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    workers = [WorkerProcess(config, tmp_path / f"worker-{i}.log") for i in range(2)]
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return requests.get(f"{url}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, interval=0.2, what="the API")
        session = requests.Session()
        ids = {}
        for i in range(60):
            card = "declined" if i % 4 == 0 else "ok"
            body = {"workflow_name": "order-fulfillment", "payload": {"i": i, "card": card}}
            ids[session.post(f"{url}/api/v1/sagas", json=body, timeout=10).json()["saga_id"]] = card

        def statuses() -> dict[str, str]:
            return {
                i: session.get(f"{url}/api/v1/sagas/{i}", timeout=10).json()["saga"]["status"]
                for i in ids
            }

        final = wait_until(
            lambda: (
                (s := statuses()) and all(v in ("COMPLETED", "FAILED") for v in s.values()) and s
            ),
            90,
            interval=0.5,
            what="every saga to end",
        )
        assert all(
            final[i] == ("FAILED" if card == "declined" else "COMPLETED") for i, card in ids.items()
        )
        for worker in workers:
            assert "executing sagas" in worker.log_text()

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=2000,
            enable_auto_commit=False,
        )
        seen: dict[str, list[str]] = {}

        def drained() -> bool:
            for message in consumer:
                event = json.loads(message.value)
                assert message.key.decode() == event["saga_id"]
                kinds = seen.setdefault(event["saga_id"], [])
                if event["event_type"] not in kinds:
                    kinds.append(event["event_type"])
            return len(seen) == 60 and all(
                k[-1] in ("SAGA_COMPLETED", "SAGA_FAILED") for k in seen.values()
            )

        wait_until(drained, 60, interval=0.1, what="every saga's events in Kafka")
        consumer.close()
        for saga_id, card in ids.items():
            expected = (
                ["SAGA_RUNNING", "SAGA_COMPENSATING", "SAGA_FAILED"]
                if card == "declined"
                else ["SAGA_RUNNING", "SAGA_COMPLETED"]
            )
            assert seen[saga_id] == expected
    finally:
        for worker in workers:
            assert worker.stop() == 0
        if api.poll() is None:
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
        api_log.close()
        participant.stop()
