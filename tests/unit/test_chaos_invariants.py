"""The chaos run's figures: each one fires on its own case, and a clean run is all zeros.

The observations are synthetic (what REST, the participant and the topic would show of a few
sagas), built clean and then spoilt one way at a time.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench import chaos_invariants as inv
from saga.invariants import Kind
from saga.model import RetryPolicy, Step, Workflow

STEPS = 4
WORKFLOW = Workflow(
    name="chaos-order",
    steps=tuple(
        Step(
            f"step-{i}",
            "chaos-service",
            f"Chaos.Step{i}",
            compensate=f"Chaos.Undo{i}",
            retry=RetryPolicy(max_attempts=5),
        )
        for i in range(STEPS)
    ),
)
T0 = 1_800_000_000.0  # epoch seconds of the first saga's start
FORWARD, COMPENSATING, CANCELLED_EARLY, CANCELLED_MID = (
    f"00000000-0000-4000-8000-00000000000{n}" for n in range(1, 5)
)


def _ts(at: float) -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Story:
    """One saga as the run would see it, written event by event in time order."""

    def __init__(self, saga_id: str, start: float) -> None:
        self.saga_id = saga_id
        self.now = start
        self.calls: list[dict[str, Any]] = []
        self.applied: dict[str, int] = {}
        self.logs: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.start = start

    def tick(self) -> float:
        self.now += 0.1
        return self.now

    def call(
        self, step: int, action: str, *, attempt: int = 1, applies: bool = True
    ) -> dict[str, Any]:
        key = f"{self.saga_id}:{step}:{action}"
        path = f"/Chaos/{'Step' if action == 'EXECUTE' else 'Undo'}{step}"
        call = {
            "path": path,
            "metadata": {
                "x-saga-id": self.saga_id,
                "x-saga-step": str(step),
                "x-saga-action": action,
                "x-saga-attempt": str(attempt),
                "idempotency-key": key,
            },
            "request": {},
            "received_at": self.tick(),
        }
        self.calls.append(call)
        if applies:
            self.applied[key] = self.applied.get(key, 0) + 1
        return call

    def log(self, step: int, action: str, status: str) -> None:
        started = self.now
        self.logs.append(
            {
                "id": f"{self.saga_id[-4:]}-log-{len(self.logs)}",
                "saga_id": self.saga_id,
                "step_index": step,
                "step_name": f"step-{step}",
                "action": action,
                "status": status,
                "request_payload": {},
                "response_payload": {},
                "error_message": None,
                "started_at": _ts(started),
                "completed_at": _ts(self.tick()),
            }
        )

    def event(self, event_type: str, status: str) -> None:
        self.events.append(
            {
                "key": self.saga_id,
                "value": {
                    "event_id": f"{self.saga_id[-4:]}-ev-{len(self.events)}",
                    "event_type": event_type,
                    "saga_id": self.saga_id,
                    "status": status,
                },
                "partition": 0,
                "offset": 0,
            }
        )

    def execute(self, step: int) -> None:
        if step == 0:  # the participant fails the first call of step 0 (UNAVAILABLE)
            self.call(0, "EXECUTE", applies=False)
            self.call(0, "EXECUTE", attempt=2)
        else:
            self.call(step, "EXECUTE")
        self.log(step, "EXECUTE", "SUCCESS")

    def compensate(self, step: int) -> None:
        self.call(step, "COMPENSATE")
        self.log(step, "COMPENSATE", "SUCCESS")

    def detail(self, status: str, current_step: int) -> dict[str, Any]:
        return {
            "saga": {
                "saga_id": self.saga_id,
                "workflow_name": WORKFLOW.name,
                "current_step": current_step,
                "status": status,
                "payload": {},
                "correlation_id": None,
                "initiated_by": None,
                "error_message": None,
                "created_at": _ts(self.start),
                "updated_at": _ts(self.tick()),
            },
            "step_logs": self.logs,
        }


def _clean() -> dict[str, Any]:
    """Four sagas that kept every promise: completed, failed at step 2 and compensated,
    cancelled before it ran, cancelled after its first step."""
    stories: dict[str, tuple[Story, dict[str, Any], inv.ClientSaga]] = {}

    s = Story(FORWARD, T0)
    s.event("SAGA_RUNNING", "RUNNING")
    for i in range(STEPS):
        s.execute(i)
    s.event("SAGA_COMPLETED", "COMPLETED")
    stories[s.saga_id] = (
        s,
        s.detail("COMPLETED", STEPS),
        inv.ClientSaga(s.saga_id, 0, "forward", None, T0),
    )

    s = Story(COMPENSATING, T0 + 10)
    s.event("SAGA_RUNNING", "RUNNING")
    s.execute(0)
    s.execute(1)
    s.call(2, "EXECUTE", applies=False)
    s.log(2, "EXECUTE", "FAILED")
    s.event("SAGA_COMPENSATING", "COMPENSATING")
    s.compensate(1)
    s.compensate(0)
    s.event("SAGA_FAILED", "FAILED")
    stories[s.saga_id] = (
        s,
        s.detail("FAILED", 2),
        inv.ClientSaga(s.saga_id, 1, "compensating", 2, T0 + 10),
    )

    s = Story(CANCELLED_EARLY, T0 + 20)
    s.event("SAGA_CANCELLED", "CANCELLED")
    client = inv.ClientSaga(s.saga_id, 2, "cancelled", None, T0 + 20, cancel_answers=["200"])
    stories[s.saga_id] = (s, s.detail("CANCELLED", 0), client)

    s = Story(CANCELLED_MID, T0 + 30)
    s.event("SAGA_RUNNING", "RUNNING")
    s.execute(0)
    s.event("SAGA_COMPENSATING", "COMPENSATING")
    s.compensate(0)
    s.event("SAGA_CANCELLED", "CANCELLED")
    client = inv.ClientSaga(s.saga_id, 3, "cancelled", None, T0 + 30, cancel_answers=["200"])
    stories[s.saga_id] = (s, s.detail("CANCELLED", 1), client)

    return {
        "sagas": {sid: client for sid, (_, _, client) in stories.items()},
        "rest": {sid: detail for sid, (_, detail, _) in stories.items()},
        "calls": [c for story, _, _ in stories.values() for c in story.calls],
        "applied": {k: n for story, _, _ in stories.values() for k, n in story.applied.items()},
        "events": [e for story, _, _ in stories.values() for e in story.events],
        "faults": [],
    }


def _figures(parts: dict[str, Any]) -> dict[str, int]:
    seen = inv.Observed(
        sagas=parts["sagas"],
        rest=parts["rest"],
        calls=parts["calls"],
        applied=parts["applied"],
        events=parts["events"],
        workflow=WORKFLOW,
        failures_before_apply={"/Chaos/Step0": 1},
        faults=parts["faults"],
    )
    return inv.summary(inv.check(seen))


def _non_zero(figures: dict[str, int]) -> dict[str, int]:
    must = {name for name, _ in inv.MUST_BE_ZERO}
    return {name: n for name, n in figures.items() if n and name in must}


def _calls_of(parts: dict[str, Any], saga_id: str) -> list[dict[str, Any]]:
    return [c for c in parts["calls"] if c["metadata"]["x-saga-id"] == saga_id]


def _events_of(parts: dict[str, Any], saga_id: str) -> list[dict[str, Any]]:
    return [e for e in parts["events"] if e["key"] == saga_id]


def _call(parts: dict[str, Any], saga_id: str, step: int, action: str, at: float) -> dict[str, Any]:
    story = Story(saga_id, at)
    story.now = at - 0.1
    call = story.call(step, action, applies=False)
    parts["calls"].append(call)
    return call


# Each case spoils a clean run in one way; the figure named first must be the only one > 0.


def lost(p: dict[str, Any]) -> None:
    p["rest"][FORWARD] = None


def stuck(p: dict[str, Any]) -> None:
    p["rest"][FORWARD]["saga"]["status"] = "RUNNING"


def applied_twice(p: dict[str, Any]) -> None:
    p["applied"][f"{FORWARD}:1:EXECUTE"] = 2


def logged_twice(p: dict[str, Any]) -> None:
    logs = p["rest"][FORWARD]["step_logs"]
    logs.insert(2, dict(logs[1]))


def logged_again_after_success(p: dict[str, Any]) -> None:
    logs = p["rest"][FORWARD]["step_logs"]
    logs.append({**logs[0], "id": "another-execution", "status": "FAILED"})


def wrong_key(p: dict[str, Any]) -> None:
    _calls_of(p, FORWARD)[2]["metadata"]["idempotency-key"] = f"{FORWARD}:1:execute"


def call_for_no_saga(p: dict[str, Any]) -> None:
    _call(p, "00000000-0000-4000-8000-999999999999", 0, "EXECUTE", T0 + 1)


def call_without_step(p: dict[str, Any]) -> None:
    _calls_of(p, FORWARD)[2]["metadata"]["x-saga-step"] = "one"


def completed_step_not_done(p: dict[str, Any]) -> None:
    del p["applied"][f"{FORWARD}:3:EXECUTE"]


def completed_step_not_logged(p: dict[str, Any]) -> None:
    logs = p["rest"][FORWARD]["step_logs"]
    logs[:] = [g for g in logs if g["step_index"] != 3]


def compensation_missing(p: dict[str, Any]) -> None:
    del p["applied"][f"{COMPENSATING}:0:COMPENSATE"]
    p["calls"][:] = [
        c for c in p["calls"] if c["metadata"]["idempotency-key"] != f"{COMPENSATING}:0:COMPENSATE"
    ]
    logs = p["rest"][COMPENSATING]["step_logs"]
    logs[:] = [g for g in logs if (g["step_index"], g["action"]) != (0, "COMPENSATE")]


def compensation_not_applied(p: dict[str, Any]) -> None:
    del p["applied"][f"{CANCELLED_MID}:0:COMPENSATE"]


def compensation_doubled(p: dict[str, Any]) -> None:
    p["applied"][f"{COMPENSATING}:0:COMPENSATE"] = 2


def compensation_of_step_never_called(p: dict[str, Any]) -> None:
    # Step 2 is where the saga stood (it may have been called unseen); step 3 never was.
    first_undo = next(
        n
        for n, c in enumerate(p["calls"])
        if c["metadata"]["idempotency-key"] == f"{COMPENSATING}:1:COMPENSATE"
    )
    at = p["calls"][first_undo]["received_at"] - 0.05
    call = _call(p, COMPENSATING, 3, "COMPENSATE", at)
    p["calls"].remove(call)
    p["calls"].insert(first_undo, call)
    p["applied"][f"{COMPENSATING}:3:COMPENSATE"] = 1


def compensations_out_of_order(p: dict[str, Any]) -> None:
    calls = p["calls"]
    one = next(
        n
        for n, c in enumerate(calls)
        if c["metadata"]["idempotency-key"] == f"{COMPENSATING}:1:COMPENSATE"
    )
    zero = next(
        n
        for n, c in enumerate(calls)
        if c["metadata"]["idempotency-key"] == f"{COMPENSATING}:0:COMPENSATE"
    )
    calls[one], calls[zero] = calls[zero], calls[one]


def called_after_compensation(p: dict[str, Any]) -> None:
    last = _calls_of(p, COMPENSATING)[-1]["received_at"]
    _call(p, COMPENSATING, 1, "EXECUTE", last + 0.01)


def compensated_completed(p: dict[str, Any]) -> None:
    last = _calls_of(p, FORWARD)[-1]["received_at"]
    _call(p, FORWARD, 0, "COMPENSATE", last + 0.01)
    p["applied"][f"{FORWARD}:0:COMPENSATE"] = 1


def cancel_200_completed(p: dict[str, Any]) -> None:
    p["sagas"][FORWARD].cancel_answers = ["200"]


def pause_200_lost(p: dict[str, Any]) -> None:
    p["sagas"][FORWARD].pause_answers = ["200"]


def event_missing(p: dict[str, Any]) -> None:
    p["events"].remove(_events_of(p, FORWARD)[-1])


def compensating_missing(p: dict[str, Any]) -> None:
    p["events"].remove(_events_of(p, CANCELLED_MID)[1])


def events_out_of_order(p: dict[str, Any]) -> None:
    running, compensating = _events_of(p, COMPENSATING)[:2]
    a, b = p["events"].index(running), p["events"].index(compensating)
    p["events"][a], p["events"][b] = compensating, running


def event_doubled(p: dict[str, Any]) -> None:
    running = _events_of(p, FORWARD)[0]
    again = copy.deepcopy(running)
    again["value"]["event_id"] = "another-id"
    p["events"].insert(p["events"].index(running) + 1, again)


def event_for_another_status(p: dict[str, Any]) -> None:
    running = _events_of(p, FORWARD)[0]
    compensating = copy.deepcopy(running)
    compensating["value"].update(
        event_id="x", event_type="SAGA_COMPENSATING", status="COMPENSATING"
    )
    p["events"].insert(p["events"].index(running) + 1, compensating)


def event_wrongly_keyed(p: dict[str, Any]) -> None:
    _events_of(p, FORWARD)[0]["key"] = COMPENSATING


def event_with_wrong_status(p: dict[str, Any]) -> None:
    _events_of(p, FORWARD)[-1]["value"]["status"] = "RUNNING"


def unreadable(p: dict[str, Any]) -> None:
    p["rest"][FORWARD]["saga"]["status"] = "DONE"


CASES = {
    "sagas_lost": [lost],
    "sagas_stuck": [stuck],
    "steps_applied_twice": [applied_twice],
    "steps_logged_twice": [logged_twice, logged_again_after_success],
    "calls_with_wrong_key": [wrong_key],
    "calls_for_no_saga_of_the_run": [call_for_no_saga, call_without_step],
    "completed_with_step_not_done": [completed_step_not_done, completed_step_not_logged],
    "compensations_missing": [compensation_missing, compensation_not_applied],
    "compensations_doubled": [compensation_doubled],
    "compensations_of_steps_never_called": [compensation_of_step_never_called],
    "compensations_out_of_order": [compensations_out_of_order],
    "calls_after_compensation_began": [called_after_compensation],
    "compensations_in_completed_sagas": [compensated_completed],
    "cancels_200_completed": [cancel_200_completed],
    "pauses_200_lost": [pause_200_lost],
    "events_missing": [event_missing, compensating_missing],
    "events_out_of_order": [events_out_of_order],
    "events_doubled": [event_doubled],
    "events_unexpected": [event_for_another_status, event_wrongly_keyed, event_with_wrong_status],
    "sagas_unreadable_over_rest": [unreadable],
}


def test_a_clean_run_is_all_zeros() -> None:
    """Sagas that kept every promise give 0 on every figure, the allowed ones included."""
    figures = _figures(_clean())
    assert figures == {name: 0 for name in figures}
    assert set(figures) == {n for n, _ in (*inv.MUST_BE_ZERO, *inv.ALLOWED)}


def test_every_kind_of_finding_has_one_figure() -> None:
    """Each kind of `saga.invariants` finding is counted by exactly one figure, and every
    figure that must be 0 has a case below."""
    kinds = [kind for _, kind in inv.FIGURES]
    assert sorted(kinds) == sorted(Kind)
    assert set(CASES) == {name for name, _ in inv.MUST_BE_ZERO}


@pytest.mark.parametrize(
    ("figure", "spoil"),
    [(figure, spoil) for figure, spoils in CASES.items() for spoil in spoils],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_each_figure_fires_on_its_own_case(figure: str, spoil: Any) -> None:
    """Spoiling a clean run one way makes that figure, and no other that must be 0, count 1."""
    parts = _clean()
    spoil(parts)
    assert _non_zero(_figures(parts)) == {figure: 1}


def test_a_redelivery_is_counted_apart() -> None:
    """A call made again for a key the participant already applied is a re-delivery, not a
    violation."""
    parts = _clean()
    last = _calls_of(parts, FORWARD)[-1]["received_at"]
    _call(parts, FORWARD, 3, "EXECUTE", last + 0.01)
    figures = _figures(parts)
    assert _non_zero(figures) == {}
    assert figures["redeliveries"] == 1


@pytest.mark.parametrize("froze_after_start", [True, False])
def test_a_call_just_after_a_worker_is_continued_is_checked_as_stale(
    froze_after_start: bool,
) -> None:
    """A forward call after compensation began is not a violation when it arrives just after a
    frozen worker was continued and the saga existed before it froze (it may be that worker's,
    which lost the lease); for a saga created later it is."""
    parts = _clean()
    created = T0 + 10
    last = _calls_of(parts, COMPENSATING)[-1]["received_at"]
    froze = created + 0.05 if froze_after_start else created - 0.05
    parts["faults"] = [{"kind": "worker_sigstop", "at": froze, "until": last + 0.005}]
    _call(parts, COMPENSATING, 1, "EXECUTE", last + 0.01)
    figures = _figures(parts)
    assert figures["redeliveries"] == 1
    if froze_after_start:
        assert _non_zero(figures) == {}
        assert figures["calls_maybe_from_a_deposed_worker"] == 1
    else:
        assert _non_zero(figures) == {"calls_after_compensation_began": 1}
        assert figures["calls_maybe_from_a_deposed_worker"] == 0


def test_compensating_the_step_a_saga_stood_at_is_allowed() -> None:
    """A cancelled saga may compensate the step it stood at though no call of it was seen (its
    executor's lease ran out mid-call); the compensation of an unapplied step is counted apart."""
    parts = _clean()
    last = _calls_of(parts, CANCELLED_MID)[0]["received_at"]
    call = _call(parts, CANCELLED_MID, 1, "COMPENSATE", last + 0.15)
    parts["calls"].remove(call)
    first_undo = parts["calls"].index(_calls_of(parts, CANCELLED_MID)[-1])
    parts["calls"].insert(first_undo, call)
    parts["applied"][f"{CANCELLED_MID}:1:COMPENSATE"] = 1
    figures = _figures(parts)
    assert _non_zero(figures) == {}
    assert figures["compensations_of_unapplied_steps"] == 1


def test_a_key_applied_after_its_saga_ended_is_counted_apart() -> None:
    """A compensation applied after REST shows the saga ended is a deposed executor's call."""
    parts = _clean()
    ended = parts["rest"][CANCELLED_MID]["saga"]["updated_at"]
    key = f"{CANCELLED_MID}:0:COMPENSATE"
    undo = next(c for c in parts["calls"] if c["metadata"]["idempotency-key"] == key)
    undo["received_at"] = inv._epoch(ended) + 1.0
    figures = _figures(parts)
    assert _non_zero(figures) == {}
    assert figures["keys_applied_after_saga_ended"] == 1
