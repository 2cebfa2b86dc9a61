"""Figure 10: retention (SPEC §13) on PostgreSQL, while sagas keep running.

A fresh database gets 1,000,000 ended sagas (COMPLETED, FAILED, CANCELLED) that ended 40 to 52
days ago, each with its 3 step logs and an idempotency key, inserted in bulk (no outbox rows:
a real relay prunes published events after `kafka.retention_hours`), and 10,000 that ended
just now. Two `saga worker` processes then run 3-step sagas at saturation, kept fed (the bench
tops the queue of STARTED sagas up to 20,000 every half second), for three windows:

- **before**: no retention;
- **during**: `workers.service.retention.Retention` (`retention_days: 30`, batches of 1,000,
  a pause after each batch as long as the batch took) runs in the bench process, on its own
  `PostgresStore`, until no saga is due; its batches are timed one by one;
- **after**: retention done (autovacuum may still be at work).

Throughput is sagas reaching a terminal status per second, from their stored `updated_at`. At
the end the database is checked: every old saga and its step logs gone, the 10,000 recent ones
and every saga run during the windows still there, and the per-status counts (`saga_counts`,
kept by triggers) equal to a count of the rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common as c

_FILL = """
WITH s AS (
    INSERT INTO saga.saga_states (id, workflow_name, workflow_version, status, current_step,
        payload, created_at, updated_at, idempotency_key)
    SELECT gen_random_uuid(), 'bench-3', 1,
           CASE WHEN g %% 50 = 0 THEN 'CANCELLED' WHEN g %% 12 = 0 THEN 'FAILED'
                ELSE 'COMPLETED' END,
           3, '{"order_id":"bench","amount":42}'::jsonb,
           %(end)s::timestamptz - g * interval '1 second' - interval '300 ms',
           %(end)s::timestamptz - g * interval '1 second',
           %(prefix)s || g
    FROM generate_series(%(lo)s::int, %(hi)s::int) g
    RETURNING id, created_at, payload
)
INSERT INTO saga.saga_step_logs (id, saga_id, step_index, step_name, action, status,
    request_payload, response_payload, started_at, completed_at)
SELECT gen_random_uuid(), s.id, i, 's' || i, 'EXECUTE', 'SUCCESS', s.payload,
       s.payload || '{"ok": true}'::jsonb,
       s.created_at + i * interval '100 ms', s.created_at + i * interval '100 ms' + interval '1 ms'
FROM s, generate_series(0, 2) i
"""

_TERMINAL_SQL = "('COMPLETED', 'FAILED', 'CANCELLED')"


class _TimedStore:
    """The real store, with each retention batch timed (wall clock, sagas deleted)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.batches: list[tuple[float, float, int]] = []  # (start, seconds, deleted)

    @contextmanager
    def retention_turn(self) -> Iterator[Any]:
        with self.store.retention_turn() as delete_ended:
            if delete_ended is None:
                yield None
                return
            inner = delete_ended

            def timed(ended_before: datetime, limit: int) -> int:
                t0 = time.time()
                n = int(inner(ended_before, limit))
                self.batches.append((t0, time.time() - t0, n))
                return n

            yield timed


def _rate(conn: Any, t0: float, t1: float) -> float:
    """Sagas that reached a terminal status per second between two wall-clock times."""
    row = conn.execute(
        f"SELECT count(*) FROM saga.saga_states WHERE status IN {_TERMINAL_SQL} "
        "AND updated_at >= to_timestamp(%s) AND updated_at < to_timestamp(%s)",
        (t0, t1),
    ).fetchone()
    return int(row[0]) / max(1e-9, t1 - t0)


def _plan(url: str) -> str:
    """EXPLAIN ANALYZE of one batch as the store runs it, rolled back."""
    import psycopg

    from workers.adapters.store.postgres import _DELETE_ENDED

    sql = _DELETE_ENDED.replace("{schema}", "saga")
    params = {
        "before": datetime.now(UTC) - timedelta(days=30),
        "limit": 1000,
        "seq_bound": 2**63 - 1,
    }
    with psycopg.connect(url) as conn:
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
        conn.rollback()
    return "\n".join(r[0] for r in rows)


def retention(
    admin_url: str,
    workdir: Path,
    part: c.Participant,
    *,
    quick: bool,
    results: dict[str, Any],
    db_suffix: str,
) -> None:
    import psycopg

    from workers.adapters.store.postgres import PostgresStore
    from workers.service.retention import Retention

    old_n = 100_000 if quick else 1_000_000
    recent_n = 10_000
    window = 20.0 if quick else 60.0
    workers = 2
    res: dict[str, Any] = {
        "old_sagas": old_n,
        "step_logs_per_saga": 3,
        "recent_sagas": recent_n,
        "retention_days": 30,
        "batch": 1000,
        "workers": workers,
        "workflow": "bench-3",
        "window_s": window,
    }
    results["retention"] = res
    db = c.BenchDatabase(admin_url, f"saga_bench_retention_{db_suffix}")
    procs: list[Any] = []
    stop_feed = threading.Event()
    store = None
    conn = psycopg.connect(db.url, autocommit=True)
    try:
        t0 = time.monotonic()
        end = datetime.now(UTC) - timedelta(days=40)
        step = 100_000
        for lo in range(1, old_n + 1, step):
            conn.execute(
                _FILL, {"end": end, "prefix": "old-", "lo": lo, "hi": min(old_n, lo + step - 1)}
            )
        conn.execute(
            _FILL, {"end": datetime.now(UTC), "prefix": "recent-", "lo": 1, "hi": recent_n}
        )
        conn.execute(
            "UPDATE saga.saga_states SET updated_at = now() WHERE idempotency_key LIKE 'recent-%%'"
        )
        conn.execute("VACUUM ANALYZE")
        res["fill_s"] = round(time.monotonic() - t0, 1)
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        res["database_size_before"] = size.fetchone()[0]
        c.log(
            f"  retention: {old_n:,} ended sagas (+{3 * old_n:,} step logs) and {recent_n:,} "
            f"recent ones inserted in {res['fill_s']:.0f} s ({res['database_size_before']})"
        )

        d = workdir / "retention"
        d.mkdir(parents=True, exist_ok=True)
        c.write_workflows(d / "workflows")
        part.reset()
        cfg = c.write_config(
            d / "retention.yaml",
            participant_port=part.port,
            workflow_dir=d / "workflows",
            database_url=db.url,
            max_concurrent=100,
        )
        template = c.seed_template(cfg, "bench-3")

        def feed() -> None:
            with psycopg.connect(db.url, autocommit=True) as feeder:
                while not stop_feed.wait(0.5):
                    waiting = feeder.execute(
                        "SELECT count(*) FROM saga.saga_states WHERE status = 'STARTED'"
                    ).fetchone()[0]
                    if waiting < 20_000:
                        c.pg_clone_sagas(db.url, template, 20_000 - int(waiting))

        c.pg_clone_sagas(db.url, template, 20_000)
        feeder = threading.Thread(target=feed, name="bench-feeder", daemon=True)
        feeder.start()
        for i in range(workers):
            procs.append(c.start_worker(cfg, d / f"worker-{i}.log"))
        time.sleep(10.0)  # start-up, first claims, warm caches

        before = (time.time(), time.time() + window)
        time.sleep(window)
        res["sagas_per_s_before"] = round(_rate(conn, *before), 1)

        res["plan"] = _plan(db.url)
        store = PostgresStore(db.url, min_size=1, max_size=2, migrate=False)
        timed = _TimedStore(store)
        loop = Retention(timed, 30)  # type: ignore[arg-type]
        started = time.time()
        deleted = loop.run_pass()
        finished = time.time()
        res["deleted"] = deleted
        res["deletion_s"] = round(finished - started, 1)
        res["deleted_per_s"] = round((deleted or 0) / max(1e-9, finished - started), 0)
        durations = [s * 1000 for _, s, n in timed.batches if n]
        res["batches"] = len(durations)
        res["batch_ms"] = c.latency(durations)
        res["busy_share"] = round(sum(durations) / 1000 / max(1e-9, finished - started), 2)
        # Throughput during the deletion: the whole pass, without its first and last seconds.
        res["sagas_per_s_during"] = round(_rate(conn, started + 1, finished - 1), 1)
        per_window = []
        t = started
        while t + window <= finished:
            per_window.append(round(_rate(conn, t, t + window), 1))
            t += window
        res["sagas_per_s_during_by_window"] = per_window

        after = (time.time(), time.time() + window)
        time.sleep(window)
        res["sagas_per_s_after"] = round(_rate(conn, *after), 1)
        stop_feed.set()
        feeder.join(10)
        for p in procs:
            c.stop(p)
        procs.clear()

        left = conn.execute(
            "SELECT count(*) FROM saga.saga_states WHERE idempotency_key LIKE 'old-%%'"
        ).fetchone()[0]
        recent = conn.execute(
            "SELECT count(*) FROM saga.saga_states WHERE idempotency_key LIKE 'recent-%%'"
        ).fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM saga.saga_step_logs AS l WHERE NOT EXISTS "
            "(SELECT 1 FROM saga.saga_states AS s WHERE s.id = l.saga_id)"
        ).fetchone()[0]
        ran_logs = conn.execute(
            "SELECT count(*) FROM saga.saga_step_logs AS l JOIN saga.saga_states AS s "
            "ON s.id = l.saga_id WHERE s.idempotency_key IS NULL"
        ).fetchone()[0]
        ran = conn.execute(
            f"SELECT count(*) FROM saga.saga_states WHERE idempotency_key IS NULL "
            f"AND status IN {_TERMINAL_SQL}"
        ).fetchone()[0]
        counted = dict(
            conn.execute("SELECT status, count(*) FROM saga.saga_states GROUP BY 1").fetchall()
        )
        kept = dict(
            conn.execute(
                "SELECT status, sum(n) FROM saga.saga_counts GROUP BY 1 HAVING sum(n) <> 0"
            ).fetchall()
        )
        res["check"] = {
            "old_left": int(left),
            "recent_kept": int(recent),
            "step_logs_without_saga": int(orphans),
            "sagas_run_during_the_windows": int(ran),
            "their_step_logs": int(ran_logs),
            "saga_counts_exact": {k: int(v) for k, v in kept.items()}
            == {k: int(v) for k, v in counted.items()},
        }
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        res["database_size_after"] = size.fetchone()[0]
        b = res["batch_ms"]
        c.log(
            f"  retention: {deleted:,} sagas deleted in {res['deletion_s']:.0f} s = "
            f"{res['deleted_per_s']:,.0f} sagas/s ({res['batches']} batches, p50 "
            f"{b['p50_ms']:.0f} ms, p99 {b['p99_ms']:.0f} ms, busy {res['busy_share']:.0%})"
        )
        c.log(
            f"  retention: throughput {res['sagas_per_s_before']:.0f} sagas/s before, "
            f"{res['sagas_per_s_during']:.0f} during, {res['sagas_per_s_after']:.0f} after; "
            f"check {res['check']}"
        )
    finally:
        stop_feed.set()
        for p in procs:
            c.stop(p)
        if store is not None:
            store.close()
        conn.close()
        _drop(db)


def _drop(db: c.BenchDatabase) -> None:
    """Drop the database; after a million deletions autovacuum may be at work in it, and a
    role that is not superuser cannot end that session: wait for it (a minute at most)."""
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(db.admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
            return
        except psycopg.Error as exc:
            if time.monotonic() > deadline:
                c.log(f"  (could not drop database {db.name}: {exc})")
                return
            time.sleep(2)
