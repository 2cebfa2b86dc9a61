"""Figures 6-8: list at scale, recovery of 10,000 sagas in flight, memory per parked saga.

Recovery and memory share one scenario: a worker (`max_concurrent: 10000`, `lease_secs` 10)
holds N sagas whose participant blocks (a second participant process that sleeps 60 s on
`Bench.Park`); its RSS growth per held saga is read from /proc; then it is killed with
SIGKILL, and a new worker pointed at the instant participant is started. Recovery time runs
from that restart until every saga is terminal (it includes waiting for the dead worker's
leases to expire).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench import common as c
from bench.throughput import StoreTarget


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def recovery_and_memory(
    workdir: Path, pg_url: str, *, quick: bool, results: dict[str, Any]
) -> None:
    import psycopg

    n = 2000 if quick else 10000
    lease = 10.0
    res: dict[str, Any] = {"sagas": n, "lease_secs": lease}
    results["recovery"] = res
    target = StoreTarget("postgres", workdir / "recovery", pg_url)
    target.workdir.mkdir(parents=True, exist_ok=True)
    c.write_workflows(target.workdir / "workflows")
    target.fresh()
    blocking = c.Participant(target.workdir, {"/Bench/Park": {"sleep_ms": 60000}})
    instant = c.Participant(target.workdir, {})
    procs = []
    conn = psycopg.connect(pg_url, autocommit=True)
    try:
        cfg_a = target.config(blocking.port, "park", max_concurrent=n, lease_secs=lease)
        cfg_b = target.config(instant.port, "recover", max_concurrent=n, lease_secs=lease)
        template = c.seed_template(cfg_a, "bench-park")
        conn.execute("DELETE FROM saga.saga_states WHERE id = %s", (template,))
        worker = c.start_worker(cfg_a, target.workdir / "worker-park.log")
        procs.append(worker)
        time.sleep(4.0)
        rss0 = _rss_kib(worker.pid)
        c.pg_clone_sagas(pg_url, _template(conn, cfg_a), n)

        def held() -> int:
            return int(
                conn.execute(
                    "SELECT count(*) FROM saga.saga_states WHERE lease_owner IS NOT NULL "
                    "AND status = 'RUNNING'"
                ).fetchone()[0]
            )

        t0 = time.monotonic()
        c.wait_until(lambda: held() >= n, 120, interval=0.2, what=f"{n} sagas held")
        res["claim_all_s"] = round(time.monotonic() - t0, 2)
        time.sleep(3.0)
        rss1 = _rss_kib(worker.pid)
        res["rss_idle_mib"] = round(rss0 / 1024, 1)
        res["rss_held_mib"] = round(rss1 / 1024, 1)
        res["rss_per_saga_kib"] = round((rss1 - rss0) / n, 2)
        c.log(
            f"  memory: RSS {rss0 / 1024:.0f} MiB idle -> {rss1 / 1024:.0f} MiB with {n} parked: "
            f"{(rss1 - rss0) / n:.1f} KiB per saga in flight"
        )
        c.kill9(worker)
        blocking.close()
        t_restart = time.monotonic()
        worker_b = c.start_worker(cfg_b, target.workdir / "worker-recover.log")
        procs.append(worker_b)

        def terminal() -> int:
            return int(
                conn.execute(
                    "SELECT count(*) FROM saga.saga_states WHERE status IN ('COMPLETED','FAILED','CANCELLED')"
                ).fetchone()[0]
            )

        first = [None]

        def progress() -> bool:
            done = terminal()
            if done and first[0] is None:
                first[0] = time.monotonic()
            return done >= n

        c.wait_until(progress, 300, interval=0.2, what="recovered sagas terminal")
        t_done = time.monotonic()
        res["recovery_s"] = round(t_done - t_restart, 2)
        if first[0] is not None:
            res["after_first_recovered_s"] = round(t_done - first[0], 2)
            res["wait_for_leases_s"] = round(first[0] - t_restart, 2)
        c.log(
            f"  recovery: {n} in flight, kill -9, restart: all terminal {res['recovery_s']:.1f} s after restart "
            f"(first saga done after {res.get('wait_for_leases_s')} s: lease expiry {lease:.0f} s)"
        )
    finally:
        for p in procs:
            c.stop(p)
        blocking.close()
        instant.close()
        conn.close()


def _template(conn: Any, cfg: Path) -> str:
    return c.seed_template(cfg, "bench-park")


# --------------------------------------------------------------------------- list at scale

_FILL = """
INSERT INTO saga.saga_states (id, workflow_name, workflow_version, status, current_step, payload,
    correlation_id, created_at, updated_at)
SELECT gen_random_uuid(),
       (ARRAY['order-fulfillment','bench-3','bench-1'])[1 + (g %% 3)],
       1,
       CASE WHEN g %% 100 < 80 THEN 'COMPLETED' WHEN g %% 100 < 90 THEN 'FAILED'
            WHEN g %% 100 < 95 THEN 'CANCELLED' WHEN g %% 100 < 98 THEN 'RUNNING'
            WHEN g %% 100 < 99 THEN 'COMPENSATING' ELSE 'STARTED' END,
       3, '{"order_id":"bench","amount":42}'::jsonb,
       CASE WHEN g %% 10 = 0 THEN 'corr-' || (g / 10) END,
       now() - (g * interval '2 seconds'), now()
FROM generate_series(%s, %s) g
"""


def list_at_scale(
    admin_url: str, workdir: Path, *, quick: bool, results: dict[str, Any], db_suffix: str
) -> None:
    """`GET /api/v1/sagas?status=...&page=...` through the real REST server (gunicorn, 2
    workers, `saga.execute: false`) on a database of `rows` sagas: p50/p99 of sequential
    requests from one keep-alive client in the bench process (one request in flight); next to
    it the store call alone (`PostgresStore.list_sagas`, count + page) and the EXPLAIN ANALYZE
    plans of both statements."""
    import http.client

    import psycopg

    from bench.api import free_port, start_rest
    from saga.model import SagaStatus
    from workers.adapters.store.base import SagaFilter
    from workers.adapters.store.postgres import PostgresStore, list_statements

    rows = 200_000 if quick else 1_000_000
    reps = 50 if quick else 200
    res: dict[str, Any] = {
        "rows": rows,
        "repetitions": reps,
        "method": "HTTP: sequential GETs, one keep-alive connection (http.client) from the bench "
        "process to gunicorn (2 gthread workers x 8 threads, saga.execute false), page_size 20; "
        "store: PostgresStore.list_sagas (count + page) in the bench process",
    }
    results["list"] = res
    db = c.BenchDatabase(admin_url, f"saga_bench_list_{db_suffix}")
    store = None
    server = None
    conn_http = None
    try:
        t0 = time.monotonic()
        with psycopg.connect(db.url, autocommit=True) as conn:
            step = 250_000
            for lo in range(1, rows + 1, step):
                conn.execute(_FILL, (lo, min(rows, lo + step - 1)))
            conn.execute("VACUUM ANALYZE saga.saga_states")
            res["saga_counts_rows"] = int(
                conn.execute("SELECT count(*) FROM saga.saga_counts").fetchone()[0]
            )
        res["fill_s"] = round(time.monotonic() - t0, 1)
        c.log(f"  list: {rows:,} sagas inserted and analysed in {res['fill_s']:.0f} s")
        d = workdir / "list"
        d.mkdir(parents=True, exist_ok=True)
        (d / "workflows").mkdir(exist_ok=True)
        port = free_port()
        cfg = c.write_config(
            d / "list.yaml",
            participant_port=1,  # never called: nothing executes
            workflow_dir=d / "workflows",
            database_url=db.url,
            extra={
                "server": {"port": port, "workers": 2, "threads": 8},
                "saga": {"execute": False},
            },
        )
        server = start_rest(cfg, d / "gunicorn.log", port)
        conn_http = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        store = PostgresStore(db.url, min_size=1, max_size=2)
        cases = {
            "status=COMPLETED&page=1": (SagaFilter(status=SagaStatus.COMPLETED), 1),
            "status=COMPLETED&page=100": (SagaFilter(status=SagaStatus.COMPLETED), 100),
            "status=RUNNING&page=1": (SagaFilter(status=SagaStatus.RUNNING), 1),
            "status=STARTED&page=10": (SagaFilter(status=SagaStatus.STARTED), 10),
            "(no filter)&page=1": (SagaFilter(), 1),
        }
        expected = _expected_counts(rows)
        res["queries"] = {}
        res["store_queries"] = {}
        res["total_count"] = {}
        res["plans"] = {}
        for label, (flt, page) in cases.items():
            query = label.replace("(no filter)&", "")
            path = f"/api/v1/sagas?{query}"

            def get(path: str = path) -> dict[str, Any]:
                assert conn_http is not None
                conn_http.request("GET", path)
                r = conn_http.getresponse()
                body = r.read()
                if r.status != 200:
                    raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
                return dict(json.loads(body))

            for _ in range(5):  # warm: both workers, their pools, the plan cache
                first = get()
            samples = []
            for _ in range(reps):
                t = time.perf_counter()
                get()
                samples.append((time.perf_counter() - t) * 1000)
            res["queries"][label] = c.latency(samples)
            want = expected.get(flt.status.value if flt.status else None)
            res["total_count"][label] = {
                "api": first["pagination"]["total_count"],
                "expected": want,
            }
            store.list_sagas(flt, page, 20)  # warm
            samples = []
            for _ in range(reps):
                t = time.perf_counter()
                store.list_sagas(flt, page, 20)
                samples.append((time.perf_counter() - t) * 1000)
            res["store_queries"][label] = c.latency(samples)
            count_sql, page_sql, params = list_statements("saga", flt)
            with psycopg.connect(db.url, autocommit=True) as conn:
                plans = {}
                for kind, sql, p in (
                    ("count", count_sql, params),
                    ("page", page_sql, [*params, 20, (page - 1) * 20]),
                ):
                    plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, p).fetchall()
                    plans[kind] = "\n".join(r[0] for r in plan)
                res["plans"][label] = plans
            q, s = res["queries"][label], res["store_queries"][label]
            c.log(
                f"  list {label}: HTTP p50 {q['p50_ms']:.1f} ms p99 {q['p99_ms']:.1f} ms; "
                f"store p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms; total_count "
                f"{first['pagination']['total_count']} (expected {want})"
            )
    finally:
        if conn_http is not None:
            conn_http.close()
        if server is not None:
            c.stop(server)
        if store is not None:
            store.close()
        db.drop()


def _expected_counts(rows: int) -> dict[str | None, int]:
    """Per status, how many of generate_series(1, rows) `_FILL` gives it (None: all)."""
    out: dict[str | None, int] = {None: rows}
    for g in range(100):
        n = len(range(g if g else 100, rows + 1, 100))
        status = (
            "COMPLETED"
            if g < 80
            else "FAILED"
            if g < 90
            else "CANCELLED"
            if g < 95
            else "RUNNING"
            if g < 98
            else "COMPENSATING"
            if g < 99
            else "STARTED"
        )
        out[status] = out.get(status, 0) + n
    return out
