"""The SQLite store's write path under contention: starts written in groups (one transaction,
a savepoint each), the write turn across processes (`<file>.write-lock`), and wake-ups."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from attrs import evolve

from saga.model import SagaState, Step, Workflow, new_saga
from workers.adapters.store.base import SagaFilter, StartLease, UnknownWorkflow
from workers.adapters.store.sqlite import SqliteStore

WORKFLOW = Workflow("w", (Step("s", "svc", "Svc.Do"),))


def _state(name: str = "w") -> SagaState:
    state = new_saga(
        saga_id=str(uuid.uuid4()),
        workflow=WORKFLOW,
        payload={"n": 1},
        correlation_id=None,
        initiated_by=None,
        at=datetime.now(UTC),
    )
    return evolve(state, workflow_name=name)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(str(tmp_path / "saga.sqlite3"))
    s.register_workflow(WORKFLOW)
    return s


def test_concurrent_starts_each_get_their_own_answer(store: SqliteStore) -> None:
    """64 threads start at once, some with one shared idempotency key, some for a workflow
    that does not exist: every plain start is created once, the keyed ones make one saga and
    the others get it back, the unknown ones fail alone; nothing else is written."""
    barrier = threading.Barrier(64)

    def start(i: int) -> object:
        barrier.wait()
        if i % 8 == 0:
            try:
                return store.create_saga(_state("missing"), latest_version=True)
            except UnknownWorkflow as exc:
                return exc
        if i % 8 == 1:
            return store.create_saga(
                _state(), idempotency_key="same", request_hash="h", latest_version=True
            )
        return store.create_saga(_state(), latest_version=True)

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(start, range(64)))
    unknown = [a for i, a in enumerate(answers) if i % 8 == 0]
    keyed = [a for i, a in enumerate(answers) if i % 8 == 1]
    plain = [a for i, a in enumerate(answers) if i % 8 > 1]
    assert all(isinstance(a, UnknownWorkflow) for a in unknown)
    assert sum(1 for _, _, created in keyed if created) == 1  # type: ignore[misc]
    assert len({s.saga_id for s, _, _ in keyed}) == 1  # type: ignore[misc]
    assert all(created for _, _, created in plain)  # type: ignore[misc]
    total = store.list_sagas(SagaFilter(), 1, 100).total_count
    assert total == len(plain) + 1
    for saga, _, _ in plain:  # type: ignore[misc]
        assert store.get_saga(saga.saga_id) == saga


def test_a_start_waits_for_the_write_turn_of_another_process_and_goes_on_at_once(
    store: SqliteStore, tmp_path: Path
) -> None:
    """Another process holding `<file>.write-lock` holds starts back; the moment it lets go,
    the start is written (no sleeping busy handler between)."""
    lock = str(tmp_path / "saga.sqlite3") + ".write-lock"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other process: hold the turn until told to let go
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(w, b"held")
        time.sleep(0.5)
        os._exit(0)  # the kernel releases the lock
    os.read(r, 4)
    t0 = time.monotonic()
    saga, _, created = store.create_saga(_state(), latest_version=True)
    waited = time.monotonic() - t0
    os.waitpid(pid, 0)
    assert created and store.get_saga(saga.saga_id) == saga
    assert 0.3 < waited < 0.5 + 0.25, waited


def test_a_listener_of_another_store_on_the_file_hears_each_start(tmp_path: Path) -> None:
    """`wakeups`: a start through one store instance wakes a listener of another (the
    processes of one file); a stopped listener's socket is gone."""
    path = str(tmp_path / "saga.sqlite3")
    api, executor = SqliteStore(path), SqliteStore(path)
    api.register_workflow(WORKFLOW)
    heard = threading.Event()
    stop = executor.wakeups(heard.set)
    try:
        api.create_saga(_state(), latest_version=True)
        assert heard.wait(5)
        heard.clear()
        api.create_saga(_state(), latest_version=True, lease=StartLease("api-1", 30.0))
        assert not heard.wait(0.3), "a start leased to its accepting process woke the executor"
    finally:
        stop()
    heard.clear()
    api.create_saga(_state(), latest_version=True)
    assert not heard.wait(0.3)
