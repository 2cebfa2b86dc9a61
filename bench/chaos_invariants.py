"""The figures of a chaos run: the promises of `saga.invariants`, checked from outside.

Everything here is a pure function of what was observed after the run: what the client was
told (the saga ids the API acknowledged, the answers to its cancels), what REST shows (each
saga and its step logs), what the participant applied (its record of every call and of how
many times it applied each idempotency key) and what the events topic holds. No I/O.

The promises themselves are stated once, in `saga.invariants`: this module only turns each
saga the run started into a `SagaRecord` (`records`), asks `saga.invariants.findings` about it
and counts the findings by kind, one figure per kind (`FIGURES`, all must be 0). What the
outside cannot see is said in the record, not by bending a rule:

- a participant call cannot be told apart from one made by a worker that was frozen past its
  lease and has just been continued, so a call received within `STALE_AFTER_CONT_S` of a
  SIGCONT, for a saga created before that worker froze (a frozen worker claims nothing), is
  marked `stale` (counted apart, as `calls_maybe_from_a_deposed_worker`);
- the leases are not visible, so the step a saga stood at (its first step without a successful
  execution log) is `in_doubt`: an executor whose lease ran out may have called it unseen.

Figures that are about the run rather than about one saga: calls that name no step of a saga
the run started, and REST answers that could not be read as a saga (both must be 0). Counted
apart, because SPEC allows them: compensations applied for a step whose EXECUTE the participant
never applied (SPEC §1, §3), re-deliveries of an applied key (at-least-once), keys first applied
after REST shows their saga ended (a deposed executor calling out), and the stale calls above.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from saga.codec import parse_timestamp
from saga.invariants import (
    PROMISES,
    CallMade,
    EventSeen,
    Kind,
    Outcome,
    SagaRecord,
    findings,
)
from saga.model import Action, SagaState, SagaStatus, StepLog, StepStatus, Workflow

TERMINAL = tuple(s.value for s in SagaStatus if s.terminal)
EXECUTE = Action.EXECUTE.value
COMPENSATE = Action.COMPENSATE.value
# A worker continued after a SIGSTOP may still send a call it had decided before it froze; on a
# loaded machine its first moments can take this long.
STALE_AFTER_CONT_S = 2.0

# (figure, the kind of finding it counts), every kind once, in the order they are printed.
FIGURES: tuple[tuple[str, Kind], ...] = (
    ("sagas_lost", Kind.SAGA_LOST),
    ("sagas_stuck", Kind.SAGA_STUCK),
    ("steps_applied_twice", Kind.STEP_APPLIED_TWICE),
    ("steps_logged_twice", Kind.STEP_LOGGED_TWICE),
    ("calls_with_wrong_key", Kind.CALL_WITH_WRONG_KEY),
    ("completed_with_step_not_done", Kind.COMPLETED_WITH_STEP_NOT_DONE),
    ("compensations_missing", Kind.COMPENSATION_MISSING),
    ("compensations_doubled", Kind.COMPENSATION_APPLIED_TWICE),
    ("compensations_of_steps_never_called", Kind.COMPENSATION_OF_UNCALLED_STEP),
    ("compensations_out_of_order", Kind.COMPENSATIONS_OUT_OF_ORDER),
    ("calls_after_compensation_began", Kind.CALLED_AFTER_COMPENSATION_BEGAN),
    ("compensations_in_completed_sagas", Kind.COMPLETED_WITH_COMPENSATION),
    ("cancels_200_completed", Kind.CANCEL_200_COMPLETED),
    ("pauses_200_lost", Kind.PAUSE_200_LOST),
    ("events_missing", Kind.EVENT_MISSING),
    ("events_out_of_order", Kind.EVENTS_OUT_OF_ORDER),
    ("events_doubled", Kind.EVENT_DOUBLED),
    ("events_unexpected", Kind.EVENT_UNEXPECTED),
)
# Figures about the run as a whole, that must be 0 too.
RUN_FIGURES: tuple[tuple[str, str], ...] = (
    (
        "calls_for_no_saga_of_the_run",
        "every participant call names, in its `x-saga-*` metadata, a step of a saga the run"
        " started",
    ),
    ("sagas_unreadable_over_rest", "REST shows every saga in the shape SPEC §4 gives it"),
)
# (name, what must hold) for every figure that must be 0, in the order they are printed.
MUST_BE_ZERO: tuple[tuple[str, str], ...] = (
    *((name, PROMISES[kind]) for name, kind in FIGURES),
    *RUN_FIGURES,
)
ALLOWED: tuple[tuple[str, str], ...] = (
    (
        "compensations_of_unapplied_steps",
        "COMPENSATE applied for a step whose EXECUTE was never applied (allowed: SPEC §1, §3)",
    ),
    ("redeliveries", "calls for a key the participant had already applied (at-least-once)"),
    (
        "keys_applied_after_saga_ended",
        "a call took effect after REST shows its saga terminal (a deposed executor calling out)",
    ),
    (
        "calls_maybe_from_a_deposed_worker",
        f"calls received within {STALE_AFTER_CONT_S:g} s of a frozen worker being continued, for"
        " sagas that existed before it froze: checked as calls of an executor that may have lost"
        " the lease",
    ),
)
EXAMPLES_PER_FIGURE = 3


@dataclass
class ClientSaga:
    """What the load generator knows about one saga it started."""

    saga_id: str
    n: int
    kind: str  # forward | compensating | cancelled
    fail_at: int | None
    started_at: float  # epoch seconds, when the API acknowledged it
    cancel_answers: list[str] = field(default_factory=list)  # "200", "409", "error: ..."
    pause_answers: list[str] = field(default_factory=list)  # the same, for pause requests
    cancel_sent_at: float | None = None
    start_answer: str = ""  # e.g. "HTTP 201 from api-0"
    start_attempts: int = 1

    @property
    def cancel_200(self) -> bool:
        return "200" in self.cancel_answers

    @property
    def pause_200(self) -> bool:
        return "200" in self.pause_answers


@dataclass
class Observed:
    """Everything the run saw, gathered after the drain."""

    sagas: Mapping[str, ClientSaga]
    rest: Mapping[str, dict[str, Any] | None]  # saga detail, None when REST does not find it
    calls: Sequence[dict[str, Any]]  # participant calls in arrival order
    applied: Mapping[str, int]  # idempotency key -> times applied
    events: Sequence[dict[str, Any]]  # topic records in offset order: key, value (parsed), offset
    workflow: Workflow  # the workflow every saga of the run runs
    # method path -> how many calls per key fail before one applies (scripted `fail_times`)
    failures_before_apply: Mapping[str, int] = field(default_factory=dict)
    faults: Sequence[dict[str, Any]] = ()  # injected faults: kind, target, at, until (epoch s)

    @property
    def step_count(self) -> int:
        return len(self.workflow.steps)


@dataclass
class Figure:
    name: str
    meaning: str
    must_be_zero: bool
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, example: dict[str, Any]) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES_PER_FIGURE:
            self.examples.append(example)


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _key(saga_id: str, step: int, action: str) -> str:
    return f"{saga_id}:{step}:{action}"


def _meta(call: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = call.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


class _Index:
    """The participant's record and the topic, grouped per saga (by the saga id each call and
    event names), with what each call's answer was and whether it may be stale."""

    def __init__(self, seen: Observed) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = defaultdict(list)  # saga -> its calls
        self.by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for call in seen.calls:
            meta = _meta(call)
            key = str(meta.get("idempotency-key", ""))
            self.by_key[key].append(call)
            saga_id = str(meta.get("x-saga-id") or key.split(":", 1)[0])
            self.calls[saga_id].append(call)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in seen.events:
            value = record.get("value")
            saga_id = value.get("saga_id") if isinstance(value, dict) else None
            self.events[str(saga_id or record.get("key"))].append(record)
        # The participant's answer to each call (by identity): the first `failures_before_apply`
        # calls of an applied key failed as scripted, the others got the stored reply; every
        # call of a key never applied failed.
        self.outcome: dict[int, Outcome] = {}
        for key, calls in self.by_key.items():
            skip = seen.failures_before_apply.get(str(calls[0].get("path")), 0)
            applied = seen.applied.get(key, 0) >= 1
            for n, call in enumerate(calls):
                self.outcome[id(call)] = "success" if applied and n >= skip else "failed"
        # (frozen at, continued at) of every worker SIGSTOPped and continued again.
        self.frozen = sorted(
            (float(f["at"]), float(f["until"]))
            for f in seen.faults
            if f.get("kind") == "worker_sigstop" and f.get("until") is not None
        )

    def applied_at(self, key: str, failures_before_apply: Mapping[str, int]) -> float | None:
        """When the participant applied `key`: its first call that was not scripted to fail."""
        calls = self.by_key.get(key, [])
        if not calls:
            return None
        skip = failures_before_apply.get(str(calls[0].get("path")), 0)
        call = calls[min(skip, len(calls) - 1)]
        return float(call["received_at"])

    def maybe_stale(self, call: Mapping[str, Any], created: float | None) -> bool:
        """Whether `call`, of a saga created at `created` (epoch s), may be a worker's that was
        frozen while holding the saga: it arrived just after the worker was continued, and the
        saga existed before it froze."""
        at = float(call.get("received_at", 0.0))
        return any(
            woke <= at <= woke + STALE_AFTER_CONT_S and (created is None or created <= froze)
            for froze, woke in self.frozen
        )


def _call_made(
    index: _Index, call: Mapping[str, Any], created: float | None = None
) -> CallMade | None:
    """The call as a `CallMade`, or None when its metadata names no step and action."""
    meta = _meta(call)
    try:
        step = int(str(meta.get("x-saga-step")))
        action = Action(str(meta.get("x-saga-action")))
    except ValueError:
        return None
    try:
        attempt = int(str(meta.get("x-saga-attempt")))
    except ValueError:
        attempt = 0
    return CallMade(
        step,
        action,
        attempt,
        str(meta.get("idempotency-key", "")),
        index.outcome.get(id(call), "unknown"),
        stale=index.maybe_stale(call, created),
    )


def _state(saga: Mapping[str, Any], workflow: Workflow) -> SagaState:
    """A saga as REST shows it (SPEC §4), as the core's `SagaState` (raises on a bad shape)."""
    return SagaState(
        saga_id=str(saga["saga_id"]),
        workflow_name=str(saga["workflow_name"]),
        workflow_version=workflow.version,
        status=SagaStatus(saga["status"]),
        current_step=int(saga["current_step"]),
        payload=dict(saga.get("payload") or {}),
        correlation_id=saga.get("correlation_id"),
        initiated_by=saga.get("initiated_by"),
        error_message=saga.get("error_message"),
        created_at=parse_timestamp(str(saga["created_at"])),
        updated_at=parse_timestamp(str(saga["updated_at"])),
    )


def _step_log(log: Mapping[str, Any]) -> StepLog:
    """A step log as REST shows it, as the core's `StepLog` (raises on a bad shape)."""
    completed = log.get("completed_at")
    return StepLog(
        id=str(log["id"]),
        saga_id=str(log["saga_id"]),
        step_index=int(log["step_index"]),
        step_name=str(log["step_name"]),
        action=Action(log["action"]),
        status=StepStatus(log["status"]),
        request_payload=log.get("request_payload"),
        response_payload=log.get("response_payload"),
        error_message=log.get("error_message"),
        started_at=parse_timestamp(str(log["started_at"])),
        completed_at=parse_timestamp(str(completed)) if completed else None,
    )


def _event_seen(record: Mapping[str, Any]) -> EventSeen:
    value = record.get("value")
    key = record.get("key")
    if not isinstance(value, dict):
        return EventSeen(f"(offset {record.get('offset')}: not a JSON object)", key=key or "")
    event_id = value.get("event_id")
    status = value.get("status")
    return EventSeen(
        str(value.get("event_type")),
        event_id=None if event_id is None else str(event_id),
        key=key or "",
        status=None if status is None else str(status),
    )


def _record(seen: Observed, index: _Index, saga_id: str) -> SagaRecord:
    """What the run saw of one saga it started (raises when REST's answer cannot be read)."""
    detail = seen.rest.get(saga_id)
    wf = seen.workflow
    final = logs = None
    if detail is not None:
        final = _state(detail["saga"], wf)
        logs = tuple(_step_log(g) for g in detail.get("step_logs", []))
    created = final.created_at.timestamp() if final is not None else None
    calls = tuple(
        made
        for made in (_call_made(index, c, created) for c in index.calls.get(saga_id, ()))
        if made
    )
    succeeded = {
        g.step_index
        for g in logs or ()
        if g.action is Action.EXECUTE and g.status is StepStatus.SUCCESS
    }
    standing = next((i for i in range(len(wf.steps)) if i not in succeeded), None)
    client = seen.sagas.get(saga_id)
    return SagaRecord(
        workflow=wf,
        final=final,
        step_logs=logs or (),
        calls=calls,
        events=tuple(_event_seen(r) for r in index.events.get(saga_id, ())),
        cancel_accepted=bool(client and client.cancel_200),
        pause_accepted=bool(client and client.pause_200),
        applied={k: n for k, n in seen.applied.items() if k.startswith(saga_id + ":")},
        in_doubt=frozenset(() if standing is None else (standing,)),
    )


def records(seen: Observed) -> dict[str, SagaRecord]:
    """One `SagaRecord` per saga the run started whose REST answer could be read."""
    index = _Index(seen)
    out: dict[str, SagaRecord] = {}
    for saga_id in seen.sagas:
        try:
            out[saga_id] = _record(seen, index, saga_id)
        except (KeyError, TypeError, ValueError):
            continue
    return out


def check(seen: Observed) -> dict[str, Figure]:
    """Every figure of the module docstring, with up to three example sagas each."""
    figures = {name: Figure(name, meaning, True) for name, meaning in MUST_BE_ZERO}
    figures.update({name: Figure(name, meaning, False) for name, meaning in ALLOWED})
    by_kind = {kind: figures[name] for name, kind in FIGURES}
    index = _Index(seen)
    applied = seen.applied

    def example(saga_id: str, note: str) -> dict[str, Any]:
        return describe(seen, index, saga_id, note)

    # Calls the run cannot place in a saga of its own; re-deliveries.
    for saga_id, calls in index.calls.items():
        for call in calls:
            if _call_made(index, call) is None or saga_id not in seen.sagas:
                why = (
                    "its metadata names no step and action"
                    if saga_id in seen.sagas
                    else "the run started no saga with this id"
                )
                figures["calls_for_no_saga_of_the_run"].add(
                    {"saga_id": saga_id or None, "note": why, "call": dict(call)}
                )
    for key, calls in index.by_key.items():
        if applied.get(key, 0) >= 1:
            extra = len(calls) - 1 - seen.failures_before_apply.get(str(calls[0].get("path")), 0)
            figures["redeliveries"].count += max(0, extra)

    for saga_id in seen.sagas:
        try:
            record = _record(seen, index, saga_id)
        except (KeyError, TypeError, ValueError) as exc:
            figures["sagas_unreadable_over_rest"].add(
                example(saga_id, f"REST detail unreadable: {type(exc).__name__}: {exc}")
            )
            continue
        for finding in findings(record):
            note = finding.text
            if finding.kind is Kind.SAGA_LOST:
                note += " (REST: 404)" if saga_id in seen.rest else " (REST never answered)"
            by_kind[finding.kind].add(example(saga_id, note))
        figures["calls_maybe_from_a_deposed_worker"].count += sum(c.stale for c in record.calls)
        if record.final is None or not record.final.status.terminal:
            continue
        _count_allowed(figures, seen, index, record.final, example)
    return figures


def _count_allowed(
    figures: dict[str, Figure],
    seen: Observed,
    index: _Index,
    final: SagaState,
    example: Any,
) -> None:
    """The figures SPEC allows, for one saga that ended."""
    saga_id, applied = final.saga_id, seen.applied
    ended_at = final.updated_at.timestamp()
    for i in range(seen.step_count):
        done = applied.get(_key(saga_id, i, EXECUTE), 0) >= 1
        undone = applied.get(_key(saga_id, i, COMPENSATE), 0) >= 1
        if undone and not done:
            figures["compensations_of_unapplied_steps"].add(
                example(saga_id, f"step {i} compensated, its EXECUTE never applied")
            )
        for action in (EXECUTE, COMPENSATE):
            key = _key(saga_id, i, action)
            at = index.applied_at(key, seen.failures_before_apply)
            if applied.get(key, 0) >= 1 and at is not None and at > ended_at:
                figures["keys_applied_after_saga_ended"].add(
                    example(saga_id, f"{key} applied {at - ended_at:.2f}s after it ended")
                )


def describe(seen: Observed, index: _Index, saga_id: str, note: str) -> dict[str, Any]:
    """One saga's story, for an example: what the client did, REST, the participant, the
    topic and the faults during its life (times in seconds from its start)."""
    client = seen.sagas.get(saga_id)
    detail = seen.rest.get(saga_id) or {}
    saga = detail.get("saga", {})
    t0 = client.started_at if client else None

    def rel(at: float | None) -> str:
        return f"+{at - t0:.2f}s" if (at is not None and t0 is not None) else "?"

    story: dict[str, Any] = {"saga_id": saga_id, "note": note}
    if client:
        story["client"] = {
            "kind": client.kind,
            "fail_at": client.fail_at,
            "started": f"{client.start_answer} after {client.start_attempts} attempt(s)",
            "cancel": (f"{client.cancel_answers} sent {rel(client.cancel_sent_at)}")
            if client.cancel_answers
            else None,
        }
    if saga:
        story["rest"] = {
            "status": saga.get("status"),
            "current_step": saga.get("current_step"),
            "error_message": saga.get("error_message"),
            "ended": rel(_epoch(saga.get("updated_at"))),
            "step_logs": [
                f"{g['action'][0]}{g['step_index']} {g['status']} "
                f"{rel(_epoch(g.get('started_at')))}..{rel(_epoch(g.get('completed_at')))}"
                for g in detail.get("step_logs", [])
            ],
        }
    story["participant"] = _compact(
        [
            (
                float(call["received_at"]),
                f"{call.get('metadata', {}).get('x-saga-action', '?')[0]}"
                f"{call.get('metadata', {}).get('x-saga-step', '?')} "
                f"attempt {call.get('metadata', {}).get('x-saga-attempt', '?')}",
            )
            for call in index.calls.get(saga_id, [])
        ],
        rel,
    )
    story["applied"] = sorted(
        k.split(":", 1)[1] for k, n in seen.applied.items() if k.startswith(saga_id + ":") and n
    )
    story["events"] = [
        str(r["value"].get("event_type")) if isinstance(r.get("value"), dict) else "?"
        for r in index.events.get(saga_id, [])
    ]
    if t0 is not None:
        end = _epoch(saga.get("updated_at")) or (t0 + 60)
        story["faults_during_its_life"] = [
            f"{f['kind']} {f.get('target', '')} {rel(f['at'])}"
            + (f"..{rel(f['until'])}" if f.get("until") else "")
            for f in seen.faults
            if f["at"] <= end and (f.get("until") or f["at"]) >= t0 - 1
        ]
    return story


def _compact(entries: list[tuple[float, str]], rel: Any, limit: int = 30) -> list[str]:
    """`+t label` lines, runs of the same label folded into one (`label x N (+t0..+t1)`)."""
    runs: list[tuple[float, float, str, int]] = []
    for at, label in entries:
        if runs and runs[-1][2] == label:
            first, _, _, n = runs[-1]
            runs[-1] = (first, at, label, n + 1)
        else:
            runs.append((at, at, label, 1))
    lines = [
        f"{rel(first)} {label}" if n == 1 else f"{rel(first)}..{rel(last)} {label} x{n}"
        for first, last, label, n in runs
    ]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... {len(lines) - limit} more"]
    return lines


def summary(figures: Mapping[str, Figure]) -> dict[str, int]:
    """Name -> count, every figure."""
    return {name: fig.count for name, fig in figures.items()}


def violations(figures: Mapping[str, Figure]) -> int:
    """The sum of the figures that must be 0."""
    return sum(f.count for f in figures.values() if f.must_be_zero)
