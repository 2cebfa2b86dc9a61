"""A REST worker that gunicorn respawns while PostgreSQL is down waits for it (retrying with
backoff) instead of failing to boot, which would halt the gunicorn master and `saga serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.harness import ROOT, free_port, wait_until, write_config
from tests.services import pg_cluster

SAGA = [sys.executable, "-m", "saga_cli.main"]


def children(pid: int) -> list[int]:
    """Live child processes of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def cluster(action: str) -> int:
    version, name = (pg_cluster() or "").split()
    return subprocess.run(
        ["pg_ctlcluster", version, name, action, *(["-m", "fast"] if action == "stop" else [])],
        capture_output=True,
        timeout=60,
    ).returncode


def ensure_postgres_running() -> None:
    if cluster("status") != 0:
        cluster("start")


def test_worker_respawned_while_postgres_is_down_waits_for_it(
    tmp_path: Path, postgres_database: str
) -> None:
    """Kill the only REST worker with PostgreSQL stopped: the gunicorn master and `saga serve`
    stay up, and once PostgreSQL is back the respawned worker serves the API."""
    if not pg_cluster():
        pytest.fail("SAGA_TEST_PG_CLUSTER is not set: run scripts/services.sh up")
    rest = free_port()
    config = write_config(
        tmp_path / "serve.yaml",
        port=free_port(),
        database_url=postgres_database,
        extra={
            "server": {"host": "127.0.0.1", "port": rest, "workers": 1, "threads": 2},
            "grpc": {"host": "127.0.0.1", "port": free_port()},
        },
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("SAGA_")}
    log_path = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{rest}"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            [*SAGA, "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert serve.poll() is None, log_path.read_text()
            try:
                return requests.get(f"{url}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, interval=0.2, what="saga serve to be ready")
        [master] = [p for p in children(serve.pid) if b"gunicorn" in _cmdline(p)]
        [worker] = children(master)

        try:
            assert cluster("stop") == 0, "pg_ctlcluster stop failed"
            os.kill(worker, signal.SIGKILL)

            def respawned_and_tried() -> bool:
                if not alive(master):
                    return True  # the old behaviour: the master halted; asserted below
                text = log_path.read_text(errors="replace")
                return any(p != worker for p in children(master)) and "retrying in" in text

            wait_until(respawned_and_tried, 30, interval=0.1, what="the respawned worker")
            time.sleep(1.0)  # a few more attempts against the stopped server
            assert alive(master), "the gunicorn master halted:\n" + log_path.read_text()
            assert serve.poll() is None, "saga serve exited:\n" + log_path.read_text()
        finally:
            ensure_postgres_running()

        def answers() -> bool:
            try:
                return requests.get(f"{url}/api/v1/workflows", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(answers, 60, interval=0.3, what="the API to answer once PostgreSQL is back")
        started = requests.post(
            f"{url}/api/v1/sagas", json={"workflow_name": "order-fulfillment"}, timeout=10
        )
        assert started.status_code == 201, started.text
        assert alive(master) and serve.poll() is None
        assert children(master) and worker not in children(master)
    finally:
        ensure_postgres_running()
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(5)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
