"""The gRPC API bounds the calls it holds (`grpc.max_concurrent_rpcs`, default four per
worker thread): past the bound a call is refused with RESOURCE_EXHAUSTED at once instead of
queueing behind calls that are stuck."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from saga_grpc.server import build_api
from tests.harness import wait_until
from workers.adapters.store.sqlite import SqliteStore
from workers.config import ConfigError, load_config
from workers.service.engine import Engine

WORKFLOW_YAML = """\
name: limited
steps:
  - name: a
    service: shop
    method: Shop.A
"""


def config_file(tmp_path: Path, grpc_section: dict[str, Any]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        json.dumps(
            {
                "grpc": {"host": "127.0.0.1", "port": 0, **grpc_section},
                "services": {"shop": {"host": "127.0.0.1", "port": 9}},
                "saga": {"sqlite_path": str(tmp_path / "saga.sqlite3"), "execute": False},
            }
        )
    )
    return path


@contextmanager
def grpc_api(
    tmp_path: Path, grpc_section: dict[str, Any]
) -> Iterator[saga_pb2_grpc.SagaServiceStub]:
    config = load_config(str(config_file(tmp_path, grpc_section)), environ={})
    store = SqliteStore(config.saga.sqlite_path, busy_timeout_secs=60)
    engine = Engine(config, store, execute=False)
    engine.start()
    engine.register_workflow(WORKFLOW_YAML)
    api = build_api(config, engine)
    api.server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{api.port}")
    try:
        yield saga_pb2_grpc.SagaServiceStub(channel)
    finally:
        channel.close()
        api.server.stop(grace=10).wait(15)  # calls in flight finish before the store closes
        engine.close(grace_secs=0)


@contextmanager
def store_write_lock(db: Path) -> Iterator[None]:
    """Hold the SQLite write lock, so every StartSaga blocks in the store until released."""
    with closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


EXTRA = 3  # calls sent past the bound


def start_request() -> saga_pb2.StartSagaRequest:
    return saga_pb2.StartSagaRequest(workflow_name="limited", payload=b"{}")


@pytest.mark.parametrize(
    ("grpc_section", "held"),
    [({"max_workers": 2, "max_concurrent_rpcs": 3}, 3), ({"max_workers": 2}, 8)],
    ids=["configured", "default"],
)
def test_calls_past_the_bound_are_refused_not_queued(
    tmp_path: Path, grpc_section: dict[str, Any], held: int
) -> None:
    """With the store stuck, `held` calls are held and every call past them is refused with
    RESOURCE_EXHAUSTED at once; once the store frees up, the held calls complete."""
    with grpc_api(tmp_path, grpc_section) as stub:
        calls: list[Any] = []
        try:
            with store_write_lock(tmp_path / "saga.sqlite3"):
                sent = time.monotonic()
                calls += [
                    stub.StartSaga.future(start_request(), timeout=60) for _ in range(held + EXTRA)
                ]

                def refused() -> list[Any]:
                    done = [call for call in calls if call.done()]
                    return done if len(done) >= EXTRA else []

                done = wait_until(
                    refused, 15, interval=0.05, what="the calls past the bound to end"
                )
                assert time.monotonic() - sent < 5
                assert len(done) == EXTRA, [call.exception() for call in done]
                assert all(
                    call.exception().code() is grpc.StatusCode.RESOURCE_EXHAUSTED for call in done
                ), [call.exception() for call in done]
                time.sleep(0.3)  # no more end while the store is stuck
                assert [call for call in calls if call.done()] == done
        finally:
            # Whatever happened, let the held calls end before the store closes under them.
            for call in calls:
                call.exception(timeout=30)
            stub.ListWorkflows(saga_pb2.ListWorkflowsRequest(), timeout=30)
        held_calls = [call for call in calls if call not in done]
        assert [call.result().status for call in held_calls] == ["STARTED"] * held
        assert stub.ListWorkflows(saga_pb2.ListWorkflowsRequest(), timeout=5).workflows


def test_max_concurrent_rpcs_is_checked_at_start(tmp_path: Path) -> None:
    """A bound below 1 stops the program with one line naming grpc.max_concurrent_rpcs."""
    with pytest.raises(ConfigError, match=r"grpc\.max_concurrent_rpcs"):
        load_config(str(config_file(tmp_path, {"max_concurrent_rpcs": 0})), environ={})
