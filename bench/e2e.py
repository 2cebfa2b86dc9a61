"""End to end, side by side: what a user sees (sagas started through the API, waited for until
COMPLETED), for this server and for the peer (the original Rust server of the design, a
black-box binary run next to ours), plus the cost of this wave's features on that path.

Cases, one process each, all calling the same participant (`bench.common.participant`: the
scripted echo participant, one process) with the same workflow `bench-3` (3 steps):

- ours on embedded SQLite: `saga serve` (gunicorn REST children + gRPC + executor in one
  command) on a config without `database`; `saga.demo_participants` false;
- the peer in memory (`ALLOW_IN_MEMORY_INFRA=true`, no `DATABASE_URL`);
- ours on PostgreSQL and the peer on PostgreSQL, each on a fresh database of its own created
  from the admin URL (the peer applies its own migrations; its role has BYPASSRLS and its
  workflow is inserted with SQL, the two quirks of its README).

Figures per case (each round starts every server afresh on an empty store; rounds interleave
the cases; median of the rounds, min..max kept):

- saturation: N sagas started with `POST /api/v1/sagas` by 32 client threads (one keep-alive
  `http.client` connection each, in the bench process). Completed sagas/s = sagas of the run
  COMPLETED ÷ (last stored `updated_at` of them − the instant the first start was sent);
  the run's sagas carry a correlation id of its own, and completion is watched by polling
  `GET /api/v1/sagas?status=COMPLETED&correlation_id=<run>&page_size=1` (`total_count`) every
  20 ms, then read back from the store (ours, the peer on PostgreSQL) or
  the peer's list API (the peer in memory). Start requests/s and start latency p50/p99 from the
  client's clock; failures (answers other than 201) and started sagas not COMPLETED are counted.
- gRPC start: the same with `StartSaga` (generated stubs of saga_grpc/gen; the payload as an
  encoded `google.protobuf.Struct`, which both servers accept).
- one saga in flight: start, then `GET /api/v1/sagas/<id>` every 1 ms until COMPLETED; the
  latency is start sent → COMPLETED seen, over M sagas one at a time.
- CPU over the REST saturation (from /proc): the server's process group, the PostgreSQL
  cluster's processes (the postmaster and its children), the participant, and the bench
  process itself (load generator + poller), each ÷ completed sagas.
- memory: PSS summed over the server's processes (/proc/<pid>/smaps_rollup), the largest sample
  (every 0.5 s) of the REST saturation.

`feature_cost`: ours on PostgreSQL, saturation and one-in-flight p50 with each feature on, in
interleaved rounds (plain, inputs, tracing, retention): `input` expressions on every step
(workflow `bench-3-input`), tracing to a local OTLP receiver (a child process running the
receiver of tests/otlp.py; every saga sampled), retention deleting in the background
(`saga.retention_days: 30` over ended sagas pre-filled 40+ days old, as in bench/retention.py).

`python -m bench.e2e [--quick] [--pg-admin-url URL]` runs both and prints the results as JSON.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import yaml

from bench import common as c
from bench.api import _proc_cpu, free_port

WORKFLOW = "bench-3"
CLIENT_THREADS = 32
COUNT_POLL_S = 0.02  # the completion watcher's poll of total_count
ONE_POLL_S = 0.001  # one in flight: the sleep between two GETs of the saga
PSS_EVERY_S = 0.5
WARMUP_SAGAS = 5
SERVER_WORKERS, SERVER_THREADS = 2, 8  # REST: server.workers x server.threads (the defaults)

PEER_DIR = c.ROOT.parent / "shared" / "peers" / "k1s0-saga-server"
PEER_BIN_ENV = "SAGA_BENCH_PEER"  # another path to the peer's binary
PEER_ROLE = "saga_bench_peer"

FEATURES = ("plain", "inputs", "tracing", "retention")
RETENTION_DAYS = 30

# The OTLP receiver of tests/otlp.py in a child process (this package imports nothing from
# tests/): it writes its port, then how many spans it has been sent, every 0.2 s.
_OTLP_CHILD = """
import pathlib, sys, time
from tests.otlp import otlp_receiver
port_file, count_file = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with otlp_receiver() as receiver:
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(receiver.port))
    tmp.replace(port_file)
    while True:
        time.sleep(0.2)
        tmp = count_file.with_suffix(".tmp")
        tmp.write_text(str(len(receiver.spans())))
        tmp.replace(count_file)
"""


def sizes(quick: bool) -> dict[str, int]:
    """Sagas per measurement (saturation REST and gRPC, one in flight) and per feature run."""
    if quick:
        return {
            "saturation": 250,
            "grpc": 250,
            "one_in_flight": 30,
            "feature_saturation": 200,
            "feature_one_in_flight": 20,
            "retention_prefill": 50_000,
        }
    return {
        "saturation": 1500,
        "grpc": 1500,
        "one_in_flight": 200,
        "feature_saturation": 1500,
        "feature_one_in_flight": 200,
        "retention_prefill": 200_000,
    }


# --------------------------------------------------------------------------- /proc


def parse_stat(text: str) -> tuple[str, int, int, int, int]:
    """(comm, ppid, pgrp, utime + stime, cutime + cstime) of a /proc/<pid>/stat line, the
    times in clock ticks (cutime + cstime: of its children that ended and were waited for)."""
    rpar = text.rfind(")")
    comm = text[text.find("(") + 1 : rpar]
    fields = text[rpar + 2 :].split()
    own = int(fields[11]) + int(fields[12])
    return comm, int(fields[1]), int(fields[2]), own, int(fields[13]) + int(fields[14])


def pss_kib(smaps_rollup: str) -> int:
    """The `Pss:` total (KiB) of a /proc/<pid>/smaps_rollup text (not Pss_Anon and the like)."""
    for line in smaps_rollup.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "Pss:":
            return int(parts[1])
    raise ValueError("no Pss: line in smaps_rollup")


def _stats() -> Iterator[tuple[int, tuple[str, int, int, int, int]]]:
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                yield int(d), parse_stat(Path(f"/proc/{d}/stat").read_text())
            except (OSError, ValueError, IndexError):
                continue


def group_pids(pgid: int) -> list[int]:
    return [pid for pid, (_, _, pgrp, _, _) in _stats() if pgrp == pgid]


def group_pss_mib(pgid: int) -> tuple[float, int]:
    """PSS summed over the processes of group `pgid` (MiB) and how many there are."""
    total, n = 0, 0
    for pid in group_pids(pgid):
        with suppress(OSError, ValueError):
            total += pss_kib(Path(f"/proc/{pid}/smaps_rollup").read_text())
            n += 1
    return total / 1024, n


def tree_cpu_secs(root: int) -> float:
    """CPU seconds of process `root` and its children, those that ended included (a
    PostgreSQL cluster: the postmaster, its backends and auxiliary processes)."""
    ticks = 0
    for pid, (_, ppid, _, own, ended) in _stats():
        if pid == root:
            ticks += own + ended
        elif ppid == root:
            ticks += own
    return ticks / os.sysconf("SC_CLK_TCK")


def postmaster_pid(url: str) -> int | None:
    """The postmaster of the cluster at `url` when it runs on this machine, else None."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            ppid = parse_stat(Path(f"/proc/{backend}/stat").read_text())[1]
        comm = parse_stat(Path(f"/proc/{ppid}/stat").read_text())[0]
    except (OSError, ValueError, IndexError, psycopg.Error):
        return None
    return ppid if comm.startswith(("postgres", "postmaster")) else None


def pg_settings(url: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'full_page_writes', 'server_version')"
            ).fetchall()
        )


# --------------------------------------------------------------------------- the peer


def peer_binary() -> Path:
    return Path(os.environ.get(PEER_BIN_ENV) or PEER_DIR / "k1s0-saga-server")


_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "i386", 0x28: "arm"}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "i686": "i386"}


def peer_problem(path: Path, machine: str | None = None) -> str | None:
    """Why the peer's binary at `path` cannot run here (None: it looks runnable)."""
    if not path.exists():
        return f"the peer's binary {path} does not exist"
    if not path.is_file():
        return f"the peer's binary {path} is not a file"
    if not os.access(path, os.X_OK):
        return f"the peer's binary {path} is not executable"
    head = path.read_bytes()[:20] if path.stat().st_size >= 20 else path.read_bytes()
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return f"the peer's binary {path} is not an ELF executable"
    order = "little" if head[5] == 1 else "big"
    arch = _ELF_MACHINES.get(int.from_bytes(head[18:20], order))
    here = (machine or platform.machine()).lower()
    here = _MACHINE_ALIASES.get(here, here)
    if arch is not None and arch != here:
        return f"the peer's binary {path} is built for {arch}, this machine is {here}"
    return None


class PeerDatabase(c.BenchDatabase):
    """A fresh database for the peer: BenchDatabase's, with our schema dropped (the peer
    applies its own migrations at start), owned by a role that bypasses row-level security."""

    def __init__(self, admin_url: str, name: str, workdir: Path) -> None:
        import psycopg

        role_url = peer_role_url(admin_url, workdir)
        super().__init__(admin_url, name)
        role = urlparse(role_url).username
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("DROP SCHEMA saga CASCADE")
            with psycopg.connect(admin_url, autocommit=True) as conn:
                if role != urlparse(admin_url).username:
                    conn.execute(f'ALTER DATABASE "{name}" OWNER TO "{role}"')
        except BaseException:
            self.drop()
            raise
        self.url = c.with_dbname(role_url, name)

    def truncate(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("TRUNCATE saga.saga_step_logs, saga.saga_states")


def peer_role_url(admin_url: str, workdir: Path) -> str:
    """A URL for the peer's role: the admin's own when it is a superuser or has BYPASSRLS,
    else the role PEER_ROLE (BYPASSRLS, granted to the admin role so that it may own and drop
    the peer's databases), created through `runuser -u postgres -- psql` on the local socket."""
    import psycopg

    url = urlparse(admin_url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        su, bypass = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    if su or bypass:
        return admin_url
    admin = url.username or ""
    sql = (
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PEER_ROLE}') THEN "
        f"CREATE ROLE {PEER_ROLE} LOGIN PASSWORD '{PEER_ROLE}' BYPASSRLS; "
        f"ELSE ALTER ROLE {PEER_ROLE} LOGIN PASSWORD '{PEER_ROLE}' BYPASSRLS; END IF; END $$; "
        f'GRANT {PEER_ROLE} TO "{admin}";'
    )
    argv = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-h",
        "/var/run/postgresql",
        "-p",
        str(url.port or 5432),
        "-d",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-Atqc",
        sql,
    ]
    log_path = workdir / "peer-role.log"
    log_path.unlink(missing_ok=True)
    if shutil.which("runuser") is None:
        raise RuntimeError(
            f"the peer needs a BYPASSRLS role: {admin} is neither superuser nor BYPASSRLS, "
            "and runuser is not on the PATH"
        )
    proc = c.spawn(argv, log_path=log_path)
    try:
        code = proc.wait(30)
    finally:
        c.stop(proc)
    if code != 0:
        tail = log_path.read_text(errors="replace").strip()[-300:]
        raise RuntimeError(
            f"the peer needs a BYPASSRLS role: {admin} is neither superuser nor BYPASSRLS, "
            f"and `runuser -u postgres -- psql` exited {code}: {tail}"
        )
    netloc = f"{PEER_ROLE}:{PEER_ROLE}@{url.hostname}:{url.port or 5432}"
    return urlunparse(url._replace(netloc=netloc))


def _peer_workflow_json(workflow_dir: Path, name: str) -> str:
    doc = yaml.safe_load((workflow_dir / f"{name}.yaml").read_text())
    return json.dumps({"steps": doc["steps"]})


def _insert_peer_workflow(url: str, workflow_dir: Path, name: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO saga.workflow_definitions (name, version, definition, enabled, tenant_id) "
            "VALUES (%s, 1, %s::jsonb, true, 'system') ON CONFLICT (name) DO NOTHING",
            (name, _peer_workflow_json(workflow_dir, name)),
        )


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    label: str
    proc: Any
    http_port: int
    grpc_port: int
    log_path: Path
    pg_url: str | None = None
    sqlite_path: Path | None = None

    @property
    def pgid(self) -> int:
        return int(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-600:]
            raise RuntimeError(f"{self.label} exited ({self.proc.returncode}): {tail}")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _wait_ready(server: Server, *, rest_workers: int, timeout: float = 90.0) -> None:
    import grpc

    def ready() -> bool:
        server.check_alive()
        try:
            with _Client(server.http_port, timeout=2) as cl:
                status, _ = cl.call("GET", "/healthz")
        except OSError:
            return False
        if status != 200:
            return False
        if rest_workers:
            text = server.log_path.read_text(errors="replace")
            return text.count("serving (config") >= rest_workers
        return True

    c.wait_until(ready, timeout, interval=0.1, what=f"{server.label} ready")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    finally:
        channel.close()


def start_ours(
    d: Path,
    part: c.Participant,
    workflow_dir: Path,
    *,
    label: str,
    pg_url: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Server:
    """`saga serve` on a config of its own (SQLite in `d` unless `pg_url`)."""
    d.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = free_port(), free_port()
    sqlite_path = None if pg_url else d / "saga.sqlite3"
    cfg = c.write_config(
        d / "serve.yaml",
        participant_port=part.port,
        workflow_dir=workflow_dir,
        sqlite_path=sqlite_path,
        database_url=pg_url,
        extra=_merge(
            {
                "server": {
                    "port": http_port,
                    "workers": SERVER_WORKERS,
                    "threads": SERVER_THREADS,
                },
                "grpc": {"port": grpc_port},
                "saga": {"demo_participants": False, "execute": True},
            },
            extra or {},
        ),
    )
    log_path = d / "serve.log"
    proc = c.spawn(
        [c.PYTHON, "-m", "saga_cli", "serve", "--config", str(cfg)],
        log_path=log_path,
        env={"SAGA_LOG_FORMAT": "json"},
    )
    server = Server(label, proc, http_port, grpc_port, log_path, pg_url, sqlite_path)
    try:
        _wait_ready(server, rest_workers=SERVER_WORKERS)
    except BaseException:
        c.stop(proc)
        raise
    return server


def start_peer(
    d: Path, part: c.Participant, workflow_dir: Path, *, label: str, db: PeerDatabase | None
) -> Server:
    """The peer's binary on a copy of its config (our ports, our participant); in memory, or on
    `db` with the workflow inserted by SQL once it has migrated."""
    d.mkdir(parents=True, exist_ok=True)
    binary = peer_binary()
    http_port, grpc_port = free_port(), free_port()
    config = binary.parent / "config.yaml"
    doc = yaml.safe_load((config if config.exists() else PEER_DIR / "config.yaml").read_text())
    doc["server"].update({"host": "127.0.0.1", "port": http_port, "grpc_port": grpc_port})
    doc["services"] = {c.SERVICE: {"host": "127.0.0.1", "port": part.port}}
    if db is None:
        peer_wf = d / "workflows"
        peer_wf.mkdir(exist_ok=True)
        shutil.copy(workflow_dir / f"{WORKFLOW}.yaml", peer_wf / f"{WORKFLOW}.yaml")
        doc["saga"] = {"workflow_dir": str(peer_wf)}
    else:
        # On PostgreSQL, loading files fails (tenant_id is never set): no workflow directory.
        doc["saga"] = {"workflow_dir": str(d / "no-workflows")}
    cfg = d / "peer.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {
        "CONFIG_PATH": str(cfg),
        "ALLOW_IN_MEMORY_INFRA": "true",
        "ALLOW_INSECURE_NO_AUTH": "true",
        "RUST_LOG": "warn",
    }
    if db is not None:
        url = db.url
        if "sslmode=" not in url:
            url += ("&" if "?" in url else "?") + "sslmode=disable"
        env["DATABASE_URL"] = url
    log_path = d / "peer.log"
    proc = c.spawn([str(binary)], log_path=log_path, env=env)
    server = Server(label, proc, http_port, grpc_port, log_path, db.url if db else None)
    try:
        _wait_ready(server, rest_workers=0, timeout=60)
        if db is not None:
            _insert_peer_workflow(db.url, workflow_dir, WORKFLOW)
    except BaseException:
        c.stop(proc)
        raise
    return server


# --------------------------------------------------------------------------- clients


class _Client:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port; JSON in and out."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.used = False

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        self.conn.connect()
        assert self.conn.sock is not None
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.used = False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        for attempt in (0, 1):
            if self.conn is None:
                self.connect()
            assert self.conn is not None
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body, headers)
                r = self.conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed while idle: once more, afresh.
                reused = self.used
                self.close()
                if attempt or not reused:
                    raise
                continue
            self.used = True
            try:
                return r.status, json.loads(data) if data else None
            except ValueError:
                return r.status, data.decode(errors="replace")
        raise AssertionError("unreachable")


def _start_body(workflow: str, correlation_id: str | None = None) -> bytes:
    body: dict[str, Any] = {"workflow_name": workflow, "payload": c.SEED_PAYLOAD}
    if correlation_id:
        body["correlation_id"] = correlation_id
    return json.dumps(body, separators=(",", ":")).encode()


def _completed_count(cl: _Client, correlation_id: str) -> int:
    """How many sagas of the run (its correlation id) the server lists as COMPLETED."""
    path = f"/api/v1/sagas?status=COMPLETED&correlation_id={correlation_id}&page_size=1"
    status, body = cl.call("GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body}")
    return int(body["pagination"]["total_count"])


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_ts(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp, with any number of fractional digits
    ("2026-02-20T10:30:05.123Z", "2026-12-01T11:55:38.659511033+00:00")."""
    m = _TS.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    whole, frac, zone = m.groups()
    zone = "+00:00" if zone == "Z" else zone
    base = datetime.fromisoformat(whole + zone).timestamp()
    return base + (int(frac) / 10 ** len(frac) if frac else 0.0)


def _statuses(server: Server, correlation_id: str) -> dict[str, tuple[str, float]]:
    """id -> (status, updated_at epoch) of the run's sagas (its correlation id): from the
    server's store when it has one we can read, else from its list API (the peer in memory,
    which takes pages of 1,000)."""
    if server.pg_url or server.sqlite_path:
        reader = c.Reader(pg_url=server.pg_url, sqlite_path=server.sqlite_path)
        try:
            rows = reader._q(
                "SELECT id, status, updated_at FROM {s}saga_states WHERE correlation_id = ?",
                (correlation_id,),
            )
        finally:
            reader.close()
        return {str(i): (s, c._epoch(u)) for i, s, u in rows}
    out: dict[str, tuple[str, float]] = {}
    page = 1
    with _Client(server.http_port) as cl:
        while True:
            path = f"/api/v1/sagas?correlation_id={correlation_id}&page_size=1000&page={page}"
            status, body = cl.call("GET", path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}: {body}")
            for s in body["sagas"]:
                out[s["saga_id"]] = (s["status"], parse_ts(s["updated_at"]))
            if not body["pagination"]["has_next"] or not body["sagas"]:
                return out
            page += 1


def _grpc_stub(port: int) -> tuple[Any, Any]:
    import grpc

    from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, saga_pb2_grpc.SagaServiceStub(channel)


def _grpc_request(workflow: str, correlation_id: str = "") -> Any:
    from google.protobuf import struct_pb2

    from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2

    payload = struct_pb2.Struct()
    payload.update(c.SEED_PAYLOAD)
    return saga_pb2.StartSagaRequest(
        workflow_name=workflow,
        payload=payload.SerializeToString(),
        correlation_id=correlation_id,
    )


# --------------------------------------------------------------------------- measurements


def _cpu_now(server: Server, part: c.Participant, postmaster: int | None) -> dict[str, float]:
    out = _proc_cpu({"server": server.pgid, "participant": part.proc.pid})
    out.pop("postgres", None)  # every postgres on the machine: the cluster's own below
    if postmaster:
        out["postgres"] = tree_cpu_secs(postmaster)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["bench"] = ru.ru_utime + ru.ru_stime
    return out


def saturate(
    server: Server,
    part: c.Participant,
    n: int,
    *,
    via: str = "rest",
    workflow: str = WORKFLOW,
    postmaster: int | None = None,
    stall_s: float = 15.0,
    probe: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Start `n` sagas with CLIENT_THREADS threads (REST or gRPC) and wait for them to complete;
    return the run's figures (see the module's docstring). `probe`, when given, is called
    at the start and every PSS_EVERY_S; its answers are kept with their times (`probes`)."""
    import grpc

    lock = threading.Lock()
    next_i = [0]
    records: list[tuple[float, float, int | str, str | None]] = []  # (sent, answered, code, id)
    barrier = threading.Barrier(CLIENT_THREADS + 1, timeout=60)
    # Every saga of the run carries its correlation id: the watcher counts only them (ended
    # sagas that retention deletes meanwhile, or earlier runs', do not move the count).
    run_id = f"bench-e2e-{uuid.uuid4().hex[:12]}"
    body = _start_body(workflow, run_id)
    channel, stub = _grpc_stub(server.grpc_port) if via == "grpc" else (None, None)
    request = _grpc_request(workflow, run_id) if via == "grpc" else None

    def take() -> bool:
        with lock:
            if next_i[0] >= n:
                return False
            next_i[0] += 1
            return True

    def run() -> None:
        mine: list[tuple[float, float, int | str, str | None]] = []
        cl = _Client(server.http_port) if via == "rest" else None
        try:
            if cl is not None:
                cl.connect()
            barrier.wait()
            while take():
                t = time.perf_counter()
                try:
                    if cl is not None:
                        code, answer = cl.call("POST", "/api/v1/sagas", body)
                        sid = answer.get("saga_id") if code == 201 else None
                    else:
                        reply = stub.StartSaga(request, timeout=30)
                        code, sid = "OK", reply.saga_id
                except grpc.RpcError as exc:
                    code, sid = str(exc.code().name), None
                except (OSError, http.client.HTTPException) as exc:
                    code, sid = type(exc).__name__, None
                    if cl is not None:
                        cl.close()
                mine.append((t, time.perf_counter(), code, sid))
        finally:
            if cl is not None:
                cl.close()
            with lock:
                records.extend(mine)

    watcher = _Client(server.http_port)
    threads = [threading.Thread(target=run, daemon=True) for _ in range(CLIENT_THREADS)]
    for t in threads:
        t.start()
    cpu0 = _cpu_now(server, part, postmaster)
    pss_peak, procs = group_pss_mib(server.pgid)
    barrier.wait()
    t0_wall, t0 = time.time(), time.perf_counter()
    probes = [(0.0, probe())] if probe else []
    next_pss = t0 + PSS_EVERY_S
    last_count, last_progress = 0, t0
    stalled = False
    while True:
        time.sleep(COUNT_POLL_S)
        server.check_alive()
        done_starting = not any(t.is_alive() for t in threads)
        count = _completed_count(watcher, run_id)
        now = time.perf_counter()
        if count != last_count:
            last_count, last_progress = count, now
        if now >= next_pss:
            mib, k = group_pss_mib(server.pgid)
            if mib > pss_peak:
                pss_peak, procs = mib, k
            if probe:
                probes.append((round(now - t0, 3), probe()))
            next_pss = now + PSS_EVERY_S
        if done_starting:
            with lock:
                ok = sum(1 for r in records if r[3])
            if count >= ok:
                break
            if now - last_progress > stall_s:
                stalled = True
                break
    seen_s = time.perf_counter() - t0
    if probe:
        probes.append((round(seen_s, 3), probe()))
    cpu1 = _cpu_now(server, part, postmaster)
    mib, k = group_pss_mib(server.pgid)
    if mib > pss_peak:
        pss_peak, procs = mib, k
    watcher.close()
    if channel is not None:
        channel.close()
    for t in threads:
        t.join(5)

    ids = [r[3] for r in records if r[3]]
    ok_codes = (201, "OK")
    failures = Counter(str(r[2]) for r in records if r[2] not in ok_codes or not r[3])
    states = _statuses(server, run_id)
    mine = [states.get(i) for i in ids]
    done = [s[1] for s in mine if s is not None and s[0] == "COMPLETED"]
    not_completed = Counter(s[0] if s else "missing" for s in mine if not s or s[0] != "COMPLETED")
    span = (max(done) - t0_wall) if done else None
    lat = [(b - a) * 1000 for a, b, code, sid in records if sid]
    sent = [a for a, _, _, _ in records]
    answered = [b for _, b, _, _ in records]
    start_span = (max(answered) - min(sent)) if records else 0.0
    cpu = {k: max(0.0, cpu1[k] - cpu0.get(k, 0.0)) for k in cpu1}
    per = len(done) or 1
    return {
        "via": via,
        "n": n,
        "started": len(ids),
        "failures": sum(failures.values()),
        "failure_codes": dict(failures),
        "completed": len(done),
        "not_completed": sum(not_completed.values()),
        "not_completed_statuses": dict(not_completed),
        "stalled": stalled,
        "completed_per_s": len(done) / span if span and span > 0 else None,
        "completion_seen_s": round(seen_s, 3),
        "last_completed_s": round(span, 3) if span is not None else None,
        "starts_per_s": len(ids) / start_span if start_span > 0 else None,
        "start_latency": c.latency(lat),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_ms_per_saga": {
            k: round(cpu[k] * 1000 / per, 3)
            for k in ("server", "postgres", "participant", "bench")
            if k in cpu
        },
        "machine_busy_cores": round(cpu.get("machine_busy", 0.0) / seen_s, 2) if seen_s else None,
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "pss_mib_peak": round(pss_peak, 1),
        "server_processes": procs,
        **({"probes": probes} if probe else {}),
    }


def one_in_flight(server: Server, m: int, *, workflow: str = WORKFLOW) -> dict[str, Any]:
    """M sagas one at a time: start, then GET the saga every ONE_POLL_S until COMPLETED."""
    body = _start_body(workflow)
    lat: list[float] = []
    failures: Counter[str] = Counter()
    with _Client(server.http_port) as cl:
        for _ in range(m):
            t0 = time.perf_counter()
            code, answer = cl.call("POST", "/api/v1/sagas", body)
            if code != 201:
                failures[f"start {code}"] += 1
                continue
            path = f"/api/v1/sagas/{answer['saga_id']}"
            while True:
                code, got = cl.call("GET", path)
                status = got.get("saga", {}).get("status") if code == 200 else None
                if status == "COMPLETED":
                    lat.append((time.perf_counter() - t0) * 1000)
                    break
                if status in ("FAILED", "CANCELLED") or time.perf_counter() - t0 > 30:
                    failures[str(status or code)] += 1
                    break
                time.sleep(ONE_POLL_S)
    return {
        "n": m,
        "poll_ms": ONE_POLL_S * 1000,
        "latency": c.latency(lat),
        "failures": sum(failures.values()),
        "failure_codes": dict(failures),
        "_latencies_ms": lat,
    }


def _warm_up(server: Server, workflow: str = WORKFLOW) -> None:
    """A few sagas to the end, not measured (first connections, pools, caches)."""
    r = one_in_flight(server, WARMUP_SAGAS, workflow=workflow)
    if r["failures"]:
        raise RuntimeError(f"{server.label}: warm-up sagas did not complete: {r['failure_codes']}")


def _grpc_probe(server: Server) -> str | None:
    """None when StartSaga works on the server's gRPC port, else why not."""
    import grpc

    channel, stub = _grpc_stub(server.grpc_port)
    try:
        stub.StartSaga(_grpc_request(WORKFLOW), timeout=10)
        return None
    except grpc.RpcError as exc:
        return f"StartSaga answered {exc.code().name}: {exc.details()}"
    finally:
        channel.close()


# --------------------------------------------------------------------------- e2e


@dataclass
class _Case:
    key: str
    server: str  # "ours" | "peer"
    store: str  # "sqlite" | "memory" | "postgres"
    error: str | None = None
    db: Any = None
    postmaster: int | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)


def _summary_of(rounds: list[dict[str, Any]], getter: Callable[[dict[str, Any]], Any]) -> Any:
    vals = []
    for r in rounds:
        with suppress(KeyError, TypeError):
            v = getter(r)
            if v is not None:
                vals.append(v)
    return c.summary(vals)


def _aggregate_saturation(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return {}
    return {
        "completed_per_s": _summary_of(runs, lambda r: r["completed_per_s"]),
        "starts_per_s": _summary_of(runs, lambda r: r["starts_per_s"]),
        "start_p50_ms": _summary_of(runs, lambda r: r["start_latency"]["p50_ms"]),
        "start_p99_ms": _summary_of(runs, lambda r: r["start_latency"]["p99_ms"]),
        "server_cpu_ms_per_saga": _summary_of(runs, lambda r: r["cpu_ms_per_saga"]["server"]),
        "postgres_cpu_ms_per_saga": _summary_of(
            runs, lambda r: r["cpu_ms_per_saga"].get("postgres")
        ),
        "participant_cpu_ms_per_saga": _summary_of(
            runs, lambda r: r["cpu_ms_per_saga"]["participant"]
        ),
        "bench_cpu_ms_per_saga": _summary_of(runs, lambda r: r["cpu_ms_per_saga"]["bench"]),
        "pss_mib": _summary_of(runs, lambda r: r["pss_mib_peak"]),
        "server_processes": max(r["server_processes"] for r in runs),
        "failures": sum(r["failures"] for r in runs),
        "not_completed": sum(r["not_completed"] for r in runs),
        "n": runs[0]["n"],
        "runs": runs,
    }


def _aggregate(case: _Case) -> dict[str, Any]:
    out: dict[str, Any] = {"server": case.server, "store": case.store, "error": case.error}
    ok = [r for r in case.rounds if not r.get("error")]
    errors = [r["error"] for r in case.rounds if r.get("error")]
    if errors:
        out["round_errors"] = errors
        if not ok:
            out["error"] = out["error"] or errors[0]
    out["rest"] = _aggregate_saturation([r["rest"] for r in ok if "rest" in r])
    grpc_runs = [r["grpc"] for r in ok if isinstance(r.get("grpc"), dict)]
    grpc_errors = [r["grpc_error"] for r in ok if r.get("grpc_error")]
    out["grpc"] = _aggregate_saturation(grpc_runs)
    if grpc_errors:
        out["grpc"]["error"] = grpc_errors[0]
    oif = [r["one_in_flight"] for r in ok if "one_in_flight" in r]
    if oif:
        out["one_in_flight"] = {
            "p50_ms": _summary_of(oif, lambda r: r["latency"]["p50_ms"]),
            "p99_ms": _summary_of(oif, lambda r: r["latency"]["p99_ms"]),
            "failures": sum(r["failures"] for r in oif),
            "n": oif[0]["n"],
            "poll_ms": oif[0]["poll_ms"],
            "runs": oif,
        }
    return out


def _round(
    case: _Case, d: Path, part: c.Participant, wf_dir: Path, sz: dict[str, int]
) -> dict[str, Any]:
    if case.server == "ours":
        if case.db is not None:
            c.pg_truncate(case.db.url)
        server = start_ours(
            d, part, wf_dir, label=case.key, pg_url=case.db.url if case.db else None
        )
    else:
        if case.db is not None:
            with suppress(Exception):  # the tables exist once the peer has migrated
                case.db.truncate()
        server = start_peer(d, part, wf_dir, label=case.key, db=case.db)
    out: dict[str, Any] = {}
    try:
        part.reset()
        _warm_up(server)
        out["rest"] = saturate(server, part, sz["saturation"], postmaster=case.postmaster)
        _log_sat(case.key, "REST", out["rest"])
        problem = _grpc_probe(server)
        if problem:
            out["grpc_error"] = problem
            c.log(f"  {case.key} gRPC: {problem}")
        else:
            out["grpc"] = saturate(server, part, sz["grpc"], via="grpc", postmaster=case.postmaster)
            _log_sat(case.key, "gRPC", out["grpc"])
        out["one_in_flight"] = one_in_flight(server, sz["one_in_flight"])
        lat = out["one_in_flight"]["latency"]
        c.log(
            f"  {case.key} one in flight: p50 {_n(lat['p50_ms'], 1)} ms, p99 "
            f"{_n(lat['p99_ms'], 1)} ms (failures {out['one_in_flight']['failures']})"
        )
    finally:
        c.stop(server.proc)
    return out


def _n(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _log_sat(key: str, via: str, r: dict[str, Any]) -> None:
    cpu = r["cpu_ms_per_saga"]
    c.log(
        f"  {key} {via}: {_n(r['completed_per_s'])} completed sagas/s, starts "
        f"{_n(r['starts_per_s'])}/s (p50 {_n(r['start_latency']['p50_ms'], 1)} ms, p99 "
        f"{_n(r['start_latency']['p99_ms'], 1)} ms); failures {r['failures']}, not completed "
        f"{r['not_completed']}; CPU ms/saga server {_n(cpu.get('server'), 2)}, postgres "
        f"{_n(cpu.get('postgres'), 2)}, bench {_n(cpu.get('bench'), 2)}; PSS "
        f"{_n(r['pss_mib_peak'])} MiB ({r['server_processes']} processes)"
    )


def method_text(sz: dict[str, int], runs: int) -> str:
    return (
        f"Each case is one server process (tree) on 127.0.0.1 calling the same participant "
        f"(`python -m workers.scripted_participants`, instant echo, one process) with workflow "
        f"`{WORKFLOW}` (3 steps). Ours is `saga serve` ({SERVER_WORKERS} gunicorn REST workers x "
        f"{SERVER_THREADS} threads, gRPC and the executor in one command; SQLite file or a "
        f"PostgreSQL database of its own); the peer is the original server's binary, in memory "
        f"or on a PostgreSQL database of its own (its migrations, a BYPASSRLS role, the workflow "
        f"inserted by SQL). {runs} round(s); each round starts every server afresh on an empty "
        f"store, the cases in turn (each round starting one later in the order); figures are "
        f"medians of the rounds (min–max). Saturation: "
        f"{sz['saturation']:,} sagas started with `POST /api/v1/sagas` by {CLIENT_THREADS} client "
        f"threads (Python, one keep-alive `http.client` connection each); completed sagas/s = the "
        f"run's sagas COMPLETED ÷ (their last stored `updated_at` − the first start sent); "
        f"every saga of a run carries the run's `correlation_id`, and completion is watched by "
        f"polling `GET /api/v1/sagas?status=COMPLETED&correlation_id=<run>&page_size=1` "
        f"(`total_count`) every {COUNT_POLL_S * 1000:.0f} ms; start requests/s and p50/p99 "
        f"from the client. gRPC: the same with {sz['grpc']:,} `StartSaga` calls (payload as an "
        f"encoded Struct). One in "
        f"flight: {sz['one_in_flight']} sagas one at a time, start then `GET /api/v1/sagas/<id>` "
        f"every {ONE_POLL_S * 1000:g} ms until COMPLETED (start sent → COMPLETED seen). CPU over "
        f"the REST saturation from /proc: the server's process group, the PostgreSQL cluster "
        f"(postmaster and children, whatever database they serve), and the bench process "
        f"(load generator + poller), ÷ completed sagas. Memory: PSS (/proc/<pid>/smaps_rollup) "
        f"summed over the server's processes, the "
        f"largest 0.5 s sample of the REST saturation. {WARMUP_SAGAS} warm-up sagas first. "
        f"All processes share the machine's cores."
    )


def _peer_starts(d: Path, part: c.Participant, wf_dir: Path) -> str | None:
    """None when the peer's binary starts (in memory) and answers, else why not."""
    try:
        server = start_peer(d / "peer-check", part, wf_dir, label="peer", db=None)
    except Exception as exc:  # noqa: BLE001 - the reason is the figure's one line
        return f"the peer's binary failed to start: {type(exc).__name__}: {str(exc)[:300]}"
    c.stop(server.proc)
    return None


def e2e(
    workdir: Path,
    part: c.Participant,
    *,
    pg_admin_url: str | None,
    quick: bool,
    runs: int,
    results: dict[str, Any],
    db_suffix: str,
) -> None:
    """Fill results['e2e']: ours and the peer, embedded and on PostgreSQL, side by side."""
    runs = 1 if quick else max(1, runs)
    sz = sizes(quick)
    d = workdir / "e2e"
    wf_dir = c.write_workflows(d / "workflows")
    binary = peer_binary()
    problem = peer_problem(binary)
    res: dict[str, Any] = {
        "workflow": WORKFLOW,
        "client_threads": CLIENT_THREADS,
        "rounds": runs,
        "sizes": {k: sz[k] for k in ("saturation", "grpc", "one_in_flight")},
        "method": method_text(sz, runs),
        "peer": {"binary": str(binary), "skipped": problem},
        "cases": {},
    }
    results["e2e"] = res
    if not problem:
        problem = _peer_starts(d, part, wf_dir)
        res["peer"]["skipped"] = problem
    if problem:
        c.log(f"  peer skipped: {problem}")
    cases = [_Case("ours_sqlite", "ours", "sqlite"), _Case("peer_memory", "peer", "memory")]
    cases += [
        _Case("ours_postgres", "ours", "postgres"),
        _Case("peer_postgres", "peer", "postgres"),
    ]
    for case in cases:
        if case.server == "peer" and problem:
            case.error = f"skipped: {problem}"
        elif case.store == "postgres" and not pg_admin_url:
            case.error = "skipped: no PostgreSQL admin URL"
    try:
        postmaster = None
        if pg_admin_url:
            try:
                res["postgres"] = {"settings": pg_settings(pg_admin_url)}
                postmaster = postmaster_pid(pg_admin_url)
                res["postgres"]["cpu_measured"] = postmaster is not None
            except Exception as exc:  # noqa: BLE001 - the PostgreSQL cases say why
                for case in cases:
                    if case.store == "postgres" and not case.error:
                        case.error = f"PostgreSQL not reachable: {type(exc).__name__}: {exc}"
            for case in cases:
                if case.store != "postgres" or case.error:
                    continue
                name = f"saga_bench_e2e_{case.server}_{db_suffix}"
                try:
                    if case.server == "ours":
                        case.db = c.BenchDatabase(pg_admin_url, name)
                    else:
                        case.db = PeerDatabase(pg_admin_url, name, d)
                    case.postmaster = postmaster
                except Exception as exc:  # noqa: BLE001 - record it, go on with the others
                    case.error = f"{type(exc).__name__}: {exc}"
                    c.log(f"  {case.key}: {case.error}")
        for i in range(runs):
            # Each round starts one later in the order, so that no case is always first.
            for case in cases[i % len(cases) :] + cases[: i % len(cases)]:
                if case.error:
                    continue
                try:
                    case.rounds.append(_round(case, d / f"{case.key}-{i}", part, wf_dir, sz))
                except Exception as exc:  # noqa: BLE001
                    msg = f"{type(exc).__name__}: {str(exc)[:400]}"
                    case.rounds.append({"error": msg})
                    c.log(f"  {case.key} round {i + 1} FAILED: {msg}")
    finally:
        for case in cases:
            if case.db is not None:
                case.db.drop()
    for case in cases:
        res["cases"][case.key] = _aggregate(case)


# --------------------------------------------------------------------------- feature cost


@contextmanager
def otlp_receiver(d: Path) -> Iterator[tuple[str, Callable[[], int]]]:
    """The OTLP receiver child: (endpoint, spans received so far)."""
    port_file, count_file = d / "otlp.port", d / "otlp.count"
    for p in (port_file, count_file):
        p.unlink(missing_ok=True)
    proc = c.spawn(
        [c.PYTHON, "-c", _OTLP_CHILD, str(port_file), str(count_file)], log_path=d / "otlp.log"
    )
    try:
        c.wait_until(
            lambda: port_file.exists() or proc.poll() is not None, 30, what="OTLP receiver"
        )
        if proc.poll() is not None:
            raise RuntimeError(f"the OTLP receiver exited; see {d / 'otlp.log'}")

        def spans() -> int:
            try:
                return int(count_file.read_text())
            except (OSError, ValueError):
                return 0

        yield f"http://127.0.0.1:{int(port_file.read_text())}", spans
    finally:
        c.stop(proc)


def _prefill_ended(url: str, count: int) -> None:
    """`count` ended sagas (with 3 step logs each) that ended 40+ days ago: retention's work."""
    import psycopg

    from bench.retention import _FILL

    end = datetime.now(UTC) - timedelta(days=RETENTION_DAYS + 10)
    with psycopg.connect(url, autocommit=True) as conn:
        step = 50_000
        for lo in range(1, count + 1, step):
            conn.execute(
                _FILL, {"end": end, "prefix": "old-", "lo": lo, "hi": min(count, lo + step - 1)}
            )
        conn.execute("ANALYZE saga.saga_states")


def _old_left(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM saga.saga_states WHERE idempotency_key LIKE 'old-%%'"
            ).fetchone()[0]
        )


def active_share(probes: list[tuple[float, int]]) -> float | None:
    """The share of a run during which retention still had sagas to delete, from (seconds
    into the run, old sagas left) samples: up to the first sample with none left."""
    if len(probes) < 2 or probes[-1][0] <= 0:
        return None
    end = probes[-1][0]
    for t, left in probes:
        if left == 0:
            return round(min(1.0, t / end), 3)
    return 1.0


def _feature_run(
    feature: str,
    d: Path,
    part: c.Participant,
    wf_dir: Path,
    db: c.BenchDatabase,
    sz: dict[str, int],
    postmaster: int | None,
) -> dict[str, Any]:
    d.mkdir(parents=True, exist_ok=True)
    c.pg_truncate(db.url)
    workflow = c.INPUT_WORKFLOW if feature == "inputs" else WORKFLOW
    out: dict[str, Any] = {"feature": feature, "workflow": workflow}
    with _feature_config(feature, d, db, sz, out) as extra:
        server = start_ours(d, part, wf_dir, label=f"ours_{feature}", pg_url=db.url, extra=extra)
        try:
            part.reset()
            _warm_up(server, workflow)
            if feature == "retention":
                out["old_left_at_start"] = _old_left(db.url)
            sat = saturate(
                server,
                part,
                sz["feature_saturation"],
                workflow=workflow,
                postmaster=postmaster,
                probe=(lambda: _old_left(db.url)) if feature == "retention" else None,
            )
            if feature == "retention":
                out["old_left_after_saturation"] = _old_left(db.url)
                out["retention_active_share"] = active_share(sat["probes"])
            oif = one_in_flight(server, sz["feature_one_in_flight"], workflow=workflow)
            if feature == "retention":
                out["old_left_after_one_in_flight"] = _old_left(db.url)
        finally:
            c.stop(server.proc)
        if "spans" in out:
            time.sleep(0.5)  # the receiver's next count, after the exporter's last flush
            out["spans_received"] = out.pop("spans")()
    out["completed_per_s"] = sat["completed_per_s"]
    out["one_in_flight_p50_ms"] = oif["latency"]["p50_ms"]
    out["one_in_flight_p99_ms"] = oif["latency"]["p99_ms"]
    out["failures"] = sat["failures"] + oif["failures"]
    out["not_completed"] = sat["not_completed"]
    out["server_cpu_ms_per_saga"] = sat["cpu_ms_per_saga"]["server"]
    out["postgres_cpu_ms_per_saga"] = sat["cpu_ms_per_saga"].get("postgres")
    out["saturation"] = sat
    out["one_in_flight"] = oif
    extra_s = ""
    if feature == "tracing":
        extra_s = f"; spans received {out['spans_received']}"
    if feature == "retention":
        extra_s = (
            f"; old sagas left {out['old_left_at_start']:,} at start, "
            f"{out['old_left_after_saturation']:,} after saturation (deleting during "
            f"{100 * (out['retention_active_share'] or 0):.0f}% of it)"
        )
    c.log(
        f"  feature {feature:9s}: {_n(out['completed_per_s'])} completed sagas/s, one in flight "
        f"p50 {_n(out['one_in_flight_p50_ms'], 1)} ms; failures {out['failures']}, not completed "
        f"{out['not_completed']}{extra_s}"
    )
    return out


@contextmanager
def _feature_config(
    feature: str, d: Path, db: c.BenchDatabase, sz: dict[str, int], out: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    if feature == "tracing":
        with otlp_receiver(d) as (endpoint, spans):
            out["spans"] = spans
            yield {"telemetry": {"otlp_endpoint": endpoint, "sample_ratio": 1.0}}
        return
    if feature == "retention":
        t0 = time.monotonic()
        _prefill_ended(db.url, sz["retention_prefill"])
        out["prefill_s"] = round(time.monotonic() - t0, 1)
        out["prefilled"] = sz["retention_prefill"]
        yield {"saga": {"retention_days": RETENTION_DAYS}}
        return
    yield {}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def feature_cost(
    workdir: Path,
    part: c.Participant,
    *,
    pg_admin_url: str | None,
    quick: bool,
    runs: int,
    results: dict[str, Any],
    db_suffix: str,
) -> None:
    """Fill results['feature_cost']: ours on PostgreSQL, plain and with each feature on."""
    runs = 1 if quick else max(1, runs)
    sz = sizes(quick)
    res: dict[str, Any] = {
        "store": "postgres",
        "rounds": runs,
        "order": list(FEATURES),
        "sizes": {
            "saturation": sz["feature_saturation"],
            "one_in_flight": sz["feature_one_in_flight"],
            "retention_prefill": sz["retention_prefill"],
        },
        "features": {
            "inputs": f"workflow {c.INPUT_WORKFLOW}: an input expression on every step",
            "tracing": "telemetry.otlp_endpoint: a local OTLP receiver, sample_ratio 1.0",
            "retention": f"saga.retention_days {RETENTION_DAYS}, "
            f"{sz['retention_prefill']:,} ended sagas 40+ days old pre-filled",
        },
        "method": (
            f"Ours (`saga serve`) on a PostgreSQL database of its own, truncated before each run; "
            f"{runs} round(s) of {', '.join(FEATURES)} (each round starting one later in that "
            f"order), a fresh server per run; "
            f"each run: saturation ({sz['feature_saturation']:,} sagas started by "
            f"{CLIENT_THREADS} REST client threads, completed sagas/s as in the end-to-end "
            f"figure) then one in flight ({sz['feature_one_in_flight']} sagas, GET every "
            f"{ONE_POLL_S * 1000:g} ms). Ratio = median with the feature ÷ median plain."
        ),
        "results": {},
    }
    results["feature_cost"] = res
    if not pg_admin_url:
        res["error"] = "skipped: no PostgreSQL admin URL"
        c.log(f"  feature cost {res['error']}")
        return
    d = workdir / "feature-cost"
    wf_dir = c.write_workflows(d / "workflows")
    per: dict[str, list[dict[str, Any]]] = {f: [] for f in FEATURES}
    try:
        db = c.BenchDatabase(pg_admin_url, f"saga_bench_features_{db_suffix}")
    except Exception as exc:  # noqa: BLE001
        res["error"] = f"no database: {type(exc).__name__}: {exc}"
        c.log(f"  feature cost: {res['error']}")
        return
    try:
        res["postgres_settings"] = pg_settings(pg_admin_url)
        postmaster = postmaster_pid(pg_admin_url)
        for i in range(runs):
            # Each round starts one later in the order, so that no variant is always first.
            for feature in FEATURES[i % len(FEATURES) :] + FEATURES[: i % len(FEATURES)]:
                try:
                    r = _feature_run(
                        feature, d / f"{feature}-{i}", part, wf_dir, db, sz, postmaster
                    )
                except Exception as exc:  # noqa: BLE001
                    r = {"feature": feature, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
                    c.log(f"  feature {feature} round {i + 1} FAILED: {r['error']}")
                per[feature].append(r)
    finally:
        db.drop()
    plain = per["plain"]
    for feature in FEATURES:
        rs = [r for r in per[feature] if not r.get("error")]
        entry: dict[str, Any] = {
            "completed_per_s": c.summary(
                [r["completed_per_s"] for r in rs if r["completed_per_s"]]
            ),
            "one_in_flight_p50_ms": c.summary(
                [r["one_in_flight_p50_ms"] for r in rs if r["one_in_flight_p50_ms"]]
            ),
            "failures": sum(r["failures"] for r in rs),
            "not_completed": sum(r["not_completed"] for r in rs),
            "errors": [r["error"] for r in per[feature] if r.get("error")],
            "runs": per[feature],
        }
        if feature != "plain":
            base = res["results"]["plain"]
            entry["ratio_completed_per_s"] = _ratio(
                entry["completed_per_s"]["median"], base["completed_per_s"]["median"]
            )
            entry["ratio_one_in_flight_p50"] = _ratio(
                entry["one_in_flight_p50_ms"]["median"], base["one_in_flight_p50_ms"]["median"]
            )
            pairs = [
                (_ratio(f.get("completed_per_s"), p.get("completed_per_s")))
                for p, f in zip(plain, per[feature], strict=True)
                if not p.get("error") and not f.get("error")
            ]
            entry["pair_ratios_completed_per_s"] = c.summary([x for x in pairs if x])
        res["results"][feature] = entry


# --------------------------------------------------------------------------- by hand


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pg-admin-url", help="PostgreSQL admin URL (default: the test cluster's)")
    ap.add_argument("--no-postgres", action="store_true", help="embedded cases only")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("e2e", "feature_cost"), help="one of the two")
    ap.add_argument("--markdown", action="store_true", help="print the report's sections too")
    args = ap.parse_args(argv)
    for key in ("DATABASE_URL", "CONFIG_PATH"):
        os.environ.pop(key, None)
    os.environ.setdefault("PYTHONPATH", str(c.ROOT))
    admin = args.pg_admin_url
    if not admin and not args.no_postgres:
        from bench.__main__ import _services_env

        admin = _services_env().get("SAGA_TEST_DATABASE_URL")
    atexit.register(c.stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ").lower()
    workdir = Path(tempfile.mkdtemp(prefix=f"saga-bench-e2e-{stamp}-"))
    results: dict[str, Any] = {"started_at": stamp, "quick": args.quick}
    t0 = time.monotonic()
    try:
        with c.participant(workdir) as part:
            for name, fn in (("e2e", e2e), ("feature_cost", feature_cost)):
                if args.only and args.only != name:
                    continue
                c.log(f"[{name}]")
                t = time.monotonic()
                fn(
                    workdir,
                    part,
                    pg_admin_url=admin,
                    quick=args.quick,
                    runs=args.runs,
                    results=results,
                    db_suffix=stamp,
                )
                results.setdefault("durations_s", {})[name] = round(time.monotonic() - t, 1)
    finally:
        c.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    results["total_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(c.strip_samples(results), indent=2, default=str))
    if args.markdown:
        from bench import report_e2e

        print("\n".join(report_e2e.sections(results)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
