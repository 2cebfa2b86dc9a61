"""`app` for `gunicorn saga_http.wsgi:app` (config from `CONFIG_PATH`).

Importing this module connects to nothing, so it is safe in the gunicorn master (even with
`--preload`). `app` is a small WSGI callable that builds the real Flask app, with its own
engine (store pool, executor threads, participant channels), in the process that serves:
`saga_http/gunicorn.conf.py` builds it in `post_worker_init`, right after each worker forks;
without that config it is built on the first request. `worker_exit` calls `app.close()`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from workers.service.engine import Engine

log = logging.getLogger("saga.http")


class LazyApp:
    """A WSGI app that builds `create_app(load_config())` once per process, on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._app: Flask | None = None
        self._pid: int | None = None

    def build(self) -> Flask:
        """Build (once in this process) and return the Flask app; raise on a bad config or an
        unreachable store, leaving nothing built, so the caller may try again (gunicorn.conf.py
        retries an unreachable store with backoff and fails the boot on a bad config)."""
        with self._lock:
            if self._app is None or self._pid != os.getpid():
                # An app inherited through fork is dropped, not closed: its threads did not
                # survive the fork and its connections belong to the parent.
                from saga_http.app import create_app
                from workers.adapters.logs import setup_logging
                from workers.config import load_config

                setup_logging()
                config = load_config()
                self._app = create_app(config)
                self._pid = os.getpid()
                # Without gunicorn.conf.py's worker_exit, close at interpreter exit (a no-op
                # when worker_exit already did).
                atexit.register(self.close)
                log.info(
                    "REST worker %d serving (config %s, execute=%s)",
                    self._pid,
                    config.source,
                    config.saga.execute,
                )
            return self._app

    def __call__(
        self, environ: dict[str, Any], start_response: Any
    ) -> Iterable[bytes]:  # the WSGI entry point
        app = self._app if self._pid == os.getpid() else None
        return (app or self.build())(environ, start_response)

    @property
    def engine(self) -> Engine | None:
        if self._app is None or self._pid != os.getpid():
            return None
        engine: Engine = self._app.extensions["saga_engine"]
        return engine

    def close(self) -> None:
        """Stop the executor (in-flight calls finish and commit, leases are given back) and
        close the store; a no-op when nothing was built in this process."""
        with self._lock:
            engine = self.engine
            self._app = None
            self._pid = None
        if engine is not None:
            log.info("REST worker %d closing its engine", os.getpid())
            engine.close(grace_secs=min(10.0, engine.config.saga.lease_secs))


app = LazyApp()
