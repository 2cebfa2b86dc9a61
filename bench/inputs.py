"""Figure 11: the cost of step inputs (SPEC §10): 3-step sagas with an `input` on every step
(`bench-3-input`) against the same sagas without (`bench-3`).

Method (throughput): one `saga worker`, N sagas pre-inserted, the run measured as in figure 1
(`bench.throughput`), on PostgreSQL and on SQLite. The two workflows run interleaved, plain then
input, for P pairs, so that the shared machine's load drifts over both alike; reported are the
median of each variant, the ratio of the medians (input ÷ plain) and the median of the per-pair
ratios. Each run also gives the worker's CPU time per step (/proc, between the polls at 10% and
90% of the sagas done), which the machine's load disturbs far less than a rate. After each run
the store is checked: every saga COMPLETED and, for the input variant, the last step's stored
request is what its expression makes of the echoed responses. Then three more runs of each
variant (interleaved) are profiled with py-spy (`--gil`) and the samples are split by area
(expressions, JMESPath, decide, JSON, store, gRPC).

Method (core cost): `saga.decide` driven in-process over whole 3-step runs (Resume, call,
StepSucceeded with the participant's echo, commit, …, completion) for both workflows,
alternating, K runs per repetition, median of R repetitions; the difference is what the three
`input` evaluations (context, JMESPath search, the request's checks) cost the core. The parts of
one evaluation are timed on their own too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench import common as c
from bench.throughput import StoreTarget, _run_once

PLAIN = "bench-3"


# --------------------------------------------------------------------------- core cost


def _drive(workflow: Any, state: Any, at: Any) -> int:
    """Run one saga to its end through `decide` with echo replies; the number of decisions."""
    from saga.decide import ENDED, IDLE, decide, phase
    from saga.events import CallParticipant, Resume, StepSucceeded

    call: Any = None
    decisions = 0
    while True:
        current = phase(state)
        if current == ENDED:
            return decisions
        if current == IDLE:
            event: Any = Resume(at=at)
        else:
            event = StepSucceeded(at=at, response={**call.payload, "ok": True})
        decision = decide(state, workflow, event)
        decisions += 1
        state = decision.state
        for effect in decision.effects:
            if isinstance(effect, CallParticipant):
                call = effect


def _per_call_us(fn: Callable[[], Any], loops: int) -> float:
    t = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t) / loops * 1e6


def core_cost(workflow_dir: Path, *, repetitions: int, runs_per_rep: int) -> dict[str, Any]:
    """Time `decide` over whole runs of both workflows; split one `input` evaluation up."""
    import attrs

    from saga import expressions
    from saga.model import StepResult, new_saga
    from saga.simulation import SIM_EPOCH, SIM_SAGA_ID
    from saga.workflow import parse_workflow

    wfs = {
        name: parse_workflow((workflow_dir / f"{name}.yaml").read_text())
        for name in (PLAIN, c.INPUT_WORKFLOW)
    }
    starts = {
        name: new_saga(
            saga_id=SIM_SAGA_ID,
            workflow=wf,
            payload=dict(c.SEED_PAYLOAD),
            correlation_id=None,
            initiated_by="bench",
            at=SIM_EPOCH,
        )
        for name, wf in wfs.items()
    }
    decisions = {name: _drive(wfs[name], starts[name], SIM_EPOCH) for name in wfs}
    for name in wfs:  # warm up (caches, the compiled expressions)
        for _ in range(200):
            _drive(wfs[name], starts[name], SIM_EPOCH)
    per_run: dict[str, list[float]] = {name: [] for name in wfs}
    for _ in range(repetitions):
        for name in (PLAIN, c.INPUT_WORKFLOW):
            t = time.perf_counter()
            for _ in range(runs_per_rep):
                _drive(wfs[name], starts[name], SIM_EPOCH)
            per_run[name].append((time.perf_counter() - t) / runs_per_rep * 1e6)

    # One evaluation of the last step's input (the largest context), in its parts.
    steps = len(wfs[c.INPUT_WORKFLOW].steps)
    exprs = c.step_inputs(steps)
    state = starts[c.INPUT_WORKFLOW]
    done: dict[str, StepResult] = {}
    request: dict[str, Any] = dict(c.SEED_PAYLOAD)
    for i in range(steps - 1):
        ctx = expressions.context(state)
        request = expressions.request(exprs[i], ctx, "input")
        done[f"s{i}"] = StepResult(request, {**request, "ok": True})
        state = attrs.evolve(state, steps=dict(done))
    ctx = expressions.context(state)
    compiled = expressions.compile_expression(exprs[-1])
    value = compiled.search(ctx)
    loops = max(2000, runs_per_rep * 2)
    parts: dict[str, list[float]] = {"context": [], "search": [], "request": []}
    for _ in range(repetitions):
        parts["context"].append(_per_call_us(lambda: expressions.context(state), loops))
        parts["search"].append(_per_call_us(lambda: compiled.search(ctx), loops))
        parts["request"].append(
            _per_call_us(lambda: expressions.request(exprs[-1], ctx, "input"), loops)
        )
    med = {name: statistics.median(v) for name, v in per_run.items()}
    extra = med[c.INPUT_WORKFLOW] - med[PLAIN]
    return {
        "repetitions": repetitions,
        "runs_per_repetition": runs_per_rep,
        "decisions_per_run": decisions,
        "steps": steps,
        "decide_us_per_run": {name: c.summary(v) for name, v in per_run.items()},
        "input_extra_us_per_run": extra,
        "input_extra_us_per_step": extra / steps,
        "last_step_request_bytes": len(json.dumps(value, separators=(",", ":"))),
        "evaluation_parts_us": {
            "context (build the context)": c.summary(parts["context"]),
            "search (JMESPath over it)": c.summary(parts["search"]),
            "request (search + object, JSON and size checks)": c.summary(parts["request"]),
        },
    }


# --------------------------------------------------------------------------- worker profile

# Where a worker's time goes, by the code a sample is inside (a sample counts for every area
# on its stack, so the areas overlap: expressions sit inside decide, JSON inside the store).
# py-spy names a frame's file relative to its sys.path entry (`grpc/_channel.py`).
AREAS = {
    "saga/expressions.py (input evaluation)": ("saga/expressions.py",),
    "jmespath": ("jmespath/",),
    "saga/decide.py (the whole core)": ("saga/decide.py",),
    "json (encode, decode)": ("json/",),
    "store (workers/adapters/store, psycopg, sqlite3)": (
        "workers/adapters/store/",
        "psycopg/",
        "sqlite3/",
    ),
    "grpc": ("grpc/",),
}
PROFILE_RATE_HZ = 500
# A loss of throughput over this share is flagged (`over_10pct_slower`).
FLAG_LOSS = 0.10
PROFILE_PAIRS = 3


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class _Spy:
    """py-spy on a run's worker (the thread holding the GIL: the worker's Python work), from the
    first saga done to the poll at 90% of them; started and stopped from the run's polls."""

    def __init__(self, spy: str, raw: Path, n: int) -> None:
        self.spy, self.raw, self.n = spy, raw, n
        self.proc: Any = None
        self.stopped = False

    def __call__(self, procs: list[Any], done: int) -> None:
        if self.proc is None and done >= 1:
            self.proc = c.spawn(
                [
                    self.spy,
                    "record",
                    "-p",
                    str(procs[0].pid),
                    "-r",
                    str(PROFILE_RATE_HZ),
                    "-f",
                    "raw",
                    "-o",
                    str(self.raw),
                    "--nonblocking",
                    "--gil",
                ],
                log_path=self.raw.with_suffix(".log"),
            )
        elif self.proc is not None and not self.stopped and done >= 0.9 * self.n:
            self.stop()

    def stop(self) -> None:
        if self.proc is None or self.stopped:
            return
        self.stopped = True
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        c.stop(self.proc)


def _profiled_pairs(
    target: StoreTarget, part: c.Participant, n: int, pairs: int, spy: str
) -> dict[str, Any]:
    """`pairs` more runs of each variant, interleaved, with py-spy on the worker; the samples of
    a variant's runs summed and split by area; the worker's CPU per step (/proc) of those runs."""
    out: dict[str, Any] = {}
    raws: dict[str, list[Path]] = {PLAIN: [], c.INPUT_WORKFLOW: []}
    cpus: dict[str, list[float]] = {PLAIN: [], c.INPUT_WORKFLOW: []}
    for i in range(pairs):
        for wf in (PLAIN, c.INPUT_WORKFLOW):
            raw = target.workdir / f"profile-{wf}-{i}.txt"
            spy_hook = _Spy(spy, raw, n)
            window = _CpuWindow(target, n)

            def hook(
                procs: list[Any], done: int, s: _Spy = spy_hook, w: _CpuWindow = window
            ) -> None:
                w(procs, done)
                s(procs, done)

            try:
                _run_once(target, part, wf, n, 1, timeout=180, on_poll=hook)
            finally:
                spy_hook.stop()
                got = window.close()
            raws[wf].append(raw)
            if got.get("worker_cpu_us_per_step"):
                cpus[wf].append(got["worker_cpu_us_per_step"])
    for wf, paths in raws.items():
        total = 0
        area: dict[str, int] = dict.fromkeys(AREAS, 0)
        leaf: Counter[str] = Counter()
        for raw in paths:
            for line in raw.read_text().splitlines() if raw.exists() else []:
                stack, _, count = line.rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                k = int(count)
                total += k
                frames = stack.split(";")
                leaf[_frame_name(frames[-1])] += k
                paths_on_stack = {_frame_path(f) for f in frames}
                for name, marks in AREAS.items():
                    if any(p.startswith(m) or f"/{m}" in p for p in paths_on_stack for m in marks):
                        area[name] += k
        cpu = statistics.median(cpus[wf]) if cpus[wf] else None
        out[wf] = {
            "runs": len(paths),
            "n": n,
            "samples": total,
            "worker_cpu_us_per_step": cpu,
            "areas": {name: k / total if total else None for name, k in area.items()},
            "top_self": [(name, k / total) for name, k in leaf.most_common(15)] if total else [],
        }
    return out


def _frame_path(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    _, _, where = frame.rpartition(" (")
    return where.rstrip(")").rsplit(":", 1)[0]


def _frame_name(frame: str) -> str:
    func, _, _ = frame.rpartition(" (")
    path = _frame_path(frame)
    return f"{func} ({path})" if path else func


# --------------------------------------------------------------------------- throughput A/B


def _cpu_secs(pid: int) -> float | None:
    """User + system CPU time of process `pid` so far (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CpuWindow:
    """At every poll of a run: sagas done, step logs written and the worker's CPU time; then
    the worker's CPU time per step between the polls at 10% and 90% of the sagas done (start-up
    and the tail left out, as for the rates)."""

    def __init__(self, target: StoreTarget, n: int) -> None:
        self.target = target
        self.n = n
        self.samples: list[tuple[int, int, float]] = []
        self._reader: c.Reader | None = None

    def __call__(self, procs: list[Any], done: int) -> None:
        if self._reader is None:
            self._reader = self.target.reader()
        cpu = _cpu_secs(procs[0].pid)
        if cpu is None or done < 0.1 * self.n or done > 0.9 * self.n:
            return
        steps = int(self._reader._q("SELECT count(*) FROM {s}saga_step_logs")[0][0])
        self.samples.append((done, steps, cpu))

    def close(self) -> dict[str, Any]:
        if self._reader is not None:
            self._reader.close()
        if len(self.samples) < 2:
            return {"worker_cpu_us_per_step": None, "cpu_window_polls": len(self.samples)}
        (_, s0, c0), (_, s1, c1) = self.samples[0], self.samples[-1]
        return {
            "worker_cpu_us_per_step": (c1 - c0) / (s1 - s0) * 1e6 if s1 > s0 else None,
            "cpu_window_steps": s1 - s0,
            "cpu_window_cpu_s": c1 - c0,
            "cpu_window_polls": len(self.samples),
        }


def _check(target: StoreTarget, workflow: str, n: int) -> dict[str, Any]:
    """Every saga COMPLETED; for the input variant, the last step's request as expected."""
    reader = target.reader()
    try:
        completed = reader.counts().get("COMPLETED", 0)
        rows = reader._q(
            "SELECT request_payload FROM {s}saga_step_logs WHERE step_index = 2 LIMIT 1"
        )
    finally:
        reader.close()
    got = rows[0][0] if rows else None
    if isinstance(got, str):
        got = json.loads(got)
    if workflow == PLAIN:
        want: dict[str, Any] = dict(c.SEED_PAYLOAD)
    else:
        # Step 0 sends the payload's two fields; each later step the order id and the echo
        # (request + "ok") of the step before.
        order = c.SEED_PAYLOAD["order_id"]
        s0 = {"order_id": order, "amount": c.SEED_PAYLOAD["amount"]}
        s1 = {"order_id": order, "prev": {**s0, "ok": True}}
        want = {"order_id": order, "prev": {**s1, "ok": True}}
    return {"completed": completed, "all_completed": completed == n, "request_ok": got == want}


def inputs(
    workdir: Path,
    part: c.Participant,
    pg_url: str | None,
    *,
    quick: bool,
    runs: int,
    results: dict[str, Any],
) -> None:
    """Fill results['inputs']: the A/B throughput per store and the core cost."""
    stores = ["postgres", "sqlite"] if pg_url else ["sqlite"]
    # Runs this short vary by ±20% on a shared machine: more pairs than other figures' runs.
    pairs = max(7, runs)
    n = 300 if quick else 500  # ~1,500 steps a run
    res: dict[str, Any] = {
        "workers": 1,
        "n": n,
        "pairs": pairs,
        "order": "plain, input; repeated per pair",
        "workflows": {PLAIN: "no input", c.INPUT_WORKFLOW: c.step_inputs(3)},
        "stores": {},
        "machine": {
            k: results.get("machine", {}).get(k) for k in ("cpu_model", "cores", "loadavg_at_start")
        },
    }
    results["inputs"] = res
    wf_dir = workdir / "inputs-workflows"
    c.write_workflows(wf_dir)
    res["core"] = core_cost(
        wf_dir, repetitions=5 if quick else 9, runs_per_rep=1000 if quick else 3000
    )
    core = res["core"]
    c.log(
        f"  inputs core: decide per 3-step run {core['decide_us_per_run'][PLAIN]['median']:.1f} µs "
        f"plain, {core['decide_us_per_run'][c.INPUT_WORKFLOW]['median']:.1f} µs with inputs "
        f"(+{core['input_extra_us_per_step']:.1f} µs per step)"
    )
    for store in stores:
        target = StoreTarget(store, workdir / f"inputs-{store}", pg_url)
        target.workdir.mkdir(parents=True, exist_ok=True)
        c.write_workflows(target.workdir / "workflows")
        per: dict[str, list[dict[str, Any]]] = {PLAIN: [], c.INPUT_WORKFLOW: []}
        for _ in range(pairs):
            for wf in (PLAIN, c.INPUT_WORKFLOW):
                window = _CpuWindow(target, n)
                try:
                    r = _run_once(target, part, wf, n, 1, timeout=180, on_poll=window)
                finally:
                    r_cpu = window.close()
                r.update(r_cpu)
                r.update(_check(target, wf, n))
                per[wf].append(r)
        entry: dict[str, Any] = {}
        for wf, rs in per.items():
            entry[wf] = {
                "sagas_per_s": c.summary([r["sagas_per_s"] for r in rs]),
                "steps_per_s": c.summary([r["steps_per_s"] for r in rs]),
                "worker_cpu_us_per_step": c.summary(
                    [r["worker_cpu_us_per_step"] for r in rs if r["worker_cpu_us_per_step"]]
                ),
                "runs": rs,
            }
        plain_med = entry[PLAIN]["steps_per_s"]["median"] or 0.0
        input_med = entry[c.INPUT_WORKFLOW]["steps_per_s"]["median"] or 0.0
        entry["ratio_of_medians"] = input_med / plain_med if plain_med else None
        entry["pair_ratios"] = c.summary(
            [
                b["steps_per_s"] / a["steps_per_s"]
                for a, b in zip(per[PLAIN], per[c.INPUT_WORKFLOW], strict=True)
                if a["steps_per_s"]
            ]
        )
        cpu_a = entry[PLAIN]["worker_cpu_us_per_step"]["median"]
        cpu_b = entry[c.INPUT_WORKFLOW]["worker_cpu_us_per_step"]["median"]
        entry["cpu_ratio_of_medians"] = cpu_b / cpu_a if cpu_a and cpu_b else None
        entry["all_checks_ok"] = all(
            r["all_completed"] and r["request_ok"] for rs in per.values() for r in rs
        )
        res["stores"][store] = entry
        slower = min(entry["ratio_of_medians"] or 1.0, entry["pair_ratios"]["median"] or 1.0)
        entry["over_10pct_slower"] = slower < 1 - FLAG_LOSS
        c.log(
            f"  inputs {store:8s}: plain {plain_med:.0f} steps/s, input {input_med:.0f} steps/s, "
            f"ratio {entry['ratio_of_medians']:.3f} (pairs {entry['pair_ratios']['median']:.3f}); "
            f"worker CPU per step {cpu_a or 0:.0f} / {cpu_b or 0:.0f} µs"
            + ("" if entry["all_checks_ok"] else "  [CHECK FAILED: see results]")
        )
        spy = _py_spy()
        if spy:
            # Where does the time go? Profiled always (runs this short are noisy, so a cost
            # under 10% in one figure may be over it in the next); runs as long as the timed ones.
            entry["profile"] = prof = _profiled_pairs(target, part, n, PROFILE_PAIRS, spy)
            for wf in (PLAIN, c.INPUT_WORKFLOW):
                ex = prof[wf]["areas"]["saga/expressions.py (input evaluation)"]
                c.log(
                    f"  inputs {store:8s} profile {wf}: {prof[wf]['samples']} samples, "
                    f"expressions {100 * (ex or 0):.1f}% of them"
                )
