"""`saga serve`: REST (gunicorn) + gRPC + saga execution in one command, with clean shutdown.

This process runs the gRPC server and the executor; gunicorn runs the REST workers as its
children. They only serve: the executor here is woken by each start they write and claims it
at once, and runs a gRPC start (accepted in this process) with no claim at all. REST workers
that executed too were measured on 2 cores: no more completed sagas/s, twice the start
latency (their request threads and the executor share one interpreter lock).
Everything shares one store, so no state lives in a single process.

With `saga.demo_participants` (config/config.yaml: what `make run` runs) and no `services` of
the configuration's own, this process also runs the demo participants of `saga demo` on
loopback, before anything reads the services, and every process gets their addresses: this
one in its config, the REST children through `SAGA_SERVICES`, so a workflow's services are
known alike in all of them. A configuration that names any service never starts them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from workers.adapters.logs import setup_logging
from workers.config import SERVICES_ENV, Config, ServiceEndpoint
from workers.lifecycle import config_or_exit, stop_signals

if TYPE_CHECKING:
    from saga_cli.demo import DemoParticipants

log = logging.getLogger("saga.serve")
GUNICORN_CONF = Path(__file__).resolve().parent.parent / "saga_http" / "gunicorn.conf.py"


def _apply_flags(config: Config, host: str | None, port: int | None, grpc_port: int | None) -> None:
    if host is not None:
        config.server.host = host
        config.grpc.host = host
    if port is not None:
        config.server.port = port
    if grpc_port is not None:
        config.grpc.port = grpc_port


def rest_url(config: Config) -> str:
    """The URL a browser or client on this machine reaches the REST server at."""
    host = config.server.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


def start_demo_participants(config: Config) -> DemoParticipants | None:
    """When the config asks for demo participants and names no service of its own, start them
    on loopback and point `config.services` at them; else start nothing (and say why in the
    log when they were asked for)."""
    if not config.saga.demo_participants:
        return None
    if config.services:
        log.warning(
            "saga.demo_participants is ignored: %s names its own services (%s); "
            "no demo participant started",
            config.source,
            ", ".join(sorted(config.services)),
        )
        return None
    from saga_cli.demo import start_demo_participants as start

    participants = start()
    config.services = {
        name: ServiceEndpoint(host=participants.host, port=port)
        for name, port in participants.ports.items()
    }
    log.info(
        "demo participants (as in `saga demo`) on %s: %s; a services section of the "
        "configuration's own turns them off",
        participants.host,
        ", ".join(f"{name} :{port}" for name, port in participants.ports.items()),
    )
    return participants


def run_serve(
    config_path: str | None, host: str | None, port: int | None, grpc_port: int | None
) -> int:
    config = config_or_exit(config_path)
    _apply_flags(config, host, port, grpc_port)
    setup_logging()
    try:
        participants = start_demo_participants(config)
    except OSError as exc:
        print(f"saga: cannot start the demo participants: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(config)
    finally:
        # Last: the engine has stopped, so no participant call is in flight.
        if participants is not None:
            participants.stop()
            log.info("demo participants stopped")


def _run(config: Config) -> int:
    # One Prometheus multiprocess directory for this process (the executor's metrics) and the
    # gunicorn workers, so /metrics on any worker shows them all. Set before metrics load.
    owned_metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        owned_metrics_dir = tempfile.mkdtemp(prefix="saga-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = owned_metrics_dir
    from saga_grpc.server import build_api
    from workers.service.engine import Engine

    engine = Engine.from_config(config)
    engine.start()  # migrations and workflow files, before any REST worker opens the store
    api = build_api(config, engine)
    server, bound = api.server, api.port
    server.start()

    env = dict(os.environ)
    source = Path(config.source)
    if source.exists():
        env["CONFIG_PATH"] = str(source.resolve())
    env.update(
        {
            "SAGA_SERVER_HOST": config.server.host,
            "SAGA_SERVER_PORT": str(config.server.port),
            "SAGA_SAGA_EXECUTE": "false",
            "SAGA_SAGA_SQLITE_PATH": str(Path(config.saga.sqlite_path).resolve()),
            "SAGA_SAGA_WORKFLOW_DIR": str(Path(config.saga.workflow_dir).resolve()),
        }
    )
    # The services this process calls (the demo participants' included), so that every REST
    # child knows the same ones when it checks a workflow's services at registration.
    env[SERVICES_ENV] = json.dumps(
        {name: {"host": e.host, "port": e.port} for name, e in config.services.items()}
    )
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "saga_http.wsgi:app"], env=env
    )

    with stop_signals() as stop:
        return _supervise(config, bound, gunicorn, stop, api, server, engine, owned_metrics_dir)


def _supervise(
    config: Config,
    bound: int,
    gunicorn: subprocess.Popen[bytes],
    stop: threading.Event,
    api: Any,
    server: Any,
    engine: Any,
    owned_metrics_dir: str | None,
) -> int:
    """Wait until the REST server answers, then until a stop signal (or the REST server dies);
    then stop everything in order: REST, gRPC, the engine."""
    url = rest_url(config)
    deadline = time.monotonic() + 30
    while not stop.is_set() and gunicorn.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                log.info("serving REST on %s and gRPC on %s:%d", url, config.grpc.host, bound)
                print(f"console: {url}/ui/", flush=True)
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    code = 0
    while not stop.wait(0.5):
        if gunicorn.poll() is not None:
            log.error("the REST server exited with status %s; shutting down", gunicorn.returncode)
            code = 1
            break
    if gunicorn.poll() is None:
        gunicorn.send_signal(signal.SIGTERM)
        try:
            gunicorn.wait(30)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
            gunicorn.wait(5)
    api.health.enter_graceful_shutdown()
    server.stop(grace=5).wait(6)
    engine.close()
    if owned_metrics_dir:
        shutil.rmtree(owned_metrics_dir, ignore_errors=True)
    log.info("stopped")
    return code
