"""`workflow_dir` files whose parsed values no store can keep (a NUL or a lone surrogate made
by a YAML escape) or whose aliases explode are skipped with a log line naming the file and the
field, on SQLite and on PostgreSQL; the ordinary ones, anchors and merge keys included, load."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.services import require_postgres
from workers.adapters.store.base import Store
from workers.config import Config, SagaSection, ServiceEndpoint
from workers.service.engine import Engine

MERGED = """\
name: merged
steps:
  - &defaults
    name: reserve
    service: inventory-service
    method: Inv.Reserve
    retry: &retry {max_attempts: 2, initial_interval_ms: 10}
  - <<: *defaults
    name: release
    method: Inv.Release
    retry: *retry
"""
BAD_FILES = {
    "nul.yaml": (
        'name: nul\nsteps:\n  - {name: "a\\0b", service: inventory-service, method: Inv.A}\n',
        "steps[0].name: contains a NUL character",
    ),
    "surrogate.yml": (
        'name: "sur\\ud800"\nsteps:\n  - {name: a, service: inventory-service, method: Inv.A}\n',
        "name: contains a lone surrogate",
    ),
    "bomb.yaml": (
        "name: bomb\nsteps: []\nx0: &a [l, l, l, l, l, l, l, l, l, l]\n"
        + "".join(
            f"x{i}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n"
            for i, (p, c) in enumerate(zip("abcdefg", "bcdefgh", strict=True), start=1)
        ),
        "workflow_yaml: aliases expand to",
    ),
}


def _config(tmp_path: Path, directory: Path) -> Config:
    return Config(
        services={"inventory-service": ServiceEndpoint("127.0.0.1", 1)},
        saga=SagaSection(sqlite_path=str(tmp_path / "s.sqlite3"), workflow_dir=str(directory)),
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        from workers.adapters.store.sqlite import SqliteStore

        opened: Store = SqliteStore(str(tmp_path / "s.sqlite3"))
        yield opened
        opened.close()
        return
    url = require_postgres()
    from workers.adapters.store.postgres import PostgresStore

    schema = f"t_{uuid.uuid4().hex[:8]}"
    opened = PostgresStore(url, schema=schema)
    try:
        yield opened
    finally:
        opened.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_bad_values_are_skipped_and_the_rest_load(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Each bad file is one warning naming its path and the field; the merged-key file loads
    with the merge applied; the engine starts."""
    directory = tmp_path / "wf"
    directory.mkdir()
    (directory / "merged.yaml").write_text(MERGED, encoding="utf-8")
    for name, (text, _) in BAD_FILES.items():
        (directory / name).write_text(text, encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="saga.engine")
    engine = Engine(_config(tmp_path, directory), store, execute=False)
    try:
        engine.start()
        assert [w.name for w in engine.list_workflows()] == ["merged"]
        merged = engine.store.get_workflow("merged")
        assert merged is not None
        release = merged.steps[1]
        assert (release.service, release.method) == ("inventory-service", "Inv.Release")
        assert release.retry.max_attempts == 2
        messages = [r.getMessage() for r in caplog.records]
        for name, (_, problem) in BAD_FILES.items():
            lines = [m for m in messages if str(directory / name) in m]
            assert len(lines) == 1 and problem in lines[0], (name, messages)
    finally:
        engine.close()
