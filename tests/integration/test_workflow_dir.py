"""Loading `workflow_dir` at start: good files register, bad ones are skipped with a log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from workers.config import Config, SagaSection, ServiceEndpoint
from workers.service.engine import Engine


def _config(tmp_path: Path, directory: Path) -> Config:
    return Config(
        services={"inventory-service": ServiceEndpoint("127.0.0.1", 1)},
        saga=SagaSection(sqlite_path=str(tmp_path / "s.sqlite3"), workflow_dir=str(directory)),
    )


GOOD = "name: good\nsteps:\n  - {name: a, service: inventory-service, method: Inv.A}\n"


def test_invalid_files_are_skipped_with_their_name_and_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad file is logged with its path and problem; the good ones still load; other suffixes are ignored."""
    directory = tmp_path / "wf"
    directory.mkdir()
    (directory / "good.yaml").write_text(GOOD)
    (directory / "also.yml").write_text(GOOD.replace("good", "also"))
    (directory / "bad.yaml").write_text(
        "name: bad\nsteps:\n  - {name: a, service: nowhere, method: X.Y}\n"
    )
    (directory / "notes.txt").write_text("not a workflow")
    caplog.set_level(logging.WARNING, logger="saga.engine")
    engine = Engine(_config(tmp_path, directory), _store(tmp_path), execute=False)
    try:
        engine.start()
        assert [w.name for w in engine.list_workflows()] == ["also", "good"]
        assert any(
            str(directory / "bad.yaml") in r.getMessage()
            and "service not registered: nowhere" in r.getMessage()
            for r in caplog.records
        )
    finally:
        engine.close()


def test_restarts_do_not_add_versions_and_changes_do(tmp_path: Path) -> None:
    """Loading the same file again keeps version 1; an edited file becomes version 2."""
    directory = tmp_path / "wf"
    directory.mkdir()
    (directory / "good.yaml").write_text(GOOD)
    for expected, text in ((1, GOOD), (1, GOOD), (2, GOOD.replace("Inv.A", "Inv.B"))):
        (directory / "good.yaml").write_text(text)
        engine = Engine(_config(tmp_path, directory), _store(tmp_path), execute=False)
        try:
            engine.start()
            assert engine.store.get_workflow("good").version == expected  # type: ignore[union-attr]
        finally:
            engine.close()


def test_a_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    """With no workflow_dir on disk the engine starts with no workflows."""
    engine = Engine(_config(tmp_path, tmp_path / "absent"), _store(tmp_path), execute=False)
    try:
        engine.start()
        assert engine.list_workflows() == []
    finally:
        engine.close()


def _store(tmp_path: Path):  # type: ignore[no-untyped-def]
    from workers.adapters.store.sqlite import SqliteStore

    return SqliteStore(str(tmp_path / "s.sqlite3"))
