"""Shared machinery of the benchmarks: child processes (participant, workers), config files,
a fresh PostgreSQL database per run, saga seeding, statistics and machine facts.

Every child process is started in its own process group and stopped (TERM, then KILL of the
group) by whoever started it, in a `finally`. Everything listens on 127.0.0.1 only. This
package must never import from `tests/`.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import grpc
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SERVICE = "bench-service"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
FAIL_PATH = "/Bench/Fail"
# The participant fails this method with a non-retryable code (the compensation path).
PARTICIPANT_BEHAVIOUR = {FAIL_PATH: {"fail": "FAILED_PRECONDITION", "message": "bench: fail"}}

_CHILDREN: list[subprocess.Popen[bytes]] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def wait_until(
    pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


def spawn(
    argv: Sequence[str], *, log_path: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (so the whole group can be killed)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        list(argv),
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    if log_path:
        out.close()  # type: ignore[union-attr]
    _CHILDREN.append(proc)
    return proc


def stop(
    proc: subprocess.Popen[bytes] | None, timeout: float = 15.0, sig: int = signal.SIGTERM
) -> None:
    """TERM the child's process group, then KILL it if it lingers."""
    if proc is None:
        return
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
    if proc.poll() is None:
        proc.wait(5)
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def stop_all() -> None:
    """Last resort at exit: kill every child group still alive."""
    for proc in list(_CHILDREN):
        stop(proc, timeout=5)


class Participant:
    """`python -m workers.scripted_participants` (instant echo; `/Bench/Fail` fails non-retryably)."""

    def __init__(self, workdir: Path, behaviour: Mapping[str, Any] | None = None) -> None:
        port_file = workdir / f"participant-{uuid.uuid4().hex[:8]}.port"
        self.proc = spawn(
            [
                PYTHON,
                "-m",
                "workers.scripted_participants",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--behaviour",
                json.dumps(dict(behaviour or PARTICIPANT_BEHAVIOUR)),
            ],
            log_path=workdir / "participant.log",
        )
        wait_until(
            lambda: port_file.exists() or self.proc.poll() is not None, 30, what="participant port"
        )
        if self.proc.poll() is not None:
            raise RuntimeError("participant died at start; see participant.log")
        self.port = int(port_file.read_text())
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def _control(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        call = self._channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return json.loads(call(json.dumps(dict(body or {})).encode(), timeout=30))

    def reset(self, behaviour: Mapping[str, Any] | None = None) -> None:
        self._control(
            "/participant.Control/Reset", {"behaviour": dict(behaviour)} if behaviour else {}
        )

    def record(self) -> dict[str, Any]:
        return dict(self._control("/participant.Control/Calls"))

    def close(self) -> None:
        self._channel.close()
        stop(self.proc)


@contextmanager
def participant(workdir: Path, behaviour: Mapping[str, Any] | None = None) -> Iterator[Participant]:
    p = Participant(workdir, behaviour)
    try:
        yield p
    finally:
        p.close()


# --------------------------------------------------------------------------- workflows, config

WORKFLOWS = {
    "bench-1": 1,
    "bench-3": 3,
    "bench-10": 10,
}
COMPENSATION_WORKFLOW = "bench-comp-3"
# bench-3 with an `input` on every step (SPEC §10): step 0 reads the payload, each later step
# the payload and the previous step's response (the bench participant echoes its request).
INPUT_WORKFLOW = "bench-3-input"


def step_inputs(n: int) -> list[str]:
    """The `input` expressions of the steps of INPUT_WORKFLOW (over the seed payload)."""
    first = "{order_id: payload.order_id, amount: payload.amount}"
    return [first] + [
        f'{{order_id: payload.order_id, prev: steps."s{i - 1}".response}}' for i in range(1, n)
    ]


def write_workflows(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    retry = {"max_attempts": 3, "backoff": "fixed", "initial_interval_ms": 100}
    for name, n in WORKFLOWS.items():
        steps = [
            {
                "name": f"s{i}",
                "service": SERVICE,
                "method": f"Bench.Step{i}",
                "compensate": f"Bench.Undo{i}",
                "timeout_secs": 30,
                "retry": dict(retry),
            }
            for i in range(n)
        ]
        (directory / f"{name}.yaml").write_text(
            yaml.safe_dump({"name": name, "steps": steps}, sort_keys=False)
        )
    steps = [
        {
            "name": f"s{i}",
            "service": SERVICE,
            "method": f"Bench.Step{i}",
            "compensate": f"Bench.Undo{i}",
            "timeout_secs": 30,
            "retry": dict(retry),
            "input": expr,
        }
        for i, expr in enumerate(step_inputs(WORKFLOWS["bench-3"]))
    ]
    (directory / f"{INPUT_WORKFLOW}.yaml").write_text(
        yaml.safe_dump({"name": INPUT_WORKFLOW, "steps": steps}, sort_keys=False)
    )
    steps = [
        {
            "name": f"s{i}",
            "service": SERVICE,
            "method": f"Bench.Step{i}",
            "compensate": f"Bench.Undo{i}",
            "timeout_secs": 30,
            "retry": dict(retry),
        }
        for i in range(2)
    ] + [
        {
            "name": "s2",
            "service": SERVICE,
            "method": "Bench.Fail",
            "compensate": "Bench.Undo2",
            "timeout_secs": 30,
            "retry": dict(retry),
        }
    ]
    (directory / f"{COMPENSATION_WORKFLOW}.yaml").write_text(
        yaml.safe_dump({"name": COMPENSATION_WORKFLOW, "steps": steps}, sort_keys=False)
    )
    # A workflow whose participant blocks (recovery, memory): other methods, other rules.
    steps = [
        {
            "name": "park",
            "service": SERVICE,
            "method": "Bench.Park",
            "timeout_secs": 300,
            "retry": {"max_attempts": 1},
        }
    ]
    (directory / "bench-park.yaml").write_text(
        yaml.safe_dump({"name": "bench-park", "steps": steps}, sort_keys=False)
    )
    steps = [
        {
            "name": "slow",
            "service": SERVICE,
            "method": "Bench.Slow",
            "timeout_secs": 60,
            "retry": {"max_attempts": 3, "backoff": "fixed", "initial_interval_ms": 100},
        }
    ]
    (directory / "bench-slow.yaml").write_text(
        yaml.safe_dump({"name": "bench-slow", "steps": steps}, sort_keys=False)
    )
    return directory


def write_config(
    path: Path,
    *,
    participant_port: int,
    workflow_dir: Path,
    sqlite_path: Path | None = None,
    database_url: str | None = None,
    max_concurrent: int = 100,
    lease_secs: float = 30.0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    doc: dict[str, Any] = {
        "services": {SERVICE: {"host": "127.0.0.1", "port": participant_port}},
        "saga": {
            "sqlite_path": str(sqlite_path or path.parent / "saga.sqlite3"),
            "workflow_dir": str(workflow_dir),
            "lease_secs": lease_secs,
            "claim_interval_ms": 50,
            "max_concurrent": max_concurrent,
        },
        "server": {"host": "127.0.0.1"},
        "grpc": {"host": "127.0.0.1"},
    }
    if database_url:
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


def start_worker(
    config: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `saga worker` (python -m saga_cli worker --config ...)."""
    return spawn(
        [PYTHON, "-m", "saga_cli", "worker", "--config", str(config)],
        log_path=log_path,
        env={"SAGA_LOG_FORMAT": "json", **(env or {})},
    )


# --------------------------------------------------------------------------- PostgreSQL


def with_dbname(url: str, name: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/" + name))


class BenchDatabase:
    """A fresh database on the test cluster, dropped at the end."""

    def __init__(self, admin_url: str, name: str) -> None:
        import psycopg

        self.admin_url = admin_url
        self.name = name
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.url = with_dbname(admin_url, name)
        from workers.adapters.store.migrate import migrate_postgres

        migrate_postgres(self.url)

    def drop(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except Exception as exc:  # noqa: BLE001 - report, keep cleaning up
            log(f"  (could not drop database {self.name}: {exc})")


def pg_truncate(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        # Every table that references saga_states goes with it; the per-status counters too.
        conn.execute(
            "TRUNCATE saga.saga_step_logs, saga.operator_actions, saga.saga_states, "
            "saga.outbox, saga.saga_counts"
        )


# --------------------------------------------------------------------------- seeding sagas


def register_workflows(config_path: Path) -> None:
    """Register the bench workflows through the engine (workers would do it at start too)."""
    from workers.config import load_config
    from workers.service.engine import Engine

    engine = Engine.from_config(
        load_config(str(config_path), environ={}), execute=False, relay=False
    )
    try:
        engine.load_workflow_dir()
    finally:
        engine.close()


# The payload of every seeded saga; the `input` expressions of INPUT_WORKFLOW read both fields.
SEED_PAYLOAD = {"order_id": "bench", "amount": 42}


def seed_template(config_path: Path, workflow: str) -> str:
    """Start one saga (payload SEED_PAYLOAD) through Engine.start_saga (execute=False); return
    its id."""
    from workers.config import load_config
    from workers.service.engine import Engine

    engine = Engine.from_config(
        load_config(str(config_path), environ={}), execute=False, relay=False
    )
    try:
        engine.load_workflow_dir()
        state, _ = engine.start_saga(workflow, dict(SEED_PAYLOAD))
        return state.saga_id
    finally:
        engine.close()


def pg_clone_sagas(url: str, template_id: str, count: int, *, created_now: bool = True) -> None:
    """Copy the template saga `count` times (new ids, STARTED, no lease) in one statement."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO saga.saga_states (id, workflow_name, workflow_version, status, current_step,
                payload, correlation_id, initiated_by, created_at, updated_at, compensation)
            SELECT gen_random_uuid(), t.workflow_name, t.workflow_version, 'STARTED', 0, t.payload,
                   NULL, NULL, clock_timestamp() + g * interval '1 microsecond', now(), t.compensation
            FROM saga.saga_states t, generate_series(1, %s) g
            WHERE t.id = %s
            """,
            (count, template_id),
        )


def sqlite_clone_sagas(path: Path, template_id: str, count: int) -> None:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        row = dict(
            conn.execute("SELECT * FROM saga_states WHERE id = ?", (template_id,)).fetchone()
        )
        (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM saga_states").fetchone()
        cols = list(row)
        now = datetime.now(UTC)
        rows = []
        for i in range(count):
            r = dict(row)
            r["id"] = str(uuid.uuid4())
            r["seq"] = seq + 1 + i
            r["idempotency_key"] = None
            r["request_hash"] = None
            r["created_at"] = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            rows.append(tuple(r[c] for c in cols))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO saga_states ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            rows,
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


# --------------------------------------------------------------------------- reading results


class Reader:
    """Reads saga progress and timings from either store, from the bench process."""

    def __init__(self, *, pg_url: str | None = None, sqlite_path: Path | None = None) -> None:
        self.pg_url = pg_url
        self.sqlite_path = sqlite_path
        if pg_url:
            import psycopg

            self._pg = psycopg.connect(pg_url, autocommit=True)
        else:
            self._sq = sqlite3.connect(str(sqlite_path), timeout=30, isolation_level=None)

    def close(self) -> None:
        (self._pg if self.pg_url else self._sq).close()

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.pg_url:
            return list(
                self._pg.execute(sql.replace("?", "%s").replace("{s}", "saga."), params).fetchall()
            )
        return list(self._sq.execute(sql.replace("{s}", ""), params).fetchall())

    def counts(self) -> dict[str, int]:
        return {
            s: int(n)
            for s, n in self._q("SELECT status, count(*) FROM {s}saga_states GROUP BY status")
        }

    def terminal_times(self) -> list[float]:
        rows = self._q(
            "SELECT updated_at FROM {s}saga_states WHERE status IN ('COMPLETED','FAILED','CANCELLED')"
        )
        return sorted(_epoch(r[0]) for r in rows)

    def log_times(self) -> list[float]:
        return sorted(_epoch(r[0]) for r in self._q("SELECT completed_at FROM {s}saga_step_logs"))

    def step_logs(self) -> list[tuple[str, int, str, float, float]]:
        """(saga_id, step_index, action, started, completed) in insertion order."""
        rows = self._q(
            "SELECT saga_id, step_index, action, started_at, completed_at FROM {s}saga_step_logs ORDER BY seq"
        )
        return [(str(a), b, c, _epoch(d), _epoch(e)) for a, b, c, d, e in rows]

    def saga_ends(self) -> dict[str, float]:
        rows = self._q(
            "SELECT id, updated_at FROM {s}saga_states WHERE status IN ('COMPLETED','FAILED','CANCELLED')"
        )
        return {str(a): _epoch(b) for a, b in rows}


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def steady_rate(times: Sequence[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Events per second between the `lo` and `hi` quantiles of their times (ramp-up and
    tail excluded)."""
    n = len(times)
    if n < 10:
        return 0.0
    a, b = times[int(lo * (n - 1))], times[int(hi * (n - 1))]
    return (hi - lo) * n / (b - a) if b > a else 0.0


# --------------------------------------------------------------------------- statistics


def summary(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def pct(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def latency(values_ms: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values_ms),
        "p50_ms": pct(values_ms, 50),
        "p90_ms": pct(values_ms, 90),
        "p99_ms": pct(values_ms, 99),
        "max_ms": max(values_ms) if values_ms else None,
    }


# --------------------------------------------------------------------------- machine


def machine(pg_url: str | None, kafka_bootstrap: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    with suppress(OSError):
        info["loadavg_at_start"] = os.getloadavg()
    if pg_url:
        try:
            import psycopg

            with psycopg.connect(pg_url, autocommit=True) as conn:
                info["postgres"] = conn.execute("SELECT version()").fetchone()[0]
                info["postgres_settings"] = dict(
                    conn.execute(
                        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync','synchronous_commit',"
                        "'full_page_writes','shared_buffers','max_connections','wal_level')"
                    ).fetchall()
                )
        except Exception as exc:  # noqa: BLE001
            info["postgres"] = f"unavailable: {exc}"
    if kafka_bootstrap:
        info["kafka"] = kafka_version()
    versions = {}
    for mod in (
        "grpc",
        "psycopg",
        "psycopg_pool",
        "flask",
        "gunicorn",
        "kafka",
        "dbos",
        "matplotlib",
    ):
        try:
            from importlib.metadata import version

            dist = {"grpc": "grpcio", "kafka": "kafka-python", "psycopg_pool": "psycopg-pool"}.get(
                mod, mod
            )
            versions[mod] = version(dist)
        except Exception:  # noqa: BLE001
            versions[mod] = None
    info["packages"] = versions
    return info


def kafka_version() -> str | None:
    # scripts/kafka.sh installs Kafka under .services; its jar names carry the version.
    for base in (ROOT / ".services",):
        for jar in base.rglob("kafka_*.jar") if base.exists() else []:
            name = jar.name
            if "-" in name and not any(x in name for x in ("test", "sources", "javadoc")):
                return name.split("-", 1)[1].removesuffix(".jar")
    return None


def strip_samples(value: Any) -> Any:
    """`value` without its raw sample lists (keys starting with '_'), as results are written."""
    if isinstance(value, dict):
        return {k: strip_samples(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [strip_samples(v) for v in value]
    return value
