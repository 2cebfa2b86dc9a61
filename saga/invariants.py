"""The promises a saga keeps, written once, as checks over what one saga was seen to do.

Every test that attacks the server (the property tests of `decide`, the fault-injection harness
of the executor, the real-process chaos run, `saga simulate --explore`) records what it saw of
a saga in a `SagaRecord` and asks `findings(record)` (or `violations(record)`, the same answer
as text). An empty list means the saga kept every promise; each finding names one broken promise
in the saga's own words, with a stable `Kind` so a long run can count them by kind. `PROMISES`
says, per kind, what must hold: reports quote it rather than restating a rule.

Pure like the rest of the core: a record is data in, the answer is data out.

What the record may know depends on who watched. `calls` are the participant calls made, in the
order made; a caller that knows how each one ended says so in `CallMade.outcome`. `applied`,
when given, is the participants' own truth: how many times each idempotency key took effect.
`events` are what a consumer of the topic received, as bare types or, from a watcher that read
the records themselves, as `EventSeen` (id, key and status too).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

from attrs import field, frozen

from saga.model import Action, EventType, SagaState, SagaStatus, StepLog, StepStatus, Workflow

# How one participant call ended, as far as the saga server could know:
# "success" (a usable reply), "failed" (a definite error reply: nothing was done), or
# "unknown" (a deadline, an unusable reply, or no answer at all: it may have taken effect).
Outcome = Literal["success", "failed", "unknown"]


class Kind(enum.StrEnum):
    """Which promise a finding says was broken. The values are stable: results files and
    reports count findings by them."""

    SAGA_LOST = "saga_lost"
    SAGA_STUCK = "saga_stuck"
    CALL_WITH_WRONG_KEY = "call_with_wrong_key"
    STEP_APPLIED_TWICE = "step_applied_twice"
    COMPENSATION_APPLIED_TWICE = "compensation_applied_twice"
    STEP_LOGGED_TWICE = "step_logged_twice"
    COMPLETED_WITH_STEP_NOT_DONE = "completed_with_step_not_done"
    COMPLETED_WITH_COMPENSATION = "completed_with_compensation"
    CANCEL_200_COMPLETED = "cancel_200_completed"
    PAUSE_200_LOST = "pause_200_lost"
    COMPENSATION_MISSING = "compensation_missing"
    COMPENSATION_OF_UNCALLED_STEP = "compensation_of_uncalled_step"
    COMPENSATIONS_OUT_OF_ORDER = "compensations_out_of_order"
    CALLED_AFTER_COMPENSATION_BEGAN = "called_after_compensation_began"
    EVENT_MISSING = "event_missing"
    EVENTS_OUT_OF_ORDER = "events_out_of_order"
    EVENT_DOUBLED = "event_doubled"
    EVENT_UNEXPECTED = "event_unexpected"


# What must hold, per kind of finding (SPEC §1, §3, §6, §8).
PROMISES: Mapping[Kind, str] = {
    Kind.SAGA_LOST: "every saga the server acknowledged is in the store",
    Kind.SAGA_STUCK: "once the faults stop, every saga ends COMPLETED, FAILED or CANCELLED",
    Kind.CALL_WITH_WRONG_KEY: (
        "every participant call carries `idempotency-key` = `<saga_id>:<step_index>:<action>`"
        " of the step it calls"
    ),
    Kind.STEP_APPLIED_TWICE: (
        "each step's EXECUTE takes effect at most once (a call made again carries the same"
        " idempotency key, and the participant applies it once)"
    ),
    Kind.COMPENSATION_APPLIED_TWICE: "each step's COMPENSATE takes effect at most once",
    Kind.STEP_LOGGED_TWICE: (
        "one step log per execution: no log is written twice, and nothing is logged for a step"
        " or a compensation after it succeeded"
    ),
    Kind.COMPLETED_WITH_STEP_NOT_DONE: (
        "a COMPLETED saga executed every step successfully (logged SUCCESS, and applied by its"
        " participant)"
    ),
    Kind.COMPLETED_WITH_COMPENSATION: "a COMPLETED saga compensated nothing",
    Kind.CANCEL_200_COMPLETED: "a cancel answered 200 never ends COMPLETED",
    Kind.PAUSE_200_LOST: "a pause answered 200 is never lost: the saga paused (SPEC §11)",
    Kind.COMPENSATION_MISSING: (
        "a FAILED or CANCELLED saga compensated every step that may have taken effect (a"
        " compensation that still fails after its retries is logged FAILED)"
    ),
    Kind.COMPENSATION_OF_UNCALLED_STEP: (
        "no step is compensated that was never called (save the step a dead executor may have"
        " been calling)"
    ),
    Kind.COMPENSATIONS_OUT_OF_ORDER: (
        "compensations are made newest step first: each starts after every newer one's"
    ),
    Kind.CALLED_AFTER_COMPENSATION_BEGAN: (
        "no step is called once compensation has begun (by an executor holding the lease)"
    ),
    Kind.EVENT_MISSING: (
        "every status change is published: SAGA_RUNNING once the saga ran, SAGA_COMPENSATING"
        " once it compensated (always before SAGA_FAILED), and the event of its final status"
    ),
    Kind.EVENTS_OUT_OF_ORDER: (
        "a saga's events arrive in the order of its status changes, the final one last"
    ),
    Kind.EVENT_DOUBLED: (
        "each status change is published once (a re-delivery keeps its `event_id` and is not"
        " a second event)"
    ),
    Kind.EVENT_UNEXPECTED: (
        "no event for a status change that did not happen; every event keyed by its saga id,"
        " its `status` the one its type announces"
    ),
}


@frozen
class Finding:
    """One broken promise: which one, and what was seen, in the saga's words."""

    kind: Kind
    text: str


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
class EventSeen:
    """One event record as a consumer of the topic received it.

    `event_type` is the type as received (an `EventType`, or any other text for a record that
    is not one); `event_id` de-duplicates re-deliveries; `key` (the record's key, "" when it had
    none) and `status` are checked when the watcher saw them, None when it did not."""

    event_type: str
    event_id: str | None = None
    key: str | None = None
    status: str | None = None


@frozen
class SagaRecord:
    workflow: Workflow
    final: SagaState | None
    step_logs: Sequence[StepLog] = ()
    calls: Sequence[CallMade] = ()
    # Events in the order a consumer received them: bare types with duplicates (same event id)
    # removed, or `EventSeen` records (duplicates are then removed here, by `event_id`).
    events: Sequence[EventType | EventSeen] | None = None
    cancel_accepted: bool = False
    # A pause request was answered 200 (SPEC §11).
    pause_accepted: bool = False
    applied: Mapping[str, int] | None = None
    # Steps that may have been called without the call being seen (an executor died between
    # deciding the call and making it): compensating them is allowed, not required.
    in_doubt: frozenset[int] = field(factory=frozenset)


def violations(record: SagaRecord, *, must_be_terminal: bool = True) -> list[str]:
    """Every promise `record` shows broken, as text (empty when the saga behaved)."""
    return [f.text for f in findings(record, must_be_terminal=must_be_terminal)]


def findings(record: SagaRecord, *, must_be_terminal: bool = True) -> list[Finding]:
    """Every promise `record` shows broken, one finding per thing seen (empty when the saga
    behaved). A saga that has not ended is only held to the promises that hold at every
    moment, and, with `must_be_terminal`, to having ended."""
    found: list[Finding] = []
    add = found.append
    wf = record.workflow

    # Duplicates: a participant applies each idempotency key at most once.
    if record.applied is not None:
        for key, times in sorted(record.applied.items()):
            if times > 1:
                kind = (
                    Kind.COMPENSATION_APPLIED_TWICE
                    if key.endswith(":" + Action.COMPENSATE.value)
                    else Kind.STEP_APPLIED_TWICE
                )
                add(Finding(kind, f"{key} was applied {times} times"))
    found.extend(_log_findings(record))

    final = record.final
    if final is None:
        add(Finding(Kind.SAGA_LOST, "the saga was lost: it is not in the store"))
        return found
    found.extend(_key_findings(record, final))
    if not final.status.terminal:
        if must_be_terminal:
            add(Finding(Kind.SAGA_STUCK, f"the saga never ended: it is still {final.status.value}"))
        return found

    fresh = [c for c in record.calls if not c.stale]
    executed = {c.step_index for c in record.calls if c.action is Action.EXECUTE}
    compensated_calls = [c for c in fresh if c.action is Action.COMPENSATE]
    compensate_logs = {g.step_index for g in record.step_logs if g.action is Action.COMPENSATE}

    if final.status is SagaStatus.COMPLETED:
        succeeded = {
            g.step_index
            for g in record.step_logs
            if g.action is Action.EXECUTE and g.status is StepStatus.SUCCESS
        }
        # A step its `when` skipped (SPEC §10) is done without being called.
        skipped = {
            g.step_index
            for g in record.step_logs
            if g.action is Action.EXECUTE and g.status is StepStatus.SKIPPED
        }
        for i in range(len(wf.steps)):
            missing = []
            if i in skipped:
                if i in executed:
                    missing.append("was skipped by its `when`, yet called")
                if missing:
                    add(
                        Finding(
                            Kind.COMPLETED_WITH_STEP_NOT_DONE,
                            f"COMPLETED, but step {_name(wf, i)} " + " and ".join(missing),
                        )
                    )
                continue
            if i not in succeeded:
                missing.append("has no successful execution log")
            if record.applied is not None and not record.applied.get(
                _key(final, i, Action.EXECUTE), 0
            ):
                missing.append("was never applied by its participant")
            if missing:
                add(
                    Finding(
                        Kind.COMPLETED_WITH_STEP_NOT_DONE,
                        f"COMPLETED, but step {_name(wf, i)} " + " and ".join(missing),
                    )
                )
        undone_keys = record.applied is not None and any(
            record.applied.get(_key(final, i, Action.COMPENSATE), 0) for i in range(len(wf.steps))
        )
        if compensated_calls or compensate_logs or undone_keys:
            add(Finding(Kind.COMPLETED_WITH_COMPENSATION, "COMPLETED, but compensations were made"))
        if record.cancel_accepted:
            add(
                Finding(
                    Kind.CANCEL_200_COMPLETED,
                    "a cancel was answered 200, but the saga ended COMPLETED",
                )
            )
    else:
        # Every step that may have taken effect is compensated (its compensation made, or
        # logged SKIPPED for want of a method, or FAILED after its retries).
        gave_up = {
            g.step_index
            for g in record.step_logs
            if g.action is Action.COMPENSATE and g.status is not StepStatus.SUCCESS
        }
        may_have = _may_have_taken_effect(record)
        # A step skipped (its `when` false, or an operator's skip after it failed) is left as it
        # is: never compensated (SPEC §10, §11).
        skipped = {
            g.step_index
            for g in record.step_logs
            if g.action is Action.EXECUTE and g.status is StepStatus.SKIPPED
        }
        for i in sorted(skipped & (compensate_logs | {c.step_index for c in compensated_calls})):
            add(
                Finding(
                    Kind.COMPENSATION_OF_UNCALLED_STEP,
                    f"step {_name(wf, i)} was skipped, yet compensated",
                )
            )
        for i in range(len(wf.steps)):
            if i in skipped:
                continue
            if i in may_have and i not in compensate_logs:
                add(
                    Finding(
                        Kind.COMPENSATION_MISSING,
                        f"step {_name(wf, i)} may have taken effect but was never compensated",
                    )
                )
            elif record.applied is not None and i not in gave_up:
                done = record.applied.get(_key(final, i, Action.EXECUTE), 0)
                undone = record.applied.get(_key(final, i, Action.COMPENSATE), 0)
                if done and not undone:
                    add(
                        Finding(
                            Kind.COMPENSATION_MISSING,
                            f"step {_name(wf, i)} was applied but its compensation never was",
                        )
                    )
        # ... and no step that never ran is.
        for i in sorted({c.step_index for c in compensated_calls}):
            if i not in executed and i not in record.in_doubt:
                add(
                    Finding(
                        Kind.COMPENSATION_OF_UNCALLED_STEP,
                        f"step {_name(wf, i)} was compensated but was never called",
                    )
                )

    # Compensations newest first: each step's compensation starts after every newer one's.
    order: list[int] = []
    for c in compensated_calls:
        if c.step_index not in order:
            order.append(c.step_index)
    if order != sorted(order, reverse=True):
        add(
            Finding(
                Kind.COMPENSATIONS_OUT_OF_ORDER,
                "compensations were not made newest first: "
                + ", ".join(_name(wf, i) for i in order),
            )
        )
    # No forward call once compensation has begun (from an executor that held the lease).
    first_undo = next((n for n, c in enumerate(fresh) if c.action is Action.COMPENSATE), None)
    if first_undo is not None:
        late = dict.fromkeys(c.step_index for c in fresh[first_undo:] if c.action is Action.EXECUTE)
        for i in late:
            add(
                Finding(
                    Kind.CALLED_AFTER_COMPENSATION_BEGAN,
                    f"step {_name(wf, i)} was called after compensation began",
                )
            )

    if record.events is not None:
        found.extend(_event_findings(record, final))
    return found


def _name(wf: Workflow, index: int) -> str:
    if 0 <= index < len(wf.steps):
        return wf.steps[index].name
    return f"#{index} (not a step of {wf.name})"


def _key(final: SagaState, index: int, action: Action) -> str:
    return f"{final.saga_id}:{index}:{action.value}"


def _log_findings(record: SagaRecord) -> list[Finding]:
    """One log per execution: none written twice, none after its step's (or compensation's)
    successful one. An operator's retry runs a failed execution again, never a successful one."""
    found: list[Finding] = []
    ids = Counter(g.id for g in record.step_logs)
    for log_id, times in ids.items():
        if times > 1:
            found.append(
                Finding(Kind.STEP_LOGGED_TWICE, f"step log {log_id} was written {times} times")
            )
    seen: set[str] = set()
    succeeded: set[tuple[int, Action]] = set()
    after: dict[tuple[int, Action], None] = {}
    for g in record.step_logs:
        if g.id in seen:
            continue
        seen.add(g.id)
        if (g.step_index, g.action) in succeeded:
            after[(g.step_index, g.action)] = None
        if g.status is StepStatus.SUCCESS:
            succeeded.add((g.step_index, g.action))
    for index, action in after:
        found.append(
            Finding(
                Kind.STEP_LOGGED_TWICE,
                f"step {_name(record.workflow, index)} has another {action.value} log after"
                " its successful one",
            )
        )
    return found


def _key_findings(record: SagaRecord, final: SagaState) -> list[Finding]:
    """Every call carries the idempotency key of the step and action it calls."""
    found: list[Finding] = []
    wrong: dict[tuple[int, Action, str], None] = {}
    for c in record.calls:
        if c.idempotency_key != _key(final, c.step_index, c.action):
            wrong[(c.step_index, c.action, c.idempotency_key)] = None
    for index, action, key in wrong:
        found.append(
            Finding(
                Kind.CALL_WITH_WRONG_KEY,
                f"the {action.value} call of step {_name(record.workflow, index)} carried the key"
                f" {key!r}, not {_key(final, index, action)!r}",
            )
        )
    return found


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


# Status changes in the order they can happen; an event type not ranked here may come between.
_ORDER = {
    EventType.SAGA_RUNNING: 0,
    EventType.SAGA_COMPENSATING: 1,
    EventType.SAGA_COMPLETED: 2,
    EventType.SAGA_FAILED: 2,
    EventType.SAGA_CANCELLED: 2,
}
# The event that announces each final status.
END_EVENT: Mapping[SagaStatus, EventType] = {
    SagaStatus.COMPLETED: EventType.SAGA_COMPLETED,
    SagaStatus.FAILED: EventType.SAGA_FAILED,
    SagaStatus.CANCELLED: EventType.SAGA_CANCELLED,
}
# The `status` an event of each type carries (SPEC §6: the saga's status after the change).
_ANNOUNCES = {
    EventType.SAGA_PAUSED: SagaStatus.PAUSED,
    EventType.SAGA_RUNNING: SagaStatus.RUNNING,
    EventType.SAGA_COMPENSATING: SagaStatus.COMPENSATING,
    EventType.SAGA_COMPLETED: SagaStatus.COMPLETED,
    EventType.SAGA_FAILED: SagaStatus.FAILED,
    EventType.SAGA_CANCELLED: SagaStatus.CANCELLED,
}
_EVENT_TYPES = {e.value: e for e in EventType}


def _event_findings(record: SagaRecord, final: SagaState) -> list[Finding]:
    found: list[Finding] = []
    add = found.append
    events: list[EventType] = []
    seen_ids: set[str] = set()
    for item in record.events or ():
        seen = item if isinstance(item, EventSeen) else EventSeen(item.value)
        if seen.event_id is not None:
            if seen.event_id in seen_ids:
                continue  # a re-delivery: consumers de-duplicate by event_id
            seen_ids.add(seen.event_id)
        kind = _EVENT_TYPES.get(seen.event_type)
        if kind is None:
            add(Finding(Kind.EVENT_UNEXPECTED, f"an event of no known type: {seen.event_type!r}"))
            continue
        events.append(kind)
        if seen.key is not None and seen.key != final.saga_id:
            add(
                Finding(
                    Kind.EVENT_UNEXPECTED, f"{kind.value} keyed {seen.key!r}, not by its saga id"
                )
            )
        announced = _ANNOUNCES.get(kind)
        if seen.status is not None and announced is not None and seen.status != announced.value:
            add(Finding(Kind.EVENT_UNEXPECTED, f"{kind.value} with status {seen.status!r}"))

    for kind, times in Counter(events).items():
        if times > 1 and kind in _ORDER:
            add(Finding(Kind.EVENT_DOUBLED, f"{kind.value} was published {times} times"))
    ranks = [_ORDER[e] for e in events if e in _ORDER]
    end = END_EVENT[final.status]
    if ranks != sorted(ranks) or (end in events and events[-1] is not end):
        add(
            Finding(
                Kind.EVENTS_OUT_OF_ORDER,
                "events out of order: " + ", ".join(e.value for e in events),
            )
        )
    if end not in events:
        add(Finding(Kind.EVENT_MISSING, f"{end.value} is missing"))
    for other in dict.fromkeys(e for e in events if e in END_EVENT.values() and e is not end):
        add(Finding(Kind.EVENT_UNEXPECTED, f"{other.value} for a {final.status.value} saga"))

    if record.pause_accepted and EventType.SAGA_PAUSED not in events:
        add(Finding(Kind.PAUSE_200_LOST, "a pause was answered 200, but the saga never paused"))

    logged = {g.action for g in record.step_logs}
    called = {c.action for c in record.calls}
    # A saga that never called a step (cancelled, or paused and compensated, before its first)
    # may end without SAGA_RUNNING; a COMPLETED one always ran.
    ran = final.status is SagaStatus.COMPLETED or Action.EXECUTE in logged | called
    if ran and EventType.SAGA_RUNNING not in events:
        add(Finding(Kind.EVENT_MISSING, "SAGA_RUNNING is missing"))
    compensated = final.status is SagaStatus.FAILED or (
        final.status is SagaStatus.CANCELLED and Action.COMPENSATE in logged | called
    )
    if EventType.SAGA_COMPENSATING not in events:
        if compensated:
            add(Finding(Kind.EVENT_MISSING, "SAGA_COMPENSATING is missing"))
    elif final.status is SagaStatus.COMPLETED:
        add(Finding(Kind.EVENT_UNEXPECTED, "SAGA_COMPENSATING for a COMPLETED saga"))
    return found
