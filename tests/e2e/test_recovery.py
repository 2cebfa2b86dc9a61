"""Crashes and freezes of real worker processes: kill -9, SIGSTOP past the lease, several
workers on one store. Sagas must reach the right end with no step log lost or doubled, and a
de-duplicating participant must apply each step's effect once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from saga.model import SagaStatus
from tests.harness import (
    PYTHON,
    ROOT,
    ParticipantProcess,
    WorkerProcess,
    free_port,
    step,
    wait_until,
    workflow_file,
    write_config,
)
from workers.config import load_config
from workers.service.engine import Engine

STEPS = [
    step("reserve", "inventory-service", "Inventory.Reserve", "Inventory.Release"),
    step("charge", "payment-service", "Payment.Charge", "Payment.Refund"),
    step(
        "ship", "shipping-service", "Shipping.Create", "Shipping.Cancel", retry={"max_attempts": 1}
    ),
]

# The step logs of a saga whose three steps all succeeded, in order.
COMPLETED_TRAIL = [
    ("reserve", "EXECUTE", "SUCCESS"),
    ("charge", "EXECUTE", "SUCCESS"),
    ("ship", "EXECUTE", "SUCCESS"),
]


class World:
    def __init__(
        self, tmp: Path, backend: dict[str, Any], behaviour: dict[str, Any], **config: Any
    ) -> None:
        self.tmp = tmp
        self.participant = ParticipantProcess(behaviour, tmp)
        workflow_file(tmp / "wf", "three", STEPS)
        self.config_path = write_config(
            tmp / "c.yaml", port=self.participant.port, workflow_dir=tmp / "wf", **backend, **config
        )
        self.client = Engine.from_config(
            load_config(str(self.config_path), environ={}), execute=False
        )
        self.client.start()
        self.workers: list[WorkerProcess] = []

    def worker(self) -> WorkerProcess:
        proc = WorkerProcess(self.config_path, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    def start(self, n: int) -> list[str]:
        return [self.client.start_saga("three", {"n": i})[0].saga_id for i in range(n)]

    def all_ended(self, ids: list[str], timeout: float) -> list[Any]:
        def ended() -> bool:
            page = self.client.list_sagas(page_size=100, status="STARTED").total_count
            page += self.client.list_sagas(page_size=100, status="RUNNING").total_count
            page += self.client.list_sagas(page_size=100, status="COMPENSATING").total_count
            return page == 0

        wait_until(ended, timeout, interval=0.2, what="every saga to end")
        return [self.client.get_saga(i) for i in ids]

    def close(self) -> None:
        for proc in self.workers:
            proc.stop()
        self.client.close()
        self.participant.stop()


@pytest.fixture
def world_factory(tmp_path: Path, backend: dict[str, Any]) -> Iterator[Any]:
    made: list[World] = []

    def make(behaviour: dict[str, Any], **config: Any) -> World:
        made.append(World(tmp_path, backend, behaviour, **config))
        return made[-1]

    yield make
    for world in made:
        world.close()


def assert_logs_exactly(results: list[Any], expected: list[tuple[str, str, str]]) -> None:
    for state, logs in results:
        got = [(g.step_name, g.action.value, g.status.value) for g in logs]
        assert got == expected, (state.saga_id, got)
        assert len({g.id for g in logs}) == len(logs)


def assert_each_charge_sent_twice(world: World) -> None:
    """Each charge was in flight at the crash and re-sent once after it, with the same key."""
    charges = Counter(
        c["metadata"]["idempotency-key"]
        for c in world.participant.calls()
        if c["path"] == "/Payment/Charge"
    )
    assert set(charges.values()) == {2}, "each charge was re-sent once after the crash, same key"


def recovered_in_log(worker: WorkerProcess) -> int:
    """The sagas a worker said it recovered (at start, and as leases expired later)."""
    return sum(int(n) for n in re.findall(r"recovered (\d+) sagas", worker.log_text()))


def assert_applied_once(world: World) -> None:
    applied = world.participant.record()["applied"]
    doubled = {k: v for k, v in applied.items() if v != 1}
    assert not doubled, doubled


def test_kill_9_in_the_middle_of_a_step(world_factory: Any) -> None:
    """kill -9 while 20 sagas wait on step 2; a new worker finishes all: COMPLETED, logs once, effects once."""
    world = world_factory({"Payment.Charge": {"sleep_ms": 1500}})
    first = world.worker()
    ids = world.start(20)
    wait_until(
        lambda: sum(c["path"] == "/Payment/Charge" for c in world.participant.calls()) >= 20,
        30,
        what="20 charges in flight",
    )
    first.kill9()
    second = world.worker()
    results = world.all_ended(ids, 60)
    assert all(state.status is SagaStatus.COMPLETED for state, _ in results)
    assert_logs_exactly(results, COMPLETED_TRAIL)
    assert_applied_once(world)
    assert_each_charge_sent_twice(world)
    wait_until(
        lambda: recovered_in_log(second) == 20, 10, what="recovery log lines adding up to 20"
    )


def test_kill_9_of_saga_serve_while_the_sagas_it_accepted_run(world_factory: Any) -> None:
    """`saga serve` runs the sagas started through its REST API itself; kill -9 of all its
    processes while 20 wait on step 2; a worker started afterwards finishes all: COMPLETED,
    logs once, effects once."""
    rest, grpc_port = free_port(), free_port()
    world = world_factory(
        {"Payment.Charge": {"sleep_ms": 1500}},
        extra={
            "server": {"host": "127.0.0.1", "port": rest, "workers": 2, "threads": 4},
            "grpc": {"host": "127.0.0.1", "port": grpc_port},
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_SAGA")}
    with open(world.tmp / "serve.log", "wb") as log:
        serve = subprocess.Popen(
            [PYTHON, "-m", "saga_cli", "serve", "--config", str(world.config_path)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{rest}"
    try:

        def ready() -> bool:
            assert serve.poll() is None, (world.tmp / "serve.log").read_text()[-2000:]
            try:
                return requests.get(f"{url}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, interval=0.2, what="saga serve to be ready")
        ids = []
        for i in range(20):
            answer = requests.post(
                f"{url}/api/v1/sagas", json={"workflow_name": "three", "payload": {"n": i}}
            )
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["saga_id"])
        wait_until(
            lambda: sum(c["path"] == "/Payment/Charge" for c in world.participant.calls()) >= 20,
            30,
            what="20 charges in flight",
        )
    finally:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait(10)
    world.worker()
    results = world.all_ended(ids, 60)
    assert all(state.status is SagaStatus.COMPLETED for state, _ in results)
    assert_logs_exactly(results, COMPLETED_TRAIL)
    assert_applied_once(world)
    assert_each_charge_sent_twice(world)


def test_kill_9_in_the_middle_of_compensation(world_factory: Any) -> None:
    """kill -9 while refunds run; a new worker finishes compensation: FAILED, every log once, effects once."""
    world = world_factory(
        {
            "Shipping.Create": {"fail": "FAILED_PRECONDITION", "message": "no courier"},
            "Payment.Refund": {"sleep_ms": 1500},
        }
    )
    first = world.worker()
    ids = world.start(10)
    wait_until(
        lambda: sum(c["path"] == "/Payment/Refund" for c in world.participant.calls()) >= 10,
        30,
        what="10 refunds in flight",
    )
    first.kill9()
    world.worker()
    results = world.all_ended(ids, 60)
    assert all(state.status is SagaStatus.FAILED for state, _ in results)
    assert_logs_exactly(
        results,
        [
            ("reserve", "EXECUTE", "SUCCESS"),
            ("charge", "EXECUTE", "SUCCESS"),
            ("ship", "EXECUTE", "FAILED"),
            ("charge", "COMPENSATE", "SUCCESS"),
            ("reserve", "COMPENSATE", "SUCCESS"),
        ],
    )
    assert_applied_once(world)


def test_a_frozen_worker_loses_its_sagas_and_its_late_writes_are_fenced(world_factory: Any) -> None:
    """SIGSTOP past the lease: another worker takes the sagas over; the thawed one's commits change nothing."""
    world = world_factory({"Payment.Charge": {"sleep_ms": 800}}, lease_secs=1.5)
    frozen = world.worker()
    ids = world.start(8)
    wait_until(
        lambda: sum(c["path"] == "/Payment/Charge" for c in world.participant.calls()) >= 8,
        30,
        what="8 charges in flight",
    )
    frozen.signal(signal.SIGSTOP)
    time.sleep(2.0)  # past the 1.5 s lease, while the charges answer into the frozen process
    rescuer = world.worker()
    results = world.all_ended(ids, 60)
    frozen.signal(signal.SIGCONT)
    wait_until(lambda: "lease lost" in frozen.log_text(), 15, what="the thawed worker to be fenced")
    time.sleep(0.5)
    after = [world.client.get_saga(i) for i in ids]
    assert [(s.status, len(g)) for s, g in after] == [(s.status, len(g)) for s, g in results]
    assert all(state.status is SagaStatus.COMPLETED for state, _ in after)
    assert_logs_exactly(
        after,
        COMPLETED_TRAIL,
    )
    assert_applied_once(world)
    assert "taken over" in rescuer.log_text()


@pytest.mark.parametrize("workers", [2, 4])
def test_several_workers_share_the_sagas_without_running_a_step_twice(
    world_factory: Any, workers: int, backend: dict[str, Any]
) -> None:
    """N workers drive 500 sagas to the end; each step is called once and applied once."""
    world = world_factory({}, lease_secs=10)
    for _ in range(workers):
        world.worker()
    ids = world.start(500)
    results = world.all_ended(ids, 180)
    assert all(state.status is SagaStatus.COMPLETED for state, _ in results)
    assert_logs_exactly(
        results,
        COMPLETED_TRAIL,
    )
    calls = Counter(c["metadata"]["idempotency-key"] for c in world.participant.calls())
    assert len(calls) == 1500 and set(calls.values()) == {1}
    assert_applied_once(world)
