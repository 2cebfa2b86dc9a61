"""A PostgreSQL restart in the middle of a run: the engine waits, then carries on; nothing lost."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from saga.model import SagaStatus
from tests.harness import ParticipantProcess, step, wait_until, workflow_file, write_config
from tests.services import pg_cluster
from workers.config import load_config
from workers.service.engine import Engine


def test_engine_survives_a_postgres_restart(tmp_path: Path, postgres_database: str) -> None:
    """pg_ctlcluster restart while 60 sagas run: every saga completes with exactly its three logs."""
    cluster = pg_cluster()
    if not cluster:
        pytest.fail("SAGA_TEST_PG_CLUSTER is not set: run scripts/services.sh up")
    proc = ParticipantProcess({"*": {"sleep_ms": 300}}, tmp_path)
    steps = [
        step(f"s{i}", "inventory-service", f"Inventory.Step{i}", f"Inventory.Undo{i}")
        for i in range(3)
    ]
    workflow_file(tmp_path / "wf", "three", steps)
    path = write_config(
        tmp_path / "c.yaml",
        port=proc.port,
        workflow_dir=tmp_path / "wf",
        database_url=postgres_database,
        lease_secs=5,
    )
    engine = Engine.from_config(load_config(str(path), environ={}), execute=True)
    engine.start()
    try:
        ids = [engine.start_saga("three", {"n": i})[0].saga_id for i in range(60)]
        wait_until(lambda: len(proc.calls()) >= 60, 30, what="first steps in flight")
        version, name = cluster.split()
        subprocess.run(
            ["pg_ctlcluster", version, name, "restart", "-m", "fast"], check=True, timeout=60
        )
        time.sleep(0.5)

        def all_done() -> bool:
            try:
                return engine.list_sagas(status="COMPLETED", page_size=1).total_count == 60
            except Exception:
                return False

        wait_until(all_done, 90, interval=0.5, what="every saga to complete after the restart")
        for saga_id in ids:
            state, logs = engine.get_saga(saga_id)
            assert state.status is SagaStatus.COMPLETED
            assert [(g.step_name, g.action.value) for g in logs] == [
                ("s0", "EXECUTE"),
                ("s1", "EXECUTE"),
                ("s2", "EXECUTE"),
            ]
    finally:
        engine.close()
        proc.stop()
