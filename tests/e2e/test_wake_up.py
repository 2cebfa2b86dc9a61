"""A saga started, resumed or cancelled in one process runs at once in another (SPEC §1: the
executor is told, it does not wait for its claim poll).

The worker below polls once a minute, so a saga it runs within a few seconds was handed to it
by the wake-up: PostgreSQL `LISTEN`/`NOTIFY`, or the SQLite store's datagram sockets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.model import SagaState, SagaStatus
from tests.harness import ParticipantProcess, WorkerProcess, step, wait_until, workflow_file
from tests.harness import write_config as harness_config
from workers.config import load_config
from workers.service.engine import Engine

POLL_MS = 60_000  # the claim poll: far longer than any wait below


@pytest.fixture
def world(tmp_path: Path, backend: dict[str, Any]) -> Iterator[tuple[Engine, WorkerProcess]]:
    proc = ParticipantProcess(
        {
            "Inventory.Reserve": {
                "fail_if_payload": {"field": "stuck", "equals": True},
                "fail": "ABORTED",
            }
        },
        tmp_path,
    )
    workflow_file(
        tmp_path / "wf",
        "two",
        [
            step(
                "reserve",
                "inventory-service",
                "Inventory.Reserve",
                "Inventory.Release",
                on_failure="pause",
            ),
            step("charge", "payment-service", "Payment.Charge", "Payment.Refund"),
        ],
    )
    config = harness_config(
        tmp_path / "c.yaml",
        port=proc.port,
        workflow_dir=tmp_path / "wf",
        extra={"saga": {"claim_interval_ms": POLL_MS}},
        **backend,
    )
    api = Engine.from_config(load_config(str(config), environ={}), execute=False)
    api.start()  # registers the workflow; this process never executes
    worker = WorkerProcess(config, tmp_path / "worker.log")
    try:
        # The worker's first claim (at start) happens before anything exists to claim; after
        # it, only a wake-up (or the minute poll) makes it claim again.
        wait_until(
            lambda: "recovered 0 sagas at start" in worker.log_text(),
            30,
            what="the worker's first claim",
        )
        time.sleep(0.3)
        yield api, worker
    finally:
        worker.stop()
        api.close()
        proc.stop()


def _status(api: Engine, saga_id: str) -> SagaStatus:
    return api.get_saga(saga_id)[0].status


def _paused_saga(api: Engine) -> SagaState:
    """A saga whose first step failed and paused it (`on_failure: pause`)."""
    saga, _ = api.start_saga("two", {"stuck": True})
    wait_until(
        lambda: _status(api, saga.saga_id) is SagaStatus.PAUSED,
        5,
        what="the failed step to pause the saga",
    )
    return saga


def test_a_saga_started_by_another_process_runs_at_once(
    world: tuple[Engine, WorkerProcess],
) -> None:
    api, _ = world
    took = []
    for i in range(5):
        t0 = time.monotonic()
        saga_id = api.start_saga("two", {"n": i})[0].saga_id
        wait_until(
            lambda sid=saga_id: _status(api, sid) is SagaStatus.COMPLETED,  # type: ignore[misc]
            5,
            interval=0.005,
            what="the saga to complete without a claim poll",
        )
        took.append(time.monotonic() - t0)
    assert max(took) < 5.0
    assert sorted(took)[2] < 1.0, took  # the median: well under the minute poll


def test_a_resumed_saga_runs_at_once(world: tuple[Engine, WorkerProcess]) -> None:
    api, _ = world
    saga = _paused_saga(api)
    api.resume_saga(saga.saga_id, "retry", {"stuck": False})
    wait_until(
        lambda: _status(api, saga.saga_id) is SagaStatus.COMPLETED,
        5,
        what="the resumed saga to complete without a claim poll",
    )


def test_a_paused_saga_cancelled_compensates_at_once(world: tuple[Engine, WorkerProcess]) -> None:
    api, _ = world
    saga = _paused_saga(api)
    api.cancel_saga(saga.saga_id)
    wait_until(
        lambda: api.get_saga(saga.saga_id)[0].terminal,
        5,
        what="the cancelled saga to end without a claim poll",
    )
    assert _status(api, saga.saga_id) in (SagaStatus.CANCELLED, SagaStatus.FAILED)
