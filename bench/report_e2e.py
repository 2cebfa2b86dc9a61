"""Markdown sections of the end-to-end figure (`results["e2e"]`, ours ÷ the peer) and of the
feature cost (`results["feature_cost"]`), both filled by bench/e2e.py.

`sections(results)` returns the lines; it reads only the results dict, so a stored JSON file
renders the same. A peer that could not run is one line saying why, and "—" in its column.
"""

from __future__ import annotations

from typing import Any

# Goals of the end-to-end figure. PostgreSQL (durable): ours against the peer, and CPU;
# embedded: ours on SQLite alone.
GOAL_PG_COMPLETED_RATIO = 2.0  # ours completed sagas/s ≥ 2 × the peer's
GOAL_PG_CPU_MS = 3.0  # server CPU ms per completed saga
GOAL_SQLITE_COMPLETED = 500.0  # completed sagas/s
GOAL_SQLITE_START_P99_MS = 50.0
GOAL_SQLITE_ONE_P50_MS = 10.0
FEATURE_TOLERANCE = 0.10  # a feature costs "within 10%" of plain

DASH = "—"


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return DASH
    return f"{v:,.{digits}f}"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _med(s: Any) -> float | None:
    if isinstance(s, dict):
        v = s.get("median")
        return float(v) if v is not None else None
    return None


def _cell(s: Any, digits: int = 0) -> str:
    """**median** (min–max) of a summary; the median alone when there was one run."""
    m = _med(s)
    if m is None:
        return DASH
    lo, hi = s.get("min"), s.get("max")
    if lo is None or hi is None or len(s.get("runs") or []) < 2:
        return f"**{_num(m, digits)}**"
    return f"**{_num(m, digits)}** ({_num(lo, digits)}–{_num(hi, digits)})"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def mark(ok: bool | None) -> str:
    return DASH if ok is None else ("met" if ok else "**not met**")


def _at_least(v: float | None, target: float | None) -> bool | None:
    return None if v is None or target is None else v >= target


def _at_most(v: float | None, target: float | None) -> bool | None:
    return None if v is None or target is None else v <= target


def _case(e2e: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The case's figures, None when it did not run (skipped, failed, or absent)."""
    case = (e2e.get("cases") or {}).get(key)
    if not case or case.get("error"):
        return None
    return case


def _get(case: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = case
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


_Row = tuple[str, tuple[str, ...], int, bool]  # label, path to a summary, digits, lower is better


def _rows(pg: bool) -> list[_Row]:
    rows: list[_Row] = [
        ("completed sagas/s (REST start)", ("rest", "completed_per_s"), 0, False),
        ("completed sagas/s (gRPC start)", ("grpc", "completed_per_s"), 0, False),
        ("start requests/s (REST)", ("rest", "starts_per_s"), 0, False),
        ("start latency p50 ms (REST)", ("rest", "start_p50_ms"), 1, True),
        ("start latency p99 ms (REST)", ("rest", "start_p99_ms"), 1, True),
        ("one saga in flight, start → COMPLETED p50 ms", ("one_in_flight", "p50_ms"), 1, True),
        ("one saga in flight, start → COMPLETED p99 ms", ("one_in_flight", "p99_ms"), 1, True),
        ("server CPU ms per completed saga", ("rest", "server_cpu_ms_per_saga"), 2, True),
    ]
    if pg:
        rows.append(
            ("PostgreSQL CPU ms per completed saga", ("rest", "postgres_cpu_ms_per_saga"), 2, True)
        )
    rows += [
        ("load generator CPU ms per saga", ("rest", "bench_cpu_ms_per_saga"), 2, True),
        ("PSS MiB, all server processes", ("rest", "pss_mib"), 0, True),
    ]
    return rows


def _goals(
    pg: bool, ours: dict[str, Any] | None, peer: dict[str, Any] | None, durable: bool | None
) -> dict[str, tuple[str, bool | None]]:
    """Row label -> (goal text, met?) for the rows that have a goal."""

    def m(path: tuple[str, ...], case: dict[str, Any] | None) -> float | None:
        return _med(_get(case, *path))

    out: dict[str, tuple[str, bool | None]] = {}
    if pg:
        note = "" if durable in (True, None) else " (fsync off: not durable)"
        ours_c, peer_c = m(("rest", "completed_per_s"), ours), m(("rest", "completed_per_s"), peer)
        out["completed sagas/s (REST start)"] = (
            f"≥ {GOAL_PG_COMPLETED_RATIO:g}× peer{note}",
            _at_least(ratio(ours_c, peer_c), GOAL_PG_COMPLETED_RATIO),
        )
        out["one saga in flight, start → COMPLETED p50 ms"] = (
            f"≤ peer{note}",
            _at_most(m(("one_in_flight", "p50_ms"), ours), m(("one_in_flight", "p50_ms"), peer)),
        )
        out["server CPU ms per completed saga"] = (
            f"≤ {GOAL_PG_CPU_MS:g} ms{note}",
            _at_most(m(("rest", "server_cpu_ms_per_saga"), ours), GOAL_PG_CPU_MS),
        )
    else:
        out["completed sagas/s (REST start)"] = (
            f"≥ {GOAL_SQLITE_COMPLETED:,.0f}/s",
            _at_least(m(("rest", "completed_per_s"), ours), GOAL_SQLITE_COMPLETED),
        )
        out["start latency p99 ms (REST)"] = (
            f"≤ {GOAL_SQLITE_START_P99_MS:g} ms",
            _at_most(m(("rest", "start_p99_ms"), ours), GOAL_SQLITE_START_P99_MS),
        )
        out["one saga in flight, start → COMPLETED p50 ms"] = (
            f"≤ {GOAL_SQLITE_ONE_P50_MS:g} ms",
            _at_most(m(("one_in_flight", "p50_ms"), ours), GOAL_SQLITE_ONE_P50_MS),
        )
    return out


def _counts(case: dict[str, Any] | None) -> str:
    if case is None:
        return DASH
    parts = []
    for via in ("rest", "grpc"):
        sat = case.get(via) or {}
        if "failures" in sat:
            parts.append(f"{sat['failures']} / {sat['not_completed']}")
    oif = case.get("one_in_flight") or {}
    if "failures" in oif:
        parts.append(str(oif["failures"]))
    return " · ".join(parts) if parts else DASH


def _table(
    e2e: dict[str, Any], ours_key: str, peer_key: str, pg: bool, durable: bool | None
) -> list[str]:
    ours, peer = _case(e2e, ours_key), _case(e2e, peer_key)
    goals = _goals(pg, ours, peer, durable)
    lines = [
        "| | ours | peer | ours ÷ peer | goal | |",
        "|---|---:|---:|---:|---|---|",
    ]
    for label, path, digits, _lower in _rows(pg):
        a, b = _get(ours, *path), _get(peer, *path)
        r = ratio(_med(a), _med(b))
        goal, ok = goals.get(label, ("", None))
        lines.append(
            f"| {label} | {_cell(a, digits)} | {_cell(b, digits)} | {_num(r, 2)} | {goal} | "
            f"{mark(ok) if goal else ''} |"
        )
    procs = [_get(x, "rest", "server_processes") for x in (ours, peer)]
    lines.append(f"| server processes | {_num(procs[0])} | {_num(procs[1])} | | | |")
    ran = [x for x in (ours, peer) if x is not None]
    ok = not any(_bad_counts(x) for x in ran) if ran else None
    lines.append(
        f"| failures / not completed (REST · gRPC · one in flight) | {_counts(ours)} | "
        f"{_counts(peer)} | | 0 | {mark(ok)} |"
    )
    return lines


def _bad_counts(case: dict[str, Any]) -> bool:
    total = 0
    for via in ("rest", "grpc"):
        sat = case.get(via) or {}
        total += int(sat.get("failures") or 0) + int(sat.get("not_completed") or 0)
    total += int((case.get("one_in_flight") or {}).get("failures") or 0)
    return total > 0


_NAMES = {
    "ours_sqlite": "ours on SQLite",
    "peer_memory": "the peer in memory",
    "ours_postgres": "ours on PostgreSQL",
    "peer_postgres": "the peer on PostgreSQL",
}


def _problems(e2e: dict[str, Any]) -> list[str]:
    out = []
    skipped = (e2e.get("peer") or {}).get("skipped")
    if skipped:
        out.append(f"The peer was not run: {_one_line(skipped)}.")
    for key, name in _NAMES.items():
        case = (e2e.get("cases") or {}).get(key) or {}
        err = case.get("error")
        if err and not (skipped and key.startswith("peer") and str(err).startswith("skipped")):
            out.append(f"{name[0].upper()}{name[1:]}: not measured ({_one_line(err)}).")
        elif (case.get("grpc") or {}).get("error"):
            out.append(
                f"{name[0].upper()}{name[1:]}, gRPC start: {_one_line(case['grpc']['error'])}."
            )
        for e in case.get("round_errors") or []:
            if e != err:
                out.append(f"{name[0].upper()}{name[1:]}, a round failed: {_one_line(e)}.")
    return out


def _durable(e2e: dict[str, Any]) -> bool | None:
    settings = (e2e.get("postgres") or {}).get("settings") or {}
    if "fsync" not in settings:
        return None
    return settings.get("fsync") == "on" and settings.get("synchronous_commit", "on") != "off"


def e2e_lines(results: dict[str, Any]) -> list[str]:
    e2e = results.get("e2e")
    if not e2e:
        return []
    durable = _durable(e2e)
    settings = (e2e.get("postgres") or {}).get("settings") or {}
    lines = ["## End to end: sagas started through the API and waited for, ours ÷ the peer", ""]
    lines += [f"- {p}" for p in _problems(e2e)]
    if settings:
        lines.append(
            f"- PostgreSQL {settings.get('server_version', '')}: fsync {settings.get('fsync')}, "
            f"synchronous_commit {settings.get('synchronous_commit')}"
            + ("" if durable else " — not durable; the PostgreSQL goals are for a durable one")
        )
    if lines[-1] != "":
        lines.append("")
    lines += ["### On PostgreSQL (each server on a database of its own)", ""]
    lines += _table(e2e, "ours_postgres", "peer_postgres", True, durable)
    lines += ["", "### Embedded: ours on SQLite, the peer in memory", ""]
    lines += _table(e2e, "ours_sqlite", "peer_memory", False, None)
    lines += [
        "",
        "Ratios are ours ÷ peer of the medians: above 1 is better for sagas/s and requests/s, "
        "below 1 is better for latencies, CPU and memory.",
        "",
    ]
    if e2e.get("method"):
        lines += [f"Method: {e2e['method']}", ""]
    return lines


def _within(r: float | None, lower_is_better: bool) -> bool | None:
    if r is None:
        return None
    return r <= 1 + FEATURE_TOLERANCE if lower_is_better else r >= 1 - FEATURE_TOLERANCE


def _yes(ok: bool | None) -> str:
    return DASH if ok is None else ("yes" if ok else "**no**")


def feature_lines(results: dict[str, Any]) -> list[str]:
    fc = results.get("feature_cost")
    if not fc:
        return []
    lines = ["## Cost of this wave's features, end to end (ours on PostgreSQL)", ""]
    if fc.get("error"):
        return [*lines, f"Not measured: {_one_line(fc['error'])}.", ""]
    res = fc.get("results") or {}
    plain = res.get("plain") or {}
    lines += [
        "| feature | figure | plain | with the feature | ratio | within 10%? |",
        "|---|---|---:|---:|---:|---|",
    ]
    figures: list[tuple[str, str, int, bool]] = [
        ("completed sagas/s", "completed_per_s", 0, False),
        ("one in flight p50 ms", "one_in_flight_p50_ms", 1, True),
    ]
    notes = []
    for feature, what in (fc.get("features") or {}).items():
        entry = res.get(feature) or {}
        for label, key, digits, lower in figures:
            r = ratio(_med(entry.get(key)), _med(plain.get(key)))
            lines.append(
                f"| {feature} | {label} | {_cell(plain.get(key), digits)} | "
                f"{_cell(entry.get(key), digits)} | {_num(r, 3)} | {_yes(_within(r, lower))} |"
            )
        notes.append(f"- {feature}: {what}{_feature_note(feature, entry)}")
        for e in entry.get("errors") or []:
            notes.append(f"  - a run failed: {_one_line(e)}")
        if entry.get("failures") or entry.get("not_completed"):
            notes.append(
                f"  - failures {entry.get('failures')}, not completed {entry.get('not_completed')}"
            )
    lines += ["", *notes, ""]
    if fc.get("method"):
        lines += [f"Method: {fc['method']}", ""]
    return lines


def _feature_note(feature: str, entry: dict[str, Any]) -> str:
    runs = [r for r in entry.get("runs") or [] if not r.get("error")]
    if not runs:
        return ""
    if feature == "tracing":
        spans = [r.get("spans_received") for r in runs]
        return f"; spans received per run: {', '.join(_num(s) for s in spans)}"
    if feature == "retention":
        shares = [r.get("retention_active_share") for r in runs]
        return (
            "; still deleting during "
            + ", ".join(DASH if s is None else f"{100 * s:.0f}%" for s in shares)
            + " of each saturation run"
        )
    return ""


def sections(results: dict[str, Any]) -> list[str]:
    """The Markdown lines of both sections (either is left out when it was not run)."""
    return e2e_lines(results) + feature_lines(results)
