"""Prometheus metrics of the server (prometheus-client). Works in multiprocess mode when
`PROMETHEUS_MULTIPROC_DIR` is set before this module is imported (gunicorn workers)."""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram

_MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

SAGAS_STARTED = Counter("saga_started_total", "Sagas started", ["workflow"])
SAGAS_ENDED = Counter(
    "saga_ended_total", "Sagas that reached a terminal status", ["workflow", "status"]
)
STEP_DURATION = Histogram(
    "saga_step_duration_seconds",
    "Duration of step executions and compensations (all attempts)",
    ["step", "action", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STEP_ATTEMPTS = Counter("saga_step_attempts_total", "Participant call attempts", ["step", "action"])
STEP_RETRIES = Counter(
    "saga_step_retries_total", "Participant call retries scheduled", ["step", "action"]
)
IN_FLIGHT = Gauge(
    "saga_in_flight",
    "Sagas this process is driving",
    multiprocess_mode="livesum" if _MULTIPROC else "all",
)
RECOVERED = Counter("saga_recovered_total", "Sagas picked up again after a restart or a lost lease")
TAKEOVERS = Counter(
    "saga_lease_takeovers_total", "Sagas claimed from another executor's expired lease"
)
LEASES_LOST = Counter(
    "saga_leases_lost_total", "Commits refused because this executor lost the lease"
)
COMMIT_BATCH = Histogram(
    "saga_commit_batch_size",
    "Sagas per store transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
HTTP_REQUESTS = Counter("saga_http_requests_total", "HTTP requests", ["route", "method", "status"])
GRPC_REQUESTS = Counter("saga_grpc_requests_total", "gRPC requests", ["method", "code"])
OUTBOX_BACKLOG = Gauge(
    "saga_outbox_backlog",
    "Unpublished outbox rows",
    multiprocess_mode="max" if _MULTIPROC else "all",
)
OUTBOX_OLDEST_AGE = Gauge(
    "saga_outbox_oldest_unpublished_seconds",
    "Age of the oldest unpublished outbox row",
    multiprocess_mode="max" if _MULTIPROC else "all",
)
OUTBOX_PUBLISHED = Counter("saga_outbox_published_total", "Events acknowledged by the broker")
OUTBOX_ERRORS = Counter("saga_outbox_publish_errors_total", "Failed event publications")
LOOP_RESTARTS = Counter(
    "saga_executor_loop_restarts_total",
    "Executor loops (claimer, committer, timer, renewer) restarted after dying",
    ["loop"],
)
EXECUTOR_HEALTHY = Gauge(
    "saga_executor_healthy",
    "1 while every executor loop of this process runs, 0 while one is down",
    multiprocess_mode="livemin" if _MULTIPROC else "all",
)
RETENTION_DELETED = Counter(
    "saga_retention_deleted_total",
    "Ended sagas deleted by retention (saga.retention_days), with their step logs and events",
)
RETENTION_BATCH = Histogram(
    "saga_retention_batch_seconds",
    "Duration of one retention batch (one transaction of at most 1,000 sagas)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PAUSED = Gauge(
    "saga_paused",
    "Sagas PAUSED now, waiting for an operator (read from the store at each scrape)",
    ["workflow"],
    # Set at every scrape by the process answering it: its value is the count now.
    multiprocess_mode="mostrecent" if _MULTIPROC else "all",
)
PAUSES = Counter(
    "saga_pauses_total",
    "Sagas that paused: on a step failure, a compensation failure, or a pause request",
    ["reason"],
)
RESUMES = Counter("saga_resumes_total", "PAUSED sagas resumed, by resume action", ["action"])
