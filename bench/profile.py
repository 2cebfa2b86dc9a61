"""Profile of the main throughput path: py-spy records one `saga worker` (PostgreSQL, 3-step
sagas, saturated) and the self time per function is summarised; the flame graph is kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common as c
from bench.throughput import StoreTarget


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def profile(
    workdir: Path,
    part: c.Participant,
    pg_url: str | None,
    out_dir: Path,
    stamp: str,
    results: dict[str, Any],
) -> None:
    spy = _py_spy()
    res: dict[str, Any] = {}
    results["profile"] = res
    if not spy:
        res["error"] = "py-spy not installed (pip install py-spy)"
        c.log(f"  profile: {res['error']}")
        return
    store = "postgres" if pg_url else "sqlite"
    target = StoreTarget(store, workdir / "profile", pg_url)
    target.workdir.mkdir(parents=True, exist_ok=True)
    c.write_workflows(target.workdir / "workflows")
    target.fresh()
    part.reset()
    cfg = target.config(part.port, "profile")
    n = 9000
    target.seed(cfg, "bench-3", n)
    proc = c.start_worker(cfg, target.workdir / "worker.log")
    reader = target.reader()
    raw = target.workdir / "profile.txt"
    kept = out_dir / f"{stamp}.worker-profile.collapsed.txt"
    try:
        c.wait_until(
            lambda: sum(reader.counts().get(s, 0) for s in c.TERMINAL) >= 50, 60, what="worker busy"
        )
        secs = 6
        for fmt, dest in (("raw", raw),):
            r = subprocess.run(
                [
                    spy,
                    "record",
                    "-p",
                    str(proc.pid),
                    "-d",
                    str(secs),
                    "-r",
                    "200",
                    "-f",
                    fmt,
                    "-o",
                    str(dest),
                    "--nonblocking",
                    "--gil",
                ],
                capture_output=True,
                text=True,
                timeout=secs + 60,
            )
            if r.returncode != 0 or not dest.exists():
                res["error"] = f"py-spy failed: {(r.stderr or r.stdout)[-400:]}"
                c.log(f"  profile: {res['error']}")
                return
        done_at_end = sum(reader.counts().get(s, 0) for s in c.TERMINAL)
        res["sagas_done_while_recording"] = done_at_end
    finally:
        c.stop(proc)
        reader.close()
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [_name(f) for f in stack.split(";")]
        leaf[frames[-1]] += k
        for f in set(frames):
            inclusive[f] += k
    res["samples"] = total
    res["top"] = [(name, n / total) for name, n in leaf.most_common(40)] if total else []
    res["inclusive_top"] = (
        [(name, n / total) for name, n in inclusive.most_common(60)] if total else []
    )
    shutil.copy(raw, kept)
    res["svg"] = (
        f"{kept.name} (collapsed stacks in the results directory; open in speedscope or flamegraph.pl)"
    )
    c.log(f"  profile: {total} samples; top self time:")
    for name, share in res["top"][:12]:
        c.log(f"    {share:6.1%}  {name}")


def _name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; drop the line number.
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{func} ({path})" if path else func
