"""Failure details from participants are stored clean (SPEC §3): no NUL, no lone surrogate, at
most 1,024 characters, and a transport failure names the service, never its address."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.model import SagaStatus
from tests.e2e.conftest import fresh_database
from tests.harness import (
    ParticipantProcess,
    free_port,
    step,
    wait_until,
    workflow_file,
    write_config,
)
from tests.services import require_postgres
from workers.adapters.participant import MAX_DETAIL_CHARS, ParticipantCaller, participant_detail
from workers.config import load_config
from workers.service.engine import Engine

NUL_DETAIL = "stock\x00level\x00low"
LONG_DETAIL = "insufficient stock: " + "x" * 5000
BEHAVIOUR: dict[str, Any] = {
    "Detail.Nul": {"fail": "FAILED_PRECONDITION", "message": NUL_DETAIL},
    "Detail.Long": {"fail": "FAILED_PRECONDITION", "message": LONG_DETAIL},
}
PREFIX = "FAILED_PRECONDITION: "


def assert_clean(text: str | None, prefix: str) -> None:
    assert text is not None and text.startswith(prefix), text
    assert "\x00" not in text
    assert "127.0.0.1:" not in text and "ipv4:" not in text
    assert len(text) <= len(prefix) + MAX_DETAIL_CHARS, len(text)
    text.encode("utf-8")  # no lone surrogate


@pytest.fixture(scope="module")
def participant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParticipantProcess]:
    proc = ParticipantProcess(BEHAVIOUR, tmp_path_factory.mktemp("details"))
    try:
        yield proc
    finally:
        proc.stop()


def test_detail_text_is_cleaned_at_the_edge() -> None:
    """NUL and lone surrogates become U+FFFD and a detail is cut to 1,024 characters."""
    assert participant_detail("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    cut = participant_detail("y" * 5000)
    assert len(cut) == MAX_DETAIL_CHARS and cut.startswith("y" * 1000)
    assert participant_detail("fine as it is") == "fine as it is"


def test_caller_cleans_participant_details(participant: ParticipantProcess) -> None:
    """A participant's NUL-laden or 5,000-character status detail comes back clean and readable."""
    endpoint = ("127.0.0.1", participant.port)
    with ParticipantCaller({"shop": endpoint}) as caller:
        nul = caller.call("shop", "Detail.Nul", b"{}", 5.0, [])
        long = caller.call("shop", "Detail.Long", b"{}", 5.0, [])
    assert nul.code == "FAILED_PRECONDITION"
    assert nul.message == "stock\ufffdlevel\ufffdlow"
    assert long.code == "FAILED_PRECONDITION"
    assert len(long.message) == MAX_DETAIL_CHARS
    assert long.message.startswith("insufficient stock: xxx")


def test_unreachable_participant_is_named_not_addressed() -> None:
    """With nothing listening, the failure is UNAVAILABLE naming the service, not its address."""
    port = free_port()
    with ParticipantCaller({"inventory-service": ("127.0.0.1", port)}) as caller:
        result = caller.call("inventory-service", "Inventory.Reserve", b"{}", 5.0, [])
    assert result.code == "UNAVAILABLE"
    assert result.message == "participant unavailable (inventory-service)"
    assert str(port) not in result.message


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`write_config` keywords for a SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield {"sqlite_path": tmp_path / "saga.sqlite3"}
        return
    url, drop = fresh_database(require_postgres())
    try:
        yield {"database_url": url}
    finally:
        drop()


def test_stored_error_messages_are_clean(
    tmp_path: Path, participant: ParticipantProcess, store_config: dict[str, Any]
) -> None:
    """Sagas failing on a NUL detail, a 5,000-character detail and an unreachable participant
    all end FAILED, with step log and saga error messages free of NUL and addresses, and short."""
    once = {"retry": {"max_attempts": 1}}
    workflow_file(tmp_path / "wf", "nul", [step("s0", "inventory-service", "Detail.Nul", **once)])
    workflow_file(tmp_path / "wf", "long", [step("s0", "inventory-service", "Detail.Long", **once)])
    workflow_file(tmp_path / "wf", "gone", [step("s0", "dead-service", "Dead.Call", **once)])
    path = write_config(
        tmp_path / "c.yaml",
        port=participant.port,
        workflow_dir=tmp_path / "wf",
        extra={"services": {"dead-service": {"host": "127.0.0.1", "port": free_port()}}},
        **store_config,
    )
    engine = Engine.from_config(load_config(str(path), environ={}), execute=True)
    engine.start()
    try:
        ids = {
            name: engine.start_saga(name, {"n": 1}, correlation_id=str(uuid.uuid4()))[0].saga_id
            for name in ("nul", "long", "gone")
        }

        def ended() -> bool:
            return all(
                engine.get_saga(saga_id)[0].status is SagaStatus.FAILED for saga_id in ids.values()
            )

        wait_until(ended, 30, interval=0.1, what="the three sagas to fail")
        for name, saga_id in ids.items():
            state, logs = engine.get_saga(saga_id)
            code = "UNAVAILABLE: " if name == "gone" else PREFIX
            [log] = logs
            assert_clean(log.error_message, code)
            assert_clean(state.error_message, f"step s0 failed: {code}")
        gone = engine.get_saga(ids["gone"])[1][0].error_message
        assert gone == "UNAVAILABLE: participant unavailable (dead-service)"
        nul = engine.get_saga(ids["nul"])[1][0].error_message
        assert nul == PREFIX + "stock\ufffdlevel\ufffdlow"
    finally:
        engine.close()
