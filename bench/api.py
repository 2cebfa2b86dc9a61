"""Figure 5 (REST and gRPC API load) and figure 9 (outbox relay events/s to Kafka).

Method (API): the REST server is the real one, `gunicorn -c saga_http/gunicorn.conf.py
saga_http.wsgi:app` (`server.workers: 2` gthread processes of `server.threads: 8`), and the
gRPC API is `python -m saga_grpc`, both with `CONFIG_PATH` pointing at a bench config on the
bench's PostgreSQL database with `saga.execute: false` (the API processes only serve: no
executor competes with them). The load generator is a separate process: `wrk` (C, one thread,
keep-alive connections, Lua scripts for the POST body and for GET by random id) when it is on
the PATH (`make bench` installs Debian's), else `python -m bench.api http-load` (threads,
http.client keep-alive); for gRPC `python -m bench.api grpc-load` (generated stubs of
saga_grpc/gen, a fixed number of calls in flight as futures on one channel). Each case runs for
a fixed time, closed loop at a fixed concurrency: 1 (latency with nothing queued) and 16 (= the
2 x 8 server threads: saturation). req/s = answered requests / duration; p50/p99 are the load
generator's per-request latencies. The database is truncated before each start-saga run; GET by
id reads 10,000 pre-inserted sagas (random id per request). CPU: the load generator's own CPU
time (wait4 rusage), the server's process group, and all PostgreSQL processes, from /proc,
over the run; all share the same 2 cores.

Method (events): per run, N 3-step sagas run to the end through an `Engine` (executor on,
relay off) on a config with a `kafka` section, so every commit writes its events to the outbox;
then one `workers.adapters.relay.OutboxRelay` (the default `relay_batch` 500, idempotent producer,
acks=all) starts on a fresh topic (created beforehand, 1 partition like the broker default) and
the clock runs until the store reports no unpublished row. A consumer then reads the topic from
the start and counts messages and distinct event ids (at-least-once: duplicates are allowed,
losses are not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.request
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench import common as c

PAYLOAD = {"order_id": "bench", "amount": 42}
START_BODY = json.dumps({"workflow_name": "bench-3", "payload": PAYLOAD}, separators=(",", ":"))
SATURATION_CONNECTIONS = 16  # server.workers 2 x server.threads 8

_WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process group in `groups` (label -> pgid), of every
    `postgres` process, and of the whole machine ('machine_busy', from /proc/stat)."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {label: 0.0 for label in groups}
    out["postgres"] = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            data = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        rpar = data.rfind(")")
        comm = data[data.find("(") + 1 : rpar]
        fields = data[rpar + 2 :].split()
        secs = (int(fields[11]) + int(fields[12])) / hz
        pgrp = int(fields[2])
        for label, pgid in groups.items():
            if pgrp == pgid:
                out[label] += secs
        if comm == "postgres":
            out["postgres"] += secs
    with suppress(OSError):
        parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        out["machine_busy"] = (sum(parts[:8]) - idle) / hz
    return out


def _run_loadgen(
    argv: list[str], log_path: Path, timeout: float, groups: dict[str, int]
) -> tuple[str, dict[str, float]]:
    """Run a load generator to its end in its own process group; return its output and the
    CPU shares (cores busy, averaged over its wall time) of it, of `groups` and of PostgreSQL."""
    log_path.unlink(missing_ok=True)
    before = _proc_cpu(groups)
    t0 = time.monotonic()
    proc = c.spawn(argv, log_path=log_path)
    usage = None
    deadline = t0 + timeout
    try:
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"load generator ran over {timeout:.0f}s: {' '.join(argv[:3])}")
    finally:
        c.stop(proc, timeout=5)
    wall = time.monotonic() - t0
    after = _proc_cpu(groups)
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited {proc.returncode}: {text[-500:]}")
    cpu = {"loadgen": (usage.ru_utime + usage.ru_stime) / wall if usage else 0.0}
    for k in before:
        cpu[k] = max(0.0, after.get(k, 0.0) - before[k]) / wall
    return text, {k: round(v, 3) for k, v in cpu.items()}


def _wrk(
    url: str, script: str, connections: int, secs: float, workdir: Path, groups: dict[str, int]
) -> dict[str, Any]:
    path = workdir / f"wrk-{uuid.uuid4().hex[:8]}.lua"
    path.write_text(script + _WRK_DONE)
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{secs:g}s",
        "--timeout",
        "10s",
        "-s",
        str(path),
        url,
    ]
    text, cpu = _run_loadgen(argv, workdir / "wrk.out", secs + 60, groups)
    line = next((x for x in text.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {text[-500:]}")
    w = json.loads(line[len("WRKJSON ") :])
    errors = sum(
        w[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return {
        "req_per_s": w["requests"] / (w["duration_us"] / 1e6),
        "requests": w["requests"],
        "errors": errors,
        "p50_ms": w["p50_us"] / 1000,
        "p90_ms": w["p90_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "cpu_cores": cpu,
    }


def _pyhttp(
    url: str,
    kind: str,
    connections: int,
    secs: float,
    workdir: Path,
    groups: dict[str, int],
    ids_file: Path | None = None,
) -> dict[str, Any]:
    out = workdir / f"load-{uuid.uuid4().hex[:8]}.json"
    argv = [
        c.PYTHON,
        "-m",
        "bench.api",
        "http-load",
        "--url",
        url,
        "--kind",
        kind,
        "--connections",
        str(connections),
        "--secs",
        str(secs),
        "--out",
        str(out),
    ]
    if ids_file:
        argv += ["--ids", str(ids_file)]
    _, cpu = _run_loadgen(argv, workdir / "http-load.log", secs + 60, groups)
    return {**json.loads(out.read_text()), "cpu_cores": cpu}


def _grpc(
    target: str, connections: int, secs: float, workdir: Path, groups: dict[str, int]
) -> dict[str, Any]:
    out = workdir / f"grpc-load-{uuid.uuid4().hex[:8]}.json"
    argv = [
        c.PYTHON,
        "-m",
        "bench.api",
        "grpc-load",
        "--target",
        target,
        "--in-flight",
        str(connections),
        "--secs",
        str(secs),
        "--out",
        str(out),
    ]
    _, cpu = _run_loadgen(argv, workdir / "grpc-load.log", secs + 60, groups)
    return {**json.loads(out.read_text()), "cpu_cores": cpu}


def start_rest(cfg: Path, log_path: Path, port: int, workers: int = 2) -> Any:
    """`gunicorn -c saga_http/gunicorn.conf.py saga_http.wsgi:app` on `cfg`; returns once
    /readyz answers and every worker has built its app."""
    proc = c.spawn(
        [c.PYTHON, "-m", "gunicorn", "-c", "saga_http/gunicorn.conf.py", "saga_http.wsgi:app"],
        log_path=log_path,
        env={"CONFIG_PATH": str(cfg), "SAGA_LOG_FORMAT": "json"},
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited at start; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                ok = r.status == 200
        except OSError:
            return False
        return ok and log_path.read_text(errors="replace").count("serving (config") >= workers

    try:
        c.wait_until(ready, 60, interval=0.2, what="gunicorn ready")
    except BaseException:
        c.stop(proc)
        raise
    return proc


def start_grpc(cfg: Path, log_path: Path, port: int) -> Any:
    import grpc

    proc = c.spawn(
        [c.PYTHON, "-m", "saga_grpc"],
        log_path=log_path,
        env={"CONFIG_PATH": str(cfg), "SAGA_LOG_FORMAT": "json"},
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        c.wait_until(
            lambda: (
                proc.poll() is not None or "listening on" in log_path.read_text(errors="replace")
            ),
            60,
            interval=0.2,
            what="gRPC API up",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"python -m saga_grpc exited at start; see {log_path}")
        grpc.channel_ready_future(channel).result(timeout=30)
    except BaseException:
        c.stop(proc)
        raise
    finally:
        channel.close()
    return proc


def _agg(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median/min/max of req/s and latencies over the runs, CPU shares as medians."""
    out: dict[str, Any] = {
        k: c.summary([r[k] for r in runs])
        for k in ("req_per_s", "p50_ms", "p99_ms")
        if all(r.get(k) is not None for r in runs)
    }
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    labels = sorted({k for r in runs for k in r.get("cpu_cores", {})})
    out["cpu_cores_median"] = {
        k: round(c.summary([r["cpu_cores"].get(k, 0.0) for r in runs])["median"], 2) for k in labels
    }
    out["runs"] = runs
    return out


# --------------------------------------------------------------------------- figure 5


def api(
    workdir: Path, part: c.Participant, pg_url: str, *, quick: bool, results: dict[str, Any]
) -> None:
    runs = 3
    secs = 3.0 if quick else 6.0
    d = workdir / "api"
    d.mkdir(parents=True, exist_ok=True)
    c.write_workflows(d / "workflows")
    http_port, grpc_port = free_port(), free_port()
    cfg = c.write_config(
        d / "api.yaml",
        participant_port=part.port,
        workflow_dir=d / "workflows",
        database_url=pg_url,
        extra={
            "server": {"port": http_port, "workers": 2, "threads": 8},
            "grpc": {"port": grpc_port},
            "saga": {"execute": False},
        },
    )
    use_wrk = shutil.which("wrk") is not None
    res: dict[str, Any] = {
        "seconds_per_run": secs,
        "runs_per_case": runs,
        "rest_server": "gunicorn -c saga_http/gunicorn.conf.py saga_http.wsgi:app "
        "(2 gthread workers x 8 threads, saga.execute false)",
        "grpc_server": "python -m saga_grpc (grpc.max_workers 32, saga.execute false)",
        "rest_loadgen": "wrk 1 thread (C), keep-alive"
        if use_wrk
        else "python -m bench.api http-load (threads, http.client keep-alive)",
        "grpc_loadgen": "python -m bench.api grpc-load (one channel, futures in flight)",
        "cases": {},
    }
    results["api"] = res
    c.pg_truncate(pg_url)
    c.register_workflows(cfg)
    base = f"http://127.0.0.1:{http_port}"

    # ---- REST
    server = start_rest(cfg, d / "gunicorn.log", http_port)
    groups = {"server": server.pid}
    try:
        post_script = (
            'wrk.method = "POST"\n'
            f"wrk.body = [[{START_BODY}]]\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        for conns in (1, SATURATION_CONNECTIONS):
            per = []
            for _ in range(runs):
                c.pg_truncate(pg_url)
                if use_wrk:
                    r = _wrk(f"{base}/api/v1/sagas", post_script, conns, secs, d, groups)
                else:
                    r = _pyhttp(f"{base}/api/v1/sagas", "post", conns, secs, d, groups)
                per.append(r)
            key = f"rest_start_saga_c{conns}"
            res["cases"][key] = _agg(per)
            _print(key, res["cases"][key])
        # GET by id: 10,000 sagas, random id per request.
        c.pg_truncate(pg_url)
        template = c.seed_template(cfg, "bench-3")
        c.pg_clone_sagas(pg_url, template, 9999)
        ids = _saga_ids(pg_url)
        ids_file = d / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        get_script = (
            "local ids = {}\n"
            f'for line in io.lines("{ids_file}") do ids[#ids + 1] = line end\n'
            "request = function()\n"
            '  return wrk.format("GET", "/api/v1/sagas/" .. ids[math.random(1, #ids)])\n'
            "end\n"
        )
        for conns in (1, SATURATION_CONNECTIONS):
            per = []
            for _ in range(runs):
                if use_wrk:
                    r = _wrk(f"{base}/api/v1/sagas", get_script, conns, secs, d, groups)
                else:
                    r = _pyhttp(
                        f"{base}/api/v1/sagas", "get", conns, secs, d, groups, ids_file=ids_file
                    )
                per.append(r)
            key = f"rest_get_saga_c{conns}"
            res["cases"][key] = _agg(per)
            _print(key, res["cases"][key])
        res["rest_server_log_errors"] = _log_errors(d / "gunicorn.log")
    finally:
        c.stop(server)

    # ---- gRPC
    server = start_grpc(cfg, d / "grpc.log", grpc_port)
    groups = {"server": server.pid}
    try:
        for inflight in (1, 64):
            per = []
            for _ in range(runs):
                c.pg_truncate(pg_url)
                per.append(_grpc(f"127.0.0.1:{grpc_port}", inflight, secs, d, groups))
            key = f"grpc_start_saga_inflight{inflight}"
            res["cases"][key] = _agg(per)
            _print(key, res["cases"][key])
        res["grpc_server_log_errors"] = _log_errors(d / "grpc.log")
    finally:
        c.stop(server)
    c.pg_truncate(pg_url)


def _saga_ids(pg_url: str) -> list[str]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return [str(r[0]) for r in conn.execute("SELECT id FROM saga.saga_states").fetchall()]


def _log_errors(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(
        1
        for line in path.read_text(errors="replace").splitlines()
        if '"level": "ERROR"' in line or "Traceback" in line or "[ERROR]" in line
    )


def _print(key: str, e: dict[str, Any]) -> None:
    rps, p50, p99 = e["req_per_s"], e["p50_ms"], e["p99_ms"]
    cpu = e["cpu_cores_median"]
    c.log(
        f"  {key}: {rps['median']:.0f} req/s ({rps['min']:.0f}..{rps['max']:.0f}); "
        f"p50 {p50['median']:.2f} ms p99 {p99['median']:.2f} ms; errors {e['errors']}; "
        f"CPU cores: loadgen {cpu.get('loadgen', 0):.2f}, server {cpu.get('server', 0):.2f}, "
        f"postgres {cpu.get('postgres', 0):.2f}, machine {cpu.get('machine_busy', 0):.2f}"
    )


# --------------------------------------------------------------------------- figure 9


def events(
    workdir: Path,
    part: c.Participant,
    pg_url: str,
    kafka: str,
    *,
    quick: bool,
    results: dict[str, Any],
) -> None:
    import psycopg

    from workers.adapters.relay import OutboxRelay
    from workers.adapters.store.postgres import PostgresStore
    from workers.config import KafkaConfig, TopicsConfig, load_config
    from workers.service.engine import Engine

    runs = 3
    n = 1000 if quick else 8000
    d = workdir / "events"
    d.mkdir(parents=True, exist_ok=True)
    c.write_workflows(d / "workflows")
    res: dict[str, Any] = {
        "sagas_per_run": n,
        "workflow": "bench-3",
        "relay_batch": KafkaConfig(brokers=[kafka]).relay_batch,
        "broker": kafka,
        "runs": [],
    }
    results["events"] = res
    for _ in range(runs):
        topic = f"saga-bench-{uuid.uuid4().hex[:12]}"
        _create_topic(kafka, topic)
        c.pg_truncate(pg_url)
        part.reset()
        cfg = c.write_config(
            d / "events.yaml",
            participant_port=part.port,
            workflow_dir=d / "workflows",
            database_url=pg_url,
            extra={"kafka": {"brokers": [kafka], "topics": {"publish": topic}}},
        )
        template = c.seed_template(cfg, "bench-3")
        c.pg_clone_sagas(pg_url, template, n - 1)
        # Pre-fill: run every saga to its end with the relay off.
        engine = Engine.from_config(load_config(str(cfg), environ={}), execute=True, relay=False)
        reader = c.Reader(pg_url=pg_url)
        try:
            engine.start()
            c.wait_until(
                lambda r=reader: sum(r.counts().get(s, 0) for s in c.TERMINAL) >= n,
                180,
                interval=0.2,
                what="pre-fill sagas terminal",
            )
        finally:
            engine.close(grace_secs=5)
            reader.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            backlog = int(
                conn.execute(
                    "SELECT count(*) FROM saga.outbox WHERE published_at IS NULL"
                ).fetchone()[0]
            )
        # The measured part: one relay drains the backlog.
        store = PostgresStore(pg_url, outbox=True, min_size=1, max_size=4)
        relay = OutboxRelay(
            store,
            KafkaConfig(brokers=[kafka], topics=TopicsConfig(publish=topic)),
            batch=res["relay_batch"],
        )
        try:
            t0 = time.monotonic()
            wall0 = time.time()
            relay.start()
            c.wait_until(
                lambda st=store: st.outbox_stats()[0] == 0, 300, interval=0.02, what="outbox empty"
            )
            drain = time.monotonic() - t0
        finally:
            relay.stop(10)
            store.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            pub = sorted(
                r[0].timestamp()
                for r in conn.execute("SELECT published_at FROM saga.outbox").fetchall()
            )
        consumed, distinct = _consume(kafka, topic, backlog, 60)
        run = {
            "events": backlog,
            "drain_s": round(drain, 3),
            "events_per_s": backlog / drain if drain else 0.0,
            "events_per_s_steady": c.steady_rate(pub),
            "first_publish_after_s": round(pub[0] - wall0, 3) if pub else None,
            "consumed": consumed,
            "consumed_distinct": distinct,
            "lost": backlog - distinct,
            "duplicates": consumed - distinct,
            "topic": topic,
        }
        res["runs"].append(run)
        c.log(
            f"  events: {backlog} events drained in {drain:.2f} s = {run['events_per_s']:.0f} ev/s "
            f"(steady {run['events_per_s_steady']:.0f}); consumer: {consumed} messages, "
            f"{distinct} distinct (lost {run['lost']})"
        )
    res["events_per_s"] = c.summary([r["events_per_s"] for r in res["runs"]])
    res["events_per_s_steady"] = c.summary([r["events_per_s_steady"] for r in res["runs"]])
    res["events_per_saga"] = res["runs"][0]["events"] / n if res["runs"] else None
    c.pg_truncate(pg_url)


def _create_topic(kafka: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=[kafka], client_id="saga-bench")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def _consume(kafka: str, topic: str, want: int, timeout: float) -> tuple[int, int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[kafka],
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    total = 0
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + timeout
        settle: float | None = None
        while time.monotonic() < deadline:
            if settle is not None and time.monotonic() >= settle:
                break
            for records in consumer.poll(timeout_ms=250).values():
                for rec in records:
                    total += 1
                    seen.add(json.loads(rec.value)["event_id"])
            if settle is None and len(seen) >= want:
                settle = time.monotonic() + 1.0
    finally:
        consumer.close()
    return total, len(seen)


# --------------------------------------------------------------------------- load generators
# `python -m bench.api grpc-load|http-load ...`: run in their own process by the figures above.


def _grpc_load(target: str, inflight: int, secs: float) -> dict[str, Any]:
    import grpc

    from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc

    channel = grpc.insecure_channel(target)
    stub = saga_pb2_grpc.SagaServiceStub(channel)
    req = saga_pb2.StartSagaRequest(
        workflow_name="bench-3", payload=json.dumps(PAYLOAD, separators=(",", ":")).encode()
    )
    for _ in range(5):
        stub.StartSaga(req, timeout=10)
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    left = [inflight]
    finished = threading.Event()
    t_start = time.perf_counter()
    end = t_start + secs

    def launch() -> None:
        t = time.perf_counter()
        fut = stub.StartSaga.future(req, timeout=10)
        fut.add_done_callback(lambda f, t=t: done(f, t))

    def done(fut: Any, t: float) -> None:
        now = time.perf_counter()
        if fut.exception() is None:
            lat.append((now - t) * 1000)
        else:
            errors[0] += 1
        if now < end:
            launch()
        else:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()

    for _ in range(inflight):
        launch()
    finished.wait(secs + 30)
    wall = time.perf_counter() - t_start
    channel.close()
    return {
        "req_per_s": len(lat) / wall,
        "requests": len(lat),
        "errors": errors[0],
        "p50_ms": c.pct(lat, 50),
        "p90_ms": c.pct(lat, 90),
        "p99_ms": c.pct(lat, 99),
        "max_ms": max(lat) if lat else None,
    }


def _http_load(
    url: str, kind: str, connections: int, secs: float, ids_file: str | None
) -> dict[str, Any]:
    import http.client
    import random
    from urllib.parse import urlparse

    u = urlparse(url)
    ids = Path(ids_file).read_text().split() if ids_file else []
    lat: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    end = time.perf_counter() + secs
    body = START_BODY.encode()

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rnd = random.Random(i)
        while time.perf_counter() < end:
            t = time.perf_counter()
            if kind == "post":
                conn.request("POST", u.path, body, {"Content-Type": "application/json"})
            else:
                conn.request("GET", f"{u.path}/{rnd.choice(ids)}")
            r = conn.getresponse()
            r.read()
            if r.status >= 300:
                errors[i] += 1
            else:
                lat[i].append((time.perf_counter() - t) * 1000)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(secs + 30)
    wall = time.perf_counter() - t0
    flat = [x for li in lat for x in li]
    return {
        "req_per_s": len(flat) / wall,
        "requests": len(flat),
        "errors": sum(errors),
        "p50_ms": c.pct(flat, 50),
        "p90_ms": c.pct(flat, 90),
        "p99_ms": c.pct(flat, 99),
        "max_ms": max(flat) if flat else None,
    }


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.api")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grpc-load")
    g.add_argument("--target", required=True)
    g.add_argument("--in-flight", type=int, default=64)
    g.add_argument("--secs", type=float, default=5)
    g.add_argument("--out", required=True)
    h = sub.add_parser("http-load")
    h.add_argument("--url", required=True)
    h.add_argument("--kind", choices=("post", "get"), required=True)
    h.add_argument("--connections", type=int, default=16)
    h.add_argument("--secs", type=float, default=5)
    h.add_argument("--ids")
    h.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "grpc-load":
        out = _grpc_load(args.target, args.in_flight, args.secs)
    else:
        out = _http_load(args.url, args.kind, args.connections, args.secs, args.ids)
    Path(args.out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
