"""Figure 4, the peer: DBOS Transact running the same 3-step workflow, each step a gRPC JSON
call to the same participant process, with its system database on the same PostgreSQL.

Run as its own process by `bench.peer` (DBOS keeps global state), it prints one JSON line.

- saturation: `--n` workflows run by `--concurrency` client threads, each calling the
  workflow function directly (DBOS checkpoints the workflow start, every step's output and the
  end in its system database, exactly as in production use); sagas/s over the whole batch.
- one in flight: workflows run one after another; inside the workflow each step's call
  start/end is recorded, giving per step `call` (the gRPC call inside the step) and `gap`
  (end of step k's call .. start of step k+1's call: DBOS's checkpoint of step k and the
  dispatch of step k+1) — the same two figures as ours.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from typing import Any

import grpc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=("saturate", "single"), required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=100)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)

    from dbos import DBOS, DBOSConfig

    channel = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    calls = {
        i: channel.unary_unary(
            f"/Bench/Step{i}", request_serializer=None, response_deserializer=None
        )
        for i in range(3)
    }
    marks: dict[str, list[tuple[int, float, float]]] = {}
    marks_lock = threading.Lock()

    @DBOS.step()
    def call_step(index: int, payload: dict[str, Any]) -> dict[str, Any]:
        wid = DBOS.workflow_id or ""
        t0 = time.time()
        reply = calls[index](
            json.dumps(payload, separators=(",", ":")).encode(),
            timeout=30,
            metadata=(("idempotency-key", f"{wid}:{index}:EXECUTE"),),
        )
        out = json.loads(reply)
        t1 = time.time()
        with marks_lock:
            marks.setdefault(wid, []).append((index, t0, t1))
        return out

    @DBOS.workflow()
    def three_steps(payload: dict[str, Any]) -> dict[str, Any]:
        result = payload
        for i in range(3):
            result = call_step(i, payload)
        return result

    config: DBOSConfig = {
        "name": "saga-bench-peer",
        "system_database_url": args.db_url,
        "sys_db_pool_size": max(20, args.concurrency + 5),
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    payload = {"order_id": "bench", "amount": 42}
    try:
        three_steps(payload)  # warm-up
        marks.clear()
        if args.mode == "single":
            walls = []
            for _ in range(args.n):
                t0 = time.time()
                three_steps(payload)
                walls.append(time.time() - t0)
            calls_ms, gaps_ms = [], []
            for steps in marks.values():
                steps.sort()
                for k, (_i, s, e) in enumerate(steps):
                    calls_ms.append((e - s) * 1000)
                    if k:
                        gaps_ms.append((s - steps[k - 1][2]) * 1000)
            print(
                json.dumps(
                    {
                        "mode": "single",
                        "n": args.n,
                        "calls_ms": calls_ms,
                        "gaps_ms": gaps_ms,
                        "wall_ms": [w * 1000 for w in walls],
                    }
                )
            )
        else:
            counter = [0]
            lock = threading.Lock()
            ends: list[float] = []

            def worker() -> None:
                while True:
                    with lock:
                        if counter[0] >= args.n:
                            return
                        counter[0] += 1
                    three_steps(payload)
                    with lock:
                        ends.append(time.time())

            threads = [
                threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)
            ]
            t0 = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            wall = time.time() - t0
            ends.sort()
            print(
                json.dumps(
                    {
                        "mode": "saturate",
                        "n": args.n,
                        "concurrency": args.concurrency,
                        "wall_s": wall,
                        "ends": ends,
                        "t0": t0,
                    }
                )
            )
    finally:
        DBOS.destroy()
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
