"""The engine end to end in one process, with real participant processes over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.errors import NotFound
from saga.model import Action, SagaStatus, StepStatus
from tests.harness import ParticipantProcess, step, wait_until, workflow_file, write_config
from workers.config import load_config
from workers.service.engine import Engine

WORKFLOW_STEPS = [
    step(
        "reserve",
        "inventory-service",
        "Inventory.Reserve",
        "Inventory.Release",
        retry={"max_attempts": 3, "initial_interval_ms": 100},
    ),
    step(
        "charge",
        "payment-service",
        "pay.v1.Payment.Charge",
        "pay.v1.Payment.Refund",
        retry={"max_attempts": 3, "initial_interval_ms": 100},
    ),
    step(
        "ship",
        "shipping-service",
        "Shipping.Create",
        "Shipping.Cancel",
        timeout_secs=0.5,
        retry={"max_attempts": 1},
    ),
]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Engine, ParticipantProcess]]:
    proc = ParticipantProcess({}, tmp_path)
    workflow_file(tmp_path / "wf", "three", WORKFLOW_STEPS)
    config = load_config(
        str(write_config(tmp_path / "c.yaml", port=proc.port, workflow_dir=tmp_path / "wf")),
        environ={},
    )
    engine = Engine.from_config(config, execute=True)
    engine.start()
    try:
        yield engine, proc
    finally:
        engine.close()
        proc.stop()


def finish(engine: Engine, saga_id: str, timeout: float = 15) -> tuple[Any, list[Any]]:
    wait_until(lambda: engine.get_saga(saga_id)[0].terminal, timeout, what=f"saga {saga_id} to end")
    return engine.get_saga(saga_id)


def trail(logs: list[Any]) -> list[tuple[str, str, str]]:
    return [(g.step_name, g.action.value, g.status.value) for g in logs]


def test_three_steps_complete(world: tuple[Engine, ParticipantProcess]) -> None:
    """Three successful steps give COMPLETED, three EXECUTE logs with the replies, current_step 3."""
    engine, proc = world
    saga, created = engine.start_saga("three", {"order": 7}, correlation_id="c-1")
    assert created and saga.status is SagaStatus.STARTED
    state, logs = finish(engine, saga.saga_id)
    assert state.status is SagaStatus.COMPLETED and state.current_step == 3
    assert trail(logs) == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "SUCCESS"),
        ("ship", "EXECUTE", "SUCCESS"),
    ]
    assert logs[0].response_payload == {"order": 7, "ok": True}
    assert logs[0].request_payload == {"order": 7}
    paths = [c["path"] for c in proc.calls()]
    assert paths == ["/Inventory/Reserve", "/pay.v1.Payment/Charge", "/Shipping/Create"]
    meta = proc.calls()[1]["metadata"]
    assert meta["x-saga-id"] == saga.saga_id and meta["x-saga-step"] == "1"
    assert meta["x-saga-action"] == "EXECUTE" and meta["x-saga-attempt"] == "1"
    assert meta["idempotency-key"] == f"{saga.saga_id}:1:EXECUTE"


def test_failing_last_step_compensates_the_first_two_newest_first(
    world: tuple[Engine, ParticipantProcess],
) -> None:
    """A non-retryable failure of the last step compensates charge, then reserve, and ends FAILED."""
    engine, proc = world
    proc.reset({"Shipping.Create": {"fail": "FAILED_PRECONDITION", "message": "no courier"}})
    saga, _ = engine.start_saga("three", {"order": 8})
    state, logs = finish(engine, saga.saga_id)
    assert state.status is SagaStatus.FAILED
    assert "no courier" in (state.error_message or "")
    assert trail(logs) == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "SUCCESS"),
        ("ship", "EXECUTE", "FAILED"),
        ("charge", "COMPENSATE", "SUCCESS"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    paths = [c["path"] for c in proc.calls()]
    assert paths[-2:] == ["/pay.v1.Payment/Refund", "/Inventory/Release"]
    assert [c["path"] for c in proc.calls()].count("/Shipping/Create") == 1


def test_a_hanging_participant_gives_a_timeout_log_after_its_deadline(
    world: tuple[Engine, ParticipantProcess],
) -> None:
    """A participant slower than timeout_secs (0.5 s) makes a TIMEOUT log about 0.5 s long."""
    engine, proc = world
    proc.reset({"Shipping.Create": {"sleep_ms": 3000}})
    saga, _ = engine.start_saga("three", {})
    state, logs = finish(engine, saga.saga_id)
    ship = next(g for g in logs if g.step_name == "ship")
    assert ship.status is StepStatus.TIMEOUT
    took = (ship.completed_at - ship.started_at).total_seconds()
    assert 0.45 <= took < 2.0, took
    assert state.status is SagaStatus.FAILED


def test_non_retryable_code_is_not_retried(world: tuple[Engine, ParticipantProcess]) -> None:
    """INVALID_ARGUMENT from a step with 3 attempts is called once only."""
    engine, proc = world
    proc.reset({"pay.v1.Payment.Charge": {"fail": "INVALID_ARGUMENT", "message": "bad card"}})
    saga, _ = engine.start_saga("three", {})
    finish(engine, saga.saga_id)
    assert [c["path"] for c in proc.calls()].count("/pay.v1.Payment/Charge") == 1


def test_retryable_code_is_retried_with_the_configured_delays_and_one_key(
    world: tuple[Engine, ParticipantProcess],
) -> None:
    """UNAVAILABLE twice then OK: 3 attempts about 100 ms and 200 ms apart, all with one idempotency key."""
    engine, proc = world
    proc.reset({"pay.v1.Payment.Charge": {"fail_times": 2, "fail": "UNAVAILABLE"}})
    saga, _ = engine.start_saga("three", {})
    state, logs = finish(engine, saga.saga_id)
    assert state.status is SagaStatus.COMPLETED
    charges = [c for c in proc.calls() if c["path"] == "/pay.v1.Payment/Charge"]
    assert [c["metadata"]["x-saga-attempt"] for c in charges] == ["1", "2", "3"]
    assert {c["metadata"]["idempotency-key"] for c in charges} == {f"{saga.saga_id}:1:EXECUTE"}
    gaps = [b["received_at"] - a["received_at"] for a, b in zip(charges, charges[1:], strict=False)]
    assert 0.09 <= gaps[0] <= 0.6, gaps
    assert 0.19 <= gaps[1] <= 0.8, gaps
    assert len([g for g in logs if g.step_name == "charge"]) == 1


def test_cancel_while_a_step_runs_compensates_at_the_next_boundary(
    world: tuple[Engine, ParticipantProcess],
) -> None:
    """A cancel during a slow step lets it finish, then compensates it and what ran before: CANCELLED."""
    engine, proc = world
    proc.reset({"pay.v1.Payment.Charge": {"sleep_ms": 700}})
    saga, _ = engine.start_saga("three", {})
    wait_until(lambda: any(c["path"] == "/pay.v1.Payment/Charge" for c in proc.calls()), 10)
    engine.cancel_saga(saga.saga_id)
    state, logs = finish(engine, saga.saga_id)
    assert state.status is SagaStatus.CANCELLED
    assert trail(logs) == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "SUCCESS"),
        ("charge", "COMPENSATE", "SUCCESS"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    assert not any(c["path"] == "/Shipping/Create" for c in proc.calls())


def test_a_service_missing_from_the_config_fails_without_retry(tmp_path: Path) -> None:
    """A stored workflow whose service left the config fails at once: `service not registered: X`."""
    proc = ParticipantProcess({}, tmp_path)
    try:
        workflow_file(tmp_path / "wf", "three", WORKFLOW_STEPS)
        path = write_config(tmp_path / "c.yaml", port=proc.port, workflow_dir=tmp_path / "wf")
        first = Engine.from_config(load_config(str(path), environ={}), execute=False)
        first.start()
        first.close()
        config = load_config(str(path), environ={})
        del config.services["payment-service"]
        config.saga.workflow_dir = str(tmp_path / "none")
        engine = Engine.from_config(config, execute=True)
        engine.start()
        try:
            saga, _ = engine.start_saga("three", {})
            state, logs = finish(engine, saga.saga_id)
        finally:
            engine.close()
        assert state.status is SagaStatus.FAILED
        charge = next(g for g in logs if g.step_name == "charge")
        assert (
            charge.error_message
            == "SERVICE_NOT_REGISTERED: service not registered: payment-service"
        )
        assert [g.action for g in logs][-1] is Action.COMPENSATE
    finally:
        proc.stop()


def test_a_saga_keeps_the_workflow_version_it_started_with(
    world: tuple[Engine, ParticipantProcess],
) -> None:
    """Registering v2 while a v1 saga runs does not change the v1 saga's steps."""
    engine, proc = world
    proc.reset({"pay.v1.Payment.Charge": {"sleep_ms": 500}})
    saga, _ = engine.start_saga("three", {})
    wait_until(lambda: any(c["path"] == "/pay.v1.Payment/Charge" for c in proc.calls()), 10)
    v2 = engine.register_workflow(
        "name: three\nsteps:\n  - {name: only, service: inventory-service, method: Inventory.Only}\n"
    )
    assert v2.version == 2
    state, logs = finish(engine, saga.saga_id)
    assert [g.step_name for g in logs] == ["reserve", "charge", "ship"]
    assert state.workflow_version == 1
    later, _ = engine.start_saga("three", {})
    _, later_logs = finish(engine, later.saga_id)
    assert [g.step_name for g in later_logs] == ["only"]


def test_a_commit_the_store_refuses_does_not_hold_other_sagas_back(tmp_path: Path) -> None:
    """One saga whose every commit the store rejects is dropped; the 30 started with it all
    complete."""
    from saga.model import SagaState
    from workers.adapters.store.base import CommitRequest, CommitResult, StoreRefused
    from workers.adapters.store.memory import MemoryStore

    class RefusingStore(MemoryStore):
        def commit(self, owner: str, requests: Any, lease_secs: float) -> list[CommitResult]:
            batch: list[CommitRequest] = list(requests)
            if any(r.commit.state.payload.get("poison") for r in batch):
                raise StoreRefused("value refused by the store")
            return super().commit(owner, batch, lease_secs)

    proc = ParticipantProcess({"*": {"sleep_ms": 20}}, tmp_path)
    try:
        workflow_file(tmp_path / "wf", "three", WORKFLOW_STEPS)
        config = load_config(
            str(
                write_config(
                    tmp_path / "c.yaml", port=proc.port, workflow_dir=tmp_path / "wf", lease_secs=60
                )
            ),
            environ={},
        )
        engine = Engine(config, RefusingStore(), execute=False)
        engine.start()
        poison, _ = engine.start_saga("three", {"poison": True})
        ids = [engine.start_saga("three", {"n": i})[0].saga_id for i in range(30)]
        running = Engine(config, engine.store, execute=True)
        running.catalog = engine.catalog
        running.start()
        try:
            for saga_id in ids:
                state, _ = finish(running, saga_id, timeout=30)
                assert state.status is SagaStatus.COMPLETED
            stuck: SagaState | None = running.store.get_saga(poison.saga_id)
            assert stuck is not None and stuck.status is SagaStatus.STARTED
        finally:
            running.close()
    finally:
        proc.stop()


def test_a_process_that_executes_runs_the_sagas_it_starts_with_no_claim(
    world: tuple[Engine, ParticipantProcess],
) -> None:
    """A start accepted by a process that executes is written leased to its executor and runs
    there: ten sagas complete and the executor makes no claim that finds any of them (claims
    are the safety net of sagas started elsewhere)."""
    engine, _ = world
    assert engine.executor is not None
    store = engine.store
    found: list[int] = []
    real_claim = store.claim

    def counting_claim(owner: str, limit: int, lease_secs: float) -> Any:
        got = real_claim(owner, limit, lease_secs)
        found.append(len(got))
        return got

    store.claim = counting_claim  # type: ignore[method-assign]
    ids = [engine.start_saga("three", {"n": i})[0].saga_id for i in range(10)]
    for saga_id in ids:
        state, logs = finish(engine, saga_id)
        assert state.status is SagaStatus.COMPLETED
        assert len(logs) == 3
    assert sum(found) == 0, found


def test_starts_that_write_nothing_give_their_room_back(tmp_path: Path) -> None:
    """With `max_concurrent` 1, a start the store refuses, one for an unknown workflow and a
    replay of an idempotency key each keep the executor's one place only while they run: the
    sagas started after them still run (a place kept for good would leave every later saga
    waiting in the store forever: nothing claims past `max_concurrent`)."""
    proc = ParticipantProcess({}, tmp_path)
    workflow_file(tmp_path / "wf", "three", WORKFLOW_STEPS)
    config = load_config(
        str(
            write_config(
                tmp_path / "c.yaml", port=proc.port, workflow_dir=tmp_path / "wf", max_concurrent=1
            )
        ),
        environ={},
    )
    engine = Engine.from_config(config, execute=True)
    engine.start()
    try:
        real_create = engine.store.create_saga
        refusals = {"left": 1}

        def refusing_once(*args: Any, **kw: Any) -> Any:
            if refusals["left"]:
                refusals["left"] -= 1
                raise ConnectionError("store went away")
            return real_create(*args, **kw)

        engine.store.create_saga = refusing_once  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            engine.start_saga("three", {"n": 0})
        with pytest.raises(NotFound):
            engine.start_saga("no-such-workflow", {})
        first, created = engine.start_saga("three", {"n": 1}, idempotency_key="k-1")
        assert created
        assert finish(engine, first.saga_id)[0].status is SagaStatus.COMPLETED
        again, created = engine.start_saga("three", {"n": 1}, idempotency_key="k-1")
        assert not created and again.saga_id == first.saga_id
        later = [engine.start_saga("three", {"n": i})[0].saga_id for i in range(2, 5)]
        for saga_id in later:
            assert finish(engine, saga_id)[0].status is SagaStatus.COMPLETED
    finally:
        engine.close()
        proc.stop()
