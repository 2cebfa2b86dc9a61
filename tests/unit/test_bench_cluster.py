"""The durable-cluster benchmark figures without services: the pg_test_fsync and pgbench output
parsers, the /proc CPU arithmetic of a cluster's processes, and the scaling table's arithmetic.
"""

from __future__ import annotations

import pytest

from bench import cluster

PG_TEST_FSYNC = """\
1 second per test
O_DIRECT supported on this platform for open_datasync and open_sync.

Compare file sync methods using one 8kB write:
(in wal_sync_method preference order, except fdatasync is Linux's default)
        open_datasync                      9986.971 ops/sec     100 usecs/op
        fdatasync                         11024.515 ops/sec      91 usecs/op
        fsync                             11697.544 ops/sec      85 usecs/op
        fsync_writethrough                              n/a
        open_sync                         12458.253 ops/sec      80 usecs/op

Compare file sync methods using two 8kB writes:
(in wal_sync_method preference order, except fdatasync is Linux's default)
        open_datasync                      4709.543 ops/sec     212 usecs/op
        fdatasync                         10856.643 ops/sec      92 usecs/op
        fsync                              7856.529 ops/sec     127 usecs/op
        fsync_writethrough                              n/a
        open_sync                          3812.554 ops/sec     262 usecs/op

Compare open_sync with different write sizes:
(This is designed to compare the cost of writing 16kB in different write
open_sync sizes.)
         1 * 16kB open_sync write         11249.078 ops/sec      89 usecs/op
         2 *  8kB open_sync writes         6491.766 ops/sec     154 usecs/op
        16 *  1kB open_sync writes          725.302 ops/sec    1379 usecs/op

Test if fsync on non-write file descriptor is honored:
(If the times are similar, fsync() can sync data written on a different
descriptor.)
        write, fsync, close               10976.650 ops/sec      91 usecs/op
        write, close, fsync                8353.490 ops/sec     120 usecs/op

Non-sync'ed 8kB writes:
        write                           1196341.306 ops/sec       1 usecs/op
"""

PGBENCH = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
starting vacuum...end.
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 10
query mode: prepared
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 7305
number of failed transactions: 0 (0.000%)
latency average = 5.411 ms
initial connection time = 72.403 ms
tps = 1478.342136 (without initial connection time)
"""


def test_pg_test_fsync_sections_methods_and_na() -> None:
    got = cluster.parse_pg_test_fsync(PG_TEST_FSYNC)
    assert got["seconds_per_test"] == 1
    one = got["sections"][cluster.ONE_WRITE]
    assert one == {
        "open_datasync": 9986.971,
        "fdatasync": 11024.515,
        "fsync": 11697.544,
        "fsync_writethrough": None,
        "open_sync": 12458.253,
    }
    assert got["usecs_per_op"][cluster.ONE_WRITE]["fdatasync"] == 91
    sizes = got["sections"]["Compare open_sync with different write sizes"]
    assert sizes["2 * 8kB open_sync writes"] == 6491.766
    assert got["sections"]["Test if fsync on non-write file descriptor is honored"] == {
        "write, fsync, close": 10976.65,
        "write, close, fsync": 8353.49,
    }
    assert got["sections"]["Non-sync'ed 8kB writes"] == {"write": 1196341.306}
    assert cluster.fsync_rate(got, "fdatasync") == 11024.515
    assert cluster.fsync_rate(got, "fdatasync", cluster.TWO_WRITES) == 10856.643
    assert cluster.fsync_rate(got, "fsync_writethrough") is None
    assert cluster.fsync_rate(got, "no_such_method") is None


def test_pg_test_fsync_plural_seconds_and_empty() -> None:
    got = cluster.parse_pg_test_fsync(
        PG_TEST_FSYNC.replace("1 second per test", "5 seconds per test")
    )
    assert got["seconds_per_test"] == 5
    assert cluster.parse_pg_test_fsync("") == {
        "seconds_per_test": None,
        "sections": {},
        "usecs_per_op": {},
    }


def test_pgbench_summary() -> None:
    got = cluster.parse_pgbench(PGBENCH)
    assert got["tps"] == pytest.approx(1478.342136)
    assert got["latency_avg_ms"] == 5.411
    assert got["latency_stddev_ms"] is None
    assert got["transactions"] == 7305
    assert got["failed"] == 0
    assert got["initial_connection_ms"] == 72.403
    assert got["transaction_type"] == "<builtin: TPC-B (sort of)>"
    assert (got["scaling_factor"], got["clients"], got["threads"], got["duration_s"]) == (
        10,
        8,
        2,
        5,
    )
    assert got["query_mode"] == "prepared"


def test_pgbench_with_stddev_and_without_tps() -> None:
    text = PGBENCH.replace(
        "latency average = 5.411 ms\n", "latency average = 5.411 ms\nlatency stddev = 1.250 ms\n"
    )
    assert cluster.parse_pgbench(text)["latency_stddev_ms"] == 1.25
    with pytest.raises(ValueError, match="no tps line"):
        cluster.parse_pgbench("pgbench: error: connection to server failed\n")


def test_proc_stat_fields_after_a_command_with_spaces() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    fields = ["S", "41", "41", "41", "0", "-1", "4194560", "10", "0", "0", "0"]
    line = "123 (postgres: saga (x) idle) " + " ".join(fields) + " 250 50 700 100 20 0 1 0"
    ppid, own, children = cluster.parse_proc_stat(line)
    assert ppid == 41
    assert own == pytest.approx(300 / cluster._TICK)
    assert children == pytest.approx(800 / cluster._TICK)


def test_cluster_cpu_delta_counts_new_ended_and_excluded_processes() -> None:
    start = {"pm_self": 1.0, "pm_children": 10.0, "procs": {11: 2.0, 12: 5.0, 13: 0.5, 99: 7.0}}
    # 11 ran on (+1.5), 12 ended (its whole 6.0 s reaped into pm_children, 1.0 s of it new),
    # 13 ended too (0.5 s, none new), 14 started and used 0.25 s, 15 started and ended
    # (0.75 s reaped), 99 is the bench's own connection (+3.0, left out); postmaster +0.1.
    end = {
        "pm_self": 1.1,
        "pm_children": 10.0 + 6.0 + 0.5 + 0.75,
        "procs": {11: 3.5, 14: 0.25, 99: 10.0},
    }
    got = cluster.cluster_cpu_delta(start, end, exclude={99})
    assert got == pytest.approx(0.1 + 1.5 + 1.0 + 0.0 + 0.25 + 0.75)
    assert cluster.cluster_cpu_delta(start, start) == 0.0


def test_window_costs_per_step() -> None:
    a = {
        "t": 100.0,
        "commits": 10,
        "wal": [0, 0, 0, 0, 0, 0.0],
        "statements": [0.0, 0.0, 0, 0, 0.0],
        "cluster": {"pm_self": 0.0, "pm_children": 0.0, "procs": {1: 0.0}},
        "workers": [1.0, 2.0],
    }
    b = {
        "t": 102.0,
        "commits": 110,
        # records, fpi, bytes, writes, syncs, sync ms
        "wal": [5000, 20, 2_000_000, 60, 50, 100.0],
        # exec ms, plan ms, calls, wal bytes, io ms
        "statements": [150.0, 50.0, 200, 0, 4.0],
        "cluster": {"pm_self": 0.0, "pm_children": 0.0, "procs": {1: 0.3}},
        "workers": [1.5, 2.7],
    }
    got = cluster.window_costs(a, b, 1000, lsn_bytes=2_100_000.0, own=())
    assert got["statement_us_per_step"] == pytest.approx(200.0)
    assert got["statement_io_us_per_step"] == pytest.approx(4.0)
    assert got["wal_bytes_per_step"] == pytest.approx(2000.0)
    assert got["lsn_bytes_per_step"] == pytest.approx(2100.0)
    assert got["steps_per_wal_sync"] == pytest.approx(20.0)
    assert got["wal_sync_ms_per_sync"] == pytest.approx(2.0)
    assert got["wal_syncs_per_s"] == pytest.approx(25.0)
    assert got["commits_per_step"] == pytest.approx(0.1)
    assert got["pg_cpu_us_per_step"] == pytest.approx(300.0)
    assert got["pg_cores_busy"] == pytest.approx(0.15)
    assert got["worker_cpu_us_per_step"] == pytest.approx(1200.0)
    with pytest.raises(ValueError):
        cluster.window_costs(a, b, 0, lsn_bytes=0.0, own=())


def test_scaling_table_bounds_and_workers() -> None:
    rows = cluster.scaling_table(
        pg_cpu_us_per_step=140.0,
        pg_statement_us_per_step=200.0,
        wal_bytes_per_step=2000.0,
        fsync_per_s=10_000.0,
        steps_per_flush=20.0,
        steps_per_s_per_worker=1000.0,
        worker_cpu_us_per_step=350.0,
        cores=(2, 4, 32),
        efficiency=0.7,
        wal_bandwidth_mb_s=200.0,
    )
    two, four, many = rows
    # 2 cores × 0.7 / 140 µs = 10,000 steps/s; 200 MB/s / 2,000 B = 100,000; 10,000 × 20 = 200,000.
    assert two["cpu_bound_steps_per_s"] == pytest.approx(10_000.0)
    assert two["statement_bound_steps_per_s"] == pytest.approx(7_000.0)
    assert two["wal_bandwidth_bound_steps_per_s"] == pytest.approx(100_000.0)
    assert two["wal_flush_bound_steps_per_s"] == pytest.approx(200_000.0)
    assert (two["limited_by"], two["carried_steps_per_s"]) == ("cpu", pytest.approx(10_000.0))
    # Workers: 10,000 / 1,000 = 10 at the measured rate; at the CPU ceiling 0.7e6/350 = 2,000
    # steps/s per worker, 5.
    assert (two["workers_at_measured_rate"], two["workers_at_cpu_ceiling"]) == (10, 5)
    assert four["cpu_bound_steps_per_s"] == pytest.approx(20_000.0)
    assert four["workers_at_measured_rate"] == 20
    # 32 cores: CPU would give 160,000, the WAL bandwidth caps it at 100,000.
    assert many["limited_by"] == "wal_bandwidth"
    assert many["carried_steps_per_s"] == pytest.approx(100_000.0)
    assert many["workers_at_measured_rate"] == 100


def test_scaling_table_flush_bound_binds_and_missing_inputs() -> None:
    rows = cluster.scaling_table(
        pg_cpu_us_per_step=100.0,
        pg_statement_us_per_step=None,
        wal_bytes_per_step=1000.0,
        fsync_per_s=1000.0,
        steps_per_flush=5.0,
        steps_per_s_per_worker=None,
        worker_cpu_us_per_step=None,
        cores=(8,),
    )
    (row,) = rows
    assert row["limited_by"] == "wal_flush"
    assert row["carried_steps_per_s"] == pytest.approx(5000.0)
    assert row["statement_bound_steps_per_s"] is None
    assert row["workers_at_measured_rate"] is None and row["workers_at_cpu_ceiling"] is None
    # No flush figure: the flush bound is left out, not taken as zero.
    (row,) = cluster.scaling_table(
        pg_cpu_us_per_step=100.0,
        pg_statement_us_per_step=None,
        wal_bytes_per_step=1000.0,
        fsync_per_s=None,
        steps_per_flush=5.0,
        steps_per_s_per_worker=500.0,
        worker_cpu_us_per_step=None,
        cores=(2,),
    )
    assert row["wal_flush_bound_steps_per_s"] is None
    assert row["limited_by"] == "cpu"
    assert row["workers_at_measured_rate"] == 28  # ceil(14,000 / 500)
    with pytest.raises(ValueError):
        cluster.scaling_table(
            pg_cpu_us_per_step=0.0,
            pg_statement_us_per_step=None,
            wal_bytes_per_step=1000.0,
            fsync_per_s=None,
            steps_per_flush=None,
            steps_per_s_per_worker=None,
            worker_cpu_us_per_step=None,
        )


def test_report_sections_render_the_durable_figures() -> None:
    from bench import report

    parsed = cluster.parse_pg_test_fsync(PG_TEST_FSYNC)
    one = {"median": 9000.0, "min": 8000.0, "max": 9500.0, "runs": [9000.0]}
    lat = {"median": 0.9, "min": 0.8, "max": 1.0, "runs": [0.9]}
    steady = {
        "pg_cpu_us_per_step": 140.0,
        "statement_us_per_step": 200.0,
        "worker_cpu_us_per_step": 350.0,
        "pg_cores_busy": 0.3,
    }
    run = {
        "lsn_bytes_per_step": 2000.0,
        "steps_per_wal_sync": 20.0,
        "wal_sync_ms_per_sync": 2.0,
        "commits_per_step": 0.07,
    }
    table = cluster.scaling_table(
        pg_cpu_us_per_step=140.0,
        pg_statement_us_per_step=200.0,
        wal_bytes_per_step=2000.0,
        fsync_per_s=10_000.0,
        steps_per_flush=20.0,
        steps_per_s_per_worker=1000.0,
        worker_cpu_us_per_step=350.0,
    )
    inputs = {
        "pg_cpu_us_per_step": {"value": 140.0, "from": "steady window"},
        "statement_us_per_step": {"value": 200.0, "from": "steady window"},
        "worker_cpu_us_per_step": {"value": 350.0, "from": "steady window"},
        "wal_bytes_per_step": {"value": 2000.0, "from": "whole run"},
        "steps_per_wal_sync": {"value": 20.0, "from": "whole run"},
        "wal_sync_ms_per_sync": {"value": 2.0, "from": "whole run"},
        "commits_per_step": {"value": 0.07, "from": "whole run"},
        "fsync_per_s": {"value": 10_000.0, "from": "pg_test_fsync, fdatasync, one 8 kB write"},
    }
    res = {
        "pg_test_fsync": {
            "wal_sync_method": "fdatasync",
            "seconds_per_test": 1,
            "directory": "/var/lib/postgresql/15",
            "same_filesystem_as_data": True,
            "sections": parsed["sections"],
            "wal_sync_method_ops_per_s": cluster.fsync_rate(parsed, "fdatasync"),
        },
        "pgbench_durable": {
            "scale": 10,
            "seconds_per_run": 3,
            "runs": 1,
            "cases": {
                "insert_only": {
                    "clients": 8,
                    "options": "-n -f insert-only.sql",
                    "tps": one,
                    "latency_avg_ms": lat,
                }
            },
        },
        "scaling": {
            "workflow": "bench-3",
            "sagas_per_run": 1000,
            "workers": 2,
            "runs": [{"steps": 3000, "top_statements": []}],
            "assumptions": {"cpu_efficiency": 0.7, "wal_bandwidth_mb_s": 200.0},
            "median_steady": steady,
            "median_run": run,
            "inputs": inputs,
            "steps_per_s": 2000.0,
            "steps_per_s_per_worker": 1000.0,
            "table": table,
        },
    }
    lines: list[str] = []
    report._physical(res, lines.append)
    report._scaling(res, lines.append)
    text = "\n".join(lines)
    assert "| fdatasync ← wal_sync_method | 11,025 | 10,857 |" in text
    assert "| insert_only | `-n -f insert-only.sql` | 8 | **9,000** (8,000–9,500) |" in text
    assert "| 2 | 10,000 | 7,000 | 100,000 | 200,000 | **10,000** | cpu | 10 | 5 |" in text
    assert "| 32 | 160,000 | 112,000 | 100,000 | 200,000 | **100,000** | wal bandwidth |" in text
    assert "N × 0.7 ÷ PostgreSQL CPU per step (140 µs" in text
