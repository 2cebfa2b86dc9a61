"""Drive `decide` with scripted participant outcomes on a simulated clock.

Used by `saga simulate` and by the property tests. Pure like the rest of the core: the clock
is a number that this driver advances (by call durations and retry delays), not the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from attrs import field, frozen

from saga.decide import CALLING, ENDED, IDLE, WAITING, Decision, decide, phase
from saga.events import (
    CallParticipant,
    Commit,
    Event,
    Resume,
    RetryDue,
    ScheduleRetry,
    StepFailed,
    StepSucceeded,
)
from saga.invariants import CallMade, SagaRecord
from saga.model import OUTCOME_UNKNOWN_CODES, Action, EventType, SagaState, Workflow, new_saga

SIM_EPOCH = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
SIM_SAGA_ID = "00000000-0000-4000-8000-000000000001"
CALL_DURATION = timedelta(milliseconds=10)


@frozen
class Outcome:
    """What a participant does with one attempt."""

    kind: Literal["success", "error", "timeout"]
    code: str = "UNAVAILABLE"
    message: str = ""
    response: Mapping[str, Any] = field(factory=dict)
    jitter: float = 0.0


SUCCESS = Outcome("success")

# (step index, action, attempt) -> outcome
Script = Callable[[int, Action, int], Outcome]


@frozen
class Turn:
    """One decision: the event fed in and what came out."""

    at: datetime
    before: SagaState
    event: Event
    decision: Decision


@frozen
class Run:
    turns: tuple[Turn, ...]
    final: SagaState

    @property
    def commits(self) -> tuple[Commit, ...]:
        return tuple(e for t in self.turns for e in t.decision.effects if isinstance(e, Commit))

    @property
    def calls(self) -> tuple[CallParticipant, ...]:
        return tuple(
            e for t in self.turns for e in t.decision.effects if isinstance(e, CallParticipant)
        )


def record_of(result: Run, workflow: Workflow, *, cancel_accepted: bool = False) -> SagaRecord:
    """What `result` shows of its saga, for `saga.invariants.violations`."""
    calls: list[CallMade] = []
    pending: CallParticipant | None = None
    events: list[EventType] = []
    for turn in result.turns:
        if pending is not None and isinstance(turn.event, (StepSucceeded, StepFailed)):
            outcome: Literal["success", "failed", "unknown"] = "success"
            if isinstance(turn.event, StepFailed):
                in_doubt = turn.event.timed_out or turn.event.code in OUTCOME_UNKNOWN_CODES
                outcome = "unknown" if in_doubt else "failed"
            calls.append(
                CallMade(
                    pending.step_index,
                    pending.action,
                    pending.attempt,
                    pending.idempotency_key,
                    outcome,
                )
            )
            pending = None
        for effect in turn.decision.effects:
            if isinstance(effect, CallParticipant):
                pending = effect
            elif isinstance(effect, Commit):
                events.extend(e.event_type for e in effect.events)
    logs = tuple(log for c in result.commits for log in c.step_logs)
    return SagaRecord(
        workflow=workflow,
        final=result.final,
        step_logs=logs,
        calls=tuple(calls),
        events=tuple(events),
        cancel_accepted=cancel_accepted,
    )


class DecisionBudgetExceeded(RuntimeError):
    """The run did not end within the number of decisions allowed."""


def start_state(
    workflow: Workflow, payload: Mapping[str, Any] | None = None, saga_id: str = SIM_SAGA_ID
) -> SagaState:
    return new_saga(
        saga_id=saga_id,
        workflow=workflow,
        payload=dict(payload or {}),
        correlation_id=None,
        initiated_by="simulation",
        at=SIM_EPOCH,
    )


def run(
    workflow: Workflow,
    script: Script,
    *,
    state: SagaState | None = None,
    cancel_from_boundary: int | None = None,
    cancel_when: Callable[[SagaState], bool] | None = None,
    max_decisions: int = 100_000,
) -> Run:
    """Drive one saga to its end (or until `max_decisions`).

    The cancel flag reads true at every `Resume` from the `cancel_from_boundary`-th one on
    (0-based), or whenever `cancel_when(state)` holds.
    """
    state = state or start_state(workflow)
    clock = state.updated_at
    boundary = 0
    turns: list[Turn] = []
    pending_call: CallParticipant | None = None
    while len(turns) < max_decisions:
        current = phase(state)
        event: Event
        if current == ENDED:
            return Run(tuple(turns), state)
        if current == IDLE:
            cancel = (cancel_from_boundary is not None and boundary >= cancel_from_boundary) or (
                cancel_when is not None and cancel_when(state)
            )
            boundary += 1
            event = Resume(at=clock, cancel_requested=cancel)
        elif current == CALLING:
            assert pending_call is not None
            outcome = script(pending_call.step_index, pending_call.action, pending_call.attempt)
            if outcome.kind == "timeout":
                clock += timedelta(seconds=pending_call.timeout_secs)
                event = StepFailed(
                    at=clock,
                    code="DEADLINE_EXCEEDED",
                    message="deadline exceeded",
                    timed_out=True,
                    jitter=outcome.jitter,
                )
            elif outcome.kind == "error":
                clock += CALL_DURATION
                event = StepFailed(
                    at=clock,
                    code=outcome.code,
                    message=outcome.message or outcome.code.lower(),
                    jitter=outcome.jitter,
                )
            else:
                clock += CALL_DURATION
                event = StepSucceeded(at=clock, response=dict(outcome.response))
        else:
            assert current == WAITING
            event = RetryDue(at=clock)
        decision = decide(state, workflow, event)
        turns.append(Turn(clock, state, event, decision))
        state = decision.state
        for effect in decision.effects:
            if isinstance(effect, CallParticipant):
                pending_call = effect
            elif isinstance(effect, ScheduleRetry):
                clock += timedelta(milliseconds=effect.delay_ms)
    raise DecisionBudgetExceeded(f"saga did not end within {max_decisions} decisions")
