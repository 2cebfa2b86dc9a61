"""The saga state machine: `decide(state, workflow, event) -> Decision(state, effects)`.

Rules of this file (after h11's `_state.py`):

- Everything that decides what a saga does next lives here: which step runs, when to retry and
  after how long, what to compensate and in which order, what to log, what to publish.
- It is pure. It never reads the clock, makes a random number, sleeps or touches a socket, file,
  thread, environment variable or logger. Times, jitter and outcomes come in with the event; ids
  are derived from the saga id (`saga.model.step_log_id`, `saga.model.event_id`).
- An event that is illegal in the saga's current phase raises `IllegalEvent` and changes nothing
  (every value is frozen, so there is nothing to roll back).

Theory of operation. A saga is, at any time, in one of four phases:

    idle     at a step boundary, nothing in flight; the executor sends `Resume`
    calling  one participant call in flight; the executor sends `StepSucceeded`/`StepFailed`
    waiting  a retry is scheduled; the executor sends `RetryDue`
    ended    a terminal status; nothing is legal any more

The executor carries out the effects of a decision in order (`Commit` before `CallParticipant`),
then looks at the new state's phase to know which event it owes next. Only `Commit.state` is ever
stored, and it is always idle or ended: a recovered saga is loaded idle and resumed, which is the
same path as a fresh one. Every forward step, the last one included, ends at a commit followed by
`Resume`, which is where a stored cancel request is seen (SPEC §8: at the next step boundary);
so a saga whose last step was in flight when the cancel came is compensated, not completed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from attrs import evolve, frozen

import saga.expressions as expressions
from saga.errors import IllegalEvent
from saga.events import (
    CallParticipant,
    CancelRequested,
    Commit,
    CommitRefused,
    Effect,
    Event,
    Resume,
    ResumeRequested,
    RetryDue,
    ScheduleRetry,
    StepFailed,
    StepSucceeded,
)
from saga.expressions import ExpressionFailed
from saga.model import (
    INVALID_INPUT,
    INVALID_RESPONSE,
    OUTCOME_UNKNOWN_CODES,
    PERMANENT_FAILURE_CODES,
    Action,
    Backoff,
    Compensation,
    EventType,
    InFlight,
    Pause,
    ResumeAction,
    RetryPolicy,
    SagaEvent,
    SagaState,
    SagaStatus,
    Step,
    StepLog,
    StepResult,
    StepStatus,
    Workflow,
    event_id,
    idempotency_key,
    step_log_id,
)

IDLE = "idle"
CALLING = "calling"
WAITING = "waiting"
PAUSED = "paused"
ENDED = "ended"


@frozen
class Decision:
    state: SagaState
    effects: tuple[Effect, ...]


def phase(state: SagaState) -> str:
    """Which of the four phases the saga is in (see the module docstring)."""
    if state.terminal:
        return ENDED
    if state.status is SagaStatus.PAUSED:
        return PAUSED
    if state.in_flight is None:
        return IDLE
    return WAITING if state.in_flight.waiting_retry else CALLING


def retry_delay_ms(policy: RetryPolicy, retry_index: int, jitter: float = 0.0) -> int:
    """Delay before retry number `retry_index` (0 for the first retry), per SPEC §2.

    `initial * 2^n` (exponential) or `initial` (fixed); with `jitter` on, scaled by
    `1 + 0.2 * jitter` for `jitter` in [-1, 1]; then capped by `max_interval_ms`.
    """
    if policy.backoff is Backoff.EXPONENTIAL:
        base: float = policy.initial_interval_ms * (2**retry_index)
    else:
        base = policy.initial_interval_ms
    if policy.jitter:
        base = base * (1.0 + 0.2 * max(-1.0, min(1.0, jitter)))
    if policy.max_interval_ms is not None:
        base = min(base, policy.max_interval_ms)
    return int(round(base))


def decide(state: SagaState, workflow: Workflow, event: Event) -> Decision:
    """The next state of a saga and the effects to carry out, given one event."""
    if (state.workflow_name, state.workflow_version) != (workflow.name, workflow.version):
        raise ValueError(
            f"saga {state.saga_id} runs {state.workflow_name} v{state.workflow_version}, "
            f"not {workflow.name} v{workflow.version}"
        )
    handler = _TRANSITIONS.get((phase(state), type(event)))
    if handler is None:
        raise IllegalEvent(
            f"{event.tag} is not legal for saga {state.saga_id} "
            f"in status {state.status.value} ({phase(state)})"
        )
    return handler(state, workflow, event)


# ---------------------------------------------------------------- handlers


def _on_resume(state: SagaState, wf: Workflow, event: Any) -> Decision:
    assert isinstance(event, Resume)
    at = event.at
    # The step at `current_step` may have been called by an executor that is gone (SPEC §1).
    in_doubt = (
        (event.lease_expired or state.in_doubt)
        and state.status is SagaStatus.RUNNING
        and state.current_step < len(wf.steps)
    )
    if event.pause_requested:
        # A pause answered 200 takes effect here, at the boundary (SPEC §11); a cancel asked
        # for too stays stored and is seen when the saga resumes.
        phase_name = "compensating" if state.status is SagaStatus.COMPENSATING else "forward"
        return _pause(state, at, Pause(phase_name, state.status, in_doubt=in_doubt), logs=())
    if state.status is SagaStatus.STARTED:
        # Nothing was called yet: the first call is made only after the RUNNING commit.
        if event.cancel_requested:
            ended = _stamp(state, at, status=SagaStatus.CANCELLED)
            commit = Commit(
                ended, (), (_event(ended, EventType.SAGA_CANCELLED),), unless_pause_requested=True
            )
            return Decision(ended, (commit,))
        running = _stamp(state, at, status=SagaStatus.RUNNING)
        return _start_step(running, wf, at, events=(_event(running, EventType.SAGA_RUNNING),))
    if state.status is SagaStatus.RUNNING:
        if event.cancel_requested:
            # An executor that died (or lost its lease) mid-call may have made the call of the
            # step at `current_step`; its outcome is unknown, so it is compensated too (SPEC §1).
            return _start_compensation(
                state, wf, at, cancelled=True, cause=None, logs=(), in_doubt=in_doubt
            )
        if state.current_step >= len(wf.steps):
            return _complete(state, at, logs=())
        return _start_step(state, wf, at, in_doubt=in_doubt)
    # COMPENSATING. A set cancel flag was answered 200 before compensation began (a cancel is
    # refused once it has): the saga then ends CANCELLED, whatever started the compensation.
    comp = state.compensation
    assert comp is not None
    if event.cancel_requested and not comp.cancelled:
        state = evolve(state, compensation=evolve(comp, cancelled=True))
    return _compensate_next(state, wf, at, logs=(), events=())


def _on_step_succeeded(state: SagaState, wf: Workflow, event: Any) -> Decision:
    assert isinstance(event, StepSucceeded) and state.in_flight is not None
    flight = state.in_flight
    step = wf.steps[flight.step_index]
    log = _log(state, step.name, flight, StepStatus.SUCCESS, event.at, dict(event.response), None)
    if flight.action is Action.EXECUTE:
        # Even after the last step the saga stops at a boundary: a cancel that arrived while
        # that step was in flight is seen there, and the step is compensated with the others.
        done = StepResult(flight.request, dict(event.response))
        advanced = _stamp(
            state,
            event.at,
            current_step=flight.step_index + 1,
            in_flight=None,
            steps={**state.steps, step.name: done},
        )
        return Decision(advanced, (Commit(advanced, (log,), ()),))
    return _compensate_next(_pop_pending(state), wf, event.at, logs=(log,), events=())


def _on_step_failed(state: SagaState, wf: Workflow, event: Any) -> Decision:
    assert isinstance(event, StepFailed) and state.in_flight is not None
    flight = state.in_flight
    step = wf.steps[flight.step_index]
    policy = step.retry
    retryable = (
        event.code not in PERMANENT_FAILURE_CODES
        and event.code not in policy.non_retryable_codes
        and flight.attempt < policy.max_attempts
    )
    # Once an execution may have taken effect (an attempt timed out or got an unusable reply,
    # or an executor that is gone may have called it), only a success settles it: a later
    # failure can be the transport's, not the participant's answer.
    in_doubt = flight.in_doubt or event.timed_out or event.code in OUTCOME_UNKNOWN_CODES
    if retryable:
        delay = retry_delay_ms(policy, flight.attempt - 1, event.jitter)
        last = "timed out" if event.timed_out else f"{event.code}: {event.message}"
        waiting = evolve(
            state,
            in_flight=evolve(flight, waiting_retry=True, in_doubt=in_doubt, last_error=last),
        )
        retry = ScheduleRetry(
            saga_id=state.saga_id,
            step_index=flight.step_index,
            action=flight.action,
            next_attempt=flight.attempt + 1,
            delay_ms=delay,
        )
        return Decision(waiting, (retry,))

    if event.timed_out:
        status, error = StepStatus.TIMEOUT, f"step timed out after {step.timeout_secs:g}s"
    else:
        status, error = StepStatus.FAILED, f"{event.code}: {event.message}"
    if flight.attempt > 1:
        error += f" (attempt {flight.attempt} of {policy.max_attempts})"
    log = _log(state, step.name, flight, status, event.at, None, error)
    cleared = evolve(state, in_flight=None)
    if flight.action is Action.EXECUTE:
        # A last attempt that timed out, or whose reply could not be used, may have taken
        # effect: the step is compensated with the others (SPEC §3).
        return _forward_failed(cleared, wf, flight.step_index, event.at, error, (log,), in_doubt)
    return _compensation_failed(cleared, wf, flight.step_index, event.at, error, (log,))


def _on_retry_due(state: SagaState, wf: Workflow, event: Any) -> Decision:
    assert isinstance(event, RetryDue) and state.in_flight is not None
    flight = state.in_flight
    if flight.action is Action.EXECUTE and _past_deadline(state, wf, event.at):
        # No retry after the deadline (SPEC §11); the attempt that failed may have taken effect.
        error = f"deadline exceeded (last attempt: {flight.last_error})"
        cleared = evolve(state, in_flight=None)
        log = _log(
            state,
            wf.steps[flight.step_index].name,
            flight,
            StepStatus.FAILED,
            event.at,
            None,
            error,
        )
        return _forward_failed(
            cleared, wf, flight.step_index, event.at, error, (log,), flight.in_doubt
        )
    return _call(
        evolve(state, in_flight=None),
        wf,
        flight.action,
        flight.step_index,
        flight.attempt + 1,
        flight.started_at,
        (),
        flight.request,
        in_doubt=flight.in_doubt,
    )


def _on_commit_refused(state: SagaState, wf: Workflow, event: Any) -> Decision:
    """The store would not keep the last commit; `state` is the last one it did keep.

    What the refused commit recorded is lost, so the saga is failed the safe way: the step it
    was recording may have taken effect and is compensated (or, for a compensation, counted as
    failed), and its log says why, without the data that could not be kept. A second refusal
    in a row ends the saga FAILED with nothing more to write.
    """
    assert isinstance(event, CommitRefused)
    at = event.at
    reason = f"the store refused to keep the saga's data ({event.reason})"
    comp = state.compensation
    if event.refusals > 1 or state.status is SagaStatus.STARTED:
        return _abandon(state, at, reason)
    if state.status is SagaStatus.RUNNING:
        if state.current_step < len(wf.steps):
            index = state.current_step
            error = f"{INVALID_RESPONSE}: {reason}"
            log = _plain_log(state, wf, index, Action.EXECUTE, at, StepStatus.FAILED, error)
            cause = f"step {wf.steps[index].name} failed: {error}"
            return _start_compensation(
                state, wf, at, cancelled=False, cause=cause, logs=(log,), in_doubt=True
            )
        return _start_compensation(state, wf, at, cancelled=False, cause=reason, logs=())
    assert comp is not None
    if not comp.pending:
        return _abandon(state, at, reason)
    index = comp.pending[0]
    log = _plain_log(state, wf, index, Action.COMPENSATE, at, StepStatus.FAILED, reason)
    failure = f"{wf.steps[index].name} ({reason})"
    comp = evolve(comp, pending=comp.pending[1:], failures=(*comp.failures, failure))
    return _compensate_next(evolve(state, compensation=comp), wf, at, logs=(log,), events=())


def resolved_resume_action(state: SagaState, event: ResumeRequested) -> ResumeAction:
    """The action a resume takes: the one asked for, else retry after a failure and continue
    after a pause request (SPEC §11)."""
    if event.action is not None:
        return event.action
    failed = state.pause is not None and state.pause.failed_step is not None
    return ResumeAction.RETRY if failed else ResumeAction.CONTINUE


def _on_resume_requested(state: SagaState, wf: Workflow, event: Any) -> Decision:
    """An operator resumes the saga (SPEC §11): the committed state it goes on from. An action
    that does not fit how the saga paused raises `IllegalEvent` (the API's 409)."""
    assert isinstance(event, ResumeRequested) and state.pause is not None
    pause = state.pause
    failed = pause.failed_step is not None
    action = resolved_resume_action(state, event)
    who = f"saga {state.saga_id}"
    if event.payload is not None and not pause.forward:
        raise IllegalEvent(f"{who} paused while compensating: its payload can no longer change")
    if action is ResumeAction.CONTINUE and failed:
        raise IllegalEvent(
            f"{who} paused because {pause.error}; resume it with retry, skip or "
            + ("compensate" if pause.forward else "cancel nothing: retry or skip")
        )
    if action in (ResumeAction.RETRY, ResumeAction.SKIP) and not failed:
        raise IllegalEvent(f"{who} paused on request and nothing failed: resume it with continue")
    if action is ResumeAction.COMPENSATE and not pause.forward:
        raise IllegalEvent(f"{who} is already compensating: resume it with retry or skip")
    at = event.at
    base = _stamp(
        state,
        at,
        pause=None,
        resumes=state.resumes + 1,
        payload=state.payload if event.payload is None else event.payload,
        in_doubt=False,
    )
    logs: tuple[StepLog, ...] = ()
    if pause.forward:
        if action is ResumeAction.COMPENSATE:
            cause = pause.error or "compensation asked for by an operator"
            comp = Compensation(
                cancelled=False, cause=cause, pending=_to_compensate(base, wf, pause.in_doubt)
            )
            resumed = evolve(
                base, status=SagaStatus.COMPENSATING, compensation=comp, error_message=cause
            )
        elif action is ResumeAction.SKIP:
            assert pause.failed_step is not None
            index = pause.failed_step
            logs = (_plain_log(base, wf, index, Action.EXECUTE, at, StepStatus.SKIPPED, None),)
            resumed = evolve(
                base, status=SagaStatus.RUNNING, current_step=index + 1, error_message=None
            )
        else:
            # continue or retry: the step in doubt (if any) is still in doubt until it runs. A
            # saga paused before its first step resumes RUNNING too (SPEC §11).
            resumed = evolve(
                base, status=SagaStatus.RUNNING, error_message=None, in_doubt=pause.in_doubt
            )
    else:
        held = state.compensation
        assert held is not None
        comp = held
        if action is ResumeAction.SKIP:
            assert pause.failed_step is not None and comp.pending[:1] == (pause.failed_step,)
            index = pause.failed_step
            logs = (_plain_log(base, wf, index, Action.COMPENSATE, at, StepStatus.SKIPPED, None),)
            skipped = f"{wf.steps[index].name} (compensation skipped by an operator)"
            comp = evolve(comp, pending=comp.pending[1:], failures=(*comp.failures, skipped))
        resumed = evolve(
            base, status=SagaStatus.COMPENSATING, compensation=comp, error_message=comp.cause
        )
    events: tuple[SagaEvent, ...] = (_event(resumed, EventType.SAGA_RESUMED),)
    if pause.resume_status is SagaStatus.STARTED and resumed.status is SagaStatus.RUNNING:
        # It leaves STARTED now: SAGA_RUNNING is published once, as for any saga (SPEC §6).
        events = (*events, _event(resumed, EventType.SAGA_RUNNING))
    if pause.forward and action is ResumeAction.COMPENSATE:
        # Compensation begins now: consumers see it as they do any other (SPEC §6).
        events = (*events, _event(resumed, EventType.SAGA_COMPENSATING))
    return Decision(resumed, (Commit(resumed, logs, events),))


def _on_cancel_requested(state: SagaState, wf: Workflow, event: Any) -> Decision:
    """An operator cancels a saga PAUSED in its forward phase: it compensates what it did and
    ends CANCELLED (SPEC §11). One paused while compensating cannot be cancelled."""
    assert isinstance(event, CancelRequested) and state.pause is not None
    pause = state.pause
    if not pause.forward:
        raise IllegalEvent(
            f"saga {state.saga_id} paused while compensating and cannot be cancelled; resume it"
        )
    at = event.at
    base = _stamp(state, at, pause=None, resumes=state.resumes + 1, in_doubt=False)
    pending = _to_compensate(base, wf, pause.in_doubt)
    if not pending:
        ended = evolve(base, status=SagaStatus.CANCELLED, error_message=None)
        return Decision(ended, (Commit(ended, (), (_event(ended, EventType.SAGA_CANCELLED),)),))
    comp = Compensation(cancelled=True, cause=None, pending=pending)
    compensating = evolve(
        base, status=SagaStatus.COMPENSATING, compensation=comp, error_message=None
    )
    events = (_event(compensating, EventType.SAGA_COMPENSATING),)
    return Decision(compensating, (Commit(compensating, (), events),))


_Handler = Callable[[SagaState, Workflow, Any], Decision]
_TRANSITIONS: dict[tuple[str, type], _Handler] = {
    (IDLE, Resume): _on_resume,
    (IDLE, CommitRefused): _on_commit_refused,
    (PAUSED, ResumeRequested): _on_resume_requested,
    (PAUSED, CancelRequested): _on_cancel_requested,
    (CALLING, StepSucceeded): _on_step_succeeded,
    (CALLING, StepFailed): _on_step_failed,
    (WAITING, RetryDue): _on_retry_due,
}

# ---------------------------------------------------------------- building blocks


def _start_compensation(
    state: SagaState,
    wf: Workflow,
    at: datetime,
    *,
    cancelled: bool,
    cause: str | None,
    logs: tuple[StepLog, ...],
    in_doubt: bool = False,
    events: tuple[SagaEvent, ...] = (),
) -> Decision:
    """Enter COMPENSATING with every completed step pending, newest first (a step its `when`
    skipped is not among them); with `in_doubt`, the step at `current_step` too (it may have
    taken effect)."""
    comp = Compensation(
        cancelled=cancelled, cause=cause, pending=_to_compensate(state, wf, in_doubt)
    )
    compensating = _stamp(
        state,
        at,
        status=SagaStatus.COMPENSATING,
        compensation=comp,
        error_message=cause,
        in_doubt=False,
    )
    events = (*events, _event(compensating, EventType.SAGA_COMPENSATING))
    return _compensate_next(compensating, wf, at, logs=logs, events=events)


def _to_compensate(state: SagaState, wf: Workflow, in_doubt: bool) -> tuple[int, ...]:
    """The steps to undo, newest first: those that succeeded (a step skipped by its `when` or
    by an operator is not among them), and with `in_doubt` the one at `current_step`."""
    last = min(state.current_step + (1 if in_doubt else 0), len(wf.steps))
    return tuple(
        i
        for i in reversed(range(last))
        if wf.steps[i].name in state.steps or (in_doubt and i == state.current_step)
    )


def _forward_failed(
    state: SagaState,
    wf: Workflow,
    index: int,
    at: datetime,
    error: str,
    logs: tuple[StepLog, ...],
    in_doubt: bool,
    events: tuple[SagaEvent, ...] = (),
) -> Decision:
    """A forward step failed for good: the saga pauses (`on_failure: pause`) or compensates."""
    cause = f"step {wf.steps[index].name} failed: {error}"
    if wf.pauses_on_failure(index):
        pause = Pause(
            "forward", SagaStatus.RUNNING, failed_step=index, error=cause, in_doubt=in_doubt
        )
        return _pause(state, at, pause, logs=logs, events=events)
    return _start_compensation(
        state, wf, at, cancelled=False, cause=cause, logs=logs, in_doubt=in_doubt, events=events
    )


def _compensation_failed(
    state: SagaState, wf: Workflow, index: int, at: datetime, error: str, logs: tuple[StepLog, ...]
) -> Decision:
    """A compensation failed for good: the saga pauses before it (`on_compensation_failure:
    pause`; a retry runs it again) or notes it and goes on with the earlier steps."""
    comp = state.compensation
    assert comp is not None and comp.pending[:1] == (index,)
    name = wf.steps[index].name
    if wf.pauses_on_compensation_failure(index):
        pause = Pause(
            "compensating",
            SagaStatus.COMPENSATING,
            failed_step=index,
            error=f"compensation of {name} failed: {error}",
        )
        return _pause(state, at, pause, logs=logs)
    comp = evolve(comp, pending=comp.pending[1:], failures=(*comp.failures, f"{name} ({error})"))
    return _compensate_next(evolve(state, compensation=comp), wf, at, logs=logs, events=())


def _pause(
    state: SagaState,
    at: datetime,
    pause: Pause,
    *,
    logs: tuple[StepLog, ...],
    events: tuple[SagaEvent, ...] = (),
) -> Decision:
    """Stop at this boundary and wait for an operator; the commit gives the lease back."""
    paused = _stamp(
        state,
        at,
        status=SagaStatus.PAUSED,
        pause=pause,
        in_flight=None,
        error_message=pause.error if pause.error else state.error_message,
    )
    return Decision(
        paused, (Commit(paused, logs, (*events, _event(paused, EventType.SAGA_PAUSED))),)
    )


def _past_deadline(state: SagaState, wf: Workflow, at: datetime) -> bool:
    """Whether the workflow's `deadline_secs` after `created_at` has passed (SPEC §11)."""
    return wf.deadline_secs is not None and at >= state.created_at + timedelta(
        seconds=wf.deadline_secs
    )


def _compensate_next(
    state: SagaState,
    wf: Workflow,
    at: datetime,
    *,
    logs: tuple[StepLog, ...],
    events: tuple[SagaEvent, ...],
) -> Decision:
    """Skip steps without a compensate method (and fail those whose `compensate_input` cannot
    make a request), then call the next compensation or finish."""
    comp = state.compensation
    assert comp is not None
    pending = comp.pending
    failures = comp.failures
    more: list[StepLog] = []
    request: Mapping[str, Any] | None = None
    while pending:
        index = pending[0]
        step = wf.steps[index]
        if step.compensate is not None:
            try:
                request = _compensation_request(state, wf, index)
                break
            except ExpressionFailed as exc:
                error = f"{INVALID_INPUT}: {exc}"
                more.append(
                    _plain_log(state, wf, index, Action.COMPENSATE, at, StepStatus.FAILED, error)
                )
                if wf.pauses_on_compensation_failure(index):
                    held = evolve(
                        state, compensation=evolve(comp, pending=pending, failures=failures)
                    )
                    return _compensation_failed(held, wf, index, at, error, (*logs, *more))
                failures = (*failures, f"{step.name} ({error})")
        else:
            more.append(
                _plain_log(state, wf, index, Action.COMPENSATE, at, StepStatus.SKIPPED, None)
            )
        pending = pending[1:]
    comp = evolve(comp, pending=pending, failures=failures)
    state = _stamp(state, at, compensation=comp, in_flight=None)
    logs = (*logs, *more)
    if pending:
        effects: tuple[Effect, ...] = (Commit(state, logs, events),) if (logs or events) else ()
        return _call(state, wf, Action.COMPENSATE, pending[0], 1, at, effects, request)
    return _finish_compensation(state, at, logs=logs, events=events)


def _compensation_request(state: SagaState, wf: Workflow, index: int) -> Mapping[str, Any]:
    """The request of step `index`'s compensation: its `compensate_input` over the context with
    the step's own forward request and response in it, else the forward request (SPEC §10)."""
    step = wf.steps[index]
    done = state.steps.get(step.name)
    if done is not None:
        forward, response = done.request, done.response
    else:  # in doubt: it was called (or may have been) and never answered
        forward, response = _forward_request(state, step), None
    if step.compensate_input is None:
        return forward if forward is not None else state.payload
    ctx = expressions.context(state)
    ctx["steps"][step.name] = {"request": forward, "response": response}
    return expressions.request(step.compensate_input, ctx, "compensate_input")


def _forward_request(state: SagaState, step: Step) -> Mapping[str, Any]:
    """What the step's execution sends: its `input` over the context, else the payload. The
    same context always gives the same request, so a recovered saga sends what was sent."""
    if step.input is None:
        return state.payload
    return expressions.request(step.input, expressions.context(state), "input")


def _start_step(
    state: SagaState,
    wf: Workflow,
    at: datetime,
    *,
    events: tuple[SagaEvent, ...] = (),
    in_doubt: bool = False,
) -> Decision:
    """Begin the forward step at `current_step`: skip it when its `when` is false, fail it when
    its request cannot be made, else call it. `events` are committed first (or with the skip)."""
    index = state.current_step
    step = wf.steps[index]
    if _past_deadline(state, wf, at):
        error = "deadline exceeded"
        log = _plain_log(state, wf, index, Action.EXECUTE, at, StepStatus.FAILED, error)
        return _forward_failed(state, wf, index, at, error, (log,), False, events)
    if step.when is not None:
        try:
            runs = expressions.is_true(expressions.evaluate(step.when, expressions.context(state)))
        except ExpressionFailed as exc:
            return _bad_input(state, wf, index, at, f"when: {exc}", events)
        if not runs:
            log = _plain_log(state, wf, index, Action.EXECUTE, at, StepStatus.SKIPPED, None)
            advanced = _stamp(state, at, current_step=index + 1)
            return Decision(advanced, (Commit(advanced, (log,), events),))
    try:
        request = _forward_request(state, step)
    except ExpressionFailed as exc:
        return _bad_input(state, wf, index, at, str(exc), events)
    effects: tuple[Effect, ...] = (Commit(state, (), events),) if events else ()
    # Calling the step settles any doubt about it: its outcome will be known (or a new expired
    # lease will say it is in doubt again).
    return _call(
        evolve(state, in_doubt=False),
        wf,
        Action.EXECUTE,
        index,
        1,
        at,
        effects,
        request,
        in_doubt=in_doubt,
    )


def _bad_input(
    state: SagaState,
    wf: Workflow,
    index: int,
    at: datetime,
    reason: str,
    events: tuple[SagaEvent, ...],
) -> Decision:
    """The step's request could not be made: it fails at once, uncalled (SPEC §10)."""
    error = f"{INVALID_INPUT}: {reason}"
    log = _plain_log(state, wf, index, Action.EXECUTE, at, StepStatus.FAILED, error)
    return _forward_failed(state, wf, index, at, error, (log,), False, events)


def _plain_log(
    state: SagaState,
    wf: Workflow,
    index: int,
    action: Action,
    at: datetime,
    status: StepStatus,
    error: str | None,
) -> StepLog:
    """The log of an execution that made no call (skipped, or its request could not be made)."""
    return StepLog(
        id=step_log_id(state.saga_id, index, action, state.resumes),
        saga_id=state.saga_id,
        step_index=index,
        step_name=wf.steps[index].name,
        action=action,
        status=status,
        request_payload=None,
        response_payload=None,
        error_message=error,
        started_at=at,
        completed_at=at,
    )


def _finish_compensation(
    state: SagaState, at: datetime, *, logs: tuple[StepLog, ...], events: tuple[SagaEvent, ...]
) -> Decision:
    comp = state.compensation
    assert comp is not None
    parts = [comp.cause] if comp.cause else (["cancelled"] if comp.failures else [])
    if comp.failures:
        parts.append("compensation failed for: " + ", ".join(comp.failures))
    failed = bool(comp.failures) or not comp.cancelled
    status = SagaStatus.FAILED if failed else SagaStatus.CANCELLED
    ended = _stamp(state, at, status=status, error_message="; ".join(parts) or None)
    kind = EventType.SAGA_FAILED if failed else EventType.SAGA_CANCELLED
    events = (*events, _event(ended, kind))
    return Decision(ended, (Commit(ended, logs, events, unless_pause_requested=True),))


def _complete(state: SagaState, at: datetime, *, logs: tuple[StepLog, ...]) -> Decision:
    done = _stamp(state, at, status=SagaStatus.COMPLETED, error_message=None, in_flight=None)
    # Written only if no cancel came since the flag was last read (SPEC §8: a 200 is never lost).
    commit = Commit(
        done,
        logs,
        (_event(done, EventType.SAGA_COMPLETED),),
        unless_cancel_requested=True,
        unless_pause_requested=True,
    )
    return Decision(done, (commit,))


def _abandon(state: SagaState, at: datetime, reason: str) -> Decision:
    """End the saga FAILED at once, writing no step log (used when its data cannot be kept)."""
    failed = _stamp(state, at, status=SagaStatus.FAILED, error_message=reason, in_flight=None)
    commit = Commit(
        failed, (), (_event(failed, EventType.SAGA_FAILED),), unless_pause_requested=True
    )
    return Decision(failed, (commit,))


def _call(
    state: SagaState,
    wf: Workflow,
    action: Action,
    index: int,
    attempt: int,
    started_at: datetime,
    effects: tuple[Effect, ...],
    request: Mapping[str, Any] | None,
    *,
    in_doubt: bool = False,
) -> Decision:
    """Put one participant call in flight, after `effects`; every attempt sends `request`;
    `in_doubt`: the execution may already have taken effect."""
    step = wf.steps[index]
    method = step.method if action is Action.EXECUTE else step.compensate
    assert method is not None
    request = state.payload if request is None else request
    calling = evolve(
        state,
        in_flight=InFlight(
            action=action,
            step_index=index,
            attempt=attempt,
            started_at=started_at,
            request=request,
            in_doubt=in_doubt,
        ),
    )
    call = CallParticipant(
        saga_id=state.saga_id,
        step_index=index,
        step_name=step.name,
        action=action,
        attempt=attempt,
        service=step.service,
        method=method,
        payload=request,
        timeout_secs=step.timeout_secs,
        idempotency_key=idempotency_key(state.saga_id, index, action),
    )
    return Decision(calling, (*effects, call))


def _pop_pending(state: SagaState) -> SagaState:
    comp = state.compensation
    assert comp is not None and state.in_flight is not None
    assert comp.pending and comp.pending[0] == state.in_flight.step_index
    return evolve(state, compensation=evolve(comp, pending=comp.pending[1:]), in_flight=None)


def _stamp(state: SagaState, at: datetime, **changes: Any) -> SagaState:
    return evolve(state, updated_at=at, **changes)


def _log(
    state: SagaState,
    step_name: str,
    flight: InFlight,
    status: StepStatus,
    at: datetime,
    response: dict[str, Any] | None,
    error: str | None,
) -> StepLog:
    return StepLog(
        id=step_log_id(state.saga_id, flight.step_index, flight.action, state.resumes),
        saga_id=state.saga_id,
        step_index=flight.step_index,
        step_name=step_name,
        action=flight.action,
        status=status,
        request_payload=flight.request,
        response_payload=response,
        error_message=error,
        started_at=flight.started_at,
        completed_at=at,
    )


def _event(state: SagaState, kind: EventType) -> SagaEvent:
    return SagaEvent(
        event_id=event_id(state.saga_id, kind, state.resumes),
        event_type=kind,
        saga_id=state.saga_id,
        workflow_name=state.workflow_name,
        status=state.status,
        current_step=state.current_step,
        correlation_id=state.correlation_id,
        error_message=state.error_message,
        payload=state.payload,
        timestamp=state.updated_at,
    )
