"""The web console: the static files under `saga_http/console/`, served at `/ui/`.

The console is a client of the public REST API and nothing else: this module serves files, it
never reads the store, the engine or the config, and it has no route of its own under
`/api/`. Every answer carries a strict Content-Security-Policy (scripts, styles and requests
from this origin only, no inline script), `X-Content-Type-Options: nosniff` and a cache policy
that makes a browser revalidate, so an upgraded server is never shown with stale scripts.

Only the files that ship in the package are served, by exact name: a path that is not one of
them is the API's ordinary 404.
"""

from __future__ import annotations

import functools
from pathlib import Path

from flask import Blueprint, Response, abort, redirect, send_from_directory

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
PREFIX = "/ui"
BLUEPRINT = "console"  # the blueprint's name, so its endpoints are `console.*`

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The file kinds the console is made of; anything else in the folder is not served.
_MIMETYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def console_blueprint() -> Blueprint:
    """The blueprint serving the console at `/ui/` (index) and `/ui/<asset>` (its files)."""
    blueprint = Blueprint(BLUEPRINT, __name__, url_prefix=PREFIX)
    blueprint.add_url_rule("", "root", _root, methods=["GET"])
    blueprint.add_url_rule("/", "index", _index, methods=["GET"])
    blueprint.add_url_rule("/<path:asset>", "asset", _asset, methods=["GET"])
    blueprint.after_request(_secure)
    return blueprint


def _root() -> Response:
    return redirect(PREFIX + "/", code=308)  # type: ignore[return-value]


def _index() -> Response:
    return _asset("index.html")


def _asset(asset: str) -> Response:
    if asset not in _assets():
        abort(404)
    return send_from_directory(CONSOLE_DIR, asset, mimetype=_MIMETYPES[Path(asset).suffix])


@functools.cache
def _assets() -> frozenset[str]:
    """The servable files, as paths relative to the console folder (read once)."""
    return frozenset(
        path.relative_to(CONSOLE_DIR).as_posix()
        for path in CONSOLE_DIR.rglob("*")
        if path.is_file() and path.suffix in _MIMETYPES
    )


def _secure(response: Response) -> Response:
    """The headers every console answer carries, errors included."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    # Revalidate every time (ETag / Last-Modified make that a cheap 304).
    response.headers["Cache-Control"] = "no-cache"
    return response
