"""The REST routes: each method and path, the `_Api` view that serves it and who may call it.
One table, read by the app (to serve and guard) and by the OpenAPI document (to describe)."""

from __future__ import annotations

from typing import NamedTuple

from workers.adapters.auth import PUBLIC, READ, WRITE

# Who may call a route (SPEC §4 roles, `workers.adapters.auth`): PUBLIC stays open even with auth; READ
# is GET on the API (sys_auditor and up); WRITE changes something (sys_operator and up).


class Route(NamedTuple):
    method: str
    rule: str
    endpoint: str
    view: str  # the `_Api` method that serves it
    access: str


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "healthz", "healthz", PUBLIC),
    Route("GET", "/readyz", "readyz", "readyz", PUBLIC),
    Route("GET", "/metrics", "metrics", "metrics", PUBLIC),
    Route("POST", "/api/v1/sagas", "start_saga", "start_saga", WRITE),
    Route("GET", "/api/v1/sagas", "list_sagas", "list_sagas", READ),
    Route("GET", "/api/v1/sagas/<saga_id>", "get_saga", "get_saga", READ),
    Route("POST", "/api/v1/sagas/<saga_id>/cancel", "cancel_saga", "cancel_saga", WRITE),
    Route("POST", "/api/v1/sagas/<saga_id>/compensate", "compensate_saga", "cancel_saga", WRITE),
    Route("POST", "/api/v1/workflows", "register_workflow", "register_workflow", WRITE),
    Route("GET", "/api/v1/workflows", "list_workflows", "list_workflows", READ),
    Route("GET", "/api/v1/stats", "stats", "stats", READ),
    Route("GET", "/api/v1/openapi.json", "openapi", "openapi", PUBLIC),
)

__all__ = ["PUBLIC", "READ", "ROUTES", "WRITE", "Route"]
