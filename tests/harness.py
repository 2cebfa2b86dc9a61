"""Real processes for integration and end-to-end tests: participant servers, workers,
config files. Every process started here is stopped by its context manager."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class ParticipantProcess:
    """`python -m workers.scripted_participants` in its own process."""

    def __init__(self, behaviour: Mapping[str, Any], workdir: Path) -> None:
        port_file = workdir / f"participant-{os.getpid()}-{time.monotonic_ns()}.port"
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "workers.scripted_participants",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--behaviour",
                json.dumps(dict(behaviour)),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until(
            lambda: port_file.exists() or self.proc.poll() is not None, 20, what="participant port"
        )
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"participant died: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
            )
        self.port = int(port_file.read_text())
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def _control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        call = self._channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return json.loads(call(json.dumps(body or {}).encode(), timeout=10))

    def record(self) -> dict[str, Any]:
        return dict(self._control("/participant.Control/Calls"))

    def calls(self) -> list[dict[str, Any]]:
        return list(self.record()["calls"])

    def reset(self, behaviour: Mapping[str, Any] | None = None) -> None:
        self._control(
            "/participant.Control/Reset",
            {"behaviour": dict(behaviour)} if behaviour is not None else {},
        )

    def stop(self) -> None:
        self._channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def participant(behaviour: Mapping[str, Any], workdir: Path) -> Iterator[ParticipantProcess]:
    proc = ParticipantProcess(behaviour, workdir)
    try:
        yield proc
    finally:
        proc.stop()


SERVICES = ("inventory-service", "payment-service", "shipping-service")


def write_config(
    path: Path,
    *,
    port: int,
    sqlite_path: Path | None = None,
    database_url: str | None = None,
    workflow_dir: Path | None = None,
    lease_secs: float = 2.0,
    max_concurrent: int = 100,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A config file whose services all live at 127.0.0.1:`port`."""
    doc: dict[str, Any] = {
        "services": {name: {"host": "127.0.0.1", "port": port} for name in SERVICES},
        "saga": {
            "sqlite_path": str(sqlite_path or path.parent / "saga.sqlite3"),
            "workflow_dir": str(workflow_dir or ROOT / "workflows"),
            "lease_secs": lease_secs,
            "claim_interval_ms": 50,
            "max_concurrent": max_concurrent,
        },
    }
    if database_url:
        from urllib.parse import urlparse

        url = urlparse(database_url)
        doc["database"] = {
            "host": url.hostname,
            "port": url.port or 5432,
            "name": url.path.lstrip("/"),
            "user": url.username,
            "password": url.password or "",
        }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc))
    return path


class WorkerProcess:
    """`python -m saga_cli worker --config ...` (a `saga worker`) in its own process."""

    def __init__(self, config: Path, log: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "saga_cli", "worker", "--config", str(config)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SAGA_LOG_FORMAT": "json", **(env or {})},
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def workflow_file(directory: Path, name: str, steps: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "steps": steps}, sort_keys=False))
    return path


def step(
    name: str, service: str, method: str, compensate: str | None = None, **extra: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "service": service, "method": method}
    if compensate:
        doc["compensate"] = compensate
    doc.update(extra)
    return doc


def fresh_saga(workflow: Any, **fields: Any) -> Any:
    """A new STARTED saga of `workflow` (random id, empty payload, now), as a start writes it;
    `fields` are passed on to `new_saga` (a payload, a trace context, ...)."""
    import uuid
    from datetime import UTC, datetime

    from saga.model import new_saga

    defaults: dict[str, Any] = {
        "saga_id": str(uuid.uuid4()),
        "payload": {},
        "correlation_id": None,
        "initiated_by": None,
        "at": datetime.now(UTC),
    }
    return new_saga(workflow=workflow, **{**defaults, **fields})
