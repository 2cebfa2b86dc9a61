"""`python -m bench [--quick] [--only NAME,...] [--out bench/results]`

Runs the benchmarks in one go on this machine, prints figures as it goes, writes
`<out>/<UTC timestamp>.json` and regenerates BENCHMARKS.md (with PNG plots in bench/plots/).
Needs the services of `scripts/services.sh up` (PostgreSQL; Kafka for the events figure).
Every process started here is stopped in a `finally`; every database created is dropped.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common as c

FIGURES = (
    "throughput",
    "baselines",
    "overhead",
    "peer",
    "recovery",
    "list",
    "api",
    "events",
    "profile",
    "retention",
    "inputs",
)


def _services_env() -> dict[str, str]:
    env: dict[str, str] = {}
    path = c.ROOT / ".services" / "env"
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip().strip("'\"")
    for k in ("SAGA_TEST_DATABASE_URL", "SAGA_TEST_KAFKA_BOOTSTRAP"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a ~2-minute subset")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(FIGURES)}")
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results"))
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median, min, max)")
    ap.add_argument("--no-report", action="store_true", help="do not regenerate BENCHMARKS.md")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(FIGURES)
    if unknown:
        ap.error(f"unknown figures {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    selected = only or list(FIGURES)
    if args.quick and not only:
        selected = ["throughput", "baselines", "overhead", "peer"]

    # The children must not pick up a DATABASE_URL or CONFIG_PATH of the caller's shell.
    for key in ("DATABASE_URL", "CONFIG_PATH"):
        os.environ.pop(key, None)
    os.environ.setdefault("PYTHONPATH", str(c.ROOT))
    svc = _services_env()
    admin_url = svc.get("SAGA_TEST_DATABASE_URL")
    kafka = svc.get("SAGA_TEST_KAFKA_BOOTSTRAP")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"saga-bench-{stamp}-"))
    runs = max(3, args.runs) if not args.quick else 3

    results: dict[str, Any] = {
        "started_at": stamp,
        "quick": args.quick,
        "figures_selected": selected,
        "settings": {"runs": runs, "workdir": str(workdir)},
        "machine": c.machine(admin_url, kafka),
        "errors": {},
    }
    c.log(f"saga bench {'--quick ' if args.quick else ''}{stamp}: {', '.join(selected)}")
    c.log(
        f"  machine: {results['machine'].get('cpu_model')}, {results['machine'].get('cores')} cores, "
        f"{results['machine'].get('memory_gib')} GiB; PostgreSQL "
        f"{'yes' if admin_url else 'NOT AVAILABLE'}; Kafka {kafka or 'NOT AVAILABLE'}"
    )

    atexit.register(c.stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    db: c.BenchDatabase | None = None
    t_start = time.monotonic()
    try:
        if admin_url:
            db = c.BenchDatabase(admin_url, f"saga_bench_{stamp.lower()}")
        pg_url = db.url if db else None
        with c.participant(workdir) as part:
            results["settings"]["participant"] = (
                "python -m workers.scripted_participants (instant echo, 32 threads)"
            )

            def figure(name: str, fn: Any) -> None:
                if name not in selected:
                    return
                c.log(f"[{name}]")
                t0 = time.monotonic()
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - record, go on with the others
                    results["errors"][name] = f"{type(exc).__name__}: {exc}"
                    c.log(f"  {name} FAILED: {type(exc).__name__}: {exc}")
                    traceback.print_exc()
                results.setdefault("durations_s", {})[name] = round(time.monotonic() - t0, 1)
                _write(out_dir, stamp, results)

            from bench import baselines, throughput

            figure(
                "throughput",
                lambda: throughput.throughput(
                    workdir, part, pg_url, quick=args.quick, runs=runs, results=results
                ),
            )
            figure(
                "baselines",
                lambda: (
                    baselines.raw_commit(
                        pg_url, workdir, quick=args.quick, runs=runs, results=results
                    )
                    if pg_url
                    else None,
                    baselines.grpc_echo(part, quick=args.quick, runs=runs, results=results),
                ),
            )
            sat = _saturation(results, "postgres" if pg_url else "sqlite")
            figure(
                "overhead",
                lambda: throughput.overhead(
                    workdir,
                    part,
                    pg_url,
                    quick=args.quick,
                    results=results,
                    saturation_sagas_per_s=sat,
                ),
            )
            if admin_url:
                from bench import peer

                figure(
                    "peer",
                    lambda: peer.dbos_peer(
                        admin_url,
                        workdir,
                        part,
                        quick=args.quick,
                        runs=runs,
                        results=results,
                        db_suffix=stamp.lower(),
                    ),
                )
            if pg_url:
                figure(
                    "recovery",
                    lambda: _mod("scale").recovery_and_memory(
                        workdir, pg_url, quick=args.quick, results=results
                    ),
                )
                figure(
                    "list",
                    lambda: _mod("scale").list_at_scale(
                        admin_url or "",
                        workdir,
                        quick=args.quick,
                        results=results,
                        db_suffix=stamp.lower(),
                    ),
                )
                figure(
                    "api",
                    lambda: _mod("api").api(
                        workdir, part, pg_url, quick=args.quick, results=results
                    ),
                )
                figure(
                    "retention",
                    lambda: _mod("retention").retention(
                        admin_url or "",
                        workdir,
                        part,
                        quick=args.quick,
                        results=results,
                        db_suffix=stamp.lower(),
                    ),
                )
                if kafka:
                    figure(
                        "events",
                        lambda: _mod("api").events(
                            workdir, part, pg_url, kafka, quick=args.quick, results=results
                        ),
                    )
            figure(
                "inputs",
                lambda: _mod("inputs").inputs(
                    workdir, part, pg_url, quick=args.quick, runs=runs, results=results
                ),
            )
            figure("profile", lambda: _profile(workdir, part, pg_url, out_dir, stamp, results))
    finally:
        c.stop_all()
        if db is not None:
            db.drop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["total_s"] = round(time.monotonic() - t_start, 1)
    path = _write(out_dir, stamp, results)
    c.log(f"results: {path} ({results['total_s']:.0f} s)")
    if not args.no_report:
        from bench import report

        if args.quick or set(selected) >= set(FIGURES):
            md = report.write(path)
        else:
            # A partial run: BENCHMARKS.md stays the latest full run, with the figures measured
            # by this and any other partial run since it merged in (each one's source named).
            try:
                base, later = report.runs_to_merge(out_dir)
            except FileNotFoundError:
                base, later = path, []
            md = report.write(base, later)
        c.log(f"report: {md}")
    return 0


def _mod(name: str) -> Any:
    import importlib

    return importlib.import_module(f"bench.{name}")


def _profile(
    workdir: Path,
    part: c.Participant,
    pg_url: str | None,
    out_dir: Path,
    stamp: str,
    results: dict[str, Any],
) -> None:
    from bench import profile

    profile.profile(workdir, part, pg_url, out_dir, stamp, results)


def _saturation(results: dict[str, Any], store: str) -> float | None:
    for entry in results.get("throughput", []):
        if entry["store"] == store and entry["workflow"] == "bench-3" and entry["workers"] == 1:
            return float(entry["sagas_per_s"]["median"] or 0) or None
    return None


def _strip(value: Any) -> Any:
    """Drop raw sample lists (keys starting with '_') from what is written."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _write(out_dir: Path, stamp: str, results: dict[str, Any]) -> Path:
    path = out_dir / f"{stamp}.json"
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(_strip(results), indent=2, default=str))
    os.replace(tmp, path)
    # Samples for the latency plots, next to the figures.
    samples: dict[str, Any] = {}
    ov = results.get("overhead", {}).get("loads", {})
    for k, v in ov.items():
        samples[f"ours_{k}_gaps_ms"] = v.get("_gaps", [])
        samples[f"ours_{k}_calls_ms"] = v.get("_calls", [])
    peer = results.get("peer_dbos", {}).get("one_in_flight", {})
    if peer:
        samples["dbos_one_in_flight_gaps_ms"] = peer.get("_gaps", [])
    if samples:
        (out_dir / f"{stamp}.samples.json").write_text(json.dumps(samples))
    return path


if __name__ == "__main__":
    sys.exit(main())
