"""Servers for the security suite, shared by its modules: a real JWKS endpoint, a participant,
the REST API under a real gunicorn with `auth` configured, and a real gRPC server with `auth`
configured; each on loopback, each stopped at the end of the session."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2_grpc
from saga_grpc.server import build_api
from tests.integration.test_rest_api import GunicornServer, alive, write_config
from tests.security.jwks import JwksServer, Keys, auth_section
from workers.config import load_config
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

REPLY_LIMIT = 64 * 1024
BEHAVIOUR: dict[str, Any] = {
    "Shop.Charge": {
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "payment declined",
    },
    "Big.Reply": {"reply_bytes": 4 * REPLY_LIMIT},
    "Slow.Wait": {"sleep_ms": 300},
}
BIG_REPLY_YAML = """\
name: big-reply
steps:
  - name: reserve
    service: shop
    method: Shop.Reserve
    compensate: Shop.Release
    timeout_secs: 5
    retry: {max_attempts: 1}
  - name: fetch
    service: shop
    method: Big.Reply
    timeout_secs: 5
    retry: {max_attempts: 2, initial_interval_ms: 10}
"""
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
TABLES = ("saga_states", "saga_step_logs", "workflow_definitions")


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def row_counts(db: Path) -> dict[str, int]:
    """Rows per table of a SQLite saga store, read by a separate read-only connection."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def wait_quiet(db: Path, timeout: float = 20.0) -> None:
    """Wait until no saga in the store is in flight."""
    deadline = time.monotonic() + timeout
    while True:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
            (busy,) = conn.execute(
                "SELECT COUNT(*) FROM saga_states WHERE status NOT IN "
                "('COMPLETED', 'FAILED', 'CANCELLED')"
            ).fetchone()
        if not busy:
            return
        assert time.monotonic() < deadline, f"{busy} sagas still in flight"
        time.sleep(0.05)


class SecureRest:
    """The gunicorn server, its store file, and tokens to call it with."""

    def __init__(self, server: GunicornServer, db: Path, keys: Keys) -> None:
        self.server = server
        self.base = server.base
        self.db = db
        self.keys = keys
        self.admin = bearer(keys.token(("sys_admin",)))

    def request(
        self, method: str, path: str, token: str | None = "admin", **kwargs: Any
    ) -> requests.Response:
        """A request on a new connection; `token` "admin" (the default) sends an admin token."""
        headers = dict(kwargs.pop("headers", {}))
        if token == "admin":
            headers.update(self.admin)
        elif token is not None:
            headers.update(bearer(token))
        kwargs.setdefault("timeout", 20)
        return requests.request(method, self.base + path, headers=headers, **kwargs)

    def counts(self) -> dict[str, int]:
        """Row counts once no saga is in flight (so only what a test does changes them)."""
        wait_quiet(self.db)
        return row_counts(self.db)

    def wait_terminal(self, saga_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = self.request("GET", f"/api/v1/sagas/{saga_id}")
            assert response.status_code == 200, response.text
            detail: dict[str, Any] = response.json()
            if detail["saga"]["status"] in TERMINAL:
                return detail
            assert time.monotonic() < deadline, f"saga {saga_id} still {detail['saga']['status']}"
            time.sleep(0.05)

    def assert_up(self) -> None:
        """The server still answers: health, and an authenticated read."""
        assert requests.get(self.base + "/healthz", timeout=10).status_code == 200
        assert self.request("GET", "/api/v1/workflows").status_code == 200


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def jwks(keys: Keys) -> Iterator[JwksServer]:
    server = JwksServer(keys)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def participant_port() -> Iterator[int]:
    server, port = start_participant_server(BEHAVIOUR)
    try:
        yield port
    finally:
        server.stop(grace=None).wait(5)


@pytest.fixture(scope="session")
def rest(
    tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer, keys: Keys, participant_port: int
) -> Iterator[SecureRest]:
    directory = tmp_path_factory.mktemp("secure-rest")
    path = write_config(
        directory,
        participant_port,
        server={"workers": 2, "threads": 4},
        auth=auth_section(jwks.url),
        limits={"participant_response_bytes": REPLY_LIMIT},
    )
    (directory / "workflows" / "big-reply.yaml").write_text(BIG_REPLY_YAML, encoding="utf-8")
    running = GunicornServer(path, directory / "gunicorn.log")
    try:
        running.wait_ready(workers=2)
        yield SecureRest(running, directory / "saga.sqlite3", keys)
    finally:
        workers = list(running.workers)
        code = running.stop()
        assert code == 0, running.log()
        assert not [pid for pid in workers if alive(pid)]
        assert "Traceback" not in running.log(), running.log()


class SecureGrpc:
    """The gRPC server (own engine and SQLite file), a stub, and metadata helpers."""

    def __init__(self, stub: saga_pb2_grpc.SagaServiceStub, channel: grpc.Channel, db: Path):
        self.stub = stub
        self.channel = channel
        self.db = db

    def counts(self) -> dict[str, int]:
        """Row counts once no saga is in flight."""
        wait_quiet(self.db)
        return row_counts(self.db)


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="session")
def secure_grpc(
    tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer, participant_port: int
) -> Iterator[SecureGrpc]:
    directory = tmp_path_factory.mktemp("secure-grpc")
    path = write_config(
        directory,
        participant_port,
        auth=auth_section(jwks.url),
        limits={"participant_response_bytes": REPLY_LIMIT, "grpc_receive_bytes": 2 * 1024 * 1024},
    )
    (directory / "workflows" / "big-reply.yaml").write_text(BIG_REPLY_YAML, encoding="utf-8")
    config = load_config(str(path))
    engine = Engine.from_config(config)
    engine.start()
    api = build_api(config, engine)
    api.server.start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{api.port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    try:
        yield SecureGrpc(
            saga_pb2_grpc.SagaServiceStub(channel), channel, directory / "saga.sqlite3"
        )
    finally:
        channel.close()
        api.server.stop(grace=None).wait(5)
        engine.close(grace_secs=2)


def grpc_code(call: Callable[..., Any], request: Any, token: str | None) -> grpc.StatusCode:
    """The status code of one call (OK when it succeeds)."""
    try:
        call(request, metadata=metadata(token), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
