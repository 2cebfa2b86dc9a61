"""Regenerate BENCHMARKS.md (and PNG plots in bench/plots/) from one results JSON file.

`python -m bench.report bench/results/<stamp>.json [<later partial run>.json ...]` redoes it
by hand; `python -m bench.report --latest` merges the latest full run with every later partial
run (`--only`), as `python -m bench --only ...` does after it runs. Merging: a figure measured
(without error) by a later partial run replaces that figure of the full run, and the report says
which run each figure came from (`sources`). The hand-written profile analysis lives in
bench/analysis.md and is included as is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ROOT / "bench" / "plots"

GOALS = {
    "steps_per_s": 1500.0,
    "share_of_raw_commit": 0.5,
    "overhead_p50_ms": 1.0,
    "peer_ratio": 2.0,
    "list_p50_ms": 20.0,
    "recovery_s": 30.0,
}


def _f(v: Any, digits: int = 0) -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def _mmm(s: dict[str, Any] | None, digits: int = 0) -> str:
    if not s or s.get("median") is None:
        return "—"
    return f"**{_f(s['median'], digits)}** ({_f(s['min'], digits)}–{_f(s['max'], digits)})"


# The PostgreSQL clusters of a run: the test cluster (fsync off) and the durable one. Results
# keys of the durable runs of figures 1, 3 and 4 end in "_durable".
CLUSTER_LABEL = {
    "cpu-only": "cpu-only (test cluster, fsync off)",
    "durable": "durable (fsync on)",
}
_TP_KEY = {"cpu-only": "throughput", "durable": "throughput_durable"}
_OV_KEY = {"cpu-only": "overhead", "durable": "overhead_durable"}
_PEER_KEY = {"cpu-only": "peer_dbos", "durable": "peer_dbos_durable"}


def _tp(
    res: dict[str, Any], store: str, wf: str, workers: int, cluster: str = "cpu-only"
) -> dict[str, Any] | None:
    for e in res.get(_TP_KEY[cluster], []):
        if e["store"] == store and e["workflow"] == wf and e["workers"] == workers:
            return e
    return None


def _best_tp(
    res: dict[str, Any], store: str, wf: str, cluster: str = "cpu-only"
) -> dict[str, Any] | None:
    cands = [
        e for e in res.get(_TP_KEY[cluster], []) if e["store"] == store and e["workflow"] == wf
    ]
    return max(cands, key=lambda e: e["steps_per_s"]["median"] or 0) if cands else None


# Which keys of a results JSON each figure fills.
FIGURE_KEYS: dict[str, tuple[str, ...]] = {
    "e2e": ("e2e",),
    "features": ("feature_cost",),
    "throughput": ("throughput", "throughput_durable"),
    "baselines": ("raw_commit", "grpc_echo"),
    "physical": ("pg_test_fsync", "pgbench_durable"),
    "scaling": ("scaling",),
    "overhead": ("overhead", "overhead_durable"),
    "peer": ("peer_dbos", "peer_dbos_durable"),
    "recovery": ("recovery",),
    "list": ("list",),
    "api": ("api",),
    "events": ("events",),
    "profile": ("profile",),
    "retention": ("retention",),
    "inputs": ("inputs",),
}
# Figures added after the latest full run: a run is full without them, and they come in from
# partial runs (`--only`).
LATER_FIGURES = frozenset({"retention", "inputs", "e2e", "features", "physical", "scaling"})


def _stamp(path: Path) -> str:
    return path.name.removesuffix(".json")


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def _is_full(res: dict[str, Any]) -> bool:
    return not res.get("quick") and set(FIGURE_KEYS) - LATER_FIGURES <= set(
        res.get("figures_selected", [])
    )


def runs_to_merge(results_dir: Path) -> tuple[Path, list[Path]]:
    """The latest full run in `results_dir` and the non-quick partial runs after it (oldest
    first)."""
    paths = sorted(
        p for p in Path(results_dir).glob("*.json") if not p.name.endswith(".samples.json")
    )
    full = [p for p in paths if _is_full(_load(p))]
    if not full:
        raise FileNotFoundError(f"no full (non --quick, every figure) run in {results_dir}")
    base = full[-1]
    later = [
        p
        for p in paths
        if p.name > base.name and not _load(p).get("quick") and not _is_full(_load(p))
    ]
    return base, later


def merge(base_path: Path, overlays: list[Path]) -> dict[str, Any]:
    """The base run's results with each overlay's measured figures in place of its own;
    `sources` names the run each figure came from, `merged_from` the overlays."""
    res = _load(base_path)
    base = _stamp(Path(base_path))
    sources: dict[str, str] = {}
    for fig, keys in FIGURE_KEYS.items():
        if any(k in res for k in keys):
            sources[fig] = base
    # Earlier hand merges recorded in the base (the re-run baselines) keep their note.
    if "baselines" in sources and res.get("settings", {}).get("baselines_note"):
        note = res["settings"]["baselines_note"]
        sources["baselines"] = next(
            (w.removesuffix(".json") for w in note.split() if w[:8].isdigit() and "T" in w),
            base,
        )
    merged = []
    for path in overlays:
        ov = _load(path)
        stamp = _stamp(Path(path))
        took = []
        for fig in ov.get("figures_selected", []):
            keys = FIGURE_KEYS.get(fig, ())
            if fig in ov.get("errors", {}) or not any(k in ov for k in keys):
                continue
            for k in keys:
                if k in ov:
                    res[k] = ov[k]
            res.setdefault("errors", {}).pop(fig, None)
            sources[fig] = stamp
            took.append(fig)
        for note in ov.get("findings", []):
            res.setdefault("findings", []).append(f"({stamp}) {note}")
        if took:
            merged.append(
                {
                    "run": stamp,
                    "figures": took,
                    "loadavg_at_start": ov.get("machine", {}).get("loadavg_at_start"),
                    "cpu_model": ov.get("machine", {}).get("cpu_model"),
                }
            )
    res["sources"] = sources
    res["merged_from"] = merged
    return res


def plots(res: dict[str, Any], samples: dict[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return []
    PLOTS.mkdir(parents=True, exist_ok=True)
    made = []
    panels = [
        (store, key, title)
        for store, key, title in (
            ("postgres", "throughput", "PostgreSQL cpu-only (fsync off)"),
            ("postgres", "throughput_durable", "PostgreSQL durable (fsync on)"),
            ("sqlite", "throughput", "SQLite"),
        )
        if any(e["store"] == store for e in res.get(key, []))
    ]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharey=False)
        axes = list(axes) if len(panels) > 1 else [axes]
        for ax, (store, key, title) in zip(axes, panels, strict=True):
            tp = res.get(key, [])
            for wf in sorted({e["workflow"] for e in tp}):
                pts = sorted(
                    (e["workers"], e["steps_per_s"])
                    for e in tp
                    if e["store"] == store and e["workflow"] == wf
                )
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [p[1]["median"] for p in pts]
                lo = [p[1]["median"] - p[1]["min"] for p in pts]
                hi = [p[1]["max"] - p[1]["median"] for p in pts]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=wf)
            raw = res.get("raw_commit", {}).get("pgbench", {})
            if key == "throughput_durable":
                step = (res.get("pgbench_durable") or {}).get("cases", {}).get("saga_step_commit")
                raw = {"8": step["tps"]} if step else {}
            if store == "postgres" and raw:
                best = max(v["median"] for v in raw.values())
                ax.axhline(
                    best, color="grey", ls="--", lw=1, label="raw step commit (pgbench, best)"
                )
            ax.axhline(GOALS["steps_per_s"], color="red", ls=":", lw=1, label="goal 1,500 steps/s")
            ax.set_title(f"{title}: steps/s vs workers", fontsize=9)
            ax.set_xlabel("saga worker processes")
            ax.set_ylabel("steps/s (median, min–max)")
            ax.set_xticks([1, 2, 4])
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(PLOTS / "throughput.png", dpi=110)
        plt.close(fig)
        made.append("throughput.png")
    series = [(k, v) for k, v in samples.items() if k.endswith("gaps_ms") and v]
    if series:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, v in series:
            s = sorted(v)
            ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], label=k.replace("_gaps_ms", ""))
        ax.set_xscale("log")
        ax.set_xlabel("gap between consecutive steps of a saga (ms, log)")
        ax.set_ylabel("cumulative share")
        ax.set_title("Per-step orchestration overhead (commit + decide + next call)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(PLOTS / "overhead_cdf.png", dpi=110)
        plt.close(fig)
        made.append("overhead_cdf.png")
    return made


def write(path: Path, overlays: list[Path] | None = None) -> Path:
    res = merge(Path(path), list(overlays or []))
    samples_path = Path(str(path).replace(".json", ".samples.json"))
    samples = json.loads(samples_path.read_text()) if samples_path.exists() else {}
    made = plots(res, samples)
    m = res.get("machine", {})
    L: list[str] = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(
        "Generated by `python -m bench` (`make bench`) from "
        f"`bench/results/{Path(path).name}`{' — a **--quick** run (subset, shorter runs)' if res.get('quick') else ''}. "
        "Benchmarks print and record figures; they never fail on a number. Every figure is the median of "
        f"{res.get('settings', {}).get('runs', 3)} runs with (min–max), measured in one run on one machine, "
        "next to the baselines it is judged against."
    )
    w("")
    if res.get("quick"):
        sel = res.get("figures_selected") or []
        cl = (res.get("settings") or {}).get("clusters") or []
        w(
            f"This **--quick** run has the figures {', '.join(f'`{f}`' for f in sel)} (figure 1 on "
            f"the {' and '.join(cl) or 'cpu-only'} cluster{'s' if len(cl) > 1 else ''}), with "
            "shorter runs; the other figures are not in it (`make bench` runs them all)."
        )
        w("")
    if res.get("merged_from"):
        w(
            "Merged with later partial runs (`python -m bench --only ...`) on the same setup (the "
            "same PostgreSQL clusters; the CPU named where it is not the full run's); their "
            "figures replace the full run's: "
            + "; ".join(
                f"`bench/results/{m['run']}.json`: {', '.join(m['figures'])} "
                f"(load average at start {m.get('loadavg_at_start')}"
                + (
                    f"; CPU {m['cpu_model']}, not the full run's"
                    if m.get("cpu_model")
                    and m["cpu_model"] != res.get("machine", {}).get("cpu_model")
                    else ""
                )
                + ")"
                for m in res["merged_from"]
            )
            + ". Which run each figure comes from:"
        )
        w("")
        w("| figure | run |")
        w("|---|---|")
        for fig, stamp in res.get("sources", {}).items():
            w(f"| {fig} | `{stamp}` |")
        w("")
    w("## Machine")
    w("")
    w(
        f"- CPU: {m.get('cpu_model')}, **{m.get('cores')} cores**, {m.get('memory_gib')} GiB RAM; {m.get('platform')}"
    )
    w(
        f"- Python {m.get('python')}; {m.get('postgres', 'no PostgreSQL')}; Kafka {m.get('kafka') or '—'}"
    )
    ps = m.get("postgres_settings") or {}
    if ps:
        w(
            "- PostgreSQL settings (the test cluster of `scripts/postgres.sh`): "
            + ", ".join(f"`{k}={v}`" for k, v in sorted(ps.items()))
            + (
                " — **fsync is off**: commits do not wait for the disk, so every database figure of "
                "this cluster (the **cpu-only** one: ours, the raw limit and the peer alike) is a "
                "CPU/round-trip figure, not a disk one."
                if ps.get("fsync") == "off"
                else ""
            )
        )
    pd = m.get("postgres_durable") or {}
    if pd.get("settings"):
        w(
            "- The durable cluster (`scripts/postgres.sh start-durable`, saga_durable on port 55433), "
            "PostgreSQL's durable defaults: "
            + ", ".join(f"`{k}={v}`" for k, v in sorted(pd["settings"].items()))
            + ". The figures marked **durable** ran on it; commits there wait for the WAL flush."
        )
    w("- Packages: " + ", ".join(f"{k} {v}" for k, v in (m.get("packages") or {}).items() if v))
    w(
        f"- Load average at start: {m.get('loadavg_at_start')} (the machine is shared with other engineers' test runs)"
    )
    w("")
    _headline(res, w)
    _goals(res, w)
    _throughput(res, w, made)
    _baselines(res, w)
    _physical(res, w)
    _overhead(res, w, made)
    _peer(res, w)
    _scale(res, w)
    _api(res, w)
    _events(res, w)
    _retention(res, w)
    _inputs(res, w)
    _scaling(res, w)
    if res.get("findings"):
        w("## Findings of the re-measured figures")
        w("")
        w(
            "Written after the run named in brackets (its results JSON, key `findings`), from its figures and a py-spy profile."
        )
        w("")
        for note in res["findings"]:
            w(f"- {note}")
        w("")
    analysis = ROOT / "bench" / "analysis.md"
    if analysis.exists():
        if res.get("merged_from"):
            note = res.get("settings", {}).get("baselines_note") or ""
            redone = sorted(
                {f for m in res["merged_from"] if m["run"] not in note for f in m["figures"]}
            )
            w(
                f"> The analysis below was written for the full run `{Path(path).name}`; the figures "
                f"re-measured since ({', '.join(redone)}) are in the sections above, and where the "
                "analysis says otherwise about them (list cost, API and events not measured), the "
                "sections above are current."
            )
            w("")
        w(analysis.read_text().rstrip())
        w("")
    prof = res.get("profile")
    if prof and prof.get("top"):
        w("### Profile top (py-spy, self time by function, one PostgreSQL worker at saturation)")
        w("")
        w("| share of samples | function |")
        w("|---:|---|")
        for name, share in prof["top"][:25]:
            w(f"| {share:.1%} | `{name}` |")
        w("")
        if prof.get("svg"):
            w(f"Flame graph: `{prof['svg']}`.")
            w("")
    if res.get("errors"):
        w("## Figures that did not run")
        w("")
        for k, v in res["errors"].items():
            w(f"- **{k}**: {v}")
        w("")
    w("## How to run")
    w("")
    w("```")
    w(
        "make bench                      # installs the bench extras, starts both clusters, "
        "runs everything (< 35 min)"
    )
    w(".venv/bin/python -m bench --quick                 # ~2-minute subset")
    w(".venv/bin/python -m bench --only throughput,peer  # some figures")
    w(".venv/bin/python -m bench --only throughput --clusters durable  # on one cluster")
    w("bash scripts/postgres.sh start-durable            # the durable cluster by itself")
    w(".venv/bin/python -m bench.report bench/results/<stamp>.json   # rewrite this file")
    w("```")
    w("")
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(L) + "\n")
    return out


def _headline(res: dict[str, Any], w: Any) -> None:
    """The end-to-end figures (bench/report_e2e.py) come first."""
    wanted = (
        "e2e" in res
        or "feature_cost" in res
        or {"e2e", "features"} & set(res.get("figures_selected") or [])
    )
    if not wanted:
        return
    try:
        import importlib

        mod = importlib.import_module("bench.report_e2e")
        lines = list(mod.sections(res))
    except Exception as exc:  # noqa: BLE001 - the rest of the report still stands
        w(f"> The end-to-end section could not be written (bench/report_e2e.py): {exc}")
        w("")
        return
    e2e_cluster = (res.get("settings") or {}).get("e2e_cluster")
    if e2e_cluster and e2e_cluster != "durable":
        w(f"> These end-to-end figures ran on the {e2e_cluster}.")
        w("")
    for line in lines:
        w(line)
    if lines and lines[-1] != "":
        w("")


def _goals(res: dict[str, Any], w: Any) -> None:
    w("## The goal, and where we stand")
    w("")
    w("| goal | cluster | measured | ratio | met |")
    w("|---|---|---|---:|:---:|")
    for cluster in ("cpu-only", "durable"):
        _goal_rows(res, w, cluster)
    lst = res.get("list", {})
    if lst.get("queries"):
        p50 = max(q["p50_ms"] for q in lst["queries"].values())
        w(
            f"| list p50 ≤ 20 ms at 1M rows | cpu-only | worst query p50 {_f(p50, 1)} ms{' over HTTP (gunicorn)' if 'store_queries' in lst else ''} | {p50 / GOALS['list_p50_ms']:.2f}× budget "
            f"| {'yes' if p50 <= 20 else '**no**'} |"
        )
    rec = res.get("recovery", {})
    if rec.get("recovery_s") is not None:
        w(
            f"| recovery of 10,000 in flight ≤ 30 s | cpu-only | {_f(rec['recovery_s'], 1)} s from restart "
            f"(lease {rec.get('lease_secs')} s included) | {rec['recovery_s'] / 30:.2f}× budget | "
            f"{'yes' if rec['recovery_s'] <= 30 else '**no**'} |"
        )
    w("")


def _goal_rows(res: dict[str, Any], w: Any, cluster: str) -> None:
    best = _best_tp(res, "postgres", "bench-3", cluster)
    steps = best["steps_per_s"]["median"] if best else None
    if steps is not None:
        w(
            f"| ≥ 1,500 steps/s, 3-step sagas, PostgreSQL, 2 cores | {cluster} | {_f(steps)} steps/s ({best['workers']} workers) "
            f"| {steps / GOALS['steps_per_s']:.2f}× goal | {'yes' if steps >= GOALS['steps_per_s'] else '**no**'} |"
        )
    if cluster == "cpu-only":
        raw = res.get("raw_commit", {}).get("pgbench", {})
    else:
        step = (res.get("pgbench_durable") or {}).get("cases", {}).get("saga_step_commit")
        raw = {str(step["clients"]): step["tps"]} if step and step["tps"].get("median") else {}
    if steps is not None and raw:
        conn, rb = max(raw.items(), key=lambda kv: kv[1]["median"])
        share = steps / rb["median"]
        w(
            f"| ≥ 50% of the raw step-commit rate | {cluster} | {_f(steps)} ÷ {_f(rb['median'])} tx/s (pgbench, {conn} conn) "
            f"| {share:.0%} | {'yes' if share >= 0.5 else '**no**'} |"
        )
    ov = res.get(_OV_KEY[cluster], {}).get("loads", {}).get("one_in_flight")
    if ov:
        gap = ov["gap_between_steps"]["p50_ms"]
        call = ov["call_minus_handler"]["p50_ms"]
        w(
            f"| per-step overhead p50 ≤ 1 ms, one in flight | {cluster} | step-log duration − handler: {_f(call, 2)} ms; "
            f"gap between steps (commit + decide + next call): {_f(gap, 2)} ms | {call / GOALS['overhead_p50_ms']:.2f}× / "
            f"{gap / GOALS['overhead_p50_ms']:.2f}× budget | {'yes' if call <= 1 else '**no**'} / {'yes' if gap <= 1 else '**no**'} |"
        )
    peer = res.get(_PEER_KEY[cluster], {}).get("saturation")
    if peer and best and peer.get("sagas_per_s", {}).get("median"):
        ours1 = _tp(res, "postgres", "bench-3", 1, cluster)
        pr = peer["sagas_per_s"]["median"]
        r1 = ours1["sagas_per_s"]["median"] / pr if ours1 else None
        rb = best["sagas_per_s"]["median"] / pr
        w(
            f"| ≥ 2× the peer (DBOS) | {cluster} | ours {_f(best['sagas_per_s']['median'])} sagas/s ({best['workers']} workers), "
            f"1 worker {_f(ours1['sagas_per_s']['median'] if ours1 else None)}; DBOS {_f(pr)} | "
            f"{rb:.1f}× (1 worker: {_f(r1, 1)}×) | {'yes' if rb >= 2 else '**no**'} |"
        )


def _throughput(res: dict[str, Any], w: Any, made: list[str]) -> None:
    tp = res.get("throughput", []) + res.get("throughput_durable", [])
    if not tp:
        return
    w("## 1. Throughput at saturation")
    w("")
    w(
        "Method: with the workers stopped, N sagas are pre-inserted (one through `Engine.start_saga` with "
        "`execute=False`, the rest copied from it in one INSERT … SELECT); then W `saga worker` processes "
        "(default config: `max_concurrent: 100`, `commit_batch: 512`, `claim_interval_ms: 50`) start and the run ends "
        "when every saga is terminal (COUNT by status polled every 100 ms). Rates come from the stored timestamps "
        "over the middle 80% of completions (10th–90th percentile of terminal `updated_at` for sagas/s, of step-log "
        "`completed_at` for steps/s), so process start-up and the tail do not count. The participant is one "
        "separate process (`python -m workers.scripted_participants`, instant echo). `bench-comp-3`: steps 1–2 succeed, step 3 "
        "fails with FAILED_PRECONDITION (non-retryable), steps 2 and 1 are compensated (5 participant calls, 5 step logs). "
        "Everything — PostgreSQL, participant, workers, the bench poller — shares the 2 cores. "
        "PostgreSQL runs on two clusters of the same server: **cpu-only** (the test cluster, fsync off: "
        "commits do not wait for the disk) and **durable** (fsync, synchronous_commit, full_page_writes on: "
        "each commit waits for its WAL flush); a fresh database on each, the same sagas."
    )
    w("")
    w("| store | cluster | workflow | workers | N | sagas/s | steps/s |")
    w("|---|---|---|---:|---:|---:|---:|")
    for e in tp:
        n = e["runs"][0]["n"] if e.get("runs") else "—"
        cl = e.get("cluster") or ("cpu-only" if e["store"] == "postgres" else "—")
        w(
            f"| {e['store']} | {cl} | {e['workflow']} | {e['workers']} | {n} | {_mmm(e['sagas_per_s'])} | {_mmm(e['steps_per_s'])} |"
        )
    w("")
    pairs = []
    for e in res.get("throughput_durable", []):
        base = _tp(res, "postgres", e["workflow"], e["workers"], "cpu-only")
        if base and base["steps_per_s"].get("median") and e["steps_per_s"].get("median"):
            pairs.append(
                f"{e['workflow']} × {e['workers']}: {e['steps_per_s']['median'] / base['steps_per_s']['median']:.2f}"
            )
    if pairs:
        w("Durable ÷ cpu-only, steps/s (medians): " + "; ".join(pairs) + ".")
        w("")
    if "throughput.png" in made:
        w("![throughput vs workers](bench/plots/throughput.png)")
        w("")


def _baselines(res: dict[str, Any], w: Any) -> None:
    raw = res.get("raw_commit")
    echo = res.get("grpc_echo")
    if not raw and not echo:
        return
    w("## 2. Baselines: the physical limits, same run")
    w("")
    note = res.get("settings", {}).get("baselines_note")
    if note:
        w(f"Note: {note}.")
        w("")
    if raw:
        w(
            "Raw step commit: one transaction = `UPDATE saga.saga_states` (status, current_step, updated_at, "
            "compensation, lease expiry) + `INSERT saga.saga_step_logs` (JSONB request and response), one saga per "
            f"transaction, on the same database, {raw.get('seconds_per_run')} s per run. `pgbench` is the C client "
            "(the database's own limit); `psycopg` is the same transaction from Python threads, one connection each."
        )
        w("")
        w("| connections | pgbench tx/s | psycopg tx/s |")
        w("|---:|---:|---:|")
        for conns in ("1", "4", "16"):
            w(
                f"| {conns} | {_mmm(raw.get('pgbench', {}).get(conns))} | {_mmm(raw.get('psycopg', {}).get(conns))} |"
            )
        w("")
    if echo:
        w(
            "Raw gRPC: grpcio JSON echo calls (`/Bench/Step0`, the saga payload) from the bench process to the same "
            "participant process."
        )
        w("")
        w("| client | calls/s |")
        w("|---|---:|")
        for k in ("1_thread", "8_threads", "futures_64"):
            if k in echo:
                w(f"| {k.replace('_', ' ')} | {_mmm(echo[k])} |")
        w("")
    best = _best_tp(res, "postgres", "bench-3")
    if best and raw and raw.get("pgbench"):
        w(
            "Ratios (ours ÷ limit), PostgreSQL 3-step at its best worker count "
            f"({best['workers']}): "
        )
        w("")
        for conns, v in raw["pgbench"].items():
            w(
                f"- steps/s ÷ raw step commits at {conns} conn: {best['steps_per_s']['median'] / v['median']:.0%}"
            )
        if echo:
            bestecho = max(
                v["median"] for v in echo.values() if isinstance(v, dict) and "median" in v
            )
            w(
                f"- steps/s ÷ best raw gRPC echo rate: {best['steps_per_s']['median'] / bestecho:.0%}"
            )
        w("")
        w(
            "Our commits batch many sagas into one transaction, so our steps/s can exceed the one-saga-per-transaction "
            "rate; the honest reading is the share of the 2 cores left after PostgreSQL and the participant take theirs."
        )
        w("")


def _overhead(res: dict[str, Any], w: Any, made: list[str]) -> None:
    runs = [(k, res[_OV_KEY[k]]) for k in ("cpu-only", "durable") if res.get(_OV_KEY[k])]
    if not runs:
        return
    ov = runs[0][1]
    w("## 3. Orchestration overhead per step (PostgreSQL, 3-step sagas)")
    w("")
    w(
        "From the step logs: **call − handler** = `completed_at − started_at` of a step log (decide issued the "
        f"gRPC call … its reply came back to decide) minus the participant handler's own time ({ov['handler_ms'] * 1000:.0f} µs, "
        "measured in-process); **gap** = `started_at` of step k+1 − `completed_at` of step k of the same saga "
        "(commit of step k in the store + decide + issuing the next call); **last commit** = terminal `updated_at` − "
        "last step's `completed_at`. One in flight = one worker with `max_concurrent: 1`; 50%/80% = sagas fed "
        "continuously at that share of the 1-worker saturation rate of the same cluster. On the durable cluster the "
        "gap holds the commit's WAL flush."
    )
    w("")
    w(
        "| cluster | load | call − handler p50 / p99 (ms) | gap p50 / p99 (ms) | last commit p50 / p99 (ms) |"
    )
    w("|---|---|---:|---:|---:|")
    for cluster, o in runs:
        for k, v in o.get("loads", {}).items():
            label = k.replace("_", " ") + (
                f" ({_f(v.get('offered_sagas_per_s'))} sagas/s offered, "
                f"{_f(v.get('achieved_sagas_per_s'))} done)"
                if "offered_sagas_per_s" in v
                else ""
            )
            c, g, t = v["call_minus_handler"], v["gap_between_steps"], v.get("last_commit", {})
            w(
                f"| {o.get('cluster') or cluster} | {label} | {_f(c['p50_ms'], 2)} / {_f(c['p99_ms'], 2)} | "
                f"{_f(g['p50_ms'], 2)} / {_f(g['p99_ms'], 2)} "
                f"| {_f(t.get('p50_ms'), 2)} / {_f(t.get('p99_ms'), 2)} |"
            )
    w("")
    if "overhead_cdf.png" in made:
        w("![overhead distribution](bench/plots/overhead_cdf.png)")
        w("")


def _peer(res: dict[str, Any], w: Any) -> None:
    runs = [(k, res[_PEER_KEY[k]]) for k in ("cpu-only", "durable") if res.get(_PEER_KEY[k])]
    if not runs:
        return
    w("## 4. Peer: DBOS Transact")
    w("")
    errors = [(k, p["error"]) for k, p in runs if p.get("error")]
    for k, e in errors:
        w(f"Not measured on the {k} cluster: {e}")
        w("")
    runs = [(k, p) for k, p in runs if not p.get("error")]
    if not runs:
        return
    p = runs[0][1]
    sat = p.get("saturation", {})
    w(
        f"DBOS Transact {p.get('version')} (PyPI `dbos`), its system database a fresh database on the same PostgreSQL "
        "cluster as ours in that row. "
        "The same 3-step workflow: a `@DBOS.workflow` calling three `@DBOS.step`s, each a grpcio JSON call to the same "
        f"participant process. Saturation: {sat.get('n')} workflows run by {sat.get('concurrency')} client threads "
        "in one process (DBOS runs a workflow in the calling thread; ours holds up to 100 sagas per worker), rate over "
        "the middle 80% of completions. One in flight: workflows back to back, step call start/end recorded inside the "
        "step; gap = DBOS's checkpoint of step k + dispatch of step k+1 — the same figure as our gap."
    )
    w("")
    w("| cluster | | sagas/s | steps/s | gap p50 / p99 (ms), one in flight | step call p50 (ms) |")
    w("|---|---|---:|---:|---:|---:|")
    ratios = []
    for cluster, pr in runs:
        sat = pr.get("saturation", {})
        ours1 = _tp(res, "postgres", "bench-3", 1, cluster)
        best = _best_tp(res, "postgres", "bench-3", cluster)
        ov = res.get(_OV_KEY[cluster], {}).get("loads", {}).get("one_in_flight", {})
        po = pr.get("one_in_flight", {})
        if ours1:
            w(
                f"| {cluster} | ours, 1 worker | {_mmm(ours1['sagas_per_s'])} | {_mmm(ours1['steps_per_s'])} | "
                f"{_f(ov.get('gap_between_steps', {}).get('p50_ms'), 2)} / {_f(ov.get('gap_between_steps', {}).get('p99_ms'), 2)} | "
                f"{_f(ov.get('call_minus_handler', {}).get('p50_ms'), 2)} |"
            )
        if best and best is not ours1:
            w(
                f"| {cluster} | ours, {best['workers']} workers | {_mmm(best['sagas_per_s'])} | {_mmm(best['steps_per_s'])} | | |"
            )
        w(
            f"| {cluster} | DBOS, 1 process | {_mmm(sat.get('sagas_per_s'))} | {_mmm(sat.get('steps_per_s'))} | "
            f"{_f(po.get('gap_between_steps', {}).get('p50_ms'), 2)} / {_f(po.get('gap_between_steps', {}).get('p99_ms'), 2)} | "
            f"{_f(po.get('call', {}).get('p50_ms'), 2)} |"
        )
        dm = sat.get("sagas_per_s", {}).get("median")
        if ours1 and best and dm:
            ratios.append(
                f"**{cluster}**: {ours1['sagas_per_s']['median'] / dm:.1f}× with one worker process, "
                f"{best['sagas_per_s']['median'] / dm:.1f}× at our best worker count ({best['workers']})"
            )
    if ratios:
        w("")
        w("Ours ÷ DBOS, sagas/s: " + "; ".join(ratios) + ".")
    w("")


def _physical(res: dict[str, Any], w: Any) -> None:
    fs = res.get("pg_test_fsync")
    pb = res.get("pgbench_durable")
    if not fs and not pb:
        return
    w("## 2b. Physical baselines of the durable cluster")
    w("")
    if fs and fs.get("error"):
        w(f"pg_test_fsync: not measured ({fs['error']}).")
        w("")
    elif fs:
        one = (fs.get("sections") or {}).get("Compare file sync methods using one 8kB write", {})
        two = (fs.get("sections") or {}).get("Compare file sync methods using two 8kB writes", {})
        w(
            f"`pg_test_fsync -s {fs.get('seconds_per_test')}` (Debian's `{fs.get('binary')}`) on a directory in "
            f"`{fs.get('directory')}`, beside the cluster's data directory"
            + (
                " (the same filesystem)"
                if fs.get("same_filesystem_as_data")
                else " (**not** the data's filesystem)"
            )
            + f". The cluster's `wal_sync_method` is **{fs.get('wal_sync_method')}**: "
            f"**{_f(fs.get('wal_sync_method_ops_per_s'))} flushes/s** of one 8 kB write "
            f"({_f(fs.get('wal_sync_method_two_writes_ops_per_s'))} of two). This is a virtual disk: "
            "how much of a flush reaches stable media is the host's business, so this is the rate "
            "this machine's commits see, not a disk's property."
        )
        w("")
        w("| sync method | one 8 kB write, ops/s | two 8 kB writes, ops/s |")
        w("|---|---:|---:|")
        for k, v in one.items():
            w(
                f"| {k}{' ← wal_sync_method' if k == fs.get('wal_sync_method') else ''} | {_f(v)} | {_f(two.get(k))} |"
            )
        w("")
    if pb and pb.get("error"):
        w(f"pgbench: not measured ({pb['error']}).")
        w("")
    elif pb and pb.get("cases"):
        w(
            f"`pgbench` on a fresh database of the durable cluster: `pgbench -i -s {pb['scale']}` "
            f"({pb['scale'] * 100_000:,} accounts, as many branches as the scale so the 8 clients "
            f"do not queue on one row), then {pb['seconds_per_run']} s per run, `-M prepared`, "
            f"`-j {pb.get('threads', 2)}`, {pb['runs']} interleaved run(s) per case, median (min–max). "
            "`insert_only`: one `INSERT INTO pgbench_history` per transaction (the shortest durable "
            "write); `saga_step_commit`: figure 2's raw step commit (UPDATE saga_states + INSERT "
            "saga_step_logs, one saga per transaction). Every transaction is one commit, so one WAL "
            "flush per transaction, shared by whichever commits wait at the same time (group commit)."
        )
        w("")
        w("| case | options | clients | tps | mean latency (ms) |")
        w("|---|---|---:|---:|---:|")
        for name, e in pb["cases"].items():
            w(
                f"| {name} | `{e.get('options') or '(TPC-B-like)'}` | {e['clients']} | {_mmm(e['tps'])} "
                f"| {_mmm(e['latency_avg_ms'], 2)} |"
            )
        w("")


def _scaling(res: dict[str, Any], w: Any) -> None:
    sc = res.get("scaling")
    if not sc or not sc.get("runs"):
        return
    a = sc.get("assumptions", {})
    inp = sc.get("inputs", {})
    st, run = sc.get("median_steady", {}), sc.get("median_run", {})

    def v(key: str) -> Any:
        return (inp.get(key) or {}).get("value")

    w("## 12. Past this machine, on paper from measurements (durable cluster)")
    w("")
    w(
        f"Measured: {sc['sagas_per_run']:,} `{sc['workflow']}` sagas (3 steps each) run to the end by "
        f"{sc['workers']} `saga worker` processes on a fresh database of the durable cluster, "
        f"{len(sc['runs'])} run(s), medians. Before each run: `CHECKPOINT`, the sagas pre-inserted, "
        "`pg_stat_statements_reset()`, `pg_stat_reset_shared('wal')`. **PostgreSQL CPU per step** = "
        "user + system CPU (/proc) of every process of the cluster (backends, WAL writer, checkpointer, "
        "autovacuum, the postmaster and its reaped children; the bench's own two connections left out) "
        "÷ steps completed — it holds commit and WAL work no statement shows. **Statement time per step** = "
        "Σ `total_exec_time + total_plan_time` of the bench database in pg_stat_statements ÷ steps "
        "(the bench's polling left out; wall time inside the executor, so it includes waits; plan time is 0 "
        "with `pg_stat_statements.track_planning` off). Both over the **steady window** (from the poll "
        "that sees 10% of the sagas done to the one that sees 90%). **WAL per step** = WAL position "
        "difference over the whole run ÷ steps; flushes (`pg_stat_wal.wal_sync`, `wal_sync_time`) and "
        "commits (`pg_stat_database.xact_commit`) over the whole run, read a second after the workers "
        "stopped (these counters reach the views up to a second late)."
    )
    w("")
    w("| per completed step | steady window | whole run |")
    w("|---|---:|---:|")
    rows = (
        ("PostgreSQL CPU, /proc (µs)", "pg_cpu_us_per_step", 0),
        ("statement time, pg_stat_statements (µs)", "statement_us_per_step", 0),
        ("statement calls", "statement_calls_per_step", 3),
        ("WAL bytes (WAL position)", "lsn_bytes_per_step", 0),
        ("WAL bytes (pg_stat_wal)", "wal_bytes_per_step", 0),
        ("full-page images", "wal_fpi_per_step", 4),
        ("commits", "commits_per_step", 3),
        ("steps per WAL flush", "steps_per_wal_sync", 1),
        ("ms per WAL flush (wal_sync_time ÷ wal_sync)", "wal_sync_ms_per_sync", 2),
        ("worker CPU, /proc (µs)", "worker_cpu_us_per_step", 0),
    )
    for label, key, digits in rows:
        w(f"| {label} | {_f(st.get(key), digits)} | {_f(run.get(key), digits)} |")
    w(
        f"| PostgreSQL cores busy (CPU s ÷ s) | {_f(st.get('pg_cores_busy'), 2)} | {_f(run.get('pg_cores_busy'), 2)} |"
    )
    w("")
    w(
        f"Rate: **{_f(sc.get('steps_per_s'))} steps/s** with {sc['workers']} workers = "
        f"**{_f(sc.get('steps_per_s_per_worker'))} steps/s per worker process** on this machine "
        "(2 cores shared by PostgreSQL, the workers, the participant and the poller)."
    )
    w("")
    top = (sc["runs"][-1].get("top_statements") or [])[:4]
    if top:
        w(
            "Statements by time (last run): "
            + "; ".join(
                f"`{t['query'][:70]}…` {t['calls']} calls, {_f(t['ms'] / max(t['calls'], 1), 2)} ms each"
                for t in top
            )
            + "."
        )
        w("")
    table = sc.get("table")
    if not table:
        w(f"No table: {sc.get('table_error', 'not computed')}.")
        w("")
        return
    eff = a.get("cpu_efficiency")
    bw = a.get("wal_bandwidth_mb_s")
    w(
        "The table: what a PostgreSQL server of N cores would carry of these steps, if nothing but the "
        "bound in the column limited it. **Assumptions**, each stated:"
    )
    w("")
    w(
        f"- **CPU-bound** = N × {eff} ÷ PostgreSQL CPU per step ({_f(v('pg_cpu_us_per_step'))} µs, "
        f"{(inp.get('pg_cpu_us_per_step') or {}).get('from')}, /proc). {eff} is the assumed share of N cores "
        "turned into this work (the rest: lock and buffer contention, context switches, the OS, checkpoints "
        "and autovacuum bursts). The CPU per step is assumed not to grow with N: measured on 2 shared "
        "cores, where it already includes contention with the workers; at large N, contention on hot rows "
        "and the WAL insertion locks would raise it, so the high rows are optimistic. The statement column "
        f"uses the statement time instead ({_f(v('statement_us_per_step'))} µs: wall time in the executor, "
        "commit and WAL flush excluded)."
    )
    w(
        f"- **WAL-bandwidth-bound** = {_f(bw)} MB/s ÷ WAL bytes per step ({_f(v('wal_bytes_per_step'))} B): "
        f"an assumed sustained sequential write rate for the WAL disk (a provisioned SSD volume; local NVMe "
        "does several times more). One WAL stream: it does not grow with N."
    )
    w(
        f"- **WAL-flush-bound** (group commit) = flushes/s × steps per flush: {_f(v('fsync_per_s'))} flushes/s "
        f"({(inp.get('fsync_per_s') or {}).get('from')}) × {_f(v('steps_per_wal_sync'), 1)} steps per flush "
        f"(measured: {_f(v('commits_per_step'), 3)} commits per step, i.e. a worker commits "
        f"{_f(1 / v('commits_per_step') if v('commits_per_step') else None, 1)} steps at a time, and "
        "commits waiting together share a flush). The measured steps per flush are those of this run's "
        f"{sc['workers']} workers; with more workers more commits wait on each flush, so this bound rises with "
        "the load until the bandwidth bound takes over: as stated it is a floor. "
        + (
            f"At a network-attached cloud volume's ~{_f(a.get('cloud_flushes_per_s'))} flushes/s it would be "
            f"{_f(sc.get('cloud_flush_bound_steps_per_s'))} steps/s at the same batching"
            if sc.get("cloud_flush_bound_steps_per_s")
            else ""
        )
        + (
            f"; at the flush time this run measured ({_f(v('wal_sync_ms_per_sync'), 2)} ms per "
            f"`wal_sync`, larger writes than pg_test_fsync's 8 kB and a shared disk), "
            f"{_f(sc.get('measured_flush_bound_steps_per_s'))} steps/s."
            if sc.get("measured_flush_bound_steps_per_s")
            else "."
        )
    )
    w(
        "- **Carried** = the least of the CPU, WAL-bandwidth and WAL-flush bounds. **Workers** = carried ÷ "
        f"steps/s per worker process: at the rate measured here ({_f(sc.get('steps_per_s_per_worker'))}, "
        "each worker sharing 2 cores with everything else: pessimistic), and at a worker's CPU ceiling "
        f"({eff} × 1 core ÷ {_f(v('worker_cpu_us_per_step'))} µs of worker CPU per step = "
        f"{_f(eff * 1e6 / v('worker_cpu_us_per_step') if v('worker_cpu_us_per_step') else None)} steps/s, "
        "one core per worker). The participants' own work is not counted: it is the services' cost, not ours."
    )
    w("")
    w(
        "| PostgreSQL cores | CPU-bound steps/s | (statement time) | WAL-bandwidth-bound | WAL-flush-bound "
        "| carried | limited by | workers (measured rate) | workers (CPU ceiling) |"
    )
    w("|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in table:
        w(
            f"| {r['cores']} | {_f(r['cpu_bound_steps_per_s'])} | {_f(r['statement_bound_steps_per_s'])} "
            f"| {_f(r['wal_bandwidth_bound_steps_per_s'])} | {_f(r['wal_flush_bound_steps_per_s'])} "
            f"| **{_f(r['carried_steps_per_s'])}** | {r['limited_by'].replace('_', ' ')} "
            f"| {_f(r['workers_at_measured_rate'])} | {_f(r['workers_at_cpu_ceiling'])} |"
        )
    w("")


def _scale(res: dict[str, Any], w: Any) -> None:
    rec = res.get("recovery")
    if rec:
        w("## 7–8. Recovery and memory (10,000 sagas in flight)")
        w("")
        for k, v in rec.items():
            if not k.startswith("_"):
                w(f"- {k}: {_f(v, 2) if isinstance(v, float) else v}")
        w("")
    lst = res.get("list")
    if lst:
        _list(lst, w)


def _list(lst: dict[str, Any], w: Any) -> None:
    w("## 6. List at scale")
    w("")
    if "store_queries" not in lst:  # a run from before the HTTP measurement
        for k, v in lst.items():
            if k == "queries":
                w("| query | p50 ms | p99 ms |")
                w("|---|---:|---:|")
                for q, s in v.items():
                    w(f"| `{q}` | {_f(s['p50_ms'], 1)} | {_f(s['p99_ms'], 1)} |")
                w("")
            elif k != "plans":
                w(f"- {k}: {v}")
        w("")
        return
    w(
        f"`GET /api/v1/sagas?status=...&page=...` with {lst['rows']:,} sagas in PostgreSQL (80% COMPLETED, "
        "10% FAILED, 5% CANCELLED, 3% RUNNING, 1% COMPENSATING, 1% STARTED; inserted in 250k-row statements, then "
        f"`VACUUM ANALYZE`, {_f(lst.get('fill_s'), 0)} s). Method: {lst.get('method')}; {lst['repetitions']} "
        "requests per query after 5 warm-up ones. `total_count` comes from the `saga_counts` counters of migration "
        "0003 (kept by statement triggers), checked against the known distribution."
    )
    w("")
    w(
        "| query | HTTP p50 ms | HTTP p99 ms | store p50 ms | store p99 ms | total_count (API / expected) |"
    )
    w("|---|---:|---:|---:|---:|---:|")
    for q, h in lst["queries"].items():
        s = lst["store_queries"].get(q, {})
        tc = lst.get("total_count", {}).get(q, {})
        ok = "" if tc.get("api") == tc.get("expected") else " **mismatch**"
        w(
            f"| `{q}` | {_f(h['p50_ms'], 1)} | {_f(h['p99_ms'], 1)} | {_f(s.get('p50_ms'), 1)} | "
            f"{_f(s.get('p99_ms'), 1)} | {_f(tc.get('api'))} / {_f(tc.get('expected'))}{ok} |"
        )
    w("")
    plans = lst.get("plans") or {}
    if plans:
        w(
            "Query plans (EXPLAIN (ANALYZE, BUFFERS) of the count and page statements, right after the timed "
            "requests) are in the results JSON under `list.plans`; two of them:"
        )
        w("")
        for q in list(plans)[:2]:
            w(f"<details><summary><code>{q}</code></summary>")
            w("")
            w("```")
            for kind, text in plans[q].items():
                w(f"-- {kind}")
                w(text)
            w("```")
            w("")
            w("</details>")
            w("")


_API_LABELS = {
    "rest_start_saga_c1": ("REST `POST /api/v1/sagas`", "1 connection"),
    "rest_start_saga_c16": ("REST `POST /api/v1/sagas`", "16 connections"),
    "rest_get_saga_c1": ("REST `GET /api/v1/sagas/<id>`", "1 connection"),
    "rest_get_saga_c16": ("REST `GET /api/v1/sagas/<id>`", "16 connections"),
    "grpc_start_saga_inflight1": ("gRPC `StartSaga`", "1 in flight"),
    "grpc_start_saga_inflight64": ("gRPC `StartSaga`", "64 in flight"),
}


def _api(res: dict[str, Any], w: Any) -> None:
    api = res.get("api")
    if not api or not api.get("cases"):
        return
    w("## 5. API")
    w("")
    w(
        f"REST: `{api.get('rest_server')}`; gRPC: `{api.get('grpc_server')}`; both on the bench's PostgreSQL "
        f"database, `CONFIG_PATH` a bench config. Load generators, each a separate process: REST — {api.get('rest_loadgen')}; "
        f"gRPC — {api.get('grpc_loadgen')}. Closed loop at a fixed concurrency for {_f(api.get('seconds_per_run'), 0)} s per run, "
        f"median of {api.get('runs_per_case')} runs (min–max). The start-saga body is a 3-step workflow with a "
        "two-field payload; the database is truncated before each start-saga run; GET by id picks a random one of "
        "10,000 stored sagas per request (no step logs). Latencies are the load generator's."
    )
    w("")
    w(
        "| call | concurrency | req/s | p50 ms | p99 ms | errors | CPU (cores): load generator / server / PostgreSQL / whole machine |"
    )
    w("|---|---|---:|---:|---:|---:|---|")
    for key, e in api["cases"].items():
        call, conc = _API_LABELS.get(key, (key, ""))
        cpu = e.get("cpu_cores_median", {})
        w(
            f"| {call} | {conc} | {_mmm(e.get('req_per_s'))} | {_mmm(e.get('p50_ms'), 2)} | {_mmm(e.get('p99_ms'), 2)} "
            f"| {e.get('errors')} | {_f(cpu.get('loadgen'), 2)} / {_f(cpu.get('server'), 2)} / "
            f"{_f(cpu.get('postgres'), 2)} / {_f(cpu.get('machine_busy'), 2)} of {res.get('machine', {}).get('cores')} |"
        )
    w("")
    w(
        "CPU is per run (median): CPU seconds ÷ wall seconds, for the load generator (its rusage), the server's process "
        "group (gunicorn master + workers, or the gRPC process) and every `postgres` process, from /proc; the whole "
        "machine from /proc/stat. **The load generator competes for the same 2 cores** as the server and PostgreSQL: "
        "wrk (C) takes little, the Python gRPC client a noticeable share, so the gRPC figure is a floor. At 16 "
        "connections the machine is close to fully busy."
    )
    w("")


def _events(res: dict[str, Any], w: Any) -> None:
    ev = res.get("events")
    if not ev or not ev.get("runs"):
        return
    w("## 9. Events: outbox relay to Kafka")
    w("")
    w(
        f"Per run: {ev['sagas_per_run']:,} `{ev['workflow']}` sagas run to the end through an `Engine` (executor on, relay off) "
        f"on a config with a `kafka` section, so their commits fill the outbox ({_f(ev.get('events_per_saga'), 1)} events per "
        f"saga); then one `workers.adapters.relay.OutboxRelay` (batch {ev.get('relay_batch')}, idempotent producer, acks=all) "
        f"starts on a fresh 1-partition topic of the broker at {ev.get('broker')} and the clock runs until the store "
        "reports no unpublished row (producer connection included). **steady** = rate over the 10th–90th percentile "
        "of `published_at` (marks are per batch, so this is coarse). A consumer then reads the topic from the start."
    )
    w("")
    w("| | events/s |")
    w("|---|---:|")
    w(f"| backlog ÷ drain time | {_mmm(ev.get('events_per_s'))} |")
    w(f"| steady (10th–90th percentile of published_at) | {_mmm(ev.get('events_per_s_steady'))} |")
    w("")
    w(
        "| run | events | drain s | first publish after s | consumed | distinct | lost | duplicates |"
    )
    w("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(ev["runs"], 1):
        w(
            f"| {i} | {r['events']:,} | {_f(r['drain_s'], 2)} | {_f(r.get('first_publish_after_s'), 2)} | "
            f"{r['consumed']:,} | {r['consumed_distinct']:,} | {r['lost']} | {r['duplicates']} |"
        )
    w("")


def _retention(res: dict[str, Any], w: Any) -> None:
    rt = res.get("retention")
    if not rt or rt.get("deleted") is None:
        return
    b = rt.get("batch_ms") or {}
    ck = rt.get("check") or {}
    w(f"## 10. Retention: {rt['old_sagas']:,} ended sagas deleted while sagas run (PostgreSQL)")
    w("")
    w(
        f"Method: a fresh database holds {rt['old_sagas']:,} ended sagas (COMPLETED, FAILED, "
        f"CANCELLED; {rt['step_logs_per_saga']} step logs and an idempotency key each) that ended "
        f"40–52 days ago, inserted in bulk ({_f(rt.get('fill_s'))} s, {rt.get('database_size_before')}), "
        f"and {rt['recent_sagas']:,} that ended just now. {rt['workers']} `saga worker` processes run "
        f"`{rt['workflow']}` sagas at saturation, kept fed (20,000 STARTED sagas queued). Throughput "
        f"(sagas reaching a terminal status per second, from their `updated_at`) is read over "
        f"{_f(rt['window_s'])} s before retention, over the whole retention pass, and over "
        f"{_f(rt['window_s'])} s after it. The pass is `workers.service.retention.Retention` with "
        f"`retention_days: {rt['retention_days']}` in the bench process, on its own `PostgresStore`: "
        f"batches of {rt['batch']} sagas, one statement each (sagas, their step logs by ON DELETE "
        "CASCADE, their published events), each followed by a pause as long as the batch took. "
        "No outbox rows: a relay prunes published events after `kafka.retention_hours`, long "
        "before their sagas are due."
    )
    w("")
    w("| | |")
    w("|---|---:|")
    w(
        f"| sagas deleted | **{_f(rt['deleted'])}** in {_f(rt['deletion_s'], 1)} s = "
        f"**{_f(rt['deleted_per_s'])} sagas/s** ({_f(3 * rt['deleted'])} step logs with them) |"
    )
    w(
        f"| batches of {rt['batch']} | {_f(rt.get('batches'))}: p50 {_f(b.get('p50_ms'))} ms, "
        f"p99 {_f(b.get('p99_ms'))} ms, max {_f(b.get('max_ms'))} ms |"
    )
    w(f"| share of the pass spent in a batch | {_f(100 * (rt.get('busy_share') or 0))}% |")
    w(f"| throughput before retention | {_f(rt.get('sagas_per_s_before'))} sagas/s |")
    during = rt.get("sagas_per_s_during")
    before = rt.get("sagas_per_s_before") or 0
    change = f" ({(during / before - 1) * 100:+.0f}%)" if during is not None and before else ""
    w(f"| throughput during the pass | **{_f(during)} sagas/s**{change} |")
    windows = ", ".join(_f(v) for v in rt.get("sagas_per_s_during_by_window") or [])
    if windows:
        w(f"| … per {_f(rt['window_s'])} s of the pass | {windows} |")
    w(f"| throughput after it | {_f(rt.get('sagas_per_s_after'))} sagas/s |")
    w(f"| database size after | {rt.get('database_size_after')} (space is reused, not returned) |")
    w("")
    w(
        f"Checked afterwards: old sagas left **{ck.get('old_left')}**, recent ones kept "
        f"**{_f(ck.get('recent_kept'))}** of {rt['recent_sagas']:,}, sagas run during the windows "
        f"kept {_f(ck.get('sagas_run_during_the_windows'))} (with {_f(ck.get('their_step_logs'))} "
        f"step logs), step logs without a saga {ck.get('step_logs_without_saga')}, per-status "
        f"counts (saga_counts) equal to a count of the rows: {ck.get('saga_counts_exact')}."
    )
    w("")
    if rt.get("plan"):
        w("<details><summary>Plan of one batch (EXPLAIN ANALYZE, rolled back)</summary>")
        w("")
        w("```")
        w(rt["plan"])
        w("```")
        w("")
        w("</details>")
        w("")


def _inputs(res: dict[str, Any], w: Any) -> None:
    inp = res.get("inputs")
    if not inp or not inp.get("stores"):
        return
    plain, with_input = "bench-3", "bench-3-input"
    exprs = inp.get("workflows", {}).get(with_input) or []
    mach = inp.get("machine") or {}
    w("## 11. Cost of step inputs (SPEC §10)")
    w("")
    w(
        f"`{with_input}` is `{plain}` with an `input` on every step: "
        + "; ".join(f"`s{i}`: `{e}`" for i, e in enumerate(exprs))
        + f'. The participant echoes its request (plus `"ok": true`), so each step\'s request '
        "carries the responses before it. Method: as in figure 1, "
        f"{inp['workers']} worker, {_f(inp['n'])} sagas per run (~{_f(3 * inp['n'])} steps); the "
        f"two workflows run interleaved ({inp.get('order')}), {inp['pairs']} pairs per store, so "
        "the shared machine's load falls on both alike. Median (min–max) of the runs of each "
        "variant; the ratio is input ÷ plain steps/s, of the medians and per pair (each input "
        "run ÷ the plain run just before it). **Worker CPU per step** = the worker process's "
        "user + system CPU time (/proc) ÷ the step logs written, between the polls at 10% and "
        "90% of the sagas done: it does not count the time the worker waits for a core, so it "
        "is far less noisy than a rate on a shared machine. After every run the store is "
        "checked: every saga COMPLETED, and the last step's stored request is what its "
        "expression makes of the echoed responses."
        + (
            f" Measured on {mach.get('cpu_model')}, {mach.get('cores')} cores (load average at "
            f"start {mach.get('loadavg_at_start')})."
            if mach.get("cpu_model")
            else ""
        )
    )
    w("")
    w(
        f"| store | `{plain}` steps/s | `{with_input}` steps/s | input ÷ plain (medians) "
        "| per-pair ratio | worker CPU per step, plain / input (µs) | CPU input ÷ plain | checks |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|:---:|")
    for store, e in inp["stores"].items():
        a, b = e[plain], e[with_input]
        ratio = e.get("ratio_of_medians")
        cpu_a = (a.get("worker_cpu_us_per_step") or {}).get("median")
        cpu_b = (b.get("worker_cpu_us_per_step") or {}).get("median")
        cpu_r = e.get("cpu_ratio_of_medians")
        w(
            f"| {store} | {_mmm(a['steps_per_s'])} | {_mmm(b['steps_per_s'])} | "
            f"**{_f(ratio, 3)}**{_pct(ratio)} | {_mmm(e.get('pair_ratios'), 3)} | "
            f"{_f(cpu_a)} / {_f(cpu_b)} | **{_f(cpu_r, 3)}**{_pct(cpu_r)} | "
            f"{'ok' if e.get('all_checks_ok') else '**failed**'} |"
        )
    w("")
    for store, e in inp["stores"].items():
        order = ", ".join(
            f"{_f(x['steps_per_s'])} / {_f(y['steps_per_s'])}"
            for x, y in zip(e[plain]["runs"], e[with_input]["runs"], strict=False)
        )
        w(f"- {store}, steps/s in run order (plain / input, per pair): {order}")
    w("")
    core = inp.get("core")
    if core:
        dec = core["decide_us_per_run"]
        steps = core["steps"]
        w(
            f"Core cost: `saga.decide` driven in-process over whole {steps}-step runs "
            f"({core['decisions_per_run'][plain]} decisions each: resume, call, echo reply, commit, "
            f"…, completion), {_f(core['runs_per_repetition'])} runs per repetition, both "
            f"workflows alternating, median (min–max) of {core['repetitions']} repetitions:"
        )
        w("")
        w("| | decide per saga (µs) | per step (µs) |")
        w("|---|---:|---:|")
        for wf in (plain, with_input):
            s = dec[wf]
            w(f"| `{wf}` | {_mmm(s, 1)} | {_f(s['median'] / steps, 1)} |")
        w(
            f"| inputs add | **{_f(core['input_extra_us_per_run'], 1)}** | "
            f"**{_f(core['input_extra_us_per_step'], 1)}** |"
        )
        w("")
        parts = core.get("evaluation_parts_us") or {}
        if parts:
            w(
                f"One evaluation of the last step's `input` (the largest context; a "
                f"{core.get('last_step_request_bytes')}-byte request), in its parts: "
                + "; ".join(f"{k} {_f(v['median'], 1)} µs" for k, v in parts.items())
                + "."
            )
            w("")
        extra = core["input_extra_us_per_step"]
        lines = []
        for store, e in inp["stores"].items():
            cpu_a = (e[plain].get("worker_cpu_us_per_step") or {}).get("median")
            cpu_b = (e[with_input].get("worker_cpu_us_per_step") or {}).get("median")
            sp = e[plain]["steps_per_s"]
            ratio = e.get("ratio_of_medians")
            if not cpu_a or not cpu_b or not sp.get("median") or ratio is None:
                continue
            spread = (sp["max"] - sp["min"]) / sp["median"]
            prof = (e.get("profile") or {}).get(with_input, {}).get("areas") or {}
            ex_share = prof.get("saga/expressions.py (input evaluation)")
            lines.append(
                f"**{store}**: the expressions' {_f(extra, 1)} µs are {extra / cpu_a:.1%} of the "
                f"worker's {_f(cpu_a)} µs of CPU per plain step, so if the worker's CPU is the "
                f"limit they alone give a ratio of about {cpu_a / (cpu_a + extra):.3f}; "
                f"measured: {ratio:.3f} of the medians, {_f(e['pair_ratios']['median'], 3)} per "
                f"pair, and {_f(cpu_b)} µs of worker CPU per step with inputs "
                f"({(cpu_b / cpu_a - 1) * 100:+.0f}%)"
                + (
                    f"; in the profile the expressions are {ex_share:.1%} of the worker's Python "
                    "samples with inputs"
                    if ex_share is not None
                    else ""
                )
                + f". The plain runs alone spread over {spread:.0%} of their median"
            )
        if lines:
            w("Reading:")
            w("")
            for line in lines:
                w(f"- {line}.")
            w("")
            w(
                "Besides the expressions, the input variant moves larger requests and responses "
                "(each step's request nests the responses before it: encoded for the call, "
                "decoded from the reply, written to the step log). A difference smaller than the "
                "spread of the plain runs is not resolved by runs this short on a shared "
                "machine; the in-process core figure is the steadiest of these."
            )
            w("")
    for store, e in inp["stores"].items():
        prof = e.get("profile")
        if not prof:
            continue
        a, b = prof.get(plain, {}), prof.get(with_input, {})
        w(
            f"Profile ({store}): py-spy `--gil` "
            f"(the thread holding the GIL, i.e. the worker's Python work; {_f(a.get('samples'))} "
            f"samples plain, {_f(b.get('samples'))} with inputs) on the worker of {a.get('runs')} "
            f"more runs of {_f(b.get('n'))} sagas per variant, interleaved, from the first saga "
            "done to 90% of them. Share of the samples with the area on the stack (areas "
            "overlap: the expressions run inside decide, JSON inside the store and the call):"
        )
        w("")
        w(f"| area | `{plain}` | `{with_input}` |")
        w("|---|---:|---:|")
        for area in b.get("areas", {}):
            x, y = a.get("areas", {}).get(area), b["areas"][area]
            w(f"| {area} | {_f(100 * (x or 0), 1)}% | {_f(100 * (y or 0), 1)}% |")
        w(
            f"| worker CPU per step in these runs (/proc) | {_f(a.get('worker_cpu_us_per_step'))} µs "
            f"| {_f(b.get('worker_cpu_us_per_step'))} µs |"
        )
        w("")
        top = b.get("top_self") or []
        if top:
            w(
                "Top self time with inputs: "
                + "; ".join(f"`{name}` {share:.1%}" for name, share in top[:8])
                + "."
            )
            w("")


def _pct(ratio: float | None) -> str:
    return "" if ratio is None else f" ({(ratio - 1) * 100:+.1f}%)".replace("-", "−")


def _cli(argv: list[str]) -> int:
    if argv[:1] == ["--latest"]:
        base, later = runs_to_merge(ROOT / "bench" / "results")
        print(write(base, later))
    elif argv:
        print(write(Path(argv[0]), [Path(a) for a in argv[1:]]))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
