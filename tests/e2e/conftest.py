"""Back-ends for end-to-end tests: a SQLite file, or a fresh PostgreSQL database per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from tests.services import require_postgres


def fresh_database(base_url: str) -> tuple[str, Any]:
    """Create an empty database next to the test server's and return its URL and a dropper."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunparse(urlparse(base_url)._replace(path=f"/{name}"))

    def drop() -> None:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Config keywords for `write_config`: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield {"sqlite_path": tmp_path / "saga.sqlite3"}
        return
    url, drop = fresh_database(require_postgres())
    try:
        yield {"database_url": url}
    finally:
        drop()


@pytest.fixture
def postgres_database() -> Iterator[str]:
    url, drop = fresh_database(require_postgres())
    try:
        yield url
    finally:
        drop()
