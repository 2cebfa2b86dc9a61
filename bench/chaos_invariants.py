"""The invariants a chaos run checks, from outside the server, in one place.

Everything here is a pure function of what was observed after the run: what the client was
told (the saga ids the API acknowledged, the answers to its cancels), what REST shows (each
saga and its step logs), what the participant applied (its record of every call and of how
many times it applied each idempotency key) and what the events topic holds. No I/O.

The invariants, in the saga's own words (SPEC §1, §3, §6, §8). Each is a figure that must be 0:

- sagas lost: every saga the API acknowledged with a `saga_id` is found over REST;
- sagas stuck: once the faults have stopped and the drain period is over, every saga is
  terminal (`COMPLETED`, `FAILED` or `CANCELLED`);
- steps applied twice: the participant applied each idempotency key `<saga>:<step>:EXECUTE` at
  most once (re-deliveries of an applied key are allowed: at-least-once per step);
- steps logged twice: a saga's step logs hold at most one `EXECUTE` and one `COMPENSATE` log
  per step (one log per execution, covering all its attempts);
- calls with a wrong idempotency key: every participant call carries
  `idempotency-key` = `<x-saga-id>:<x-saga-step>:<x-saga-action>`, for a saga the run started;
- completed sagas with a step not applied: a `COMPLETED` saga had every step's `EXECUTE`
  applied by the participant;
- compensations missing: in a `FAILED` or `CANCELLED` saga, every step whose `EXECUTE` the
  participant applied had its `COMPENSATE` applied;
- compensations doubled: ... applied at most once;
- compensations out of order: a saga's compensations were applied newest step first;
- compensations in completed sagas: a `COMPLETED` saga had no compensation applied;
- cancels answered 200 that completed: a cancel answered 200 never ends `COMPLETED`;
- events missing / out of order / doubled / unexpected: per saga, de-duplicated by `event_id`,
  the topic holds exactly the event types of its final status, in commit order:
  `COMPLETED`: `SAGA_RUNNING, SAGA_COMPLETED`; `FAILED`: `SAGA_RUNNING, SAGA_COMPENSATING,
  SAGA_FAILED`; `CANCELLED`: `SAGA_RUNNING, SAGA_COMPENSATING, SAGA_CANCELLED`, or
  `SAGA_CANCELLED` alone for a saga cancelled before it ran (SPEC §6 lets `SAGA_COMPENSATING`
  be absent when there was nothing to compensate); each event keyed by its saga id, its
  `status` the one its type announces.

Counted apart, because SPEC allows them:

- compensations of unapplied steps: a `COMPENSATE` applied for a step whose `EXECUTE` the
  participant never applied (SPEC §1/§3: a step whose outcome the server never learned is
  compensated; participants treat that as a no-op);
- re-deliveries: calls for a key the participant had already applied (at-least-once);
- keys first applied after their saga ended: a call that took effect after REST shows the saga
  terminal (an executor that lost its lease and still called out).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
EXECUTE = "EXECUTE"
COMPENSATE = "COMPENSATE"

RUNNING_EV = "SAGA_RUNNING"
COMPLETED_EV = "SAGA_COMPLETED"
COMPENSATING_EV = "SAGA_COMPENSATING"
FAILED_EV = "SAGA_FAILED"
CANCELLED_EV = "SAGA_CANCELLED"
# The status each event type announces (SPEC §6: `status` is the saga's status after the change).
EVENT_STATUS = {
    RUNNING_EV: "RUNNING",
    COMPLETED_EV: "COMPLETED",
    COMPENSATING_EV: "COMPENSATING",
    FAILED_EV: "FAILED",
    CANCELLED_EV: "CANCELLED",
}

# (name, what must hold) for every figure that must be 0, in the order they are printed.
MUST_BE_ZERO: tuple[tuple[str, str], ...] = (
    ("sagas_lost", "every saga the API acknowledged is found over REST"),
    ("sagas_stuck", "after the faults and the drain period, every saga is terminal"),
    ("steps_applied_twice", "the participant applied each `<saga>:<step>:EXECUTE` at most once"),
    ("steps_logged_twice", "at most one EXECUTE and one COMPENSATE step log per step"),
    (
        "calls_with_wrong_key",
        "every participant call carries `idempotency-key` = `<x-saga-id>:<x-saga-step>:<x-saga-action>`",
    ),
    ("completed_with_step_not_applied", "a COMPLETED saga had every step's EXECUTE applied"),
    (
        "compensations_missing",
        "FAILED/CANCELLED: every step whose EXECUTE was applied had its COMPENSATE applied",
    ),
    ("compensations_doubled", "every COMPENSATE was applied at most once"),
    ("compensations_out_of_order", "compensations were applied newest step first"),
    ("compensations_in_completed_sagas", "a COMPLETED saga had no compensation applied"),
    ("cancels_200_completed", "a cancel answered 200 never ends COMPLETED"),
    ("events_missing", "every event type of the saga's final status is on the topic"),
    ("events_out_of_order", "per saga, event types arrive in commit order"),
    ("events_doubled", "each event type at most once per saga, after de-duplication by `event_id`"),
    (
        "events_unexpected",
        "no event type the final status rules out; key = saga id; status fits the type",
    ),
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
    cancel_sent_at: float | None = None
    start_answer: str = ""  # e.g. "HTTP 201 from api-0"
    start_attempts: int = 1

    @property
    def cancel_200(self) -> bool:
        return "200" in self.cancel_answers


@dataclass
class Observed:
    """Everything the run saw, gathered after the drain."""

    sagas: Mapping[str, ClientSaga]
    rest: Mapping[str, dict[str, Any] | None]  # saga detail, None when REST does not find it
    calls: Sequence[dict[str, Any]]  # participant calls in arrival order
    applied: Mapping[str, int]  # idempotency key -> times applied
    events: Sequence[dict[str, Any]]  # topic records in offset order: key, value (parsed), offset
    step_count: int
    # method path -> how many calls per key fail before one applies (scripted `fail_times`)
    failures_before_apply: Mapping[str, int] = field(default_factory=dict)
    faults: Sequence[dict[str, Any]] = ()  # injected faults: kind, target, at, until (epoch s)


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


class _Index:
    """The participant's record and the topic, grouped per saga."""

    def __init__(self, seen: Observed) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = defaultdict(list)  # saga -> its calls
        self.by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for call in seen.calls:
            key = str(call.get("metadata", {}).get("idempotency-key", ""))
            self.by_key[key].append(call)
            self.calls[key.split(":", 1)[0]].append(call)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in seen.events:
            value = record.get("value")
            saga_id = value.get("saga_id") if isinstance(value, dict) else None
            self.events[str(saga_id or record.get("key"))].append(record)

    def applied_at(self, key: str, failures_before_apply: Mapping[str, int]) -> float | None:
        """When the participant applied `key`: its first call that was not scripted to fail."""
        calls = self.by_key.get(key, [])
        if not calls:
            return None
        skip = failures_before_apply.get(str(calls[0].get("path")), 0)
        call = calls[min(skip, len(calls) - 1)]
        return float(call["received_at"])


def check(seen: Observed) -> dict[str, Figure]:
    """Every figure of the module docstring, with up to three example sagas each."""
    figures = {name: Figure(name, meaning, True) for name, meaning in MUST_BE_ZERO}
    figures.update({name: Figure(name, meaning, False) for name, meaning in ALLOWED})
    index = _Index(seen)
    applied = seen.applied

    def example(saga_id: str, note: str) -> dict[str, Any]:
        return describe(seen, index, saga_id, note)

    # Keys: well-formed, for sagas the run started; re-deliveries.
    for key, calls in index.by_key.items():
        meta = calls[0].get("metadata", {})
        expected = f"{meta.get('x-saga-id')}:{meta.get('x-saga-step')}:{meta.get('x-saga-action')}"
        saga_id = key.split(":", 1)[0]
        if not key or key != expected or saga_id not in seen.sagas:
            figures["calls_with_wrong_key"].add(
                {"saga_id": saga_id or None, "note": f"key {key!r}, metadata says {expected!r}"}
                if saga_id not in seen.sagas
                else example(saga_id, f"key {key!r}, metadata says {expected!r}")
            )
        if applied.get(key, 0) >= 1:
            extra = len(calls) - 1 - seen.failures_before_apply.get(str(calls[0].get("path")), 0)
            for _ in range(max(0, extra)):
                figures["redeliveries"].count += 1
    for key, times in applied.items():
        if times > 1 and key.endswith(":" + EXECUTE):
            figures["steps_applied_twice"].add(
                example(key.split(":", 1)[0], f"{key} applied {times} times")
            )

    for saga_id, client in seen.sagas.items():
        detail = seen.rest.get(saga_id)
        if detail is None:
            note = "REST: 404" if saga_id in seen.rest else "REST never answered for it"
            figures["sagas_lost"].add(example(saga_id, note))
            continue
        saga = detail["saga"]
        status = saga["status"]
        if status not in TERMINAL:
            figures["sagas_stuck"].add(example(saga_id, f"still {status} after the drain"))
            continue

        logs = Counter((g["step_index"], g["action"]) for g in detail.get("step_logs", []))
        doubled_logs = sorted(k for k, n in logs.items() if n > 1)
        if doubled_logs:
            figures["steps_logged_twice"].add(
                example(saga_id, f"two or more step logs for {doubled_logs}")
            )

        done = {i for i in range(seen.step_count) if applied.get(_key(saga_id, i, EXECUTE), 0) >= 1}
        undone = {
            i for i in range(seen.step_count) if applied.get(_key(saga_id, i, COMPENSATE), 0) >= 1
        }
        ended_at = _epoch(saga.get("updated_at"))
        if ended_at is not None:
            for i in range(seen.step_count):
                for action in (EXECUTE, COMPENSATE):
                    key = _key(saga_id, i, action)
                    at = index.applied_at(key, seen.failures_before_apply)
                    if applied.get(key, 0) >= 1 and at is not None and at > ended_at:
                        figures["keys_applied_after_saga_ended"].add(
                            example(saga_id, f"{key} applied {at - ended_at:.2f}s after it ended")
                        )

        if status == "COMPLETED":
            missing = sorted(set(range(seen.step_count)) - done)
            if missing:
                figures["completed_with_step_not_applied"].add(
                    example(saga_id, f"COMPLETED but EXECUTE of steps {missing} never applied")
                )
            if undone:
                figures["compensations_in_completed_sagas"].add(
                    example(saga_id, f"COMPLETED but steps {sorted(undone)} were compensated")
                )
            if client.cancel_200:
                figures["cancels_200_completed"].add(
                    example(saga_id, "the cancel was answered 200, the saga ended COMPLETED")
                )
        else:
            missing = sorted(done - undone)
            if missing:
                figures["compensations_missing"].add(
                    example(
                        saga_id,
                        f"{status}: EXECUTE of steps {missing} applied, their COMPENSATE never",
                    )
                )
            for i in sorted(undone - done):
                figures["compensations_of_unapplied_steps"].add(
                    example(saga_id, f"step {i} compensated, its EXECUTE never applied")
                )
            order = _compensation_order(index, saga_id)
            if order != sorted(order, reverse=True):
                figures["compensations_out_of_order"].add(
                    example(saga_id, f"compensations applied in step order {order}")
                )
        for i in range(seen.step_count):
            times = applied.get(_key(saga_id, i, COMPENSATE), 0)
            if times > 1:
                figures["compensations_doubled"].add(
                    example(saga_id, f"COMPENSATE of step {i} applied {times} times")
                )

        _check_events(figures, index, saga_id, status, detail, example)
    return figures


def _compensation_order(index: _Index, saga_id: str) -> list[int]:
    """Step indexes in the order their COMPENSATE key was first called."""
    order: list[int] = []
    for call in index.calls.get(saga_id, []):
        key = str(call.get("metadata", {}).get("idempotency-key", ""))
        parts = key.split(":")
        if len(parts) == 3 and parts[2] == COMPENSATE and parts[1].isdigit():
            step = int(parts[1])
            if step not in order:
                order.append(step)
    return order


def allowed_sequences(status: str, ran: bool, compensated: bool) -> list[list[str]]:
    """The event-type sequences SPEC §6 allows for a saga that ended in `status`."""
    if status == "COMPLETED":
        return [[RUNNING_EV, COMPLETED_EV]]
    if status == "FAILED":
        return [[RUNNING_EV, COMPENSATING_EV, FAILED_EV]]
    sequences = [[RUNNING_EV, COMPENSATING_EV, CANCELLED_EV]]
    if not compensated:
        sequences.append([RUNNING_EV, CANCELLED_EV])
    if not ran:
        sequences.append([CANCELLED_EV])
    return sequences


def _check_events(
    figures: dict[str, Figure],
    index: _Index,
    saga_id: str,
    status: str,
    detail: dict[str, Any],
    example: Any,
) -> None:
    records = index.events.get(saga_id, [])
    seen_ids: set[str] = set()
    types: list[str] = []
    wrong: list[str] = []
    for record in records:
        value = record.get("value")
        if not isinstance(value, dict):
            wrong.append(f"offset {record.get('offset')}: value is not a JSON object")
            continue
        if record.get("key") != saga_id:
            wrong.append(f"{value.get('event_type')}: key {record.get('key')!r}")
        event_id = str(value.get("event_id"))
        if event_id in seen_ids:
            continue  # a re-delivery: at-least-once, consumers de-duplicate
        seen_ids.add(event_id)
        kind = str(value.get("event_type"))
        types.append(kind)
        if EVENT_STATUS.get(kind) is not None and value.get("status") != EVENT_STATUS[kind]:
            wrong.append(f"{kind} with status {value.get('status')!r}")
    logs = detail.get("step_logs", [])
    ran = bool(logs) or bool(index.calls.get(saga_id)) or RUNNING_EV in types
    compensated = any(g["action"] == COMPENSATE for g in logs)
    sequences = allowed_sequences(status, ran, compensated)
    if types in sequences:
        if wrong:
            figures["events_unexpected"].add(example(saga_id, "; ".join(wrong)))
        return
    doubled = sorted(t for t, n in Counter(types).items() if n > 1)
    if doubled:
        figures["events_doubled"].add(example(saga_id, f"{doubled} more than once: {types}"))
    unique = list(dict.fromkeys(types))

    def distance(seq: list[str]) -> tuple[int, int]:
        return (len(set(unique) - set(seq)), len(set(seq) - set(unique)))

    best = min(sequences, key=distance)
    missing = [t for t in best if t not in unique]
    extra = [t for t in unique if t not in best]
    if missing:
        figures["events_missing"].add(
            example(saga_id, f"{status}: {missing} missing; topic has {types}")
        )
    if [t for t in unique if t in best] != [t for t in best if t in unique]:
        figures["events_out_of_order"].add(
            example(saga_id, f"{status}: topic has {types}, commit order is {best}")
        )
    if extra or wrong:
        figures["events_unexpected"].add(
            example(saga_id, "; ".join([*(f"{t} for a {status} saga" for t in extra), *wrong]))
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
