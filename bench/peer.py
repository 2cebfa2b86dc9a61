"""Figure 4 driver: runs `bench.dbos_peer` in child processes against its own database."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench import common as c


def _child(args: list[str], log_path: Path, timeout: float) -> dict[str, Any]:
    out_path = log_path.with_suffix(".json")
    with open(out_path, "wb") as out, open(log_path, "ab") as err:
        proc = subprocess.Popen(
            [c.PYTHON, "-m", "bench.dbos_peer", *args],
            cwd=c.ROOT,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        c._CHILDREN.append(proc)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            c.stop(proc)
    lines = [ln for ln in out_path.read_text().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"dbos peer produced no result; see {log_path}")
    return dict(json.loads(lines[-1]))


def dbos_peer(
    admin_url: str,
    workdir: Path,
    part: c.Participant,
    *,
    quick: bool,
    runs: int,
    results: dict[str, Any],
    db_suffix: str,
) -> None:
    res: dict[str, Any] = {}
    results["peer_dbos"] = res
    try:
        from importlib.metadata import version

        res["version"] = version("dbos")
    except Exception as exc:  # noqa: BLE001
        res["error"] = f"dbos is not installed: {exc}"
        c.log(f"  peer: {res['error']}")
        return
    n = 600 if quick else 2000
    concurrency = 100
    rates = []
    for i in range(runs):
        db = c.BenchDatabase(admin_url, f"saga_bench_dbos_{db_suffix}_{i}")
        try:
            part.reset()
            got = _child(
                [
                    "--db-url",
                    db.url,
                    "--port",
                    str(part.port),
                    "--mode",
                    "saturate",
                    "--n",
                    str(n),
                    "--concurrency",
                    str(concurrency),
                ],
                workdir / f"dbos-sat-{i}.log",
                timeout=300,
            )
            rates.append(c.steady_rate(got["ends"]))
        finally:
            db.drop()
    res["saturation"] = {
        "n": n,
        "concurrency": concurrency,
        "sagas_per_s": c.summary(rates),
        "steps_per_s": c.summary([3 * r for r in rates]),
    }
    c.log(
        f"  peer DBOS {res['version']} 3-step: {res['saturation']['sagas_per_s']['median']:.0f} sagas/s "
        f"({min(rates):.0f}..{max(rates):.0f}), {concurrency} client threads"
    )
    db = c.BenchDatabase(admin_url, f"saga_bench_dbos_{db_suffix}_single")
    try:
        part.reset()
        got = _child(
            [
                "--db-url",
                db.url,
                "--port",
                str(part.port),
                "--mode",
                "single",
                "--n",
                str(60 if quick else 200),
            ],
            workdir / "dbos-single.log",
            timeout=300,
        )
    finally:
        db.drop()
    res["one_in_flight"] = {
        "call": c.latency(got["calls_ms"]),
        "gap_between_steps": c.latency(got["gaps_ms"]),
        "workflow_wall": c.latency(got["wall_ms"]),
        "_gaps": got["gaps_ms"],
    }
    g = res["one_in_flight"]["gap_between_steps"]
    c.log(
        f"  peer DBOS one in flight: gap between steps p50 {g['p50_ms']:.2f} ms p99 {g['p99_ms']:.2f} ms"
    )
