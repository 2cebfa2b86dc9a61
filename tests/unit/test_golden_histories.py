"""Replaying recorded histories against today's `decide`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.codec import (
    effect_from_dict,
    effect_to_dict,
    event_from_dict,
    state_from_dict,
    state_to_dict,
    workflow_from_dict,
)
from saga.decide import decide
from tests.unit.golden import GOLDEN_DIR

FILES = sorted(GOLDEN_DIR.glob("*.json"))


def test_golden_histories_exist() -> None:
    """The recorded histories are present (an empty folder would make the replay vacuous)."""
    assert len(FILES) >= 9


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recorded_history_replays_exactly(path: Path) -> None:
    """Each recorded event, fed to decide in its recorded state, gives the recorded decision."""
    history = json.loads(path.read_text())
    wf = workflow_from_dict(history["workflow"])
    for number, turn in enumerate(history["turns"]):
        state = state_from_dict(turn["state"])
        decision = decide(state, wf, event_from_dict(turn["event"]))
        where = f"{path.name} turn {number}"
        assert state_to_dict(decision.state) == turn["next_state"], where
        assert [effect_to_dict(e) for e in decision.effects] == turn["effects"], where
        # The stored form reads back into the same effects (tags are stable).
        assert [effect_from_dict(e) for e in turn["effects"]] == list(decision.effects), where
