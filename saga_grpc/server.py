"""Start-up of the gRPC API (SPEC §5): a threaded grpcio server carrying `SagaService`, the
standard health service and server reflection, wired from the config.

Nothing connects or binds at import time; `serve(config)` is the one function that builds the
process's objects (an `Engine`, the server) and tears them down again on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from saga_grpc.service import (
    SERVICE_NAME,
    Authorizer,
    SagaServicer,
    add_to_server,
    allow_all,
    token_authorizer,
)
from workers.adapters.auth import TokenVerifier
from workers.config import Config
from workers.lifecycle import stop_signals, wait_for
from workers.service.engine import Engine

log = logging.getLogger("saga.grpc")

# How long in-flight RPCs get to finish once a stop signal arrived.
SHUTDOWN_GRACE_SECS = 10.0
HEALTH_SERVICE_NAME = health.SERVICE_NAME


class GrpcApi(NamedTuple):
    """A built (not started) gRPC server, its bound port, and its health service, which a
    shutdown sets to NOT_SERVING (`health.enter_graceful_shutdown()`) before stopping."""

    server: grpc.Server
    port: int
    health: health.HealthServicer


def authorizer(config: Config) -> Authorizer:
    """Bearer-token checks when `config.auth` is set; otherwise an open API, said loudly."""
    if config.auth is None:
        log.warning(
            "no auth section configured: the gRPC API is open to every caller "
            "(development default; configure auth before exposing it)"
        )
        return allow_all
    log.info(
        "gRPC API: bearer tokens required in the authorization metadata (issuer %s, audience %s)",
        config.auth.issuer,
        config.auth.audience,
    )
    return token_authorizer(TokenVerifier.from_config(config.auth))


def build_api(config: Config, engine: Engine) -> GrpcApi:
    """Like `build_server`, also handing back the health service for a clean shutdown.
    Health and reflection stay open; `SagaService` checks tokens when `config.auth` is set."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.grpc.max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", config.limits.grpc_receive_bytes),
            ("grpc.max_send_message_length", config.limits.grpc_send_bytes),
        ],
        # Past this many calls held at once, refuse with RESOURCE_EXHAUSTED instead of queueing.
        maximum_concurrent_rpcs=config.grpc.concurrent_rpcs,
    )
    encoding = config.grpc.payload_encoding
    log.info(
        "gRPC API: payload fields answered as %s (StartSaga accepts JSON bytes or a Struct)",
        "encoded google.protobuf.Struct" if encoding == "struct" else "UTF-8 JSON bytes",
    )
    add_to_server(SagaServicer(engine, authorizer(config), encoding), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.grpc.host}:{config.grpc.port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"gRPC: cannot bind {address}")
    return GrpcApi(server, port, health_servicer)


def build_server(config: Config, engine: Engine) -> tuple[grpc.Server, int]:
    """A gRPC server (not started) serving `SagaService` over `engine`, health and reflection,
    bound to `config.grpc.host:port`; return it and the bound port (a free one for port 0)."""
    api = build_api(config, engine)
    return api.server, api.port


def serve(config: Config, *, stop: threading.Event | None = None) -> None:
    """Run the gRPC API with its own `Engine` until SIGTERM/SIGINT (or until `stop` is set,
    when one is given; no signal handler is installed then), and shut down cleanly: health
    goes NOT_SERVING, in-flight RPCs get a grace period, then the engine closes."""
    engine = Engine.from_config(config)
    try:
        engine.start()
        api = build_api(config, engine)
        api.server.start()
        log.info("gRPC API listening on %s:%d", config.grpc.host, api.port)
        if stop is None:
            with stop_signals() as signalled:
                wait_for(signalled)
        else:
            stop.wait()
        log.info("gRPC API stopping (grace %.0fs)", SHUTDOWN_GRACE_SECS)
        api.health.enter_graceful_shutdown()
        api.server.stop(SHUTDOWN_GRACE_SECS).wait()
    finally:
        engine.close()
    log.info("gRPC API stopped")
