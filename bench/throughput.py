"""Figure 1 (throughput at saturation) and figure 3 (orchestration overhead per step).

Method (throughput): with the workers stopped, N sagas are pre-inserted (one through
`Engine.start_saga(execute=False)`, the rest copied from it in one statement); then W
`saga worker` processes start and the run ends when every saga is terminal (COUNT by status,
polled every 100 ms). The rate is taken from the stored timestamps: sagas/s over the middle
80% of saga completions (updated_at of terminal sagas, 10th..90th percentile) and steps/s over
the middle 80% of step-log completions, so process start-up and the tail are excluded.

Method (overhead): from the step logs. `call` = completed_at - started_at of a step log
(decide issued the call .. its reply came back to decide) minus the participant handler time
(measured in-process, ~tens of µs); `gap` = started_at of step k+1 - completed_at of step k
of the same saga (commit of step k + decide + issuing the next call). One in flight is
`max_concurrent: 1` on one worker; 50%/80% feed sagas continuously at that share of the
1-worker saturation rate while the worker runs.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common as c


class StoreTarget:
    """Where a run's sagas live: a PostgreSQL database (truncated per run) or a fresh SQLite file."""

    def __init__(self, kind: str, workdir: Path, pg_url: str | None) -> None:
        self.kind = kind
        self.workdir = workdir
        self.pg_url = pg_url
        self._n = 0
        self.sqlite_path: Path | None = None

    def fresh(self) -> None:
        self._n += 1
        if self.kind == "postgres":
            assert self.pg_url
            c.pg_truncate(self.pg_url)
        else:
            self.sqlite_path = self.workdir / f"run-{self._n}.sqlite3"

    def config(self, participant_port: int, name: str, **kw: Any) -> Path:
        return c.write_config(
            self.workdir / f"{name}.yaml",
            participant_port=participant_port,
            workflow_dir=self.workdir / "workflows",
            sqlite_path=self.sqlite_path,
            database_url=self.pg_url if self.kind == "postgres" else None,
            **kw,
        )

    def seed(self, config: Path, workflow: str, n: int) -> None:
        template = c.seed_template(config, workflow)
        if n > 1:
            if self.kind == "postgres":
                assert self.pg_url
                c.pg_clone_sagas(self.pg_url, template, n - 1)
            else:
                assert self.sqlite_path
                c.sqlite_clone_sagas(self.sqlite_path, template, n - 1)

    def reader(self) -> c.Reader:
        if self.kind == "postgres":
            return c.Reader(pg_url=self.pg_url)
        return c.Reader(sqlite_path=self.sqlite_path)


def _run_once(
    target: StoreTarget,
    part: c.Participant,
    workflow: str,
    n: int,
    workers: int,
    timeout: float,
    max_concurrent: int = 100,
    on_poll: Callable[[list[subprocess.Popen[bytes]], int], None] | None = None,
) -> dict[str, Any]:
    """One run of `n` sagas of `workflow` by `workers` fresh workers; `on_poll(workers, done)`
    is called at every poll of the counts."""
    target.fresh()
    part.reset()
    cfg = target.config(part.port, f"tp-{workflow}-{workers}", max_concurrent=max_concurrent)
    target.seed(cfg, workflow, n)
    procs = []
    reader = target.reader()
    try:
        t0 = time.time()
        for i in range(workers):
            procs.append(c.start_worker(cfg, target.workdir / f"worker-{i}.log"))
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            counts = reader.counts()
            done = sum(counts.get(s, 0) for s in c.TERMINAL)
            if on_poll is not None:
                on_poll(procs, done)
            if done >= n:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited early; see {target.workdir}/worker-*.log")
            time.sleep(0.1)
        wall = time.time() - t0
        ends = reader.terminal_times()
        logs = reader.log_times()
        first_log = min(logs) if logs else t0
        return {
            "n": n,
            "terminal": done,
            "complete": done >= n,
            "sagas_per_s": c.steady_rate(ends),
            "steps_per_s": c.steady_rate(logs),
            "step_logs": len(logs),
            "wall_s_incl_startup": wall,
            "sagas_per_s_whole": (len(ends) / (max(ends) - first_log))
            if ends and max(ends) > first_log
            else 0.0,
        }
    finally:
        for p in procs:
            c.stop(p)
        reader.close()


def throughput(
    workdir: Path,
    part: c.Participant,
    pg_url: str | None,
    *,
    quick: bool,
    runs: int,
    results: dict[str, Any],
    stores: list[str] | None = None,
    workflows: list[str] | None = None,
) -> None:
    """Fill results['throughput'] with one entry per (store, workflow, workers); `stores` and
    `workflows` narrow the default sets."""
    stores = stores or (["postgres", "sqlite"] if pg_url else ["sqlite"])
    worker_counts = [1, 2] if quick else [1, 2, 4]
    workflows = workflows or (
        ["bench-3", c.COMPENSATION_WORKFLOW]
        if quick
        else ["bench-1", "bench-3", "bench-10", c.COMPENSATION_WORKFLOW]
    )
    step_budget = 1500 if quick else 4500
    out: list[dict[str, Any]] = results.setdefault("throughput", [])
    for store in stores:
        target = StoreTarget(store, workdir / f"tp-{store}", pg_url)
        target.workdir.mkdir(parents=True, exist_ok=True)
        c.write_workflows(target.workdir / "workflows")
        for workflow in workflows:
            steps = c.WORKFLOWS.get(
                workflow, 5
            )  # compensation: 3 execute + 2 compensate + 1 skipped
            n = max(200, step_budget // steps)
            if store == "sqlite":
                n = n // 2
            for workers in worker_counts:
                if quick and (store == "sqlite" or workflow != "bench-3") and workers > 1:
                    continue
                per_run = []
                for _ in range(runs):
                    per_run.append(_run_once(target, part, workflow, n, workers, timeout=180))
                entry = {
                    "store": store,
                    "workflow": workflow,
                    "workers": workers,
                    "sagas_per_s": c.summary([r["sagas_per_s"] for r in per_run]),
                    "steps_per_s": c.summary([r["steps_per_s"] for r in per_run]),
                    "runs": per_run,
                }
                out.append(entry)
                c.log(
                    f"  throughput {store:8s} {workflow:13s} workers={workers}: "
                    f"{entry['sagas_per_s']['median']:.0f} sagas/s "
                    f"({entry['sagas_per_s']['min']:.0f}..{entry['sagas_per_s']['max']:.0f}), "
                    f"{entry['steps_per_s']['median']:.0f} steps/s"
                    + ("" if all(r["complete"] for r in per_run) else "  [INCOMPLETE: timed out]")
                )


# --------------------------------------------------------------------------- overhead


def handler_time_ms() -> float:
    """Median time of the participant's own handler for an echo call (in-process, no network)."""
    from workers.scripted_participants import Participant

    p = Participant({})
    body = b'{"order_id":"bench","amount":42}'
    samples = []
    for i in range(2000):
        t = time.perf_counter()
        p.handle("/Bench/Step0", {"idempotency-key": f"k{i}"}, body)
        samples.append((time.perf_counter() - t) * 1000)
    return c.pct(samples, 50) or 0.0


def _overhead_from_logs(reader: c.Reader, handler_ms: float) -> dict[str, Any]:
    logs = reader.step_logs()
    ends = reader.saga_ends()
    calls, gaps, tails = [], [], []
    last: dict[str, float] = {}
    for saga_id, _idx, _action, started, completed in logs:
        calls.append(max(0.0, (completed - started) * 1000 - handler_ms))
        if saga_id in last:
            gaps.append((started - last[saga_id]) * 1000)
        last[saga_id] = completed
    for saga_id, completed in last.items():
        if saga_id in ends:
            tails.append((ends[saga_id] - completed) * 1000)
    return {
        "call_minus_handler": c.latency(calls),
        "gap_between_steps": c.latency(gaps),
        "last_commit": c.latency(tails),
        "_calls": calls,
        "_gaps": gaps,
    }


def overhead(
    workdir: Path,
    part: c.Participant,
    pg_url: str | None,
    *,
    quick: bool,
    results: dict[str, Any],
    saturation_sagas_per_s: float | None,
) -> None:
    store = "postgres" if pg_url else "sqlite"
    target = StoreTarget(store, workdir / "overhead", pg_url)
    target.workdir.mkdir(parents=True, exist_ok=True)
    c.write_workflows(target.workdir / "workflows")
    handler_ms = handler_time_ms()
    res: dict[str, Any] = {
        "store": store,
        "workflow": "bench-3",
        "handler_ms": handler_ms,
        "loads": {},
    }
    results["overhead"] = res
    # One in flight: max_concurrent 1, sagas pre-inserted, run back to back.
    n = 60 if quick else 200
    _run_once(target, part, "bench-3", n, 1, timeout=120, max_concurrent=1)
    reader = target.reader()
    try:
        one = _overhead_from_logs(reader, handler_ms)
    finally:
        reader.close()
    res["loads"]["one_in_flight"] = one
    _print_overhead("one in flight", one)
    if not saturation_sagas_per_s:
        return
    for share in (0.5, 0.8):
        rate = share * saturation_sagas_per_s
        secs = 4.0 if quick else 8.0
        got = _fed_run(target, part, rate, secs, handler_ms)
        got["offered_sagas_per_s"] = rate
        res["loads"][f"{int(share * 100)}pct"] = got
        _print_overhead(f"{int(share * 100)}% of saturation ({rate:.0f} sagas/s offered)", got)


def _print_overhead(label: str, r: dict[str, Any]) -> None:
    call, gap = r["call_minus_handler"], r["gap_between_steps"]
    c.log(
        f"  overhead {label}: call-handler p50 {call['p50_ms']:.2f} ms p99 {call['p99_ms']:.2f} ms; "
        f"gap between steps p50 {gap['p50_ms']:.2f} ms p99 {gap['p99_ms']:.2f} ms"
    )


def _fed_run(
    target: StoreTarget, part: c.Participant, rate: float, secs: float, handler_ms: float
) -> dict[str, Any]:
    """Start one worker, feed sagas at `rate`/s for `secs`, wait for all, read the logs."""
    target.fresh()
    part.reset()
    cfg = target.config(part.port, "fed", max_concurrent=1000)
    template = c.seed_template(cfg, "bench-3")
    proc = c.start_worker(cfg, target.workdir / "worker-fed.log")
    reader = target.reader()
    fed = 1
    try:
        c.wait_until(
            lambda: sum(reader.counts().get(s, 0) for s in c.TERMINAL) >= 1, 30, what="worker up"
        )
        tick = 0.05
        start = time.monotonic()
        stop_feed = start + secs
        while time.monotonic() < stop_feed:
            due = int((time.monotonic() - start) * rate) + 1
            if due > fed:
                if target.kind == "postgres":
                    c.pg_clone_sagas(target.pg_url or "", template, due - fed)
                else:
                    c.sqlite_clone_sagas(target.sqlite_path or Path(), template, due - fed)
                fed = due
            time.sleep(tick)
        c.wait_until(
            lambda: sum(reader.counts().get(s, 0) for s in c.TERMINAL) >= fed,
            120,
            interval=0.2,
            what="fed sagas to finish",
        )
        got = _overhead_from_logs(reader, handler_ms)
        got["fed"] = fed
        got["achieved_sagas_per_s"] = c.steady_rate(reader.terminal_times())
        return got
    finally:
        c.stop(proc)
        reader.close()
