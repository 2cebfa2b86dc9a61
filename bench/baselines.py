"""Figure 2: the physical limits on this machine, measured in the same run.

- Raw step commit: the step transaction of the PostgreSQL store reduced to its two writes
  (UPDATE one saga_states row: status, current_step, updated_at, compensation, lease expiry;
  INSERT one saga_step_logs row with JSONB request/response), one saga per transaction, at
  1, 4 and 16 connections. Measured twice: with `pgbench` (C client, the database's limit) and
  with psycopg from Python threads (what a Python process can drive).
- Raw gRPC: grpcio JSON echo calls to the same participant process the sagas call: one thread
  of blocking calls, 8 threads of blocking calls, and one thread keeping 64 futures in flight.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench import common as c

_PREPARE = """
DROP TABLE IF EXISTS public.bench_ids;
CREATE TABLE public.bench_ids (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO saga.workflow_definitions (name, version, definition)
VALUES ('raw', 1, '{}') ON CONFLICT DO NOTHING;
INSERT INTO saga.saga_states (id, workflow_name, status, current_step, payload, created_at, updated_at)
SELECT gen_random_uuid(), 'raw', 'RUNNING', 0, '{"order_id":"bench","amount":42}', now(), now()
FROM generate_series(1, %(rows)s);
INSERT INTO public.bench_ids SELECT row_number() OVER (), id FROM saga.saga_states WHERE workflow_name = 'raw';
"""

ROWS = 10000

_PGBENCH_SCRIPT = f"""\\set r random(1, {ROWS})
BEGIN;
UPDATE saga.saga_states SET status = 'RUNNING', current_step = current_step + 1, error_message = NULL, updated_at = now(), compensation = NULL, lease_expires_at = now() + interval '30 seconds' WHERE id = (SELECT id FROM public.bench_ids WHERE n = :r);
INSERT INTO saga.saga_step_logs (id, saga_id, step_index, step_name, action, status, request_payload, response_payload, started_at, completed_at) VALUES (gen_random_uuid(), (SELECT id FROM public.bench_ids WHERE n = :r), 0, 's0', 'EXECUTE', 'SUCCESS', '{{"order_id": "bench", "amount": 42}}', '{{"order_id": "bench", "amount": 42, "ok": true}}', now(), now());
END;
"""

_UPDATE = (
    "UPDATE saga.saga_states SET status = 'RUNNING', current_step = current_step + 1, "
    "error_message = NULL, updated_at = now(), compensation = NULL, "
    "lease_expires_at = now() + interval '30 seconds' WHERE id = %s"
)
_INSERT = (
    "INSERT INTO saga.saga_step_logs (id, saga_id, step_index, step_name, action, status, "
    "request_payload, response_payload, started_at, completed_at) VALUES (gen_random_uuid(), %s, 0, "
    "'s0', 'EXECUTE', 'SUCCESS', %s, %s, now(), now())"
)


def _pgbench_binary() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for path in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(path)
    return None


def raw_commit(
    pg_url: str, workdir: Path, *, quick: bool, runs: int, results: dict[str, Any]
) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        c.pg_truncate(pg_url)
        conn.execute(_PREPARE.replace("%(rows)s", str(ROWS)))
        ids = [r[0] for r in conn.execute("SELECT id FROM public.bench_ids").fetchall()]
    secs = 2 if quick else 5
    out: dict[str, Any] = {"rows": ROWS, "seconds_per_run": secs, "pgbench": {}, "psycopg": {}}
    results["raw_commit"] = out
    pgbench = _pgbench_binary()
    script = workdir / "step.sql"
    script.write_text(_PGBENCH_SCRIPT)
    for conns in (1, 4, 16):
        if pgbench:
            tps = []
            for _ in range(runs):
                proc = subprocess.run(
                    [
                        pgbench,
                        "-n",
                        "-M",
                        "prepared",
                        "-c",
                        str(conns),
                        "-j",
                        str(min(conns, 2)),
                        "-T",
                        str(secs),
                        "-f",
                        str(script),
                        pg_url,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=secs + 60,
                )
                m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
                if not m:
                    raise RuntimeError(f"pgbench failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
                tps.append(float(m.group(1)))
            out["pgbench"][str(conns)] = c.summary(tps)
        py = [_psycopg_rate(pg_url, ids, conns, secs) for _ in range(runs)]
        out["psycopg"][str(conns)] = c.summary(py)
        c.log(
            f"  raw step commit, {conns:2d} conn: pgbench "
            f"{out['pgbench'].get(str(conns), {}).get('median') or 0:.0f} tx/s, "
            f"psycopg threads {out['psycopg'][str(conns)]['median']:.0f} tx/s"
        )
    if not pgbench:
        out["pgbench_missing"] = True
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.bench_ids")
    c.pg_truncate(pg_url)


def _psycopg_rate(pg_url: str, ids: list[Any], conns: int, secs: float) -> float:
    import random

    import psycopg
    from psycopg.types.json import Jsonb

    stop = threading.Event()
    counts = [0] * conns
    barrier = threading.Barrier(conns + 1)
    req = Jsonb({"order_id": "bench", "amount": 42})
    rep = Jsonb({"order_id": "bench", "amount": 42, "ok": True})

    def run(i: int) -> None:
        rnd = random.Random(i)
        with psycopg.connect(pg_url) as conn:
            barrier.wait()
            n = 0
            while not stop.is_set():
                sid = ids[rnd.randrange(len(ids))]
                with conn.transaction():
                    conn.execute(_UPDATE, (sid,))
                    conn.execute(_INSERT, (sid, req, rep))
                n += 1
            counts[i] = n

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(secs)
    stop.set()
    for t in threads:
        t.join(30)
    return sum(counts) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- gRPC echo


def grpc_echo(part: c.Participant, *, quick: bool, runs: int, results: dict[str, Any]) -> None:
    secs = 1.5 if quick else 4
    body = json.dumps({"order_id": "bench", "amount": 42}, separators=(",", ":")).encode()
    out: dict[str, Any] = {"seconds_per_run": secs}
    results["grpc_echo"] = out
    for label, fn in (
        ("1_thread", lambda: _echo_threads(part.port, body, 1, secs)),
        ("8_threads", lambda: _echo_threads(part.port, body, 8, secs)),
        ("futures_64", lambda: _echo_futures(part.port, body, 64, secs)),
    ):
        vals = []
        for _ in range(runs):
            part.reset()
            vals.append(fn())
        out[label] = c.summary(vals)
        c.log(
            f"  raw gRPC echo {label}: {out[label]['median']:.0f} calls/s "
            f"({out[label]['min']:.0f}..{out[label]['max']:.0f})"
        )
    part.reset()


def _echo_threads(port: int, body: bytes, threads: int, secs: float) -> float:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/Bench/Step0", request_serializer=None, response_deserializer=None)
    call(body, timeout=10, metadata=(("idempotency-key", "warm"),))
    stop = threading.Event()
    counts = [0] * threads

    def run(i: int) -> None:
        n = 0
        while not stop.is_set():
            reply = call(body, timeout=10, metadata=(("idempotency-key", f"{i}:{n}"),))
            json.loads(reply)
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    time.sleep(secs)
    stop.set()
    for t in ts:
        t.join(30)
    rate = sum(counts) / (time.perf_counter() - t0)
    channel.close()
    return rate


def _echo_futures(port: int, body: bytes, depth: int, secs: float) -> float:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/Bench/Step0", request_serializer=None, response_deserializer=None)
    call(body, timeout=10, metadata=(("idempotency-key", "warm"),))
    sem = threading.Semaphore(depth)
    done = [0]
    lock = threading.Lock()

    def finished(fut: Any) -> None:
        try:
            json.loads(fut.result())
        finally:
            with lock:
                done[0] += 1
            sem.release()

    t0 = time.perf_counter()
    end = t0 + secs
    n = 0
    while time.perf_counter() < end:
        sem.acquire()
        f = call.future(body, timeout=10, metadata=(("idempotency-key", f"f:{n}"),))
        f.add_done_callback(finished)
        n += 1
    elapsed = time.perf_counter() - t0
    for _ in range(depth):
        sem.acquire(timeout=10)
    channel.close()
    return done[0] / max(elapsed, 1e-9)
