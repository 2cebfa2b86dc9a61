"""Gunicorn settings for the REST API: `gunicorn -c saga_http/gunicorn.conf.py saga_http.wsgi:app`.

Read by the master, which only reads the config file here (a bad one stops it with one line
and exit status 2) and connects to nothing. Each worker builds its own Flask app and engine
right after the fork (`post_worker_init`) and closes the engine when it exits (`worker_exit`).
A worker that cannot build them (the store is down) retries with backoff until it can: it
must not fail to boot, which would halt the master (and `saga serve`) for a passing outage.

- bind: `server.host:server.port` (env `SAGA_SERVER_HOST` / `SAGA_SERVER_PORT` override, as
  for every config key; gunicorn's own `--bind` wins over both);
- `server.workers` processes of `server.threads` threads each (gthread);
- Prometheus multiprocess mode: the master creates a fresh `PROMETHEUS_MULTIPROC_DIR` (unless
  one is given), marks each dead worker's files in `child_exit`, and removes the directory it
  created on exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from workers.config import ConfigError
from workers.lifecycle import config_or_exit

_config = config_or_exit(os.environ.get("CONFIG_PATH"))

_host = _config.server.host
bind = [f"[{_host}]:{_config.server.port}" if ":" in _host else f"{_host}:{_config.server.port}"]
workers = max(1, _config.server.workers)
worker_class = "gthread"
threads = max(1, _config.server.threads)
wsgi_app = "saga_http.wsgi:app"
# SIGTERM: stop accepting, let requests in flight finish, then close the engine (which lets
# participant calls in flight finish and commit, up to 10 s) before the master's SIGKILL.
graceful_timeout = 30
timeout = 60
keepalive = 5
# No $HOME/.gunicorn/gunicorn.ctl shared by every gunicorn on the machine (gunicorn >= 27;
# older versions ignore the setting).
control_socket_disable = True

# Set before any worker imports `workers.adapters.metrics`, so every metric is multiprocess.
_OWNED = "SAGA_HTTP_OWNED_MULTIPROC_DIR"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="saga-prometheus-")
    os.environ[_OWNED] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


# Backoff between attempts of a worker to build its engine: 0.5 s, doubling, at most 10 s.
BUILD_RETRY_FIRST_SECS = 0.5
BUILD_RETRY_MAX_SECS = 10.0


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Build this worker's app and engine now, not on the first request, so it executes
    sagas from the start. While that fails (the store is unreachable) retry with backoff,
    telling the master we are alive, and serve nothing; stop trying when the worker is told to
    exit. Only a bad config fails the boot (and stops the server), as at any start."""
    build = getattr(worker.wsgi, "build", None)
    if build is None:
        return
    delay = BUILD_RETRY_FIRST_SECS
    while True:
        try:
            build()
            return
        except ConfigError as exc:
            worker.log.error("saga REST worker cannot start: %s", exc)
            raise RuntimeError(f"saga REST worker cannot start: {exc}") from exc
        except Exception as exc:
            worker.log.error("saga REST worker cannot start: %s; retrying in %.1fs", exc, delay)
        resume = time.monotonic() + delay
        while time.monotonic() < resume:
            if not worker.alive or worker.ppid != os.getppid():
                worker.alive = False  # run() then returns at once and the worker exits
                return
            worker.notify()  # the master kills a worker that stays silent past `timeout`
            time.sleep(min(0.1, max(0.0, resume - time.monotonic())))
        delay = min(BUILD_RETRY_MAX_SECS, delay * 2)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    close = getattr(getattr(worker, "wsgi", None), "close", None)
    if close is not None:
        close()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    owned = os.environ.get(_OWNED)
    if owned and owned == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
