"""The REST routes: each method and path, the `_Api` view that serves it and who may call it.
One table, read by the app (to serve and guard) and by the OpenAPI document (to describe)."""

from __future__ import annotations

import re
from typing import NamedTuple

from workers.adapters.auth import PUBLIC, READ, WRITE

# Who may call a route (SPEC §4 roles, `workers.adapters.auth`): PUBLIC stays open even with auth; READ
# is GET on the API (sys_auditor and up); WRITE changes something (sys_operator and up).


class Route(NamedTuple):
    method: str
    rule: str  # a Flask rule; `<path:name>` takes a workflow name with `/` in it
    endpoint: str
    view: str  # the `_Api` method that serves it
    access: str

    @property
    def template(self) -> str:
        """The rule as an OpenAPI path template: `<saga_id>` and `<path:name>` as `{...}`."""
        return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", self.rule)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "healthz", "healthz", PUBLIC),
    Route("GET", "/readyz", "readyz", "readyz", PUBLIC),
    Route("GET", "/metrics", "metrics", "metrics", PUBLIC),
    Route("POST", "/api/v1/sagas", "start_saga", "start_saga", WRITE),
    Route("GET", "/api/v1/sagas", "list_sagas", "list_sagas", READ),
    Route("GET", "/api/v1/sagas/<saga_id>", "get_saga", "get_saga", READ),
    Route("POST", "/api/v1/sagas/<saga_id>/cancel", "cancel_saga", "cancel_saga", WRITE),
    Route("POST", "/api/v1/sagas/<saga_id>/compensate", "compensate_saga", "cancel_saga", WRITE),
    Route("POST", "/api/v1/sagas/<saga_id>/pause", "pause_saga", "pause_saga", WRITE),
    Route("POST", "/api/v1/sagas/<saga_id>/resume", "resume_saga", "resume_saga", WRITE),
    Route("POST", "/api/v1/workflows", "register_workflow", "register_workflow", WRITE),
    Route("GET", "/api/v1/workflows", "list_workflows", "list_workflows", READ),
    Route("GET", "/api/v1/workflows/<path:name>", "get_workflow", "get_workflow", READ),
    Route("GET", "/api/v1/stats", "stats", "stats", READ),
    Route("GET", "/api/v1/openapi.json", "openapi", "openapi", PUBLIC),
)

__all__ = ["PUBLIC", "READ", "ROUTES", "WRITE", "Route"]
