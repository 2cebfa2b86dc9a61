"""`saga serve`: REST (gunicorn) + gRPC + saga execution in one command, with clean shutdown.

This process runs the gRPC server and the executor; gunicorn runs the REST workers as its
children (they do not execute sagas: the executor here claims what they start within one
claim interval). Everything shares one store, so no state lives in a single process.
"""

from __future__ import annotations

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
from typing import Any

import requests

from workers.adapters.logs import setup_logging
from workers.config import Config
from workers.lifecycle import config_or_exit, stop_signals

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
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "") else config.server.host
    return f"http://{host}:{config.server.port}"


def run_serve(
    config_path: str | None, host: str | None, port: int | None, grpc_port: int | None
) -> int:
    config = config_or_exit(config_path)
    _apply_flags(config, host, port, grpc_port)
    setup_logging()
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
