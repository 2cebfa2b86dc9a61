"""The step-inputs benchmark figure: its workflow asks for what the seed payload and the echo
participant give, its core loop runs both variants to the end, and a partial `--only inputs`
run is merged into BENCHMARKS.md without dropping the other figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import common as c
from bench import inputs, report
from saga.decide import ENDED, IDLE, decide, phase
from saga.events import CallParticipant, Resume, StepSucceeded
from saga.model import SagaStatus, new_saga
from saga.simulation import SIM_EPOCH, SIM_SAGA_ID
from saga.workflow import parse_workflow


def _requests(workflow_dir: Path, name: str) -> list[dict[str, Any]]:
    wf = parse_workflow((workflow_dir / f"{name}.yaml").read_text())
    state = new_saga(
        saga_id=SIM_SAGA_ID,
        workflow=wf,
        payload=dict(c.SEED_PAYLOAD),
        correlation_id=None,
        initiated_by="test",
        at=SIM_EPOCH,
    )
    sent: list[dict[str, Any]] = []
    call: Any = None
    while phase(state) != ENDED:
        if phase(state) == IDLE:
            event: Any = Resume(at=SIM_EPOCH)
        else:
            event = StepSucceeded(at=SIM_EPOCH, response={**call.payload, "ok": True})
        decision = decide(state, wf, event)
        state = decision.state
        for effect in decision.effects:
            if isinstance(effect, CallParticipant):
                call = effect
                sent.append(dict(effect.payload))
    assert state.status is SagaStatus.COMPLETED
    return sent


def test_input_workflow_sends_payload_fields_then_previous_responses(tmp_path: Path) -> None:
    """bench-3-input completes with step 0 sent the payload's fields and each later step the
    echo of the one before, while bench-3 sends the payload to every step."""
    c.write_workflows(tmp_path)
    s0 = {"order_id": "bench", "amount": 42}
    s1 = {"order_id": "bench", "prev": {**s0, "ok": True}}
    s2 = {"order_id": "bench", "prev": {**s1, "ok": True}}
    assert _requests(tmp_path, c.INPUT_WORKFLOW) == [s0, s1, s2]
    assert _requests(tmp_path, "bench-3") == [dict(c.SEED_PAYLOAD)] * 3


def test_core_cost_runs_both_variants_whole(tmp_path: Path) -> None:
    """The core microbenchmark drives both workflows through the same 7 decisions and times
    every part of an evaluation."""
    c.write_workflows(tmp_path)
    got = inputs.core_cost(tmp_path, repetitions=2, runs_per_rep=20)
    assert got["decisions_per_run"] == {"bench-3": 7, c.INPUT_WORKFLOW: 7}
    assert len(got["decide_us_per_run"][c.INPUT_WORKFLOW]["runs"]) == 2
    assert all(v["median"] > 0 for v in got["evaluation_parts_us"].values())


def _run(path: Path, figures: list[str], **keys: Any) -> Path:
    doc = {"quick": False, "figures_selected": figures, "machine": {"cpu_model": "X"}, **keys}
    path.write_text(json.dumps(doc))
    return path


def test_partial_inputs_run_merges_without_dropping_other_figures(tmp_path: Path) -> None:
    """A full run from before the inputs figure stays the base; an `--only inputs` run after it
    adds the figure and its source, and every other figure keeps its own run."""
    full = [f for f in report.FIGURE_KEYS if f not in report.LATER_FIGURES]
    base = _run(tmp_path / "20260101T000000Z.json", full, throughput=[], recovery={"a": 1})
    later = _run(
        tmp_path / "20260102T000000Z.json",
        ["inputs"],
        inputs={"stores": {}, "n": 500},
    )
    found_base, overlays = report.runs_to_merge(tmp_path)
    assert (found_base, overlays) == (base, [later])
    merged = report.merge(found_base, overlays)
    assert merged["sources"]["inputs"] == "20260102T000000Z"
    assert merged["sources"]["recovery"] == "20260101T000000Z"
    assert merged["recovery"] == {"a": 1} and merged["inputs"]["n"] == 500


def test_section_renders_ratio_and_cpu(tmp_path: Path) -> None:
    """The section is titled as asked and shows each store's ratio and worker CPU per step."""

    def variant(steps: float, cpu: float) -> dict[str, Any]:
        return {
            "steps_per_s": c.summary([steps]),
            "sagas_per_s": c.summary([steps / 3]),
            "worker_cpu_us_per_step": c.summary([cpu]),
            "runs": [{"steps_per_s": steps}],
        }

    res = {
        "inputs": {
            "workers": 1,
            "n": 500,
            "pairs": 1,
            "order": "plain, input",
            "workflows": {c.INPUT_WORKFLOW: c.step_inputs(3)},
            "stores": {
                "sqlite": {
                    "bench-3": variant(1000, 400),
                    c.INPUT_WORKFLOW: variant(900, 440),
                    "ratio_of_medians": 0.9,
                    "pair_ratios": c.summary([0.9]),
                    "cpu_ratio_of_medians": 1.1,
                    "all_checks_ok": True,
                }
            },
        }
    }
    lines: list[str] = []
    report._inputs(res, lines.append)
    text = "\n".join(lines)
    assert "## 11. Cost of step inputs (SPEC §10)" in text
    assert "| sqlite | **1,000** (1,000–1,000) | **900** (900–900) | **0.900** (−10.0%)" in text
    assert "400 / 440 | **1.100** (+10.0%) | ok |" in text
