"""`python -m bench [--quick] [--only NAME,...] [--clusters cpu-only,durable] [--out bench/results]`

Runs the benchmarks in one go on this machine, prints figures as it goes, writes
`<out>/<UTC timestamp>.json` and regenerates BENCHMARKS.md (with PNG plots in bench/plots/).
Needs the services of `scripts/services.sh up` (PostgreSQL "cpu-only": the test cluster, fsync
off; Kafka for the events figure) and `scripts/postgres.sh start-durable` (PostgreSQL
"durable": fsync, synchronous_commit and full_page_writes on, pg_stat_statements), which the
end-to-end, physical and scaling figures run on, and throughput, overhead and the peer on both.
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
    "e2e",
    "features",
    "throughput",
    "baselines",
    "physical",
    "scaling",
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
# --quick: about two minutes.
QUICK_FIGURES = ("e2e", "throughput", "physical", "scaling")
CLUSTERS = ("cpu-only", "durable")
# The durable cluster's run of figure 1 (the full run): the 3-step and the compensation
# workflow at 1, 2 and 4 workers; bench-1 and bench-10 run on the cpu-only cluster only.
DURABLE_WORKFLOWS = ["bench-3", "bench-comp-3"]


def _services_env() -> dict[str, str]:
    """.services/env (scripts/services.sh up) and .services/postgres-durable.env
    (scripts/postgres.sh start-durable); the caller's environment wins."""
    env: dict[str, str] = {}
    for name in ("env", "postgres-durable.env"):
        path = c.ROOT / ".services" / name
        if path.exists():
            for line in path.read_text().splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    k, v = line.split("=", 1)
                    env[k.strip()] = v.strip().strip("'\"")
    for k in (
        "SAGA_TEST_DATABASE_URL",
        "SAGA_TEST_KAFKA_BOOTSTRAP",
        "SAGA_BENCH_DURABLE_DATABASE_URL",
    ):
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env


def _answers(url: str | None) -> str | None:
    """`url` if a PostgreSQL answers there, else None."""
    if not url:
        return None
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return url
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        c.log(f"  (PostgreSQL at {url.split('@')[-1]} does not answer: {exc})")
        return None


def _optional(module: str, function: str) -> Any:
    """`bench.<module>.<function>`, or a RuntimeError that says which is missing."""
    import importlib

    try:
        mod = importlib.import_module(f"bench.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{module}":
            raise RuntimeError(f"bench/{module}.py is not there; figure not run") from exc
        raise
    fn = getattr(mod, function, None)
    if not callable(fn):
        raise RuntimeError(f"bench/{module}.py has no function {function}(); figure not run")
    return fn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument(
        "--quick", action="store_true", help=f"a ~2-minute subset: {', '.join(QUICK_FIGURES)}"
    )
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(FIGURES)}")
    ap.add_argument(
        "--clusters",
        default="",
        help="PostgreSQL clusters that throughput, overhead and peer run on: cpu-only (the test "
        "cluster, fsync off), durable (default: both; --quick: durable)",
    )
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
        selected = list(QUICK_FIGURES)
    clusters = [x.strip() for x in args.clusters.split(",") if x.strip()] or (
        ["durable"] if args.quick else list(CLUSTERS)
    )
    if set(clusters) - set(CLUSTERS):
        ap.error(
            f"unknown clusters {sorted(set(clusters) - set(CLUSTERS))}; choose from {CLUSTERS}"
        )

    # The children must not pick up a DATABASE_URL or CONFIG_PATH of the caller's shell.
    for key in ("DATABASE_URL", "CONFIG_PATH"):
        os.environ.pop(key, None)
    os.environ.setdefault("PYTHONPATH", str(c.ROOT))
    svc = _services_env()
    admin_url = svc.get("SAGA_TEST_DATABASE_URL")
    durable_admin = _answers(svc.get("SAGA_BENCH_DURABLE_DATABASE_URL"))
    kafka = svc.get("SAGA_TEST_KAFKA_BOOTSTRAP")
    if "durable" in clusters and not durable_admin:
        c.log(
            "  the durable cluster is not available (scripts/postgres.sh start-durable): "
            "throughput, overhead and peer run on the cpu-only cluster only"
        )
        clusters = [k for k in clusters if k != "durable"] or ["cpu-only"]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"saga-bench-{stamp}-"))
    runs = max(3, args.runs) if not args.quick else 3

    results: dict[str, Any] = {
        "started_at": stamp,
        "quick": args.quick,
        "figures_selected": selected,
        "settings": {
            "runs": runs,
            "workdir": str(workdir),
            "clusters": clusters,
            "cluster_names": {
                "cpu-only": "saga_test (scripts/postgres.sh start): fsync, synchronous_commit, "
                "full_page_writes off",
                "durable": "saga_durable (scripts/postgres.sh start-durable): PostgreSQL's "
                "durable defaults",
            },
        },
        "machine": c.machine(admin_url, kafka),
        "errors": {},
    }
    if durable_admin:
        from bench import cluster

        try:
            results["machine"]["postgres_durable"] = cluster.settings(durable_admin)
        except Exception as exc:  # noqa: BLE001
            results["machine"]["postgres_durable"] = {"error": f"{type(exc).__name__}: {exc}"}
    # The end-to-end figures run on the durable cluster; the test cluster stands in without it.
    e2e_admin = durable_admin or admin_url
    results["settings"]["e2e_cluster"] = (
        "durable"
        if durable_admin
        else "cpu-only (the durable cluster was not available: scripts/postgres.sh "
        "start-durable; these figures are not the durable case)"
        if admin_url
        else None
    )
    c.log(f"saga bench {'--quick ' if args.quick else ''}{stamp}: {', '.join(selected)}")
    c.log(
        f"  machine: {results['machine'].get('cpu_model')}, {results['machine'].get('cores')} cores, "
        f"{results['machine'].get('memory_gib')} GiB; PostgreSQL "
        f"{'yes' if admin_url else 'NOT AVAILABLE'}; durable PostgreSQL "
        f"{'yes' if durable_admin else 'NOT AVAILABLE'}; Kafka {kafka or 'NOT AVAILABLE'}; "
        f"throughput/overhead/peer on: {', '.join(clusters)}"
    )

    atexit.register(c.stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    db: c.BenchDatabase | None = None
    ddb: c.BenchDatabase | None = None
    t_start = time.monotonic()
    try:
        if admin_url:
            db = c.BenchDatabase(admin_url, f"saga_bench_{stamp.lower()}")
        if durable_admin and "durable" in clusters and {"throughput", "overhead"} & set(selected):
            ddb = c.BenchDatabase(durable_admin, f"saga_bench_{stamp.lower()}")
        pg_url = db.url if db else None
        durable_url = ddb.url if ddb else None
        on_cpu = "cpu-only" in clusters
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

            def need(url: str | None, what: str) -> str:
                if not url:
                    raise RuntimeError(f"{what} is not available")
                return url

            figure(
                "e2e",
                lambda: _optional("e2e", "e2e")(
                    workdir,
                    part,
                    pg_admin_url=e2e_admin,
                    quick=args.quick,
                    runs=runs,
                    results=results,
                    db_suffix=stamp.lower(),
                ),
            )
            figure(
                "features",
                lambda: _optional("e2e", "feature_cost")(
                    workdir,
                    part,
                    pg_admin_url=e2e_admin,
                    quick=args.quick,
                    runs=runs,
                    results=results,
                    db_suffix=stamp.lower(),
                ),
            )

            def tp_cpu() -> None:
                c.log(
                    "  on the cpu-only cluster (fsync off), and SQLite:"
                    if pg_url
                    else "  SQLite (no PostgreSQL):"
                )
                try:
                    throughput.throughput(
                        workdir, part, pg_url, quick=args.quick, runs=runs, results=results
                    )
                finally:
                    _label(results.get("throughput", []), "cpu-only")

            def tp_durable() -> None:
                c.log("  on the durable cluster (fsync on):")
                entries = results.setdefault("throughput_durable", [])
                try:
                    throughput.throughput(
                        _sub(workdir, "durable"),
                        part,
                        durable_url,
                        quick=args.quick,
                        runs=runs,
                        results={"throughput": entries},
                        stores=["postgres"],
                        workflows=None if args.quick else DURABLE_WORKFLOWS,
                    )
                finally:
                    _label(entries, "durable")

            figure(
                "throughput",
                lambda: _each(
                    [("cpu-only", tp_cpu if on_cpu else None)]
                    + [("durable", tp_durable if durable_url else None)]
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
            figure(
                "physical",
                lambda: _mod("cluster").physical(
                    need(durable_admin, "the durable cluster (scripts/postgres.sh start-durable)"),
                    workdir,
                    quick=args.quick,
                    runs=runs,
                    results=results,
                    db_suffix=stamp.lower(),
                ),
            )
            figure(
                "scaling",
                lambda: _mod("cluster").scaling(
                    need(durable_admin, "the durable cluster (scripts/postgres.sh start-durable)"),
                    _sub(workdir, "scaling"),
                    part,
                    quick=args.quick,
                    runs=runs,
                    results=results,
                    db_suffix=stamp.lower(),
                ),
            )

            def ov_cpu() -> None:
                c.log("  on the cpu-only cluster (fsync off):")
                try:
                    throughput.overhead(
                        workdir,
                        part,
                        pg_url,
                        quick=args.quick,
                        results=results,
                        saturation_sagas_per_s=_saturation(
                            results.get("throughput", []), "postgres" if pg_url else "sqlite"
                        ),
                    )
                finally:
                    if "overhead" in results:
                        results["overhead"]["cluster"] = "cpu-only" if pg_url else None

            def ov_durable() -> None:
                c.log("  on the durable cluster (fsync on):")
                got: dict[str, Any] = {}
                try:
                    throughput.overhead(
                        _sub(workdir, "durable"),
                        part,
                        durable_url,
                        quick=args.quick,
                        results=got,
                        saturation_sagas_per_s=_saturation(
                            results.get("throughput_durable", []), "postgres"
                        ),
                    )
                finally:
                    if "overhead" in got:
                        results["overhead_durable"] = {**got["overhead"], "cluster": "durable"}

            figure(
                "overhead",
                lambda: _each(
                    [("cpu-only", ov_cpu if on_cpu else None)]
                    + [("durable", ov_durable if durable_url else None)]
                ),
            )

            def peer_on(name: str, url: str, key: str) -> None:
                from bench import peer

                c.log(f"  on the {name} cluster:")
                got: dict[str, Any] = {}
                try:
                    peer.dbos_peer(
                        url,
                        _sub(workdir, f"peer-{name}"),
                        part,
                        quick=args.quick,
                        runs=runs,
                        results=got,
                        db_suffix=stamp.lower(),
                    )
                finally:
                    if "peer_dbos" in got:
                        results[key] = {**got["peer_dbos"], "cluster": name}

            cpu_admin = admin_url if on_cpu else None
            dur_admin = durable_admin if "durable" in clusters else None
            if cpu_admin or dur_admin:
                figure(
                    "peer",
                    lambda: _each(
                        [
                            (
                                "cpu-only",
                                (lambda: peer_on("cpu-only", cpu_admin, "peer_dbos"))
                                if cpu_admin
                                else None,
                            ),
                            (
                                "durable",
                                (lambda: peer_on("durable", dur_admin, "peer_dbos_durable"))
                                if dur_admin
                                else None,
                            ),
                        ]
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
        if ddb is not None:
            ddb.drop()
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


def _each(parts: list[tuple[str, Any]]) -> None:
    """Run each cluster's part of a figure; one failing does not stop the others, and the
    figure's error names every part that failed."""
    failed = []
    for name, fn in parts:
        if fn is None:
            continue
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - go on with the other cluster
            c.log(f"  ({name} FAILED: {type(exc).__name__}: {exc})")
            traceback.print_exc()
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    if failed:
        raise RuntimeError("; ".join(failed))


def _sub(workdir: Path, name: str) -> Path:
    path = workdir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _label(entries: list[dict[str, Any]], cluster: str) -> None:
    """Name the PostgreSQL cluster of each throughput entry (SQLite entries have none)."""
    for entry in entries:
        entry.setdefault("cluster", cluster if entry.get("store") == "postgres" else None)


def _saturation(entries: list[dict[str, Any]], store: str) -> float | None:
    for entry in entries:
        if entry["store"] == store and entry["workflow"] == "bench-3" and entry["workers"] == 1:
            return float(entry["sagas_per_s"]["median"] or 0) or None
    return None


def _write(out_dir: Path, stamp: str, results: dict[str, Any]) -> Path:
    path = out_dir / f"{stamp}.json"
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(c.strip_samples(results), indent=2, default=str))
    os.replace(tmp, path)
    # Samples for the latency plots, next to the figures.
    samples: dict[str, Any] = {}
    for key, tag in (("overhead", ""), ("overhead_durable", "durable_")):
        for k, v in results.get(key, {}).get("loads", {}).items():
            samples[f"ours_{tag}{k}_gaps_ms"] = v.get("_gaps", [])
            samples[f"ours_{tag}{k}_calls_ms"] = v.get("_calls", [])
    for key, tag in (("peer_dbos", ""), ("peer_dbos_durable", "durable_")):
        peer = results.get(key, {}).get("one_in_flight", {})
        if peer:
            samples[f"dbos_{tag}one_in_flight_gaps_ms"] = peer.get("_gaps", [])
    if samples:
        (out_dir / f"{stamp}.samples.json").write_text(json.dumps(samples))
    return path


if __name__ == "__main__":
    sys.exit(main())
