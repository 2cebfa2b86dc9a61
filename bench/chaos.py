"""`python -m bench.chaos [--minutes M] [--seed S] [--out DIR]`: a chaos run with real processes.

The scaled-out topology of the README on loopback — a PostgreSQL and a Kafka broker of the
run's own (bench/chaos_services.py), 2 REST API processes (gunicorn, `saga.execute: false`),
3 `saga worker` processes and one participant process that records every idempotency key it
applies — runs for a bounded time while a load generator starts sagas through REST (forward,
compensating, cancelled) and a seeded fault schedule SIGKILLs workers, SIGSTOPs one past its
lease, restarts PostgreSQL, stops and restarts the broker and SIGKILLs API processes. Then the
faults stop, the sagas drain, and the promises of saga.invariants are checked from
outside (REST, the participant's record, the topic). It prints the figures, writes
`<out>/chaos-<UTC stamp>.json` and regenerates RELIABILITY.md. It is a measurement, not a test:
it never fails on a figure (exit status 0 unless the run itself could not be carried out).

Everything started here is stopped in a `finally` (process groups; stopped workers are
continued first), also on Ctrl-C and SIGTERM. This package must never import from `tests/`.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import requests
import yaml

from bench import chaos_invariants as inv
from bench import common as c
from bench.chaos_services import PrivateKafka, PrivatePostgres, free_port
from saga.invariants import END_EVENT
from saga.model import SagaStatus
from saga.workflow import parse_workflow

# The participant server the run starts (its one mention: a rename is a one-line change here).
PARTICIPANT_MODULE = "workers.scripted_participants"
CONTROL_CALLS = "/participant.Control/Calls"

WORKFLOW = "chaos-order"
SERVICE = "chaos-service"
STEPS = 4
TOPIC = "k1s0.system.saga.events.v1"
WORKERS = 3
APIS = 2
# Participant behaviour: every step and compensation takes a while (so kills, pauses and cancels
# land mid-call); the first call of each saga's step 0 fails UNAVAILABLE (retried); step k fails
# for good (FAILED_PRECONDITION) when the payload says `fail_at: k`.
STEP_SLEEP_MS = (150, 400, 250, 300)
UNDO_SLEEP_MS = (60, 120, 80, 100)


def behaviour() -> dict[str, Any]:
    """The participant's behaviour document (see PARTICIPANT_MODULE's docstring)."""
    rules: dict[str, Any] = {
        "Chaos.Step0": {"fail_times": 1, "fail": "UNAVAILABLE", "sleep_ms": STEP_SLEEP_MS[0]}
    }
    for i in range(1, STEPS):
        rules[f"Chaos.Step{i}"] = {
            "fail_if_payload": {"field": "fail_at", "equals": i},
            "fail": "FAILED_PRECONDITION",
            "message": f"chaos: step {i} fails for this saga",
            "sleep_ms": STEP_SLEEP_MS[i],
        }
    for i in range(STEPS):
        rules[f"Chaos.Undo{i}"] = {"sleep_ms": UNDO_SLEEP_MS[i]}
    return rules


FAILURES_BEFORE_APPLY = {"/Chaos/Step0": 1}

# Fault kinds, as printed.
FAULTS = {
    "worker_sigkill": "SIGKILL a worker (restarted)",
    "worker_sigstop": "SIGSTOP a worker past its lease (then SIGCONT)",
    "postgres_restart": "restart PostgreSQL",
    "broker_stop": "stop the Kafka broker (started again)",
    "api_sigkill": "SIGKILL an API process (gunicorn respawns it)",
}
# Load mix: forward sagas complete, compensating ones fail at a step, cancelled ones get a cancel.
MIX = (("forward", 0.5), ("compensating", 0.3), ("cancelled", 0.2))


def log(msg: str) -> None:
    c.log(msg)


# --------------------------------------------------------------------------- topology


def workflow_yaml() -> str:
    """The chaos workflow: STEPS steps, each with a compensation, short fixed retries."""
    steps = [
        {
            "name": f"step-{i}",
            "service": SERVICE,
            "method": f"Chaos.Step{i}",
            "compensate": f"Chaos.Undo{i}",
            "timeout_secs": 10,
            "retry": {"max_attempts": 5, "backoff": "fixed", "initial_interval_ms": 200},
        }
        for i in range(STEPS)
    ]
    return yaml.safe_dump({"name": WORKFLOW, "steps": steps}, sort_keys=False)


def write_workflow(directory: Path) -> Path:
    """Write the chaos workflow where every process of the run loads it from; the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{WORKFLOW}.yaml").write_text(workflow_yaml())
    return directory


def write_config(
    path: Path,
    *,
    pg: PrivatePostgres,
    kafka: PrivateKafka,
    participant_port: int,
    workflow_dir: Path,
    lease_secs: float,
    execute: bool,
    port: int = 0,
) -> Path:
    """A config file for one process of the topology."""
    doc: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port or free_port(), "workers": 1, "threads": 8},
        "grpc": {"host": "127.0.0.1", "port": free_port()},
        "database": {
            "host": "127.0.0.1",
            "port": pg.port,
            "name": "saga_chaos",
            "user": "saga",
            "password": "",
        },
        "kafka": {"brokers": [kafka.bootstrap], "topics": {"publish": TOPIC}},
        "services": {SERVICE: {"host": "127.0.0.1", "port": participant_port}},
        "saga": {
            "execute": execute,
            "workflow_dir": str(workflow_dir),
            "lease_secs": lease_secs,
            "claim_interval_ms": 100,
            "max_concurrent": 50,
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Topology:
    """The processes of the run and the faults that can be done to them."""

    def __init__(self, workdir: Path, lease_secs: float) -> None:
        self.workdir = workdir
        self.lease_secs = lease_secs
        self.lock = threading.Lock()
        self.pg: PrivatePostgres | None = None
        self.kafka: PrivateKafka | None = None
        self.participant: Any = None
        self.participant_port = 0
        self.apis: list[Any] = []
        self.api_ports: list[int] = []
        self.workers: list[Any] = [None] * WORKERS
        self.stopped: set[int] = set()  # workers under SIGSTOP
        self.worker_config: Path | None = None

    # -- start

    def start(self) -> None:
        """PostgreSQL, Kafka, the participant, the schema, the API processes and the workers."""
        self.pg = PrivatePostgres()
        self.pg.start()
        from workers.adapters.store.migrate import migrate_postgres

        migrate_postgres(self.pg.url)
        self.kafka = PrivateKafka()
        self.kafka.start()
        self._start_participant()
        workflow_dir = write_workflow(self.workdir / "workflows")
        self.worker_config = write_config(
            self.workdir / "worker.yaml",
            pg=self.pg,
            kafka=self.kafka,
            participant_port=self.participant_port,
            workflow_dir=workflow_dir,
            lease_secs=self.lease_secs,
            execute=True,
        )
        for i in range(APIS):
            port = free_port()
            config = write_config(
                self.workdir / f"api-{i}.yaml",
                pg=self.pg,
                kafka=self.kafka,
                participant_port=self.participant_port,
                workflow_dir=workflow_dir,
                lease_secs=self.lease_secs,
                execute=False,
                port=port,
            )
            self.api_ports.append(port)
            self.apis.append(
                c.spawn(
                    [
                        c.PYTHON,
                        "-m",
                        "gunicorn",
                        "-c",
                        str(c.ROOT / "saga_http" / "gunicorn.conf.py"),
                        "saga_http.wsgi:app",
                    ],
                    log_path=self.workdir / f"api-{i}.log",
                    env={"CONFIG_PATH": str(config), "SAGA_LOG_FORMAT": "json"},
                )
            )
        for i in range(WORKERS):
            self.start_worker(i)

    def _start_participant(self) -> None:
        port_file = self.workdir / "participant.port"
        self.participant = c.spawn(
            [
                c.PYTHON,
                "-m",
                PARTICIPANT_MODULE,
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--behaviour",
                json.dumps(behaviour()),
            ],
            log_path=self.workdir / "participant.log",
        )
        c.wait_until(
            lambda: port_file.exists() or self.participant.poll() is not None,
            30,
            what="the participant's port",
        )
        if self.participant.poll() is not None:
            raise RuntimeError(f"the participant died at start; see {self.workdir}/participant.log")
        self.participant_port = int(port_file.read_text())

    def start_worker(self, i: int) -> None:
        """Start worker `i` (again)."""
        assert self.worker_config is not None
        with self.lock:
            self.workers[i] = c.start_worker(self.worker_config, self.workdir / f"worker-{i}.log")

    def wait_ready(self, rest: Rest, timeout: float = 120) -> None:
        """Until both APIs answer /readyz and every worker has said it executes sagas."""
        for url in rest.urls:

            def ready(url: str = url) -> bool:
                try:
                    return requests.get(f"{url}/readyz", timeout=2).status_code == 200
                except requests.RequestException:
                    return False

            c.wait_until(ready, timeout, interval=0.25, what=f"{url}/readyz")
        for i in range(WORKERS):
            path = self.workdir / f"worker-{i}.log"
            c.wait_until(
                lambda path=path: path.exists() and "executing sagas" in path.read_text(),
                timeout,
                interval=0.25,
                what=f"worker-{i} to execute sagas",
            )

    # -- faults

    def live_workers(self) -> list[int]:
        with self.lock:
            return [
                i
                for i, p in enumerate(self.workers)
                if p is not None and p.poll() is None and i not in self.stopped
            ]

    def kill_worker(self, i: int) -> None:
        with self.lock:
            proc = self.workers[i]
            self.workers[i] = None
        c.kill9(proc)
        c.stop(proc)  # reaps it and forgets it

    def stop_worker(self, i: int) -> None:
        with self.lock:
            os.killpg(self.workers[i].pid, signal.SIGSTOP)
            self.stopped.add(i)

    def cont_worker(self, i: int) -> None:
        with self.lock:
            if i in self.stopped:
                with suppress(ProcessLookupError):
                    os.killpg(self.workers[i].pid, signal.SIGCONT)
                self.stopped.discard(i)

    def kill_api(self, i: int) -> int | None:
        """SIGKILL the gunicorn worker of API `i` (the master forks a new one); its pid."""
        master = self.apis[i].pid
        try:
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            return None
        if not children:
            return None
        pid = int(children[0])
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    # -- stop

    def close(self) -> None:
        """Stop everything this topology started (continuing stopped workers first)."""
        for i in list(self.stopped):
            self.cont_worker(i)
        procs = [p for p in (*self.apis, *self.workers) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            c.stop(proc, timeout=20)
        if self.participant is not None:
            c.stop(self.participant)
        if self.kafka is not None:
            self.kafka.close()
        if self.pg is not None:
            self.pg.stop()


# --------------------------------------------------------------------------- REST client


class Rest:
    """The two API processes; a request that gets no answer is retried on the other one."""

    def __init__(self, ports: list[int]) -> None:
        self.urls = [f"http://127.0.0.1:{p}" for p in ports]
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _send(self, method: str, path: str, turn: int, **kw: Any) -> requests.Response:
        url = self.urls[turn % len(self.urls)]
        return self._session().request(method, url + path, timeout=10, **kw)

    def start(
        self, body: dict[str, Any], key: str, turn: int, stop: threading.Event, budget: float
    ) -> tuple[str | None, int, str]:
        """POST a saga with an Idempotency-Key until an API acknowledges it; (saga_id or None,
        attempts, the acknowledging answer or the last error)."""
        deadline = time.monotonic() + budget
        attempt, error, delay = 0, "", 0.1
        while time.monotonic() < deadline and not stop.is_set():
            attempt += 1
            try:
                r = self._send(
                    "POST",
                    "/api/v1/sagas",
                    turn + attempt,
                    json=body,
                    headers={"Idempotency-Key": key},
                )
                if r.status_code in (200, 201):
                    api = (turn + attempt) % len(self.urls)
                    return str(r.json()["saga_id"]), attempt, f"HTTP {r.status_code} from api-{api}"
                error = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code < 500:
                    return None, attempt, error  # a refusal, not an outage: do not insist
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}"
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        return None, attempt, error or "stopped"

    def cancel(
        self, saga_id: str, turn: int, stop: threading.Event, budget: float = 30.0
    ) -> list[str]:
        """POST a cancel until an API answers it (not 5xx); every answer, in order."""
        answers: list[str] = []
        deadline = time.monotonic() + budget
        delay = 0.1
        while time.monotonic() < deadline and not stop.is_set():
            try:
                r = self._send("POST", f"/api/v1/sagas/{saga_id}/cancel", turn + len(answers))
                answers.append(str(r.status_code))
                if r.status_code < 500:
                    return answers
            except requests.RequestException as exc:
                answers.append(f"error: {type(exc).__name__}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        return answers

    def get(self, saga_id: str, turn: int) -> tuple[int, dict[str, Any] | None]:
        """GET one saga (status code, detail); (0, None) when no API answers."""
        for attempt in range(4):
            try:
                r = self._send("GET", f"/api/v1/sagas/{saga_id}", turn + attempt)
                if r.status_code == 200:
                    return 200, r.json()
                if r.status_code == 404:
                    return 404, None
            except requests.RequestException:
                pass
            time.sleep(0.2)
        return 0, None


# --------------------------------------------------------------------------- load


class Load:
    """Starts sagas at a steady rate through REST; cancels the `cancelled` ones after a delay."""

    def __init__(self, rest: Rest, rng: random.Random, rate: float, max_sagas: int) -> None:
        self.rest = rest
        self.rng = rng
        self.rate = rate
        self.max_sagas = max_sagas
        self.run_id = uuid.uuid4().hex[:8]
        self.sagas: dict[str, inv.ClientSaga] = {}
        self.unacknowledged: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="chaos-load")
        self.submitted = 0

    def run(self, seconds: float) -> None:
        """Start sagas for `seconds` (or until max_sagas, or stop); returns when the last
        start was submitted."""
        t0 = time.monotonic()
        n = 0
        while not self.stop.is_set() and n < self.max_sagas:
            due = t0 + n / self.rate
            if due - t0 >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                break
            kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
            fail_at = self.rng.randrange(1, STEPS) if kind == "compensating" else None
            cancel_after = self.rng.uniform(0.0, 2.5) if kind == "cancelled" else None
            self.pool.submit(self._one, n, kind, fail_at, cancel_after)
            n += 1
        self.submitted = n

    def _one(self, n: int, kind: str, fail_at: int | None, cancel_after: float | None) -> None:
        payload: dict[str, Any] = {"n": n, "kind": kind}
        if fail_at is not None:
            payload["fail_at"] = fail_at
        body = {"workflow_name": WORKFLOW, "payload": payload, "correlation_id": f"chaos-{n}"}
        try:
            saga_id, attempts, error = self.rest.start(
                body, f"chaos-{self.run_id}-{n}", n, self.stop, budget=60.0
            )
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            saga_id, attempts, error = None, 0, f"{type(exc).__name__}: {exc}"
        if saga_id is None:
            with self.lock:
                self.unacknowledged.append(
                    {"n": n, "kind": kind, "attempts": attempts, "error": error}
                )
            return
        client = inv.ClientSaga(saga_id, n, kind, fail_at, time.time(), start_answer=error)
        client.start_attempts = attempts
        with self.lock:
            self.sagas[saga_id] = client
        if cancel_after is None or self.stop.wait(cancel_after):
            return
        client.cancel_sent_at = time.time()
        client.cancel_answers = self.rest.cancel(saga_id, n, self.stop)

    def finish(self) -> None:
        """Wait for the starts and cancels in flight."""
        self.pool.shutdown(wait=True)


# --------------------------------------------------------------------------- faults


class Faults(threading.Thread):
    """Carries out a seeded fault schedule on the topology; every fault's recovery (restart,
    SIGCONT, broker start) is scheduled with it and done at the latest when the faults end."""

    def __init__(self, topo: Topology, rng: random.Random, seconds: float) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        self.topo = topo
        self.rng = rng
        self.seconds = seconds
        self.plan = self._plan()
        self.done: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.skipped: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self._heap: list[tuple[float, int, str, Callable[[], None]]] = []
        self._seq = 0
        self._broker_thread: threading.Thread | None = None
        self.t0 = 0.0

    def _plan(self) -> list[tuple[float, str]]:
        """(seconds from the start, kind): every kind once in a random order, then a random
        kind at a time, 4-10 s apart, none in the last 5 s."""
        plan: list[tuple[float, str]] = []
        at = self.rng.uniform(3.0, 6.0)
        cycle: list[str] = []
        first = True
        while at < self.seconds - 5.0:
            if not cycle:
                cycle = list(FAULTS) if first else []
                self.rng.shuffle(cycle)
                first = False
            kind = cycle.pop() if cycle else self.rng.choice(list(FAULTS))
            plan.append((round(at, 2), kind))
            at += self.rng.uniform(4.0, 10.0)
        return plan

    def _schedule(self, at: float, what: str, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, what, fn))

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> None:
        self.t0 = time.monotonic()
        for at, kind in self.plan:
            self._schedule(at, kind, lambda kind=kind: self._inject(kind))
        while self._heap and not self.halt.is_set():
            at, _, what, fn = self._heap[0]
            if at > self.seconds:
                break  # only recoveries can be due this late; finish() does them now
            if self.halt.wait(max(0.0, at - self._now())):
                break
            heapq.heappop(self._heap)
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - recorded, the schedule goes on
                self.errors.append(f"{what} at {self._now():.1f}s: {type(exc).__name__}: {exc}")
                log(f"  fault {what} failed: {type(exc).__name__}: {exc}")

    def finish(self) -> None:
        """Stop injecting; carry out every pending recovery now; return when all is back up."""
        self.halt.set()
        self.join(60)
        while self._heap:
            _, _, what, fn = heapq.heappop(self._heap)
            if what.startswith("recover"):
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(f"{what} at the end: {type(exc).__name__}: {exc}")
        if self._broker_thread is not None:
            self._broker_thread.join(180)
        kafka = self.topo.kafka
        if kafka is not None and not kafka.running:
            kafka.start()
        for i in range(WORKERS):
            if self.topo.workers[i] is None:
                self.topo.start_worker(i)
            self.topo.cont_worker(i)

    def _record(self, kind: str, target: str, **detail: Any) -> dict[str, Any]:
        fault = {
            "kind": kind,
            "target": target,
            "at": time.time(),
            "offset_s": round(self._now(), 2),
        }
        fault.update(detail)
        self.done.append(fault)
        return fault

    def _skip(self, kind: str, why: str) -> None:
        self.skipped.append({"kind": kind, "offset_s": round(self._now(), 2), "why": why})
        log(f"[{self._now():6.1f}s] skip {kind}: {why}")

    def _recover_at(self, delay: float, what: str, fn: Callable[[], None]) -> None:
        self._schedule(self._now() + delay, f"recover {what}", fn)

    def _inject(self, kind: str) -> None:
        rng, topo = self.rng, self.topo
        if kind in ("worker_sigkill", "worker_sigstop"):
            live = topo.live_workers()
            if len(live) <= 1:  # keep one worker driving sagas
                self._skip(kind, f"only {len(live)} worker running")
                return
            i = rng.choice(live)
            if kind == "worker_sigkill":
                down = round(rng.uniform(0.5, 3.0), 2)
                topo.kill_worker(i)
                fault = self._record(kind, f"worker-{i}", down_s=down)
                log(f"[{self._now():6.1f}s] SIGKILL worker-{i} (restart in {down:.1f}s)")

                def restart(i: int = i, fault: dict[str, Any] = fault) -> None:
                    topo.start_worker(i)
                    fault["until"] = time.time()

                self._recover_at(down, f"worker-{i}", restart)
            else:
                pause = round(topo.lease_secs * rng.uniform(1.5, 3.0), 2)
                topo.stop_worker(i)
                fault = self._record(kind, f"worker-{i}", paused_s=pause)
                log(
                    f"[{self._now():6.1f}s] SIGSTOP worker-{i} for {pause:.1f}s (lease {topo.lease_secs:g}s)"
                )

                def cont(i: int = i, fault: dict[str, Any] = fault) -> None:
                    topo.cont_worker(i)
                    fault["until"] = time.time()

                self._recover_at(pause, f"worker-{i}", cont)
        elif kind == "postgres_restart":
            assert topo.pg is not None
            mode = rng.choice(["fast", "immediate"])
            fault = self._record(kind, f"-m {mode}")
            t = time.monotonic()
            topo.pg.restart(mode)
            fault["until"] = time.time()
            fault["took_s"] = round(time.monotonic() - t, 2)
            log(f"[{self._now():6.1f}s] PostgreSQL restarted (-m {mode}, {fault['took_s']:.1f}s)")
        elif kind == "broker_stop":
            kafka = topo.kafka
            assert kafka is not None
            if not kafka.running or (self._broker_thread and self._broker_thread.is_alive()):
                self._skip(kind, "the broker is already down")
                return
            down = round(rng.uniform(5.0, 15.0), 2)
            kafka.stop()
            fault = self._record(kind, "broker", down_s=down)
            log(f"[{self._now():6.1f}s] broker stopped (start again in {down:.1f}s)")

            def start_broker(fault: dict[str, Any] = fault) -> None:
                def run() -> None:
                    try:
                        took = kafka.start()
                    except Exception as exc:  # noqa: BLE001 - finish() tries again
                        self.errors.append(f"broker start: {type(exc).__name__}: {exc}")
                        return
                    fault["until"] = time.time()
                    fault["start_took_s"] = round(took, 2)
                    log(f"[{self._now():6.1f}s] broker serving again ({took:.1f}s to start)")

                self._broker_thread = threading.Thread(target=run, name="chaos-broker", daemon=True)
                self._broker_thread.start()

            self._recover_at(down, "broker", start_broker)
        elif kind == "api_sigkill":
            i = rng.randrange(APIS)
            pid = topo.kill_api(i)
            self._record(kind, f"api-{i}", pid=pid)
            log(f"[{self._now():6.1f}s] SIGKILL api-{i} gunicorn worker (pid {pid})")


# --------------------------------------------------------------------------- after the run


def drain(
    rest: Rest, sagas: dict[str, inv.ClientSaga], timeout: float
) -> tuple[dict[str, Any], float]:
    """Poll every saga until all are terminal (or `timeout`; a saga REST has not found for 30 s
    is not waited for); (saga_id -> last seen detail, None for a 404, and the seconds until the
    last saga became terminal)."""
    t0 = time.monotonic()
    seen: dict[str, Any] = {}
    pending = set(sagas)
    not_found_since: dict[str, float] = {}
    last_terminal = 0.0
    last_print = 0.0
    while True:
        for turn, saga_id in enumerate(sorted(pending)):
            code, detail = rest.get(saga_id, turn)
            if code == 200 and detail is not None:
                seen[saga_id] = detail
                not_found_since.pop(saga_id, None)
                if detail["saga"]["status"] in inv.TERMINAL:
                    pending.discard(saga_id)
                    last_terminal = time.monotonic() - t0
            elif code == 404:
                seen[saga_id] = None
                not_found_since.setdefault(saga_id, time.monotonic())
        elapsed = time.monotonic() - t0
        gone = {s for s, at in not_found_since.items() if time.monotonic() - at > 30}
        if not (pending - gone) or elapsed > timeout:
            return seen, (last_terminal if not (pending - gone) else elapsed)
        if elapsed - last_print > 10:
            last_print = elapsed
            log(f"  draining: {len(pending)} not terminal after {elapsed:.0f}s")
        time.sleep(0.5)


def read_topic(
    bootstrap: str, rest_seen: dict[str, Any], timeout: float
) -> tuple[list[dict[str, Any]], float]:
    """Every record of the events topic from the beginning, until each terminal saga's final
    event is there (or `timeout`); (records in offset order, seconds it took)."""
    from kafka import KafkaConsumer, TopicPartition

    final = {
        sid: END_EVENT[SagaStatus(d["saga"]["status"])].value
        for sid, d in rest_seen.items()
        if d is not None and d["saga"]["status"] in inv.TERMINAL
    }
    t0 = time.monotonic()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
        request_timeout_ms=30000,
    )
    records: list[dict[str, Any]] = []
    try:
        parts = None
        while parts is None and time.monotonic() - t0 < timeout:
            consumer.topics()  # refresh metadata
            parts = consumer.partitions_for_topic(TOPIC)
            if parts is None:
                time.sleep(0.5)
        if parts is None:
            return records, time.monotonic() - t0
        tps = [TopicPartition(TOPIC, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        missing = dict(final)
        while time.monotonic() - t0 < timeout:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            for tp_records in batch.values():
                for m in tp_records:
                    try:
                        value: Any = json.loads(m.value)
                    except (TypeError, ValueError):
                        value = None
                    key = m.key.decode("utf-8", "replace") if m.key else None
                    records.append(
                        {"key": key, "value": value, "partition": m.partition, "offset": m.offset}
                    )
                    if isinstance(value, dict) and missing.get(
                        str(value.get("saga_id"))
                    ) == value.get("event_type"):
                        missing.pop(str(value["saga_id"]))
            if not missing and not batch:
                break
        took = time.monotonic() - t0
    finally:
        consumer.close()
    records.sort(key=lambda r: (r["partition"], r["offset"]))
    return records, took


def participant_record(port: int) -> dict[str, Any]:
    """The participant's record: every call and how many times each key was applied."""
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 512 * 1024 * 1024)]
    )
    try:
        call = channel.unary_unary(
            CONTROL_CALLS, request_serializer=None, response_deserializer=None
        )
        return dict(json.loads(call(b"{}", timeout=120)))
    finally:
        channel.close()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long faults and load go on")
    ap.add_argument(
        "--seed", type=int, default=1, help="seed of the fault schedule and the load mix"
    )
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results"), help="results directory")
    ap.add_argument("--rate", type=float, default=4.0, help="sagas started per second")
    ap.add_argument("--max-sagas", type=int, default=20000, help="bound on sagas started")
    ap.add_argument(
        "--lease-secs", type=float, default=3.0, help="saga.lease_secs of every process"
    )
    ap.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds to wait for the drain"
    )
    ap.add_argument("--report", default=str(c.ROOT / "RELIABILITY.md"), help="report to regenerate")
    ap.add_argument("--no-report", action="store_true", help="do not regenerate the report")
    ap.add_argument(
        "--keep-logs", action="store_true", help="keep the process logs even when clean"
    )
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.lease_secs <= 0:
        ap.error("--minutes, --rate and --lease-secs must be > 0")

    # The children must not pick up a DATABASE_URL or CONFIG_PATH of the caller's shell.
    for key in ("DATABASE_URL", "CONFIG_PATH"):
        os.environ.pop(key, None)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(c.ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl-C stops the run even when started from a shell that ignores SIGINT for its jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    seconds = args.minutes * 60.0
    workdir = Path(tempfile.mkdtemp(prefix=f"saga-chaos-{stamp}-"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fault_rng = random.Random(args.seed)
    load_rng = random.Random(f"{args.seed}-load")
    topo = Topology(workdir, args.lease_secs)
    load: Load | None = None
    faults: Faults | None = None
    results: dict[str, Any] = {
        "kind": "chaos",
        "started_at": stamp,
        "settings": {
            "minutes": args.minutes,
            "seed": args.seed,
            "rate_per_s": args.rate,
            "lease_secs": args.lease_secs,
            "workers": WORKERS,
            "api_processes": APIS,
            "steps": STEPS,
            "mix": dict(MIX),
            "participant": f"python -m {PARTICIPANT_MODULE}",
            "behaviour": behaviour(),
            "drain_timeout_s": args.drain_timeout,
        },
        "code": _code(),
    }
    log(
        f"saga chaos {stamp}: {args.minutes:g} min, seed {args.seed}, {args.rate:g} sagas/s, "
        f"lease {args.lease_secs:g}s, {WORKERS} workers, {APIS} API processes (logs: {workdir})"
    )
    clean = False
    t_start = time.monotonic()
    try:
        topo.start()
        assert topo.pg is not None and topo.kafka is not None
        results["machine"] = c.machine(topo.pg.url, topo.kafka.bootstrap)
        rest = Rest(topo.api_ports)
        topo.wait_ready(rest)
        log(
            f"  topology up in {time.monotonic() - t_start:.0f}s; faults and load for {seconds:.0f}s"
        )
        load = Load(rest, load_rng, args.rate, args.max_sagas)
        faults = Faults(topo, fault_rng, seconds)
        results["fault_plan"] = [{"offset_s": at, "kind": kind} for at, kind in faults.plan]
        faults.start()
        load.run(seconds)
        load.finish()
        faults.finish()
        t_quiet = time.monotonic()
        log(
            f"  faults over: {len(faults.done)} injected; {len(load.sagas)} sagas started; "
            f"draining (timeout {args.drain_timeout:.0f}s)"
        )
        rest_seen, drain_s = drain(rest, load.sagas, args.drain_timeout)
        events, _ = read_topic(
            topo.kafka.bootstrap, rest_seen, timeout=max(60.0, args.drain_timeout / 2)
        )
        events_s = time.monotonic() - t_quiet
        time.sleep(1.0)  # calls of a deposed executor still in flight land in the record
        record = participant_record(topo.participant_port)
        observed = inv.Observed(
            sagas=load.sagas,
            rest=rest_seen,
            calls=record.get("calls", []),
            applied=record.get("applied", {}),
            events=events,
            workflow=parse_workflow(workflow_yaml()),
            failures_before_apply=FAILURES_BEFORE_APPLY,
            faults=faults.done,
        )
        figures = inv.check(observed)
        results.update(
            _summarise(load, faults, rest_seen, events, record, figures, drain_s, events_s)
        )
        clean = inv.violations(figures) == 0
        # Everything observed, beside the process logs, for whoever looks into a figure.
        (workdir / "observed.json").write_text(
            json.dumps(
                {
                    "sagas": {k: asdict(v) for k, v in load.sagas.items()},
                    "rest": rest_seen,
                    "participant": record,
                    "events": events,
                    "faults": faults.done,
                },
                default=str,
            )
        )
    except BaseException as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, KeyboardInterrupt | SystemExit):
            traceback.print_exc()
        raise
    finally:
        if load is not None:
            load.stop.set()
        if faults is not None:
            faults.halt.set()
        log("  stopping every process of the run")
        try:
            topo.close()
        finally:
            c.stop_all()
            results["total_s"] = round(time.monotonic() - t_start, 1)
            path = _write(out_dir, stamp, results)
            log(f"results: {path}")
            if clean and not args.keep_logs:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                results["logs"] = str(workdir)
                log(f"process logs kept in {workdir}")
    _print(results)
    if not args.no_report and "figures" in results:
        from bench import chaos_report

        log(f"report: {chaos_report.write(path, Path(args.report))}")
    return 0


def _summarise(
    load: Load,
    faults: Faults,
    rest_seen: dict[str, Any],
    events: list[dict[str, Any]],
    record: dict[str, Any],
    figures: dict[str, inv.Figure],
    drain_s: float,
    events_s: float,
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    for saga_id, client in load.sagas.items():
        detail = rest_seen.get(saga_id)
        status = detail["saga"]["status"] if detail else "NOT FOUND"
        outcomes[f"{client.kind} -> {status}"] += 1
    cancels = Counter(
        client.cancel_answers[-1] if client.cancel_answers else "none"
        for client in load.sagas.values()
        if client.kind == "cancelled"
    )
    return {
        "sagas_started": len(load.sagas),
        "sagas_started_by_kind": dict(Counter(s.kind for s in load.sagas.values())),
        "starts_not_acknowledged": load.unacknowledged,
        "outcomes": dict(sorted(outcomes.items())),
        "cancel_answers": dict(cancels),
        "faults_injected": len(faults.done),
        "faults_by_kind": {k: sum(1 for f in faults.done if f["kind"] == k) for k in FAULTS},
        "faults": faults.done,
        "fault_errors": faults.errors,
        "faults_skipped": faults.skipped,
        "drain_s": round(drain_s, 1),
        "events_drain_s": round(events_s, 1),
        "topic_records": len(events),
        "participant_calls": len(record.get("calls", [])),
        "participant_keys_applied": len(record.get("applied", {})),
        "figures": {name: asdict(fig) for name, fig in figures.items()},
        "violations": inv.violations(figures),
    }


def _code() -> dict[str, Any]:
    """The commit the run measured, and whether the working tree differed from it."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=c.ROOT, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout if done.returncode == 0 else ""

    changed = [
        line[3:]
        for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        if line[3:].endswith(".py")
    ]
    return {
        "commit": git("rev-parse", "--short=12", "HEAD").strip() or None,
        "modified_files": changed,
    }


def _write(out_dir: Path, stamp: str, results: dict[str, Any]) -> Path:
    path = out_dir / f"chaos-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)
    return path


def _print(results: dict[str, Any]) -> None:
    if "figures" not in results:
        return
    log("")
    log(f"sagas started: {results['sagas_started']} {results['sagas_started_by_kind']}")
    if results["starts_not_acknowledged"]:
        log(
            f"starts never acknowledged (not counted as started): {len(results['starts_not_acknowledged'])}"
        )
    log(f"faults injected: {results['faults_injected']}")
    for kind, label in FAULTS.items():
        log(f"  {results['faults_by_kind'][kind]:4d}  {label}")
    log(f"outcomes: {results['outcomes']}")
    log(f"cancel answers (last): {results['cancel_answers']}")
    log("invariants (must be 0):")
    for name, fig in results["figures"].items():
        if fig["must_be_zero"]:
            log(f"  {fig['count']:6d}  {name}{'   <-- VIOLATED' if fig['count'] else ''}")
    log("allowed by SPEC (counted apart):")
    for name, fig in results["figures"].items():
        if not fig["must_be_zero"]:
            log(f"  {fig['count']:6d}  {name}")
    log(
        f"time to drain: {results['drain_s']:.1f}s to terminal, {results['events_drain_s']:.1f}s to every final event on the topic"
    )
    for name, fig in results["figures"].items():
        if fig["count"] and fig["examples"]:
            log(f"example of {name}:")
            log("  " + json.dumps(fig["examples"][0], indent=None, default=str))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every process of the run was stopped")
        sys.exit(130)
