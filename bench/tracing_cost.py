"""The cost of exporting traces (SPEC §12): executor throughput of 3-step sagas with tracing off
against every saga exported (`sample_ratio: 1`) to a local OTLP/gRPC receiver.

`python -m bench.tracing_cost [--pairs 6] [--n 800] [--stores postgres,sqlite] [--profile]`
(about a minute and a half; the figures go to `<work dir>/tracing_cost.json` too)

Method: as figure 11 (`bench.inputs`): one `saga worker`, N `bench-3` sagas pre-inserted, the run
measured as in figure 1 (`bench.throughput`), on PostgreSQL (a fresh database, dropped at the
end) and SQLite. The two variants run interleaved, the order swapped every pair (off, on, then
on, off, ...), so the shared machine's load drifts over both alike; reported are the median
steps/s of each, the ratio of the medians (on ÷ off), the median of the per-pair ratios and the
worker's CPU time per step (/proc). The receiver is a child process (an OTLP `TraceService` that
decodes each request and counts its spans, as a collector would): it shares the 2 cores with
the worker, PostgreSQL and the participant. After each traced run (the worker stopped cleanly,
so it exported what it held) the receiver must have got every span: 7 per saga (the saga, 3
steps, 3 attempts), none dropped. With `--profile`, one more traced run per store is recorded
with py-spy (`--gil`: the Python work of the worker, whichever thread does it) and the samples
are split by area.

Every cloned saga gets its own trace (the stored context is cleared, so it is derived from the
saga id), as sagas started one by one would.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent import futures
from pathlib import Path
from typing import Any

from bench import common as c
from bench.__main__ import _services_env
from bench.inputs import _cpu_secs, _CpuWindow, _frame_name, _py_spy, _Spy
from bench.throughput import StoreTarget, _run_once

WORKFLOW = "bench-3"
SPANS_PER_SAGA = 7  # the saga, 3 step spans, 3 attempt spans
FLAG_LOSS = 0.10
# Where a traced worker's Python time goes, by the frames on a sample's stack (py-spy's frames
# read "function (path:line)", the path relative to its sys.path entry). The areas overlap.
AREAS = {
    # (with the trace context every call carries, which costs the same untraced)
    "all tracing (workers/adapters/tracing.py, the export thread)": (
        "workers/adapters/tracing.py",
        "BatchProcessor.worker",
    ),
    "the export thread": ("_Batches._run", "BatchProcessor.worker"),
    "OTLP encoding": ("Encoder.", "_span (workers/adapters/tracing.py", "encode_spans"),
    "SDK span objects": ("Tracer.start_span", "Span.end", "ReadableSpan.__init__"),
}


# --------------------------------------------------------------------------- the receiver


def serve_receiver(port_file: Path) -> None:
    """An OTLP/gRPC trace receiver on 127.0.0.1 counting the spans it is sent; `Count` (raw
    bytes, `/bench.Receiver/Count`) answers the spans and the requests so far. Runs until killed."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    total = [0, 0]  # spans, requests

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            got = 0
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    got += len(scope_spans.spans)
            total[0] += got
            total[1] += 1
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    count = grpc.unary_unary_rpc_method_handler(
        lambda _req, _ctx: f"{total[0]} {total[1]}".encode()
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Receiver", {"Count": count}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(port_file)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    while not stopping.wait(0.2):
        pass
    server.stop(None)


class Receiver:
    """The receiver child process and a channel to ask it for its count."""

    def __init__(self, workdir: Path) -> None:
        import grpc

        port_file = workdir / "receiver.port"
        self.proc = c.spawn(
            [c.PYTHON, "-m", "bench.tracing_cost", "--receiver", str(port_file)],
            log_path=workdir / "receiver.log",
        )
        c.wait_until(
            lambda: port_file.exists() or self.proc.poll() is not None, 30, what="receiver port"
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"the receiver died at start; see {workdir}/receiver.log")
        self.port = int(port_file.read_text())
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self._count = self._channel.unary_unary("/bench.Receiver/Count")

    def count(self) -> int:
        """The spans received so far."""
        return self.counts()[0]

    def counts(self) -> tuple[int, int]:
        """The spans and the requests received so far."""
        spans, requests = self._count(b"", timeout=10).split()
        return int(spans), int(requests)

    def close(self) -> None:
        self._channel.close()
        c.stop(self.proc)


# --------------------------------------------------------------------------- runs


class TracedTarget(StoreTarget):
    """A store target whose worker config has a `telemetry` section while `telemetry` is set,
    and whose cloned sagas each get a trace of their own."""

    telemetry: dict[str, Any] | None = None

    def config(self, participant_port: int, name: str, **kw: Any) -> Path:
        extra = {"telemetry": self.telemetry} if self.telemetry else None
        suffix = "-traced" if self.telemetry else ""
        return super().config(participant_port, name + suffix, extra=extra, **kw)

    def seed(self, config: Path, workflow: str, n: int) -> None:
        super().seed(config, workflow, n)
        sql = "UPDATE {s}saga_states SET trace_context = NULL"
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(self.pg_url or "", autocommit=True) as conn:
                conn.execute(sql.format(s="saga."))
        else:
            import sqlite3

            conn = sqlite3.connect(str(self.sqlite_path), isolation_level=None)
            try:
                conn.execute(sql.format(s=""))
            finally:
                conn.close()


def _one(
    target: TracedTarget,
    part: c.Participant,
    receiver: Receiver,
    n: int,
    traced: bool,
    spy: _Spy | None = None,
) -> dict[str, Any]:
    target.telemetry = (
        {"otlp_endpoint": receiver.endpoint, "service_name": "saga-bench", "sample_ratio": 1.0}
        if traced
        else None
    )
    before, requests_before = receiver.counts()
    receiver_cpu = _cpu_secs(receiver.proc.pid) or 0.0
    window = _CpuWindow(target, n)

    def hook(procs: list[Any], done: int) -> None:
        window(procs, done)
        if spy is not None:
            spy(procs, done)

    try:
        r = _run_once(target, part, WORKFLOW, n, 1, timeout=180, on_poll=hook)
    finally:
        if spy is not None:
            spy.stop()
        r_cpu = window.close()
    r.update(r_cpu)
    reader = target.reader()
    try:
        r["completed"] = reader.counts().get("COMPLETED", 0)
    finally:
        reader.close()
    want = SPANS_PER_SAGA * n if traced else 0
    # The worker stopped cleanly (it flushes at exit); the receiver may still be counting.
    deadline = time.monotonic() + 10
    while receiver.count() - before < want and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    spans, requests = receiver.counts()
    r["spans_received"] = spans - before
    r["export_requests"] = requests - requests_before
    # The receiver's CPU per step (decoding what it got): on the same 2 cores too.
    steps = r.get("step_logs") or 0
    spent = (_cpu_secs(receiver.proc.pid) or 0.0) - receiver_cpu
    r["receiver_cpu_us_per_step"] = spent / steps * 1e6 if steps else None
    r["spans_ok"] = r["spans_received"] == want
    r["ok"] = r["completed"] == n and r["spans_ok"]
    return r


def _profile_areas(raw: Path) -> dict[str, Any]:
    total = 0
    area: dict[str, int] = dict.fromkeys(AREAS, 0)
    leaf: Counter[str] = Counter()
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = stack.split(";")
        leaf[_frame_name(frames[-1])] += k
        for name, marks in AREAS.items():
            if any(m in f for f in frames for m in marks):
                area[name] += k
    return {
        "samples": total,
        "areas": {name: k / total if total else None for name, k in area.items()},
        "top_self": [(name, k / total) for name, k in leaf.most_common(12)] if total else [],
    }


def measure(
    workdir: Path,
    part: c.Participant,
    receiver: Receiver,
    store: str,
    pg_url: str | None,
    *,
    pairs: int,
    n: int,
    profile: bool,
) -> dict[str, Any]:
    target = TracedTarget(store, workdir / f"tracing-{store}", pg_url)
    target.workdir.mkdir(parents=True, exist_ok=True)
    c.write_workflows(target.workdir / "workflows")
    per: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    ratios = []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {traced: _one(target, part, receiver, n, traced) for traced in order}
        for traced, r in got.items():
            per[traced].append(r)
        if got[False]["steps_per_s"]:
            ratios.append(got[True]["steps_per_s"] / got[False]["steps_per_s"])
        c.log(
            f"  {store:8s} pair {i + 1}: off {got[False]['steps_per_s']:.0f} steps/s, "
            f"on {got[True]['steps_per_s']:.0f} steps/s; CPU per step "
            f"{got[False]['worker_cpu_us_per_step'] or 0:.0f} / "
            f"{got[True]['worker_cpu_us_per_step'] or 0:.0f} µs (receiver "
            f"{got[True]['receiver_cpu_us_per_step'] or 0:.0f}); spans {got[True]['spans_received']} in "
            f"{got[True]['export_requests']} requests"
        )
    entry: dict[str, Any] = {}
    for traced, rs in per.items():
        entry["on" if traced else "off"] = {
            "steps_per_s": c.summary([r["steps_per_s"] for r in rs]),
            "worker_cpu_us_per_step": c.summary(
                [r["worker_cpu_us_per_step"] for r in rs if r["worker_cpu_us_per_step"]]
            ),
            "runs": rs,
        }
    off = entry["off"]["steps_per_s"]["median"] or 0.0
    on = entry["on"]["steps_per_s"]["median"] or 0.0
    entry["ratio_of_medians"] = on / off if off else None
    entry["pair_ratios"] = c.summary(ratios)
    cpu_off = entry["off"]["worker_cpu_us_per_step"]["median"]
    cpu_on = entry["on"]["worker_cpu_us_per_step"]["median"]
    entry["cpu_ratio_of_medians"] = cpu_on / cpu_off if cpu_off and cpu_on else None
    entry["all_checks_ok"] = all(r["ok"] for rs in per.values() for r in rs)
    slower = min(entry["ratio_of_medians"] or 1.0, entry["pair_ratios"]["median"] or 1.0)
    entry["over_10pct_slower"] = slower < 1 - FLAG_LOSS
    c.log(
        f"  {store:8s}: off {off:.0f} steps/s, on {on:.0f} steps/s, ratio "
        f"{entry['ratio_of_medians']:.3f} (pairs {entry['pair_ratios']['median']:.3f}); "
        f"CPU per step {cpu_off or 0:.0f} / {cpu_on or 0:.0f} µs"
        + (f" (×{entry['cpu_ratio_of_medians']:.3f})" if entry["cpu_ratio_of_medians"] else "")
        + ("" if entry["all_checks_ok"] else "  [CHECK FAILED: see the runs]")
    )
    spy_bin = _py_spy() if profile else None
    if spy_bin:
        raw = target.workdir / "profile-traced.txt"
        _one(target, part, receiver, 4 * n, True, spy=_Spy(spy_bin, raw, 4 * n))
        entry["profile"] = prof = _profile_areas(raw)
        c.log(f"  {store:8s} profile (traced, --gil): {prof['samples']} samples")
        for name, share in prof["areas"].items():
            c.log(f"    {100 * (share or 0):5.1f}%  {name}")
        for name, share in prof["top_self"]:
            c.log(f"    self {100 * share:5.1f}%  {name}")
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--n", type=int, default=800, help="sagas per run")
    ap.add_argument("--stores", default="postgres,sqlite")
    ap.add_argument("--profile", action="store_true", help="py-spy one more traced run per store")
    ap.add_argument("--receiver", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.receiver:
        serve_receiver(Path(args.receiver))
        return 0
    for key in ("DATABASE_URL", "CONFIG_PATH"):
        os.environ.pop(key, None)
    os.environ.setdefault("PYTHONPATH", str(c.ROOT))
    admin_url = _services_env().get("SAGA_TEST_DATABASE_URL")
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if "postgres" in stores and not admin_url:
        c.log("  PostgreSQL not available (bash scripts/services.sh up): SQLite only")
        stores = [s for s in stores if s != "postgres"]
    atexit.register(c.stop_all)
    workdir = Path(tempfile.mkdtemp(prefix="saga-tracing-cost-"))
    c.log(f"tracing cost: {args.pairs} pairs of {args.n} {WORKFLOW} sagas; work dir {workdir}")
    db: c.BenchDatabase | None = None
    ok = True
    results: dict[str, Any] = {"pairs": args.pairs, "n": args.n, "workflow": WORKFLOW, "stores": {}}
    try:
        if "postgres" in stores:
            db = c.BenchDatabase(admin_url or "", f"saga_tracing_{os.getpid()}")
        receiver = Receiver(workdir)
        try:
            with c.participant(workdir) as part:
                for store in stores:
                    entry = measure(
                        workdir,
                        part,
                        receiver,
                        store,
                        db.url if db else None,
                        pairs=args.pairs,
                        n=args.n,
                        profile=args.profile,
                    )
                    results["stores"][store] = entry
                    ok = ok and entry["all_checks_ok"]
        finally:
            receiver.close()
    finally:
        if db is not None:
            db.drop()
        c.stop_all()
        out = workdir / "tracing_cost.json"
        out.write_text(json.dumps(results, indent=1, default=str))
        c.log(f"  results: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
