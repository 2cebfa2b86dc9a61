"""The promises a saga keeps, written once, as checks over what one saga was seen to do.

Every test that attacks the server (the property tests of `decide`, the fault-injection harness
of the executor, the real-process chaos run, `saga simulate --explore`) records what it saw of
a saga in a `SagaRecord` and asks `violations(record)`. An empty list means the saga kept every
promise; each entry names one broken promise in the saga's own words.

Pure like the rest of the core: a record is data in, the answer is data out.

What the record may know depends on who watched. `calls` are the participant calls made, in the
order made; a caller that knows how each one ended says so in `CallMade.outcome`. `applied`,
when given, is the participants' own truth: how many times each idempotency key took effect.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

from attrs import field, frozen

from saga.model import Action, EventType, SagaState, SagaStatus, StepLog, StepStatus, Workflow

# How one participant call ended, as far as the saga server could know:
# "success" (a usable reply), "failed" (a definite error reply: nothing was done), or
# "unknown" (a deadline, an unusable reply, or no answer at all: it may have taken effect).
Outcome = Literal["success", "failed", "unknown"]


@frozen
class CallMade:
    step_index: int
    action: Action
    attempt: int
    idempotency_key: str
    outcome: Outcome = "unknown"
    # Made by an executor that had already lost the saga's lease (a frozen process waking up):
    # such a call cannot be prevented by the server, only kept from being recorded.
    stale: bool = False


@frozen
class SagaRecord:
    workflow: Workflow
    final: SagaState | None
    step_logs: Sequence[StepLog] = ()
    calls: Sequence[CallMade] = ()
    # Event types in the order a consumer received them, duplicates (same event id) removed.
    events: Sequence[EventType] | None = None
    cancel_accepted: bool = False
    applied: Mapping[str, int] | None = None
    # Steps that may have been called without the call being seen (an executor died between
    # deciding the call and making it): compensating them is allowed, not required.
    in_doubt: frozenset[int] = field(factory=frozenset)


def violations(record: SagaRecord, *, must_be_terminal: bool = True) -> list[str]:
    """Every promise `record` shows broken (empty when the saga behaved)."""
    found: list[str] = []
    final = record.final
    if final is None:
        return ["the saga was lost: it is not in the store"]
    if not final.status.terminal:
        if must_be_terminal:
            found.append(f"the saga never ended: it is still {final.status.value}")
        return found

    wf = record.workflow
    name = {i: s.name for i, s in enumerate(wf.steps)}
    fresh = [c for c in record.calls if not c.stale]
    executed = {c.step_index for c in record.calls if c.action is Action.EXECUTE}
    compensated_calls = [c for c in fresh if c.action is Action.COMPENSATE]
    compensate_logs = {g.step_index for g in record.step_logs if g.action is Action.COMPENSATE}

    # Duplicates: a participant applies each idempotency key at most once.
    if record.applied is not None:
        for key, times in sorted(record.applied.items()):
            if times > 1:
                found.append(f"{key} was applied {times} times")

    if final.status is SagaStatus.COMPLETED:
        succeeded = {
            g.step_index
            for g in record.step_logs
            if g.action is Action.EXECUTE and g.status is StepStatus.SUCCESS
        }
        for i in range(len(wf.steps)):
            if i not in succeeded:
                found.append(f"COMPLETED, but step {name[i]} has no successful execution log")
        if compensated_calls or compensate_logs:
            found.append("COMPLETED, but compensations were made")
        if record.cancel_accepted:
            found.append("a cancel was answered 200, but the saga ended COMPLETED")
    else:
        # Every step that may have taken effect is compensated (its compensation made, or
        # logged SKIPPED for want of a method, or FAILED after its retries).
        for i in sorted(_may_have_taken_effect(record)):
            if i not in compensate_logs:
                found.append(f"step {name[i]} may have taken effect but was never compensated")
        # ... and no step that never ran is.
        for i in sorted({c.step_index for c in compensated_calls}):
            if i not in executed and i not in record.in_doubt:
                found.append(f"step {name[i]} was compensated but was never called")
        if record.applied is not None:
            gave_up = {
                g.step_index
                for g in record.step_logs
                if g.action is Action.COMPENSATE and g.status is not StepStatus.SUCCESS
            }
            for i in range(len(wf.steps)):
                done = record.applied.get(_key(final, i, Action.EXECUTE), 0)
                undone = record.applied.get(_key(final, i, Action.COMPENSATE), 0)
                if done and not undone and i not in gave_up:
                    found.append(f"step {name[i]} was applied but its compensation never was")

    # Compensations newest first: each step's compensation starts after every newer one's.
    order: list[int] = []
    for c in compensated_calls:
        if c.step_index not in order:
            order.append(c.step_index)
    if order != sorted(order, reverse=True):
        found.append(
            "compensations were not made newest first: " + ", ".join(name[i] for i in order)
        )
    # No forward call once compensation has begun (from an executor that held the lease).
    first_undo = next((n for n, c in enumerate(fresh) if c.action is Action.COMPENSATE), None)
    if first_undo is not None:
        late = [c for c in fresh[first_undo:] if c.action is Action.EXECUTE]
        for c in late:
            found.append(f"step {name[c.step_index]} was called after compensation began")

    ids = Counter(g.id for g in record.step_logs)
    for log_id, times in ids.items():
        if times > 1:
            found.append(f"step log {log_id} was written {times} times")

    if record.events is not None:
        found.extend(_event_violations(record, final))
    return found


def _key(final: SagaState, index: int, action: Action) -> str:
    return f"{final.saga_id}:{index}:{action.value}"


def _may_have_taken_effect(record: SagaRecord) -> set[int]:
    """Steps whose last forward call succeeded or ended without a definite answer."""
    if record.applied is not None and record.final is not None:
        final = record.final
        return {
            i
            for i in range(len(record.workflow.steps))
            if record.applied.get(_key(final, i, Action.EXECUTE), 0) > 0
        }
    last: dict[int, CallMade] = {}
    for c in record.calls:
        if c.action is Action.EXECUTE:
            last[c.step_index] = c
    return {i for i, c in last.items() if c.outcome != "failed"}


_ORDER = {
    EventType.SAGA_RUNNING: 0,
    EventType.SAGA_COMPENSATING: 1,
    EventType.SAGA_COMPLETED: 2,
    EventType.SAGA_FAILED: 2,
    EventType.SAGA_CANCELLED: 2,
}
_END_EVENT = {
    SagaStatus.COMPLETED: EventType.SAGA_COMPLETED,
    SagaStatus.FAILED: EventType.SAGA_FAILED,
    SagaStatus.CANCELLED: EventType.SAGA_CANCELLED,
}


def _event_violations(record: SagaRecord, final: SagaState) -> list[str]:
    events = list(record.events or ())
    found: list[str] = []
    ranks = [_ORDER[e] for e in events if e in _ORDER]
    if ranks != sorted(ranks) or len(set(events)) != len(events):
        found.append("events out of order: " + ", ".join(e.value for e in events))
    end = _END_EVENT[final.status]
    if not events or events[-1] is not end:
        found.append(f"the last event is not {end.value}")
    if any(c.action is Action.EXECUTE for c in record.calls) and (
        EventType.SAGA_RUNNING not in events
    ):
        found.append("SAGA_RUNNING is missing")
    if any(c.action is Action.COMPENSATE for c in record.calls) and (
        EventType.SAGA_COMPENSATING not in events
    ):
        found.append("SAGA_COMPENSATING is missing")
    return found
