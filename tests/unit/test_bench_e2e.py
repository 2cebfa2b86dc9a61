"""The end-to-end benchmark's report (ratios ours ÷ peer, goals marked, a peer that could not
run shown as "—") and its pure helpers (/proc parsing, timestamps, the peer's binary check)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench import common as c
from bench import e2e, report_e2e


def _s(*values: float) -> dict[str, Any]:
    return c.summary(values)


def _case(
    server: str,
    store: str,
    *,
    completed: float,
    starts: float,
    p99: float,
    one_p50: float,
    cpu: float,
    pss: float,
    failures: int = 0,
) -> dict[str, Any]:
    sat = {
        "completed_per_s": _s(completed),
        "starts_per_s": _s(starts),
        "start_p50_ms": _s(p99 / 4),
        "start_p99_ms": _s(p99),
        "server_cpu_ms_per_saga": _s(cpu),
        "postgres_cpu_ms_per_saga": _s(1.0) if store == "postgres" else _s(),
        "bench_cpu_ms_per_saga": _s(0.3),
        "pss_mib": _s(pss),
        "server_processes": 4 if server == "ours" else 1,
        "failures": failures,
        "not_completed": 0,
        "n": 1500,
    }
    return {
        "server": server,
        "store": store,
        "error": None,
        "rest": sat,
        "grpc": dict(sat),
        "one_in_flight": {"p50_ms": _s(one_p50), "p99_ms": _s(one_p50 * 3), "failures": 0},
    }


def _results(*, peer: bool = True, fsync: str = "on") -> dict[str, Any]:
    cases = {
        "ours_postgres": _case(
            "ours", "postgres", completed=400, starts=600, p99=80, one_p50=10, cpu=2.5, pss=240
        ),
        "ours_sqlite": _case(
            "ours", "sqlite", completed=450, starts=700, p99=40, one_p50=12, cpu=3.5, pss=250
        ),
    }
    skipped = None
    if peer:
        cases["peer_postgres"] = _case(
            "peer", "postgres", completed=160, starts=200, p99=250, one_p50=12, cpu=2.0, pss=16
        )
        cases["peer_memory"] = _case(
            "peer", "memory", completed=600, starts=1300, p99=44, one_p50=3, cpu=0.5, pss=38
        )
    else:
        skipped = "the peer's binary /x/k1s0-saga-server does not exist\n\t(checked)"
        for key, store in (("peer_postgres", "postgres"), ("peer_memory", "memory")):
            cases[key] = {"server": "peer", "store": store, "error": f"skipped: {skipped}"}
    return {
        "e2e": {
            "method": "METHOD TEXT",
            "peer": {"binary": "/x/k1s0-saga-server", "skipped": skipped},
            "postgres": {"settings": {"fsync": fsync, "synchronous_commit": "on"}},
            "cases": cases,
        }
    }


def _row(lines: list[str], label: str, after: str | None = None) -> list[str]:
    """The cells of the first table row starting with `label` (after the line `after`)."""
    start = lines.index(after) if after else 0
    for line in lines[start:]:
        if line.startswith(f"| {label} |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row {label!r} in {lines}")


PG = "### On PostgreSQL (each server on a database of its own)"
EMBEDDED = "### Embedded: ours on SQLite, the peer in memory"


def test_report_ratios_and_goals_on_postgres() -> None:
    lines = report_e2e.sections(_results())
    row = _row(lines, "completed sagas/s (REST start)", PG)
    assert row[1:4] == ["**400**", "**160**", "2.50"]
    assert row[5] == "met"  # 2.5 × the peer's
    row = _row(lines, "one saga in flight, start → COMPLETED p50 ms", PG)
    assert row[1:4] == ["**10.0**", "**12.0**", "0.83"]
    assert row[5] == "met"
    row = _row(lines, "server CPU ms per completed saga", PG)
    assert row[3] == "1.25" and row[5] == "met"  # 2.5 ms ≤ 3 ms
    assert "METHOD TEXT" in "\n".join(lines)
    assert not any("not durable" in line for line in lines)


def test_report_goals_not_met_and_embedded_absolute_goals() -> None:
    res = _results()
    res["e2e"]["cases"]["ours_postgres"]["rest"]["completed_per_s"] = _s(300)  # 1.875 × peer
    lines = report_e2e.sections(res)
    assert _row(lines, "completed sagas/s (REST start)", PG)[5] == "**not met**"
    # Embedded: 450/s < 500/s, p99 40 ms ≤ 50 ms, one in flight 12 ms > 10 ms.
    assert _row(lines, "completed sagas/s (REST start)", EMBEDDED)[5] == "**not met**"
    assert _row(lines, "completed sagas/s (REST start)", EMBEDDED)[3] == "0.75"
    assert _row(lines, "start latency p99 ms (REST)", EMBEDDED)[5] == "met"
    assert _row(lines, "one saga in flight, start → COMPLETED p50 ms", EMBEDDED)[5] == (
        "**not met**"
    )


def test_report_flags_failures_and_a_cluster_that_is_not_durable() -> None:
    res = _results(fsync="off")
    res["e2e"]["cases"]["ours_sqlite"]["rest"]["failures"] = 3
    lines = report_e2e.sections(res)
    assert any("fsync off" in line and "not durable" in line for line in lines)
    assert "(fsync off: not durable)" in _row(lines, "completed sagas/s (REST start)", PG)[4]
    failures = _row(lines, "failures / not completed (REST · gRPC · one in flight)", EMBEDDED)
    assert failures[1].startswith("3 / 0") and failures[5] == "**not met**"
    failures = _row(lines, "failures / not completed (REST · gRPC · one in flight)", PG)
    assert failures[5] == "met"


def test_report_without_the_peer_says_why_once_and_shows_dashes() -> None:
    lines = report_e2e.sections(_results(peer=False))
    why = [line for line in lines if "does not exist" in line]
    assert len(why) == 1 and why[0].startswith("- The peer was not run:")
    assert why[0].endswith("does not exist (checked).")  # one line, whatever the reason's
    for section in (PG, EMBEDDED):
        row = _row(lines, "completed sagas/s (REST start)", section)
        assert row[2] == "—" and row[3] == "—"
    # Goals against the peer cannot be judged; absolute ones still are.
    assert _row(lines, "completed sagas/s (REST start)", PG)[5] == "—"
    assert _row(lines, "server CPU ms per completed saga", PG)[5] == "met"
    assert _row(lines, "start latency p99 ms (REST)", EMBEDDED)[5] == "met"


def test_feature_cost_table_ratios_and_tolerance() -> None:
    runs = [{"spans_received": 4200}]
    res = {
        "feature_cost": {
            "features": {"inputs": "with inputs", "tracing": "with tracing"},
            "method": "FEATURE METHOD",
            "results": {
                "plain": {"completed_per_s": _s(200), "one_in_flight_p50_ms": _s(20)},
                "inputs": {"completed_per_s": _s(190), "one_in_flight_p50_ms": _s(23)},
                "tracing": {
                    "completed_per_s": _s(170),
                    "one_in_flight_p50_ms": _s(21),
                    "runs": runs,
                },
            },
        }
    }
    lines = report_e2e.sections(res)
    inputs = [line for line in lines if line.startswith("| inputs |")]
    assert inputs[0].endswith("| **200** | **190** | 0.950 | yes |")
    assert inputs[1].endswith("| **20.0** | **23.0** | 1.150 | **no** |")
    tracing = [line for line in lines if line.startswith("| tracing |")]
    assert tracing[0].endswith("| 0.850 | **no** |")
    assert tracing[1].endswith("| 1.050 | yes |")
    assert any("spans received per run: 4,200" in line for line in lines)
    skipped = report_e2e.sections({"feature_cost": {"error": "skipped: no PostgreSQL admin URL"}})
    assert any("Not measured: skipped: no PostgreSQL admin URL" in line for line in skipped)


def test_report_leaves_out_what_was_not_run() -> None:
    assert report_e2e.sections({}) == []


SMAPS_ROLLUP = """\
55d0c7a4e000-7ffd5a1f1000 ---p 00000000 00:00 0                          [rollup]
Rss:              262144 kB
Pss:              131072 kB
Pss_Dirty:         65536 kB
Pss_Anon:         100000 kB
Pss_File:          31072 kB
Pss_Shmem:             0 kB
Shared_Clean:      12000 kB
"""


def test_pss_is_read_from_the_pss_line_only() -> None:
    assert e2e.pss_kib(SMAPS_ROLLUP) == 131072
    try:
        e2e.pss_kib("Rss: 10 kB\n")
    except ValueError:
        pass
    else:
        raise AssertionError("a text without Pss: must not parse")


def test_stat_line_with_spaces_and_parentheses_in_the_name() -> None:
    fields = ["S", "41", "40"] + ["0"] * 8 + ["150", "50", "7", "3"] + ["0"] * 30
    text = "42 (gunicorn: worker (saga)) " + " ".join(fields)
    assert e2e.parse_stat(text) == ("gunicorn: worker (saga)", 41, 40, 200, 10)


def test_timestamps_of_both_servers() -> None:
    ours = e2e.parse_ts("2026-02-20T10:30:05.123Z")
    peer = e2e.parse_ts("2026-02-20T10:30:05.123456789+00:00")
    assert abs(peer - ours - 0.000456789) < 1e-6
    assert e2e.parse_ts("2026-02-20T11:30:05+01:00") == e2e.parse_ts("2026-02-20T10:30:05Z")


def _elf(machine: int) -> bytes:
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[4], head[5] = 2, 1  # 64-bit, little-endian
    head[18:20] = machine.to_bytes(2, "little")
    return bytes(head)


def test_peer_binary_problems(tmp_path: Path) -> None:
    path = tmp_path / "k1s0-saga-server"
    assert "does not exist" in (e2e.peer_problem(path) or "")
    path.write_bytes(_elf(0x3E))
    assert "not executable" in (e2e.peer_problem(path) or "")
    os.chmod(path, 0o755)
    assert e2e.peer_problem(path, machine="x86_64") is None
    assert e2e.peer_problem(path, machine="amd64") is None
    assert "built for x86_64, this machine is aarch64" in (
        e2e.peer_problem(path, machine="aarch64") or ""
    )
    path.write_bytes(b"#!/bin/sh\necho not a binary\n")
    assert "not an ELF executable" in (e2e.peer_problem(path) or "")


def test_retention_active_share() -> None:
    assert e2e.active_share([(0.0, 5000), (0.5, 2000), (1.0, 0), (2.0, 0)]) == 0.5
    assert e2e.active_share([(0.0, 5000), (1.0, 10)]) == 1.0
    assert e2e.active_share([(0.0, 0), (1.0, 0)]) == 0.0
    assert e2e.active_share([(0.0, 10)]) is None


def test_quick_sizes_are_smaller() -> None:
    quick, full = e2e.sizes(True), e2e.sizes(False)
    assert full["saturation"] == 1500 and full["one_in_flight"] == 200
    assert all(quick[k] < full[k] for k in full)
