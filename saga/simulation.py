"""Drive `decide` with scripted participant outcomes on a simulated clock.

Used by `saga simulate` (and its `--explore`, `saga.explore`) and by the property tests. Pure
like the rest of the core: the clock is a number that this driver advances (by call durations,
timeouts and retry delays), not the real one.

Besides the participants, a run can script what the store and the operators would do: a cancel
or a pause request read at a step boundary, an operator's resume or cancel of a PAUSED saga,
and an executor that dies (`crashed`): the saga is then loaded from its last commit, as a store
would give it back, and driven on with `Resume(lease_expired=True)`, through the same `decide`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from attrs import evolve, field, frozen

from saga.decide import CALLING, ENDED, IDLE, PAUSED, WAITING, Decision, decide, phase
from saga.events import (
    CallParticipant,
    CancelRequested,
    Commit,
    Event,
    Resume,
    ResumeRequested,
    RetryDue,
    ScheduleRetry,
    StepFailed,
    StepSucceeded,
)
from saga.invariants import CallMade, SagaRecord
from saga.model import (
    OUTCOME_UNKNOWN_CODES,
    Action,
    EventType,
    SagaState,
    Workflow,
    new_saga,
    steps_from_logs,
)

SIM_EPOCH = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
SIM_SAGA_ID = "00000000-0000-4000-8000-000000000001"
CALL_DURATION = timedelta(milliseconds=10)


@frozen
class Outcome:
    """What a participant does with one attempt. `duration`: how long the attempt takes on
    the simulated clock (default `CALL_DURATION`, or the step's timeout for a timeout)."""

    kind: Literal["success", "error", "timeout"]
    code: str = "UNAVAILABLE"
    message: str = ""
    response: Mapping[str, Any] = field(factory=dict)
    jitter: float = 0.0
    duration: timedelta | None = None


SUCCESS = Outcome("success")

# (step index, action, attempt) -> outcome
Script = Callable[[int, Action, int], Outcome]
# What decides: `saga.decide.decide`, or a stand-in a test makes to check the checkers.
Decider = Callable[[SagaState, Workflow, Event], Decision]


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


def record_of(
    result: Run,
    workflow: Workflow,
    *,
    cancel_accepted: bool = False,
    pause_accepted: bool = False,
) -> SagaRecord:
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
        pause_accepted=pause_accepted,
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
    pause_at_boundary: int | None = None,
    lease_expired: bool = False,
    operator: ResumeRequested | CancelRequested | None = None,
    clock: datetime | None = None,
    decider: Decider = decide,
    max_decisions: int = 100_000,
) -> Run:
    """Drive one saga until it ends, or pauses with no operator to act (or `max_decisions`).

    The cancel flag reads true at every `Resume` from the `cancel_from_boundary`-th one on
    (0-based), or whenever `cancel_when(state)` holds; the pause flag reads true at the
    `pause_at_boundary`-th `Resume` only (a pause, once taken, clears it). `lease_expired`: the
    first `Resume` says the executor that held the saga died (a recovery). `operator` is fed,
    at the time the run reached, the first time the saga is PAUSED; a second pause ends the
    run. `clock` is where the simulated clock starts (default: the state's `updated_at`).
    """
    state = state or start_state(workflow)
    clock = state.updated_at if clock is None else clock
    boundary = 0
    turns: list[Turn] = []
    pending_call: CallParticipant | None = None
    while len(turns) < max_decisions:
        current = phase(state)
        event: Event
        if current == ENDED:
            return Run(tuple(turns), state)
        if current == PAUSED:
            if operator is None:
                return Run(tuple(turns), state)
            event, operator = evolve(operator, at=clock), None
        elif current == IDLE:
            cancel = (cancel_from_boundary is not None and boundary >= cancel_from_boundary) or (
                cancel_when is not None and cancel_when(state)
            )
            event = Resume(
                at=clock,
                cancel_requested=cancel,
                lease_expired=lease_expired and boundary == 0,
                pause_requested=boundary == pause_at_boundary,
            )
            boundary += 1
        elif current == CALLING:
            assert pending_call is not None
            outcome = script(pending_call.step_index, pending_call.action, pending_call.attempt)
            if outcome.kind == "timeout":
                clock += outcome.duration or timedelta(seconds=pending_call.timeout_secs)
                event = StepFailed(
                    at=clock,
                    code="DEADLINE_EXCEEDED",
                    message="deadline exceeded",
                    timed_out=True,
                    jitter=outcome.jitter,
                )
            elif outcome.kind == "error":
                clock += outcome.duration or CALL_DURATION
                event = StepFailed(
                    at=clock,
                    code=outcome.code,
                    message=outcome.message or outcome.code.lower(),
                    jitter=outcome.jitter,
                )
            else:
                clock += outcome.duration or CALL_DURATION
                event = StepSucceeded(at=clock, response=dict(outcome.response))
        else:
            assert current == WAITING
            event = RetryDue(at=clock)
        decision = decider(state, workflow, event)
        turns.append(Turn(clock, state, event, decision))
        state = decision.state
        for effect in decision.effects:
            if isinstance(effect, CallParticipant):
                pending_call = effect
            elif isinstance(effect, ScheduleRetry):
                clock += timedelta(milliseconds=effect.delay_ms)
    raise DecisionBudgetExceeded(f"saga did not end within {max_decisions} decisions")


def crashed(result: Run, turn: int, *, committed: bool) -> tuple[Run, SagaState]:
    """An executor that died while carrying out the decision of `result.turns[turn]`: before
    its commit was written, or (`committed`) just after it, before any later effect.

    Returns what happened before it died (that turn's event was fed, so a call it answered is
    seen; of its effects only the commit, if written) and the saga as a store gives it back to
    the next executor: the last committed state, its `steps` rebuilt from the committed step
    logs (`saga.model.steps_from_logs`). Drive it on with `run(..., lease_expired=True)`."""
    kept = result.turns[turn]
    effects: list[Any] = []
    if committed:
        for effect in kept.decision.effects:
            effects.append(effect)
            if isinstance(effect, Commit):
                break
    head = (
        *result.turns[:turn],
        evolve(kept, decision=Decision(kept.decision.state, tuple(effects))),
    )
    written = [e for t in head for e in t.decision.effects if isinstance(e, Commit)]
    loaded = written[-1].state if written else result.turns[0].before
    logs = [log for c in written for log in c.step_logs]
    return Run(head, loaded), evolve(loaded, steps=steps_from_logs(logs))


def joined(first: Run, then: Run) -> Run:
    """One saga's history driven in two parts (a recovery, an operator's resume)."""
    return Run((*first.turns, *then.turns), then.final)
