"""Properties of `decide` over random workflows and random participant behaviour."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st

from saga.decide import CALLING, ENDED, IDLE, WAITING, decide, phase
from saga.errors import IllegalEvent
from saga.events import Resume, RetryDue, ScheduleRetry, StepFailed, StepSucceeded
from saga.invariants import violations
from saga.model import Action, EventType, SagaStatus, StepStatus, Workflow
from saga.simulation import Outcome, Run, record_of, run, start_state
from tests.unit.strategies import scripts, workflows


def _bound(wf: Workflow) -> int:
    """An upper bound on decisions: per step and action, two per attempt, plus the boundaries."""
    return sum(4 * s.retry.max_attempts + 2 for s in wf.steps) + 4


@st.composite
def scenarios(draw: Any) -> tuple[Workflow, dict[Any, Outcome], int | None]:
    wf = draw(workflows())
    table = draw(scripts(wf))
    cancel_after = draw(st.none() | st.integers(0, len(wf.steps)))
    return wf, table, cancel_after


def _run(wf: Workflow, table: dict[Any, Outcome], cancel_after: int | None, **kw: Any) -> Run:
    return run(
        wf,
        lambda i, a, n: table[(i, a, n)],
        cancel_when=None if cancel_after is None else (lambda s: s.current_step >= cancel_after),
        max_decisions=_bound(wf),
        **kw,
    )


def _logs(result: Run) -> list[Any]:
    return [log for c in result.commits for log in c.step_logs]


@given(scenarios())
def test_every_run_ends_in_a_terminal_status_within_the_bound(scenario: Any) -> None:
    """Every run ends in COMPLETED, FAILED or CANCELLED within a bounded number of decisions."""
    result = _run(*scenario)
    assert result.final.status.terminal
    assert phase(result.final) == ENDED


@given(scenarios())
def test_completed_iff_every_step_succeeded(scenario: Any) -> None:
    """COMPLETED exactly when every step succeeded and no cancel came; then no COMPENSATE log."""
    wf, _, cancel_after = scenario
    result = _run(*scenario)
    logs = _logs(result)
    executed = [
        g.step_index for g in logs if g.action is Action.EXECUTE and g.status is StepStatus.SUCCESS
    ]
    all_ok = executed == list(range(len(wf.steps)))
    assert (result.final.status is SagaStatus.COMPLETED) == (all_ok and cancel_after is None)
    if all_ok and cancel_after is not None:
        # A cancel seen after the last step still compensates everything; the saga ends
        # CANCELLED, or FAILED when a compensation failed.
        assert result.final.status in (SagaStatus.CANCELLED, SagaStatus.FAILED)
        if result.final.status is SagaStatus.FAILED:
            assert "compensation failed for" in (result.final.error_message or "")
    if result.final.status is SagaStatus.COMPLETED:
        assert not [g for g in logs if g.action is Action.COMPENSATE]
        assert result.final.current_step == len(wf.steps)
        assert result.final.error_message is None


@given(scenarios())
def test_compensation_undoes_exactly_the_steps_that_may_have_taken_effect(scenario: Any) -> None:
    """On FAILED or CANCELLED, the compensated steps are those completed or left in doubt
    (an attempt that timed out or gave an unusable reply, with no success after it), reversed,
    each once."""
    wf, table, cancel_after = scenario
    result = _run(*scenario)
    assert violations(record_of(result, wf, cancel_accepted=cancel_after is not None)) == []
    if result.final.status is SagaStatus.COMPLETED:
        return
    logs = _logs(result)
    doubtful = {
        c.step_index
        for c in result.calls
        if c.action is Action.EXECUTE
        and (
            table[(c.step_index, c.action, c.attempt)].kind == "timeout"
            or table[(c.step_index, c.action, c.attempt)].code == "INVALID_RESPONSE"
        )
    }
    in_doubt = [
        g.step_index
        for g in logs
        if g.action is Action.EXECUTE
        and (g.status is StepStatus.SUCCESS or g.step_index in doubtful)
    ]
    compensated = [g.step_index for g in logs if g.action is Action.COMPENSATE]
    assert compensated == list(reversed(in_doubt))
    assert all(a > b for a, b in zip(compensated, compensated[1:], strict=False))
    for g in logs:
        if g.action is Action.COMPENSATE:
            has_method = wf.steps[g.step_index].compensate is not None
            assert (g.status is StepStatus.SKIPPED) == (not has_method)
    # Every compensation happens after every forward step.
    actions = [g.action for g in logs]
    if Action.COMPENSATE in actions:
        first = actions.index(Action.COMPENSATE)
        assert Action.EXECUTE not in actions[first:]


@given(scenarios())
def test_attempts_stay_within_the_policy(scenario: Any) -> None:
    """Attempts never exceed max_attempts; a non-retryable code gets exactly one attempt."""
    wf, table, _ = scenario
    result = _run(*scenario)
    attempts = Counter((c.step_index, c.action) for c in result.calls)
    for (index, action), count in attempts.items():
        policy = wf.steps[index].retry
        assert count <= policy.max_attempts
        first = table[(index, action, 1)]
        if first.kind == "error" and first.code in policy.non_retryable_codes:
            assert count == 1
    for call in result.calls:
        assert call.idempotency_key == f"{call.saga_id}:{call.step_index}:{call.action.value}"


@given(scenarios())
def test_retry_delays_follow_the_formula_and_the_cap(scenario: Any) -> None:
    """Retry n waits initial*2^n (or initial), within +/-20% with jitter, never over the cap."""
    wf = scenario[0]
    result = _run(*scenario)
    for turn in result.turns:
        for effect in turn.decision.effects:
            if not isinstance(effect, ScheduleRetry):
                continue
            policy = wf.steps[effect.step_index].retry
            n = effect.next_attempt - 2
            base = policy.initial_interval_ms * (
                2**n if policy.backoff.value == "exponential" else 1
            )
            low, high = (0.8 * base, 1.2 * base) if policy.jitter else (base, base)
            if policy.max_interval_ms is not None:
                low, high = min(low, policy.max_interval_ms), min(high, policy.max_interval_ms)
                assert effect.delay_ms <= policy.max_interval_ms
            assert low - 1 <= effect.delay_ms <= high + 1
            event = turn.event
            assert isinstance(event, StepFailed)
            if policy.jitter and policy.max_interval_ms is None:
                assert effect.delay_ms == round(base * (1 + 0.2 * event.jitter))


@given(scenarios())
def test_log_status_says_how_the_last_attempt_ended(scenario: Any) -> None:
    """A step log is TIMEOUT when its last attempt hit the deadline, FAILED on an error code."""
    wf, table, _ = scenario
    result = _run(*scenario)
    attempts = Counter((c.step_index, c.action) for c in result.calls)
    for log in _logs(result):
        if log.status in (StepStatus.SUCCESS, StepStatus.SKIPPED):
            continue
        last = table[(log.step_index, log.action, attempts[(log.step_index, log.action)])]
        expected = StepStatus.TIMEOUT if last.kind == "timeout" else StepStatus.FAILED
        assert log.status is expected
        assert log.error_message


@given(scenarios())
def test_events_follow_the_status_changes(scenario: Any) -> None:
    """Each commit's events match its status changes; ids are unique; the end event is last."""
    result = _run(*scenario)
    events = [e for c in result.commits for e in c.events]
    kinds = [e.event_type for e in events]
    assert len({e.event_id for e in events}) == len(events)
    final = result.final.status
    if final is SagaStatus.COMPLETED:
        assert kinds == [EventType.SAGA_RUNNING, EventType.SAGA_COMPLETED]
    elif final is SagaStatus.FAILED:
        assert kinds[-2:] == [EventType.SAGA_COMPENSATING, EventType.SAGA_FAILED]
    else:
        assert kinds in (
            [EventType.SAGA_CANCELLED],
            [EventType.SAGA_RUNNING, EventType.SAGA_COMPENSATING, EventType.SAGA_CANCELLED],
        )
    for commit in result.commits:
        for event in commit.events:
            assert event.saga_id == commit.state.saga_id
        if commit.events:
            assert commit.events[-1].status is commit.state.status


@given(scenarios())
def test_committed_states_are_never_mid_call(scenario: Any) -> None:
    """Only idle or ended states are stored, so a recovered saga always resumes at a boundary."""
    for commit in _run(*scenario).commits:
        assert commit.state.in_flight is None
        assert phase(commit.state) in (IDLE, ENDED)


@given(scenarios())
def test_resuming_from_any_committed_state_gives_the_same_end(scenario: Any) -> None:
    """Recovery from any commit reaches the same end and the same step logs as an unbroken run."""
    wf, table, cancel_after = scenario
    whole = _run(wf, table, cancel_after)
    logs = _logs(whole)
    seen = 0
    for commit in whole.commits:
        seen += len(commit.step_logs)
        if commit.state.terminal:
            continue
        resumed = _run(wf, table, cancel_after, state=commit.state)
        assert resumed.final == whole.final
        assert logs[:seen] + _logs(resumed) == logs


_ALL_EVENT_KINDS = {
    IDLE: Resume,
    CALLING: StepSucceeded,
    WAITING: RetryDue,
}


@given(scenarios(), st.data())
def test_illegal_events_raise_and_change_nothing(scenario: Any, data: Any) -> None:
    """An event not legal in the current phase raises IllegalEvent and leaves the state as it was."""
    wf = scenario[0]
    result = _run(*scenario)
    states = [t.before for t in result.turns] + [result.final]
    state = data.draw(st.sampled_from(states))
    at = state.updated_at
    candidates = [
        Resume(at=at),
        Resume(at=at, cancel_requested=True),
        StepSucceeded(at=at, response={}),
        StepFailed(at=at, code="INTERNAL", message="x"),
        RetryDue(at=at),
    ]
    legal = {
        IDLE: (Resume,),
        CALLING: (StepSucceeded, StepFailed),
        WAITING: (RetryDue,),
        ENDED: (),
    }[phase(state)]
    snapshot = evolve(state)
    for event in candidates:
        if isinstance(event, legal):
            continue
        with pytest.raises(IllegalEvent):
            decide(state, wf, event)
        assert state == snapshot


@given(scenarios())
def test_terminal_statuses_are_absorbing(scenario: Any) -> None:
    """No event at all is legal once a saga is COMPLETED, FAILED or CANCELLED."""
    wf = scenario[0]
    final = _run(*scenario).final
    at = final.updated_at
    for event in (
        Resume(at=at),
        Resume(at=at, cancel_requested=True),
        StepSucceeded(at=at, response={}),
        StepFailed(at=at, code="UNAVAILABLE", message="x"),
        RetryDue(at=at),
    ):
        with pytest.raises(IllegalEvent):
            decide(final, wf, event)


def test_cancel_before_any_step_ends_cancelled_without_calls() -> None:
    """A STARTED saga whose cancel is seen first goes straight to CANCELLED, calling nobody."""
    from saga.model import Step

    wf = Workflow(name="wf", steps=(Step(name="a", service="s", method="S.A", compensate="S.U"),))
    result = run(wf, lambda *_: Outcome("success"), state=start_state(wf), cancel_from_boundary=0)
    assert result.final.status is SagaStatus.CANCELLED
    assert result.calls == ()
    assert [e.event_type for c in result.commits for e in c.events] == [EventType.SAGA_CANCELLED]
