"""The durable case: physical baselines of the durable cluster, and the scaling table.

The durable cluster is `scripts/postgres.sh start-durable` (saga_durable, 127.0.0.1:55433):
PostgreSQL's durable defaults (fsync, synchronous_commit, full_page_writes on), with
pg_stat_statements, track_io_timing and track_wal_io_timing.

- physical: `pg_test_fsync` on a directory of the filesystem that holds the cluster's data
  (ops/s per sync method; the cluster's `wal_sync_method` and its figure), and `pgbench` on a
  fresh database of the cluster (`pgbench -i`, then TPC-B-like, `-N` simple-update, an
  insert-only custom script at 8 clients and at 1, interleaved runs): tps and mean latency.
- scaling: K 3-step sagas run by W `saga worker` processes on a fresh database of the durable
  cluster (the machinery of figure 1: pre-inserted sagas, workers started, run until every saga
  is terminal). Before the workers start: `pg_stat_statements_reset()`,
  `pg_stat_reset_shared('wal')`, a snapshot of every postgres process's CPU (/proc) and of the
  WAL position. After the last saga: PostgreSQL's statement time (total_exec_time +
  total_plan_time of the bench database's statements), the postgres processes' CPU (which also
  holds commit, WAL writing and background work no statement shows), WAL bytes, WAL flushes
  and commits, each per completed step; the workers' CPU per step; steps/s per worker process.
  From them, `scaling_table` says what a PostgreSQL of N cores carries on paper.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import common as c

# --------------------------------------------------------------------------- assumptions

# The scaling table's assumptions (stated in the report next to it).
CORES = (2, 4, 8, 16, 32, 64)
# Share of N cores PostgreSQL turns into this work: the rest goes to lock and buffer contention,
# context switches, the OS, checkpoints and autovacuum bursts.
CPU_EFFICIENCY = 0.7
# Sustained sequential WAL write bandwidth of the database's disk (a provisioned SSD volume;
# local NVMe does several times more). WAL is one stream: this bound does not grow with N.
WAL_BANDWIDTH_MB_S = 200.0
# A WAL flush on a network-attached cloud volume: about 1 ms (1,000 flushes/s), for comparison
# with this machine's disk.
CLOUD_FLUSHES_PER_S = 1000.0

# The marker of the bench's own polling statements (left out of the statement figures).
POLL_MARK = "saga-bench-poll"


# --------------------------------------------------------------------------- parsers


_OPS = re.compile(
    r"^\s*(?P<name>\S.*?)\s{2,}(?:(?P<ops>[\d.]+) ops/sec(?:\s+(?P<us>\d+) usecs/op)?|(?P<na>n/a\*?))\s*$"
)


def parse_pg_test_fsync(text: str) -> dict[str, Any]:
    """`pg_test_fsync` output -> {"seconds_per_test", "sections": {title: {method: ops/s or
    None (n/a)}}, "usecs_per_op": {title: {method: µs}}}. Titles are the lines ending in ':'
    ("Compare file sync methods using one 8kB write", ...); method names have their inner
    spaces collapsed ("1 * 16kB open_sync write")."""
    out: dict[str, Any] = {"seconds_per_test": None, "sections": {}, "usecs_per_op": {}}
    m = re.search(r"^(\d+) seconds? per test", text, re.M)
    if m:
        out["seconds_per_test"] = int(m.group(1))
    section: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace() and line.rstrip().endswith(":"):
            section = line.rstrip()[:-1].strip()
            out["sections"][section] = {}
            out["usecs_per_op"][section] = {}
            continue
        if section is None or not line[0].isspace():
            continue
        got = _OPS.match(line)
        if not got:
            continue
        name = " ".join(got.group("name").split())
        if got.group("na"):
            out["sections"][section][name] = None
            continue
        out["sections"][section][name] = float(got.group("ops"))
        if got.group("us"):
            out["usecs_per_op"][section][name] = int(got.group("us"))
    return out


ONE_WRITE = "Compare file sync methods using one 8kB write"
TWO_WRITES = "Compare file sync methods using two 8kB writes"


def fsync_rate(parsed: Mapping[str, Any], method: str, section: str = ONE_WRITE) -> float | None:
    """Ops/s of `method` (a wal_sync_method) in one section of parsed pg_test_fsync output."""
    value = parsed.get("sections", {}).get(section, {}).get(method)
    return float(value) if value is not None else None


def parse_pgbench(text: str) -> dict[str, Any]:
    """pgbench's summary -> tps (without initial connection time), latency_avg_ms,
    latency_stddev_ms (when printed), transactions, failed, initial_connection_ms, and the
    header facts (transaction_type, scaling_factor, query_mode, clients, threads, duration_s)."""

    def num(pattern: str, cast: Any = float) -> Any:
        m = re.search(pattern, text, re.M)
        return cast(m.group(1)) if m else None

    tps = num(r"^tps = ([\d.]+) \(without initial connection time\)")
    if tps is None:
        raise ValueError(f"no tps line in pgbench output: {text[-400:]!r}")
    m = re.search(r"^transaction type: (.+)$", text, re.M)
    return {
        "tps": tps,
        "latency_avg_ms": num(r"^latency average = ([\d.]+) ms"),
        "latency_stddev_ms": num(r"^latency stddev = ([\d.]+) ms"),
        "transactions": num(r"^number of transactions actually processed: (\d+)", int),
        "failed": num(r"^number of failed transactions: (\d+)", int),
        "initial_connection_ms": num(r"^initial connection time = ([\d.]+) ms"),
        "transaction_type": m.group(1).strip() if m else None,
        "scaling_factor": num(r"^scaling factor: (\d+)", int),
        "query_mode": (re.search(r"^query mode: (\S+)", text, re.M) or [None, None])[1],
        "clients": num(r"^number of clients: (\d+)", int),
        "threads": num(r"^number of threads: (\d+)", int),
        "duration_s": num(r"^duration: (\d+) s", int),
    }


# --------------------------------------------------------------------------- /proc CPU


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_proc_stat(text: str) -> tuple[int, float, float]:
    """A /proc/<pid>/stat line -> (ppid, own CPU s = utime+stime, reaped children's CPU s =
    cutime+cstime). The command name may hold spaces and parentheses: fields are read after the
    last ')'."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); ppid is field 4; utime..cstime are fields 14..17.
    ppid = int(rest[1])
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return ppid, (utime + stime) / _TICK, (cutime + cstime) / _TICK


def _read_stat(pid: int) -> tuple[int, float, float] | None:
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def cluster_snapshot(postmaster_pid: int) -> dict[str, Any]:
    """CPU seconds of a PostgreSQL cluster's processes: the postmaster's own and its reaped
    children's, and each live child's (backends, WAL writer, checkpointer, ...)."""
    pm = _read_stat(postmaster_pid)
    if pm is None:
        raise RuntimeError(f"postmaster {postmaster_pid} is not running")
    procs: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        got = _read_stat(int(entry.name))
        if got and got[0] == postmaster_pid:
            procs[int(entry.name)] = got[1]
    return {"pm_self": pm[1], "pm_children": pm[2], "procs": procs}


def cluster_cpu_delta(
    start: Mapping[str, Any], end: Mapping[str, Any], exclude: Iterable[int] = ()
) -> float:
    """CPU seconds the cluster's processes used between two snapshots, the processes in
    `exclude` (live through both, e.g. the bench's own connections) left out. A child that ended
    in between is in the postmaster's reaped-children time with its whole life, so what it had
    used before `start` is taken off again."""
    skip = set(exclude)
    s_procs: Mapping[int, float] = start["procs"]
    e_procs: Mapping[int, float] = end["procs"]
    total = (end["pm_self"] - start["pm_self"]) + (end["pm_children"] - start["pm_children"])
    for pid, cpu in e_procs.items():
        if pid not in skip:
            total += cpu - s_procs.get(pid, 0.0)
    for pid, cpu in s_procs.items():
        if pid not in e_procs and pid not in skip:
            total -= cpu
    return max(0.0, total)


def process_cpu(pid: int) -> float | None:
    got = _read_stat(pid)
    return got[1] if got else None


# --------------------------------------------------------------------------- scaling arithmetic


def scaling_table(
    *,
    pg_cpu_us_per_step: float,
    pg_statement_us_per_step: float | None,
    wal_bytes_per_step: float,
    fsync_per_s: float | None,
    steps_per_flush: float | None,
    steps_per_s_per_worker: float | None,
    worker_cpu_us_per_step: float | None,
    cores: Sequence[int] = CORES,
    efficiency: float = CPU_EFFICIENCY,
    wal_bandwidth_mb_s: float = WAL_BANDWIDTH_MB_S,
) -> list[dict[str, Any]]:
    """Per N cores of PostgreSQL: steps/s if CPU-bound (N × efficiency ÷ CPU per step, from the
    /proc figure and from the statement figure), if bound by WAL bandwidth (bandwidth ÷ WAL bytes
    per step) or by WAL flushes (flushes/s × steps per flush), the least of the /proc CPU, WAL
    and flush bounds as what it carries, and the worker processes that takes: at the measured
    steps/s per worker process, and at a worker's CPU ceiling (one core each, same efficiency).
    """
    if pg_cpu_us_per_step <= 0 or wal_bytes_per_step <= 0:
        raise ValueError("CPU and WAL per step must be positive")
    wal_bound = wal_bandwidth_mb_s * 1e6 / wal_bytes_per_step
    flush_bound = fsync_per_s * steps_per_flush if fsync_per_s and steps_per_flush else None
    worker_ceiling = efficiency * 1e6 / worker_cpu_us_per_step if worker_cpu_us_per_step else None
    rows = []
    for n in cores:
        cpu_bound = n * efficiency * 1e6 / pg_cpu_us_per_step
        stmt_bound = (
            n * efficiency * 1e6 / pg_statement_us_per_step if pg_statement_us_per_step else None
        )
        bounds = {"cpu": cpu_bound, "wal_bandwidth": wal_bound}
        if flush_bound is not None:
            bounds["wal_flush"] = flush_bound
        limit = min(bounds, key=lambda k: bounds[k])
        carried = bounds[limit]
        rows.append(
            {
                "cores": n,
                "cpu_bound_steps_per_s": cpu_bound,
                "statement_bound_steps_per_s": stmt_bound,
                "wal_bandwidth_bound_steps_per_s": wal_bound,
                "wal_flush_bound_steps_per_s": flush_bound,
                "carried_steps_per_s": carried,
                "limited_by": limit,
                "workers_at_measured_rate": math.ceil(carried / steps_per_s_per_worker)
                if steps_per_s_per_worker
                else None,
                "workers_at_cpu_ceiling": math.ceil(carried / worker_ceiling)
                if worker_ceiling
                else None,
            }
        )
    return rows


# --------------------------------------------------------------------------- helpers


def pg_binary(name: str, major: int | None = None) -> str | None:
    """A PostgreSQL client program: Debian's under /usr/lib/postgresql/<v>/bin (the server's
    major version first), else on PATH."""
    root = Path("/usr/lib/postgresql")
    if major is not None and (root / str(major) / "bin" / name).exists():
        return str(root / str(major) / "bin" / name)
    for path in sorted(root.glob(f"*/bin/{name}"), key=lambda p: p.parts[-3], reverse=True):
        return str(path)
    return shutil.which(name)


def settings(url: str) -> dict[str, Any]:
    """The durable cluster's settings that matter here, and its server version."""
    import psycopg

    names = (
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_sync_method",
        "wal_level",
        "shared_buffers",
        "max_connections",
        "shared_preload_libraries",
        "track_io_timing",
        "track_wal_io_timing",
        "checkpoint_timeout",
        "max_wal_size",
        "commit_delay",
    )
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(names),)
        ).fetchall()
        version = conn.execute("SELECT version()").fetchone()
        num = conn.execute("SHOW server_version_num").fetchone()
        data = conn.execute("SHOW data_directory").fetchone()
    return {
        "version": version[0] if version else None,
        "major": int(num[0]) // 10000 if num else None,
        "data_directory": data[0] if data else None,
        "settings": dict(rows),
    }


def _create_db(admin_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return c.with_dbname(admin_url, name)


def _drop_db(admin_url: str, name: str) -> None:
    import psycopg

    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:  # noqa: BLE001 - report, keep cleaning up
        c.log(f"  (could not drop database {name}: {exc})")


def _median(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


# --------------------------------------------------------------------------- physical baselines

_INSERT_ONLY = """\\set aid random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
"""

# name -> (pgbench options, clients)
PGBENCH_CASES: dict[str, tuple[list[str], int]] = {
    "tpcb_like": ([], 8),
    "simple_update": (["-N"], 8),
    "insert_only": (["-n", "-f", "{insert}"], 8),
    "insert_only_1_client": (["-n", "-f", "{insert}"], 1),
    # Figure 2's raw step commit (UPDATE saga_states + INSERT saga_step_logs, one saga per
    # transaction) on the durable cluster.
    "saga_step_commit": (["-n", "-f", "{step}"], 8),
}


def physical(
    admin_url: str,
    workdir: Path,
    *,
    quick: bool,
    runs: int,
    results: dict[str, Any],
    db_suffix: str,
) -> None:
    """Fill results['pg_test_fsync'] and results['pgbench_durable'] (the durable cluster)."""
    info = settings(admin_url)
    results["pg_test_fsync"] = fsync_figure(info, workdir, seconds=1 if quick else 2)
    results["pgbench_durable"] = pgbench_figure(
        admin_url,
        info,
        workdir,
        seconds=3 if quick else 5,
        runs=1 if quick else max(1, runs),
        scale=10,
        db_name=f"saga_bench_pgbench_{db_suffix}",
    )


def fsync_figure(info: Mapping[str, Any], workdir: Path, *, seconds: int) -> dict[str, Any]:
    method = info["settings"].get("wal_sync_method")
    out: dict[str, Any] = {"wal_sync_method": method, "seconds_per_test": seconds}
    binary = pg_binary("pg_test_fsync", info.get("major"))
    if not binary:
        out["error"] = "pg_test_fsync not found (Debian ships it in postgresql-<v>)"
        c.log(f"  pg_test_fsync: {out['error']}")
        return out
    data = Path(info["data_directory"]) if info.get("data_directory") else None
    # Beside the data directory (same filesystem), never inside it.
    base = data.parent if data and data.parent.exists() else workdir
    try:
        probe = Path(tempfile.mkdtemp(prefix="saga-bench-fsync-", dir=base))
    except OSError:
        base = workdir
        probe = Path(tempfile.mkdtemp(prefix="saga-bench-fsync-", dir=base))
    try:
        same_fs = data is not None and os.stat(probe).st_dev == os.stat(data).st_dev
        t0 = time.monotonic()
        proc = subprocess.run(
            [binary, "-s", str(seconds), "-f", str(probe / "pg_test_fsync.out")],
            capture_output=True,
            text=True,
            timeout=40 * seconds + 60,
            cwd=probe,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pg_test_fsync failed: {proc.stderr[-400:]}")
        parsed = parse_pg_test_fsync(proc.stdout)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    out.update(
        {
            "binary": binary,
            "directory": str(base),
            "same_filesystem_as_data": same_fs,
            "wall_s": round(time.monotonic() - t0, 1),
            "sections": parsed["sections"],
            "usecs_per_op": parsed["usecs_per_op"],
            "wal_sync_method_ops_per_s": fsync_rate(parsed, method) if method else None,
            "wal_sync_method_two_writes_ops_per_s": fsync_rate(parsed, method, TWO_WRITES)
            if method
            else None,
        }
    )
    c.log(
        f"  pg_test_fsync ({seconds} s per test, {base}, same filesystem as the data: {same_fs}): "
        f"wal_sync_method={method} {_fmt(out['wal_sync_method_ops_per_s'])} ops/s (one 8 kB write); "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in parsed["sections"].get(ONE_WRITE, {}).items())
    )
    return out


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def pgbench_figure(
    admin_url: str,
    info: Mapping[str, Any],
    workdir: Path,
    *,
    seconds: int,
    runs: int,
    scale: int,
    db_name: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seconds_per_run": seconds,
        "runs": runs,
        "scale": scale,
        "threads": 2,
        "cases": {},
    }
    binary = pg_binary("pgbench", info.get("major"))
    if not binary:
        out["error"] = "pgbench not found (Debian ships it in postgresql-<v>)"
        c.log(f"  pgbench: {out['error']}")
        return out
    from bench import baselines

    scripts = {"{insert}": workdir / "pgbench-insert-only.sql", "{step}": workdir / "step.sql"}
    scripts["{insert}"].write_text(_INSERT_ONLY)
    scripts["{step}"].write_text(baselines._PGBENCH_SCRIPT)
    out["insert_only_script"] = _INSERT_ONLY

    def argv_opts(opts: list[str]) -> list[str]:
        return [str(scripts.get(o, o)) for o in opts]

    url = _create_db(admin_url, db_name)
    try:
        t0 = time.monotonic()
        init = subprocess.run(
            [binary, "-i", "-q", "-s", str(scale), url],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {init.stderr[-400:]}")
        import psycopg

        from workers.adapters.store.migrate import migrate_postgres

        migrate_postgres(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(baselines._PREPARE.replace("%(rows)s", str(baselines.ROWS)))
        out["init_s"] = round(time.monotonic() - t0, 1)
        samples: dict[str, list[dict[str, Any]]] = {k: [] for k in PGBENCH_CASES}
        # Interleaved: every case once per round, so the shared machine's load falls on all.
        for _ in range(runs):
            for name, (opts, clients) in PGBENCH_CASES.items():
                argv = [
                    binary,
                    *argv_opts(opts),
                    "-M",
                    "prepared",
                    "-c",
                    str(clients),
                    "-j",
                    str(min(clients, 2)),
                    "-T",
                    str(seconds),
                    url,
                ]
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
                if proc.returncode != 0:
                    raise RuntimeError(f"pgbench {name} failed: {proc.stderr[-400:]}")
                samples[name].append(parse_pgbench(proc.stdout))
        for name, got in samples.items():
            opts, clients = PGBENCH_CASES[name]
            out["cases"][name] = {
                "clients": clients,
                "options": " ".join(
                    {"{insert}": "insert-only.sql", "{step}": "step.sql"}.get(o, o) for o in opts
                ),
                "transaction_type": got[0]["transaction_type"] if got else None,
                "tps": c.summary([g["tps"] for g in got]),
                "latency_avg_ms": c.summary([g["latency_avg_ms"] for g in got]),
                "failed": sum(g["failed"] or 0 for g in got),
            }
            e = out["cases"][name]
            c.log(
                f"  pgbench durable {name:22s} {clients} clients: {e['tps']['median']:,.0f} tps "
                f"({e['tps']['min']:,.0f}..{e['tps']['max']:,.0f}), latency "
                f"{e['latency_avg_ms']['median']:.2f} ms"
            )
    finally:
        _drop_db(admin_url, db_name)
    return out


# --------------------------------------------------------------------------- scaling


def _postmaster_pid(data_directory: str | None) -> int | None:
    if not data_directory:
        return None
    try:
        return int(Path(data_directory, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


_STATEMENTS = """
SELECT coalesce(sum(total_exec_time), 0), coalesce(sum(total_plan_time), 0),
       coalesce(sum(calls), 0), coalesce(sum(wal_bytes), 0),
       coalesce(sum(blk_write_time + blk_read_time), 0)
FROM pg_stat_statements
WHERE dbid = %s AND query NOT LIKE %s
"""

_TOP_STATEMENTS = """
SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 110), calls,
       total_exec_time + total_plan_time, rows
FROM pg_stat_statements
WHERE dbid = %s AND query NOT LIKE %s
ORDER BY total_exec_time + total_plan_time DESC
LIMIT 6
"""


def scaling(
    admin_url: str,
    workdir: Path,
    part: c.Participant,
    *,
    quick: bool,
    runs: int,
    results: dict[str, Any],
    db_suffix: str,
) -> None:
    """Fill results['scaling']: per-step costs measured on the durable cluster, and the table."""
    import psycopg

    from bench.throughput import StoreTarget

    info = settings(admin_url)
    workers = 2
    n = 1000 if quick else 3000
    nruns = 1 if quick else max(1, runs)
    res: dict[str, Any] = {
        "workflow": "bench-3",
        "sagas_per_run": n,
        "workers": workers,
        "runs": [],
        "cluster_settings": info["settings"],
        "assumptions": {
            "cores": list(CORES),
            "cpu_efficiency": CPU_EFFICIENCY,
            "wal_bandwidth_mb_s": WAL_BANDWIDTH_MB_S,
            "cloud_flushes_per_s": CLOUD_FLUSHES_PER_S,
        },
    }
    results["scaling"] = res
    if not (results.get("pg_test_fsync") or {}).get("wal_sync_method_ops_per_s"):
        # Not measured in this run (the physical figure): a short one of its own.
        res["pg_test_fsync"] = fsync_figure(info, workdir, seconds=1)
    pm_pid = _postmaster_pid(info.get("data_directory"))
    if pm_pid is None:
        res["cpu_note"] = "postmaster.pid not readable: no /proc CPU figure"
    name = f"saga_bench_scaling_{db_suffix}"
    db = c.BenchDatabase(admin_url, name)
    target = StoreTarget("postgres", workdir / "scaling", db.url)
    target.workdir.mkdir(parents=True, exist_ok=True)
    c.write_workflows(target.workdir / "workflows")
    try:
        with (
            psycopg.connect(admin_url, autocommit=True) as stats,
            psycopg.connect(db.url, autocommit=True) as poll,
        ):
            dbid = stats.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,))
            oid = dbid.fetchone()[0]  # type: ignore[index]
            own = {
                stats.execute("SELECT pg_backend_pid()").fetchone()[0],  # type: ignore[index]
                poll.execute("SELECT pg_backend_pid()").fetchone()[0],  # type: ignore[index]
            }
            for i in range(nruns):
                got = _scaling_run(
                    target, part, stats, poll, oid, own, pm_pid, n=n, workers=workers, index=i
                )
                res["runs"].append(got)
                w = got.get("steady") or got["run"]
                r = got["run"]
                c.log(
                    f"  scaling run {i + 1}: {got['steps']} steps, {got['steps_per_s']:,.0f} steps/s "
                    f"({workers} workers); steady window: PostgreSQL CPU "
                    f"{_fmt(w.get('pg_cpu_us_per_step'))} µs/step (/proc), statements "
                    f"{w['statement_us_per_step']:,.0f} µs/step, worker CPU "
                    f"{_fmt(w.get('worker_cpu_us_per_step'))} µs/step; whole run: WAL "
                    f"{r['lsn_bytes_per_step']:,.0f} B/step, {_fmt(r['steps_per_wal_sync'])} "
                    f"steps/flush ({r['wal_sync_ms_per_sync'] or 0:.2f} ms each), "
                    f"{r['commits_per_step']:.3f} commits/step"
                )
    finally:
        db.drop()
    keys = (
        "pg_cpu_us_per_step",
        "pg_cores_busy",
        "statement_us_per_step",
        "statement_io_us_per_step",
        "statement_calls_per_step",
        "wal_bytes_per_step",
        "lsn_bytes_per_step",
        "wal_fpi_per_step",
        "steps_per_wal_sync",
        "wal_sync_ms_per_sync",
        "wal_syncs_per_s",
        "commits_per_step",
        "worker_cpu_us_per_step",
    )
    for window in ("steady", "run"):
        res[f"median_{window}"] = {
            k: _median((r.get(window) or {}).get(k) for r in res["runs"]) for k in keys
        }
    rate = _median(r["steps_per_s"] for r in res["runs"])
    res["steps_per_s"] = rate
    res["steps_per_s_per_worker"] = rate / workers if rate else None
    steady, run = res["median_steady"], res["median_run"]

    def pick(key: str) -> tuple[float | None, str]:
        """CPU from the steady window (no start-up or tail); the cumulative WAL and commit
        counters from the whole run (they are exact only once the backends reported them)."""
        if steady.get(key) is not None:
            return steady[key], "steady window"
        return run.get(key), "whole run"

    fs = results.get("pg_test_fsync") or res.get("pg_test_fsync") or {}
    fsync = fs.get("wal_sync_method_ops_per_s")
    inputs = {
        "pg_cpu_us_per_step": pick("pg_cpu_us_per_step"),
        "statement_us_per_step": pick("statement_us_per_step"),
        "worker_cpu_us_per_step": pick("worker_cpu_us_per_step"),
        "wal_bytes_per_step": (run["lsn_bytes_per_step"], "whole run, WAL position"),
        "steps_per_wal_sync": (run["steps_per_wal_sync"], "whole run, pg_stat_wal"),
        "wal_sync_ms_per_sync": (run["wal_sync_ms_per_sync"], "whole run, pg_stat_wal"),
        "commits_per_step": (run["commits_per_step"], "whole run, pg_stat_database"),
        "steps_per_s_per_worker": (res["steps_per_s_per_worker"], f"{workers} workers"),
        "fsync_per_s": (
            fsync,
            f"pg_test_fsync, {fs.get('wal_sync_method')}, one 8 kB write"
            if fsync
            else "pg_test_fsync not run",
        ),
    }
    res["inputs"] = {k: {"value": v, "from": src} for k, (v, src) in inputs.items()}
    cpu = inputs["pg_cpu_us_per_step"][0] or inputs["statement_us_per_step"][0]
    wal_per_step = inputs["wal_bytes_per_step"][0]
    if not cpu or not wal_per_step:
        res["table_error"] = "no CPU or WAL figure per step"
        return
    res["cpu_figure_used"] = "/proc" if inputs["pg_cpu_us_per_step"][0] else "statements"
    res["table"] = scaling_table(
        pg_cpu_us_per_step=cpu,
        pg_statement_us_per_step=inputs["statement_us_per_step"][0],
        wal_bytes_per_step=wal_per_step,
        fsync_per_s=fsync,
        steps_per_flush=inputs["steps_per_wal_sync"][0],
        steps_per_s_per_worker=res["steps_per_s_per_worker"],
        worker_cpu_us_per_step=inputs["worker_cpu_us_per_step"][0],
    )
    per_flush = inputs["steps_per_wal_sync"][0]
    flush_ms = inputs["wal_sync_ms_per_sync"][0]
    if per_flush:
        # The same flush arithmetic at a cloud volume's flush time, and at the flush time the
        # run itself measured (pg_stat_wal wal_sync_time / wal_sync).
        res["cloud_flush_bound_steps_per_s"] = CLOUD_FLUSHES_PER_S * per_flush
        if flush_ms:
            res["measured_flush_bound_steps_per_s"] = 1000.0 / flush_ms * per_flush
    for row in res["table"]:
        c.log(
            f"  scaling {row['cores']:2d} cores: CPU {row['cpu_bound_steps_per_s']:>9,.0f}  "
            f"WAL bw {row['wal_bandwidth_bound_steps_per_s']:>9,.0f}  flush "
            f"{_fmt(row['wal_flush_bound_steps_per_s']):>9}  -> {row['carried_steps_per_s']:,.0f} "
            f"steps/s ({row['limited_by']}), workers {row['workers_at_measured_rate']} "
            f"(at CPU ceiling {row['workers_at_cpu_ceiling']})"
        )


def _snapshot(
    stats: Any, dbid: int, mark: str, pm_pid: int | None, procs: Sequence[Any]
) -> dict[str, Any]:
    """Counters of the cluster and the workers at one moment."""
    wal = stats.execute(
        "SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync, wal_sync_time FROM pg_stat_wal"
    ).fetchone()
    st = stats.execute(_STATEMENTS, (dbid, mark)).fetchone()
    return {
        "t": time.time(),
        "lsn": stats.execute("SELECT pg_current_wal_lsn()").fetchone()[0],
        "commits": int(
            stats.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datid = %s", (dbid,)
            ).fetchone()[0]
        ),
        "wal": [float(x) for x in wal],
        "statements": [float(x) for x in st],
        "cluster": cluster_snapshot(pm_pid) if pm_pid else None,
        "workers": [process_cpu(p.pid) for p in procs],
    }


def window_costs(
    a: Mapping[str, Any], b: Mapping[str, Any], steps: int, lsn_bytes: float, own: Iterable[int]
) -> dict[str, Any]:
    """Per-step costs between two snapshots in which `steps` steps completed."""
    if steps <= 0:
        raise ValueError("no step completed in the window")
    records, fpi, wal_bytes, wal_write, wal_sync, wal_sync_ms = (
        y - x for x, y in zip(a["wal"], b["wal"], strict=True)
    )
    exec_ms, plan_ms, calls, _stmt_wal, io_ms = (
        y - x for x, y in zip(a["statements"], b["statements"], strict=True)
    )
    commits = b["commits"] - a["commits"]
    secs = b["t"] - a["t"]
    out: dict[str, Any] = {
        "seconds": secs,
        "steps": steps,
        "statement_exec_ms": exec_ms,
        "statement_plan_ms": plan_ms,
        "statement_us_per_step": (exec_ms + plan_ms) * 1000 / steps,
        "statement_io_us_per_step": io_ms * 1000 / steps,
        "statement_calls_per_step": calls / steps,
        "wal_records": int(records),
        "wal_fpi": int(fpi),
        "wal_bytes": int(wal_bytes),
        "wal_write": int(wal_write),
        "wal_sync": int(wal_sync),
        "wal_sync_time_ms": wal_sync_ms,
        "wal_bytes_per_step": wal_bytes / steps,
        "lsn_bytes_per_step": lsn_bytes / steps,
        "wal_fpi_per_step": fpi / steps,
        "steps_per_wal_sync": steps / wal_sync if wal_sync else None,
        "wal_sync_ms_per_sync": wal_sync_ms / wal_sync if wal_sync else None,
        "wal_syncs_per_s": wal_sync / secs if secs > 0 else None,
        "commits": commits,
        "commits_per_step": commits / steps,
    }
    if a.get("cluster") and b.get("cluster"):
        cpu = cluster_cpu_delta(a["cluster"], b["cluster"], exclude=own)
        out["pg_cpu_s"] = cpu
        out["pg_cpu_us_per_step"] = cpu * 1e6 / steps
        out["pg_cores_busy"] = cpu / secs if secs > 0 else None
    wa, wb = a.get("workers") or [], b.get("workers") or []
    if wa and wb and all(x is not None for x in [*wa, *wb]):
        wcpu = sum(wb) - sum(wa)
        out["worker_cpu_s"] = wcpu
        out["worker_cpu_us_per_step"] = wcpu * 1e6 / steps
    return out


def _scaling_run(
    target: Any,
    part: c.Participant,
    stats: Any,
    poll: Any,
    dbid: int,
    own_pids: set[int],
    pm_pid: int | None,
    *,
    n: int,
    workers: int,
    index: int,
) -> dict[str, Any]:
    """One run; costs over the whole run (stats reset just before the workers start, to a
    second after they stopped, when the backends have reported their cumulative statistics) and
    over the steady window (from the poll that sees 10% of the sagas done to the one that sees
    90%: no worker start-up, no tail). pg_stat_wal and pg_stat_database reach the views up to a
    second late, so over the steady window only /proc, pg_stat_statements (updated as each
    statement ends) and the WAL position are exact."""
    target.fresh()
    part.reset()
    cfg = target.config(part.port, f"scaling-{index}")
    # A checkpoint first, so that none starts in the run by the clock of an earlier one; pages
    # get their full-page image the first time they change after it, as once per checkpoint
    # cycle in steady state.
    stats.execute("CHECKPOINT")
    target.seed(cfg, "bench-3", n)
    mark = f"%{POLL_MARK}%"
    stats.execute("SELECT pg_stat_statements_reset()")
    stats.execute("SELECT pg_stat_reset_shared('wal')")
    procs: list[Any] = []
    snaps: dict[str, dict[str, Any]] = {"start": _snapshot(stats, dbid, mark, pm_pid, procs)}
    try:
        for i in range(workers):
            procs.append(c.start_worker(cfg, target.workdir / f"scaling-worker-{index}-{i}.log"))
        deadline = time.monotonic() + 300
        done = 0
        while time.monotonic() < deadline:
            row = poll.execute(
                f"SELECT /* {POLL_MARK} */ coalesce(sum(n), 0) FROM saga.saga_counts "
                "WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED')"
            ).fetchone()
            done = int(row[0])
            if "p10" not in snaps and done >= 0.1 * n:
                snaps["p10"] = _snapshot(stats, dbid, mark, pm_pid, procs)
            if "p90" not in snaps and done >= 0.9 * n:
                snaps["p90"] = _snapshot(stats, dbid, mark, pm_pid, procs)
            if done >= n:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited early; see {target.workdir}/scaling-worker-*")
            time.sleep(0.1)
        snaps["done"] = _snapshot(stats, dbid, mark, pm_pid, procs)
    finally:
        for p in procs:
            c.stop(p)
    time.sleep(1.2)
    snaps["end"] = _snapshot(stats, dbid, mark, pm_pid, [])
    lsn_run, lsn_steady = (
        float(
            stats.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)",
                (snaps[b]["lsn"], snaps[a]["lsn"]),
            ).fetchone()[0]
        )
        if a in snaps and b in snaps
        else 0.0
        for a, b in (("start", "end"), ("p10", "p90"))
    )
    top = stats.execute(_TOP_STATEMENTS, (dbid, mark)).fetchall()
    if done < n:
        raise RuntimeError(f"scaling run timed out: {done} of {n} sagas terminal")
    reader = target.reader()
    try:
        logs = reader.log_times()
    finally:
        reader.close()
    run = window_costs(snaps["start"], snaps["end"], len(logs), lsn_run, own_pids)
    run["seconds_to_last_saga"] = snaps["done"]["t"] - snaps["start"]["t"]
    # Worker processes did not exist at "start": their CPU up to the last saga is all they used.
    out: dict[str, Any] = {
        "sagas": n,
        "steps": len(logs),
        "steps_per_s": c.steady_rate(logs),
        "steps_per_s_per_worker": c.steady_rate(logs) / workers,
        "run": run,
        "top_statements": [
            {"query": q, "calls": int(k), "ms": float(ms), "rows": int(r)} for q, k, ms, r in top
        ],
    }
    if snaps["done"]["workers"] and all(x is not None for x in snaps["done"]["workers"]):
        run["worker_cpu_s"] = sum(snaps["done"]["workers"])
        run["worker_cpu_us_per_step"] = run["worker_cpu_s"] * 1e6 / len(logs)
    if "p10" in snaps and "p90" in snaps:
        t10, t90 = snaps["p10"]["t"], snaps["p90"]["t"]
        in_window = sum(1 for t in logs if t10 < t <= t90)
        if in_window:
            out["steady"] = window_costs(
                snaps["p10"], snaps["p90"], in_window, lsn_steady, own_pids
            )
    return out
