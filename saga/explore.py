"""Every failure point of one workflow, explored before it runs: the compensation matrix and the
risks a reviewer wants to see before production (`saga simulate --explore`).

The core is pure and fast, so instead of sampling histories this module enumerates them. Each
case scripts the participants (they answer from samples, the `--respond` of `saga simulate`), the
store and the operators, drives one saga through `saga.simulation.run` (the real `decide`), and
becomes one `Row`: the calls made in order, with the request each received, the final status and
`error_message`. The cases:

- the happy path;
- each forward step that is called failing for good: a non-retryable code, a retryable one on
  every attempt, a timeout on every attempt, an unusable reply, and, for a step with an `input`
  or `when`, the expression failing (`INVALID_INPUT`: it is replaced by one that gives no
  object, or raises, as one meeting data it did not expect would);
- each compensation failing for good (every attempt, and `compensate_input` failing), after the
  next step that runs fails (or a cancel, after the last one);
- a cancel, and a pause request, read at every step boundary;
- an executor dying just before and just after every commit of the happy path and of the path
  where the last step fails: the saga is loaded from its last commit and driven on with
  `Resume(lease_expired=True)`, the same path a recovering executor takes;
- with `deadline_secs`, the deadline passing while each step is in flight (the saga is dated so
  that it does, as for one that waited), with a success and with a failure that wants a retry.

A saga that ends PAUSED gets follow-up rows (`Row.then`): the operator's default resume and, for
a pause in the forward phase, `compensate`, each once every participant answers its sample again.

Every row, and every follow-up with the history before it, is checked against the promises of
`saga.invariants` with an idempotent participant (a call that succeeded or may have taken effect
is applied once per key). A broken one is a bug of the core, never of the workflow: it is kept in
`Row.broken` for the caller to report loudly. `risks` are the workflow's own weak points.

Pure like the rest of the core: a workflow and samples in, an `Exploration` (data) out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from attrs import evolve, frozen

import saga.expressions as expressions
from saga.decide import decide, resolved_resume_action, retry_delay_ms
from saga.events import CallParticipant, Commit, ResumeRequested, StepFailed, StepSucceeded
from saga.invariants import SagaRecord, findings
from saga.model import (
    GRPC_CODE_NAMES,
    INVALID_RESPONSE,
    PERMANENT_FAILURE_CODES,
    Action,
    ResumeAction,
    SagaState,
    SagaStatus,
    Step,
    Workflow,
)
from saga.simulation import (
    CALL_DURATION,
    Decider,
    Outcome,
    Run,
    Script,
    crashed,
    joined,
    record_of,
    run,
    start_state,
)

# Row kinds, in the order rows come.
HAPPY = "happy"
STEP_FAILS = "step-fails"
COMPENSATION_FAILS = "compensation-fails"
CANCEL = "cancel"
PAUSE = "pause"
CRASH = "crash"
DEADLINE = "deadline"
RESUME = "resume"  # a follow-up of a PAUSED row

# Risk kinds.
NO_COMPENSATE = "no-compensate"
MISSING_RESPONSE = "missing-response"
DEADLINE_TOO_SHORT = "deadline-too-short"
PAYMENT_CONTINUE = "payment-continue"
UNREACHABLE = "unreachable"

# A run longer than this is a stuck saga, reported as a broken row (no workflow needs it: the
# largest takes 200 steps x 100 attempts x a few decisions each).
MAX_DECISIONS = 200_000
# Codes tried, in order, for a failure that is retried; the first the step does not list wins.
_RETRYABLE = ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED", "RESOURCE_EXHAUSTED")
# A non-retryable failure: a business refusal if the step lists it, else its first code.
_REFUSAL = "FAILED_PRECONDITION"
# Expressions that fail at run time, standing in for the step's own (see the module docstring).
_NO_OBJECT = "`null`"
_RAISES = 'abs(`"not a number"`)'
# Words that make a step look like it moves money (a heuristic, and said to be one).
_PAYMENT_WORDS = (
    "payment",
    "pay",
    "charge",
    "refund",
    "billing",
    "invoice",
    "wallet",
    "transfer",
    "debit",
    "credit",
    "capture",
    "funds",
)


@frozen
class Call:
    """One execution or compensation as its participant saw it: every attempt sent `request`;
    `result` is how the last attempt ended (`ok`, `TIMEOUT`, a status code, `no answer`)."""

    action: Action
    step: str
    method: str
    request: Mapping[str, Any]
    attempts: int
    result: str


@frozen
class Row:
    """One case of the compensation matrix (see the module docstring). `status` is the final
    status (`ERROR` when `decide` raised); `recovered_after`, for a crash, is how many of
    `calls` were made before the executor died; `then`, for a PAUSED row, what resuming does;
    `broken`, the promises of `saga.invariants` the row broke (`kind: text`)."""

    case: str
    kind: str
    step: str | None
    calls: tuple[Call, ...]
    status: str
    error_message: str | None
    recovered_after: int | None = None
    then: tuple[Row, ...] = ()
    broken: tuple[str, ...] = ()


@frozen
class Risk:
    """Something a reviewer should know before the workflow runs in production, naming the step
    it is about."""

    kind: str
    step: str
    text: str


@frozen
class Exploration:
    """What `explore` found: the rows of the compensation matrix, in order, and the risks."""

    workflow: Workflow
    payload: Mapping[str, Any]
    samples: Mapping[str, Mapping[str, Any]]
    rows: tuple[Row, ...]
    risks: tuple[Risk, ...]

    @property
    def cases(self) -> int:
        """How many cases were driven (follow-ups of paused sagas not counted)."""
        return len(self.rows)

    @property
    def resumes(self) -> int:
        """How many follow-up rows resume a paused saga."""
        return sum(len(r.then) for r in self.rows)

    @property
    def broken(self) -> tuple[tuple[str, str], ...]:
        """Every broken promise as (case, finding), follow-ups included: bugs of the core."""
        found: list[tuple[str, str]] = []
        for row in self.rows:
            found.extend((row.case, b) for b in row.broken)
            for follow in row.then:
                found.extend((f"{row.case}, {follow.case}", b) for b in follow.broken)
        return tuple(found)


def explore(
    workflow: Workflow,
    *,
    payload: Mapping[str, Any] | None = None,
    samples: Mapping[str, Mapping[str, Any]] | None = None,
    decider: Decider = decide,
) -> Exploration:
    """Drive `workflow` through every failure point (see the module docstring), participants
    answering from `samples` (by step name; `{}` for a step without one)."""
    given = samples or {}
    explorer = _Explorer(
        workflow,
        dict(payload or {}),
        {name: dict(given.get(name, {})) for name in workflow.step_names},
        decider,
    )
    rows = tuple(explorer.rows())
    return Exploration(
        workflow=workflow,
        payload=explorer.payload,
        samples=explorer.samples,
        rows=rows,
        risks=tuple(_risks(workflow, explorer.samples, rows)),
    )


# ---------------------------------------------------------------- the cases

# (step index, action, attempt or None for every attempt) -> what the participant does
_Faults = Mapping[tuple[int, Action, int | None], Outcome]


class _Explorer:
    def __init__(
        self,
        workflow: Workflow,
        payload: dict[str, Any],
        samples: dict[str, dict[str, Any]],
        decider: Decider,
    ) -> None:
        self.wf = workflow
        self.payload = payload
        self.samples = samples
        self.decider = decider
        self.start = start_state(workflow, payload)
        self.happy = self._drive(workflow, {}, self.start)
        # The steps the happy path calls, in order (a `when` false on the samples skips one).
        self.called = sorted(
            {c.step_index for c in self.happy.calls if c.action is Action.EXECUTE}
            if isinstance(self.happy, Run)
            else set()
        )

    # -- driving

    def script(self, faults: _Faults) -> Script:
        wf, samples = self.wf, self.samples

        def answer(index: int, action: Action, attempt: int) -> Outcome:
            fault = faults.get((index, action, attempt)) or faults.get((index, action, None))
            if fault is not None:
                return fault
            if action is Action.EXECUTE:
                return Outcome("success", response=samples[wf.steps[index].name])
            return Outcome("success")

        return answer

    def _drive(
        self, wf: Workflow, faults: _Faults, start: SagaState, **options: Any
    ) -> Run | BaseException:
        try:
            return run(
                wf,
                self.script(faults),
                state=start,
                decider=self.decider,
                max_decisions=MAX_DECISIONS,
                **options,
            )
        except Exception as exc:  # decide broke a rule of its own: reported as a bug, not hidden
            return exc

    def _case(
        self,
        case: str,
        kind: str,
        step: str | None,
        *,
        faults: _Faults | None = None,
        wf: Workflow | None = None,
        start: SagaState | None = None,
        cancel_from: int | None = None,
        pause_at: int | None = None,
        operator: ResumeRequested | None = None,
    ) -> Row:
        wf = wf or self.wf
        result = self._drive(
            wf,
            faults or {},
            start or self.start,
            cancel_from_boundary=cancel_from,
            pause_at_boundary=pause_at,
            operator=operator,
        )
        return self._row(
            case,
            kind,
            step,
            result,
            wf,
            cancel_accepted=cancel_from is not None,
            pause_accepted=pause_at is not None,
        )

    def _row(
        self,
        case: str,
        kind: str,
        step: str | None,
        result: Run | BaseException,
        wf: Workflow,
        *,
        cancel_accepted: bool = False,
        pause_accepted: bool = False,
        recovered_after: int | None = None,
    ) -> Row:
        if not isinstance(result, Run):
            return _raised(case, kind, step, result)
        final = result.final
        row = Row(
            case=case,
            kind=kind,
            step=step,
            calls=calls_of(result),
            status=final.status.value,
            error_message=final.error_message,
            recovered_after=recovered_after,
            broken=self._check(result, cancel_accepted, pause_accepted),
        )
        if final.status is SagaStatus.PAUSED:
            row = evolve(row, then=self._resumed(wf, result, cancel_accepted, pause_accepted))
        return row

    def _resumed(
        self, wf: Workflow, paused: Run, cancel_accepted: bool, pause_accepted: bool
    ) -> tuple[Row, ...]:
        """The operator's default resume and, in the forward phase, `compensate`, each with
        every participant answering its sample (the fault is fixed)."""
        state = paused.final
        assert state.pause is not None
        actions: list[ResumeAction | None] = [None]
        if state.pause.forward:
            actions.append(ResumeAction.COMPENSATE)
        follow: list[Row] = []
        for action in actions:
            asked = ResumeRequested(at=state.updated_at, action=action)
            chosen = resolved_resume_action(state, asked)
            case = (
                f"then resume ({chosen.value}, the default)"
                if action is None
                else f"then resume --action {chosen.value}"
            )
            rest = self._drive(wf, {}, state, operator=asked)
            if not isinstance(rest, Run):
                follow.append(_raised(case, RESUME, None, rest))
                continue
            follow.append(
                Row(
                    case=case,
                    kind=RESUME,
                    step=None,
                    calls=calls_of(rest),
                    status=rest.final.status.value,
                    error_message=rest.final.error_message,
                    broken=self._check(joined(paused, rest), cancel_accepted, pause_accepted),
                )
            )
        return tuple(follow)

    def _check(self, result: Run, cancel_accepted: bool, pause_accepted: bool) -> tuple[str, ...]:
        record = record_of(
            result, self.wf, cancel_accepted=cancel_accepted, pause_accepted=pause_accepted
        )
        record = evolve(record, applied=_applied(record))
        return tuple(f"{f.kind.value}: {f.text}" for f in findings(record, must_be_terminal=False))

    # -- the rows

    def rows(self) -> Iterator[Row]:
        yield self._row("every participant answers its sample", HAPPY, None, self.happy, self.wf)
        for index in self.called:
            yield from self._step_fails(index)
        for index in self.called:
            yield from self._compensation_fails(index)
        yield from self._cancels_and_pauses(CANCEL)
        yield from self._cancels_and_pauses(PAUSE)
        yield from self._crashes()
        yield from self._deadlines()

    def _step_fails(self, index: int) -> Iterator[Row]:
        step = self.wf.steps[index]
        name, n = step.name, step.retry.max_attempts
        attempts = f"on all {n} attempts" if n > 1 else "on its only attempt"
        refusal = _refusal_code(step)
        if refusal is not None:
            fault = Outcome("error", code=refusal, message="simulated refusal")
            yield self._fail(f"{name}: {refusal} (non-retryable)", index, fault)
        retryable = _retryable_code(step)
        if retryable is not None:
            fault = Outcome("error", code=retryable, message="simulated outage")
            yield self._fail(f"{name}: {retryable} {attempts}", index, fault)
        yield self._fail(f"{name}: TIMEOUT {attempts}", index, Outcome("timeout"))
        fault = Outcome("error", code=INVALID_RESPONSE, message="the reply is not JSON")
        yield self._fail(f"{name}: unusable reply ({INVALID_RESPONSE})", index, fault)
        broken = _failing_expression(step)
        if broken is not None:
            field, replaced = broken
            yield self._case(
                f"{name}: its {field} fails (INVALID_INPUT)",
                STEP_FAILS,
                name,
                wf=_with_step(self.wf, index, replaced),
            )

    def _fail(self, case: str, index: int, fault: Outcome) -> Row:
        name = self.wf.steps[index].name
        return self._case(case, STEP_FAILS, name, faults={(index, Action.EXECUTE, None): fault})

    def _trigger(self, index: int) -> tuple[str, _Faults, int | None, ResumeRequested | None]:
        """How to make step `index` be compensated: the next step that runs fails for good
        (non-retryable, else on every attempt; where that pauses the saga, an operator resumes
        it with `compensate`), or, after the last one, a cancel."""
        later = [i for i in self.called if i > index]
        if not later:
            return f"a cancel once {self.wf.steps[index].name} has run", {}, index + 1, None
        nxt = self.wf.steps[later[0]]
        code = _refusal_code(nxt) or _retryable_code(nxt)
        fault = Outcome("error", code=code, message="simulated refusal") if code else None
        faults: _Faults = {(later[0], Action.EXECUTE, None): fault or Outcome("timeout")}
        if self.wf.pauses_on_failure(later[0]):
            compensate = ResumeRequested(at=self.start.created_at, action=ResumeAction.COMPENSATE)
            return f"{nxt.name} fails, resumed with --action compensate", faults, None, compensate
        return f"{nxt.name} fails", faults, None, None

    def _compensation_fails(self, index: int) -> Iterator[Row]:
        step = self.wf.steps[index]
        if step.compensate is None:
            return
        why, faults, cancel_from, operator = self._trigger(index)
        n = step.retry.max_attempts
        code = _retryable_code(step)
        if code is not None:
            fault = Outcome("error", code=code, message="simulated outage")
            attempts = f"on all {n} attempts" if n > 1 else "on its only attempt"
        else:
            fault, code, attempts = Outcome("timeout"), "TIMEOUT", f"on all {n} attempts"
        yield self._case(
            f"compensation of {step.name}: {code} {attempts} (after {why})",
            COMPENSATION_FAILS,
            step.name,
            faults={**faults, (index, Action.COMPENSATE, None): fault},
            cancel_from=cancel_from,
            operator=operator,
        )
        if step.compensate_input is not None:
            replaced = evolve(step, compensate_input=_NO_OBJECT)
            yield self._case(
                f"compensation of {step.name}: its compensate_input fails (INVALID_INPUT, "
                f"after {why})",
                COMPENSATION_FAILS,
                step.name,
                faults=faults,
                wf=_with_step(self.wf, index, replaced),
                cancel_from=cancel_from,
                operator=operator,
            )

    def _cancels_and_pauses(self, kind: str) -> Iterator[Row]:
        # Boundary k is the k-th `Resume`: before step k, and after the last step before the
        # saga completes (each step, run or skipped, ends at a commit and a boundary).
        names = self.wf.step_names
        what = "cancel" if kind == CANCEL else "pause requested"
        for k in range(len(names) + 1):
            where = f"before {names[k]}" if k < len(names) else f"after {names[-1]}, the last step"
            yield self._case(
                f"{what} {where}",
                kind,
                names[k] if k < len(names) else names[-1],
                cancel_from=k if kind == CANCEL else None,
                pause_at=k if kind == PAUSE else None,
            )

    def _crashes(self) -> Iterator[Row]:
        if not isinstance(self.happy, Run):
            return
        paths: list[tuple[str, Run, _Faults]] = [("", self.happy, {})]
        if self.called:
            last = self.wf.steps[self.called[-1]]
            code = _refusal_code(last) or _retryable_code(last)
            fault = Outcome("error", code=code, message="simulated refusal") if code else None
            faults: _Faults = {(self.called[-1], Action.EXECUTE, None): fault or Outcome("timeout")}
            failing = self._drive(self.wf, faults, self.start)
            if isinstance(failing, Run):
                paths.append((f"after {last.name} fails, ", failing, faults))
        for prefix, base, path_faults in paths:
            # A path that shares the happy path's first turns shares its commits: taken once.
            shared = 0
            if prefix:
                happy = self.happy.turns
                while (
                    shared < min(len(happy), len(base.turns))
                    and happy[shared].event == base.turns[shared].event
                ):
                    shared += 1
            for t in range(shared, len(base.turns)):
                turn = base.turns[t]
                commit = next((e for e in turn.decision.effects if isinstance(e, Commit)), None)
                if commit is None:
                    continue
                what = _commit_text(turn.before, commit)
                for committed in (False, True):
                    if committed and commit.state.status.terminal:
                        continue  # nothing is left to do after the last commit
                    head, loaded = crashed(base, t, committed=committed)
                    when = "just after" if committed else "just before"
                    rest = self._drive(
                        self.wf, path_faults, loaded, lease_expired=True, clock=turn.at
                    )
                    whole = joined(head, rest) if isinstance(rest, Run) else rest
                    yield self._row(
                        f"{prefix}executor dies {when} committing {what}",
                        CRASH,
                        _commit_step(commit),
                        whole,
                        self.wf,
                        recovered_after=len(calls_of(head)),
                    )

    def _deadlines(self) -> Iterator[Row]:
        deadline = self.wf.deadline_secs
        if deadline is None or not isinstance(self.happy, Run):
            return
        for index in self.called:
            step = self.wf.steps[index]
            started = next(
                t.at
                for t in self.happy.turns
                for e in t.decision.effects
                if isinstance(e, CallParticipant)
                and e.step_index == index
                and e.action is Action.EXECUTE
            )
            # Dated so that the deadline falls halfway through the step's first attempt.
            created = started + CALL_DURATION / 2 - timedelta(seconds=deadline)
            if created > self.start.created_at:
                continue  # the happy path itself passes the deadline before this step
            start = evolve(self.start, created_at=created)
            yield self._case(
                f"deadline passes while {step.name} is in flight (it then succeeds)",
                DEADLINE,
                step.name,
                start=start,
            )
            code = _retryable_code(step)
            if step.retry.max_attempts > 1 and code is not None:
                fault = Outcome("error", code=code, message="simulated outage")
                yield self._case(
                    f"deadline passes while {step.name} is in flight (it fails with {code})",
                    DEADLINE,
                    step.name,
                    start=start,
                    faults={(index, Action.EXECUTE, 1): fault},
                )


def _raised(case: str, kind: str, step: str | None, exc: BaseException) -> Row:
    return Row(
        case=case,
        kind=kind,
        step=step,
        calls=(),
        status="ERROR",
        error_message=None,
        broken=(f"decide_raised: {type(exc).__name__}: {exc}",),
    )


def _applied(record: SagaRecord) -> dict[str, int]:
    """An idempotent participant's truth: each key whose call succeeded or may have taken
    effect, applied once."""
    return {c.idempotency_key: 1 for c in record.calls if c.outcome != "failed"}


def calls_of(result: Run) -> tuple[Call, ...]:
    """The participant calls of `result` in order, the attempts of one execution together."""
    calls: list[Call] = []
    pending: CallParticipant | None = None

    def add(call: CallParticipant, outcome: str) -> None:
        last = calls[-1] if calls else None
        if (
            call.attempt > 1
            and last is not None
            and (last.action, last.step, last.attempts)
            == (call.action, call.step_name, call.attempt - 1)
        ):
            calls[-1] = evolve(last, attempts=call.attempt, result=outcome)
        else:
            calls.append(
                Call(call.action, call.step_name, call.method, call.payload, call.attempt, outcome)
            )

    for turn in result.turns:
        event = turn.event
        if pending is not None and isinstance(event, StepSucceeded | StepFailed):
            if isinstance(event, StepSucceeded):
                add(pending, "ok")
            else:
                add(pending, "TIMEOUT" if event.timed_out else event.code)
            pending = None
        for effect in turn.decision.effects:
            if isinstance(effect, CallParticipant):
                pending = effect
    if pending is not None:
        add(pending, "no answer")
    return tuple(calls)


def _refusal_code(step: Step) -> str | None:
    codes = step.retry.non_retryable_codes
    if _REFUSAL in codes:
        return _REFUSAL
    return codes[0] if codes else None


def _retryable_code(step: Step) -> str | None:
    listed = set(step.retry.non_retryable_codes) | PERMANENT_FAILURE_CODES
    for code in (*_RETRYABLE, *sorted(GRPC_CODE_NAMES)):
        if code not in listed and code != "DEADLINE_EXCEEDED":
            return code
    return None


def _failing_expression(step: Step) -> tuple[str, Step] | None:
    if step.input is not None:
        return "input", evolve(step, input=_NO_OBJECT)
    if step.when is not None:
        return "when", evolve(step, when=_RAISES)
    return None


def _with_step(wf: Workflow, index: int, step: Step) -> Workflow:
    return evolve(wf, steps=(*wf.steps[:index], step, *wf.steps[index + 1 :]))


def _commit_text(before: SagaState, commit: Commit) -> str:
    parts = [f"{g.step_name} {g.action.value} {g.status.value}" for g in commit.step_logs]
    if commit.state.status is not before.status or not parts:
        parts.append(f"status {commit.state.status.value}")
    return ", ".join(parts)


def _commit_step(commit: Commit) -> str | None:
    return commit.step_logs[-1].step_name if commit.step_logs else None


# ---------------------------------------------------------------- the risks


def _risks(
    wf: Workflow, samples: Mapping[str, Mapping[str, Any]], rows: Sequence[Row]
) -> Iterator[Risk]:
    yield from _no_compensate(wf, rows)
    yield from _missing_responses(wf, samples)
    yield from _deadline(wf)
    yield from _payment_continue(wf)
    yield from _unreachable(wf, rows)


def _no_compensate(wf: Workflow, rows: Sequence[Row]) -> Iterator[Risk]:
    """A step without `compensate` that succeeded in a row where a later step failed for good:
    its effect stays."""
    order = {name: i for i, name in enumerate(wf.step_names)}
    for i, step in enumerate(wf.steps):
        if step.compensate is not None:
            continue
        later: dict[str, None] = {}
        for row in rows:
            if row.kind != STEP_FAILS or row.step is None or order[row.step] <= i:
                continue
            if any(
                c.action is Action.EXECUTE and c.step == step.name and c.result == "ok"
                for c in row.calls
            ):
                later[row.step] = None
        if later:
            yield Risk(
                NO_COMPENSATE,
                step.name,
                f"{step.name} has no compensate: when {_either(list(later))} fails for good, "
                f"its effect stays (its compensation is logged SKIPPED)",
            )


def _missing_responses(wf: Workflow, samples: Mapping[str, Mapping[str, Any]]) -> Iterator[Risk]:
    """An expression that reads `steps.X.response.F...` where no sample of X has F, or X names
    no step, or (for `input` and `when`) X runs after the step reading it."""
    order = {name: i for i, name in enumerate(wf.step_names)}
    seen: set[tuple[str, str, str]] = set()
    for y, step in enumerate(wf.steps):
        for field in ("input", "when", "compensate_input"):
            text = getattr(step, field)
            if text is None:
                continue
            for source, path in response_paths(text):
                shown = ".".join(("steps", _quoted(source), "response", *map(_quoted, path)))
                key = (step.name, field, shown)
                if key in seen:
                    continue
                seen.add(key)
                where = f"{step.name}.{field} reads {shown}"
                if source not in order:
                    yield Risk(
                        MISSING_RESPONSE, step.name, f"{where}, but there is no step {source}"
                    )
                elif field != "compensate_input" and order[source] >= y:
                    yield Risk(
                        MISSING_RESPONSE,
                        step.name,
                        f"{where}, but {source} has not run when {step.name} starts (it is null)",
                    )
                elif path and not _has(samples.get(source, {}), path):
                    example = "{" + f'"{path[0]}": ...' + "}"
                    yield Risk(
                        MISSING_RESPONSE,
                        step.name,
                        f"{where}, which no sample of {source} provides (it is null there); "
                        f"give one with --respond {source}='{example}'",
                    )


def response_paths(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every `steps.<X>.response.<path>` that the JMESPath `text` reads, as (X, path); only
    plain field chains are seen (a projection or function over `steps` is not)."""
    found: list[tuple[str, tuple[str, ...]]] = []
    stack: list[Any] = [expressions.compile_expression(text).parsed]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("type") == "subexpression":
            chain = _fields(node)
            if chain is not None and len(chain) >= 3 and chain[0] == "steps":
                if chain[2] == "response":
                    found.append((chain[1], tuple(chain[3:])))
                continue
        stack.extend(node.get("children", []))
    found.reverse()
    return found


def _fields(node: Mapping[str, Any]) -> list[str] | None:
    """A chain of plain fields (`a.b.c`, parsed as nested subexpressions), or None."""
    if node.get("type") == "field":
        return [str(node["value"])]
    if node.get("type") != "subexpression":
        return None
    chain: list[str] = []
    for child in node.get("children", []):
        part = _fields(child)
        if part is None:
            return None
        chain.extend(part)
    return chain


def _has(sample: Mapping[str, Any], path: Sequence[str]) -> bool:
    value: Any = sample
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def worst_case_secs(step: Step) -> float:
    """The longest a step's execution can take: every attempt timing out, with the longest
    backoff between them (jitter at its top)."""
    policy = step.retry
    waits = sum(
        retry_delay_ms(policy, n, 1.0 if policy.jitter else 0.0)
        for n in range(policy.max_attempts - 1)
    )
    return step.timeout_secs * policy.max_attempts + waits / 1000


def _deadline(wf: Workflow) -> Iterator[Risk]:
    if wf.deadline_secs is None:
        return
    total = 0.0
    crossing: str | None = None
    for step in wf.steps:
        total += worst_case_secs(step)
        if crossing is None and total > wf.deadline_secs:
            crossing = step.name
    if crossing is not None:
        yield Risk(
            DEADLINE_TOO_SHORT,
            crossing,
            f"deadline_secs {wf.deadline_secs:g} is shorter than the forward path's worst case, "
            f"{total:g} s (each step's timeout x attempts + backoff): a saga whose calls keep "
            f"timing out passes it during {crossing} (its next retry, or the next step, then "
            "fails with deadline exceeded)",
        )


def payment_word(step: Step) -> str | None:
    """The word that makes `step` look like a payment, if one does (a heuristic)."""
    text = " ".join(filter(None, (step.name, step.service, step.method, step.compensate)))
    words = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower())
    for word in words:
        for money in _PAYMENT_WORDS:
            if word == money or (money != "pay" and word.startswith(money)):
                return str(word)
    return None


def _payment_continue(wf: Workflow) -> Iterator[Risk]:
    for i, step in enumerate(wf.steps):
        if step.compensate is None or wf.pauses_on_compensation_failure(i):
            continue
        word = payment_word(step)
        if word is None:
            continue
        yield Risk(
            PAYMENT_CONTINUE,
            step.name,
            f"{step.name} looks like a payment (a heuristic: its names say '{word}'), and its "
            f"compensation {step.compensate} is the only undo; with on_compensation_failure: "
            "continue, if it fails for good the saga goes on and ends FAILED with the effect "
            "kept: consider on_compensation_failure: pause, so an operator can retry it",
        )


def _unreachable(wf: Workflow, rows: Sequence[Row]) -> Iterator[Risk]:
    called = {
        c.step
        for row in rows
        for r in (row, *row.then)
        for c in r.calls
        if c.action is Action.EXECUTE
    }
    for step in wf.steps:
        if step.when is not None and step.name not in called:
            yield Risk(
                UNREACHABLE,
                step.name,
                f"{step.name} is never called: its when `{step.when}` is false on the payload "
                "and samples given, in every case",
            )


def _either(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _quoted(name: str) -> str:
    """A step or field name as JMESPath writes it."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f'"{name}"'
