"""`saga validate`, `saga simulate` and `saga simulate --explore`: tools built on the pure core
alone (no server, no I/O beyond reading the named files and printing)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import saga.explore as explore_cases
from saga.errors import ValidationError
from saga.events import CallParticipant, Commit, ScheduleRetry, StepFailed
from saga.explore import Call, Exploration, Row, explore
from saga.model import Action, Workflow
from saga.simulation import SUCCESS, Outcome, Run, run, start_state
from saga.workflow import parse_workflow


def validate_files(files: Sequence[str], *, out: TextIO, err: TextIO) -> int:
    """Print `OK` or a precise error per file; 1 if any file is bad."""
    bad = 0
    for name in files:
        try:
            workflow = load_workflow(name)
        except ValidationError as exc:
            bad += 1
            print(f"{name}: {exc.message}", file=err)
            continue
        print(f"{name}: OK ({workflow.name}, {len(workflow.steps)} steps)", file=out)
    return 1 if bad else 0


def load_workflow(name: str) -> Workflow:
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError("file not found") from None
    except UnicodeDecodeError:
        raise ValidationError("not UTF-8 text") from None
    except OSError as exc:
        raise ValidationError(f"cannot read: {exc.strerror}") from None
    return parse_workflow(text)


def simulate_file(
    path: str,
    *,
    fail: Sequence[str],
    timeout: Sequence[str],
    cancel_after: str | None,
    payload: str,
    out: TextIO,
    err: TextIO,
    respond: Sequence[str] = (),
) -> int:
    try:
        workflow = load_workflow(path)
    except ValidationError as exc:
        print(f"{path}: {exc.message}", file=err)
        return 1
    names = set(workflow.step_names)
    failures: dict[str, str] = {}
    for item in fail:
        step, _, code = item.partition(":")
        if step not in names:
            print(f"--fail: no step named '{step}' in {workflow.name}", file=err)
            return 2
        failures[step] = code or "UNAVAILABLE"
    for step in timeout:
        if step not in names:
            print(f"--timeout: no step named '{step}' in {workflow.name}", file=err)
            return 2
    if cancel_after is not None and cancel_after not in names:
        print(f"--cancel-after: no step named '{cancel_after}' in {workflow.name}", file=err)
        return 2
    body = _payload(payload, err)
    if body is None:
        return 2
    responses = _responses(workflow, respond, err)
    if responses is None:
        return 2

    def script(index: int, action: Action, attempt: int) -> Outcome:
        name = workflow.steps[index].name
        if action is Action.EXECUTE and name in timeout:
            return Outcome("timeout")
        if action is Action.EXECUTE and name in failures:
            code = failures[name]
            return Outcome("error", code=code, message=f"simulated {code} from {name}")
        if action is Action.EXECUTE and name in responses:
            return Outcome("success", response=responses[name])
        return SUCCESS

    cancel_index = None if cancel_after is None else workflow.step_names.index(cancel_after)
    result = run(
        workflow,
        script,
        state=start_state(workflow, body),
        cancel_when=(None if cancel_index is None else lambda s: s.current_step > cancel_index),
    )
    print_timeline(workflow, result, out)
    return 0


def _payload(text: str, err: TextIO) -> dict[str, object] | None:
    """`--payload` as a JSON object, or None after saying why not."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"--payload: not valid JSON: {exc.msg}", file=err)
        return None
    if not isinstance(body, dict):
        print("--payload: must be a JSON object", file=err)
        return None
    return body


def _responses(
    workflow: Workflow, respond: Sequence[str], err: TextIO
) -> dict[str, dict[str, object]] | None:
    """`--respond STEP=JSON` as replies by step name, or None after saying why not."""
    names = set(workflow.step_names)
    responses: dict[str, dict[str, object]] = {}
    for item in respond:
        step, sep, text = item.partition("=")
        if not sep or step not in names:
            print(
                f"--respond: expected STEP=JSON with a step of {workflow.name}, got {item!r}",
                file=err,
            )
            return None
        try:
            reply = json.loads(text)
        except json.JSONDecodeError as exc:
            print(f"--respond {step}: not valid JSON: {exc.msg}", file=err)
            return None
        if not isinstance(reply, dict):
            print(f"--respond {step}: must be a JSON object", file=err)
            return None
        responses[step] = reply
    return responses


def print_timeline(workflow: Workflow, result: Run, out: TextIO) -> None:
    """The run as a person reads it: one line per attempt, log and status change."""
    start = result.turns[0].at if result.turns else result.final.created_at
    print(f"workflow {workflow.name} ({len(workflow.steps)} steps)", file=out)

    def stamp(at: object) -> str:
        from datetime import datetime

        assert isinstance(at, datetime)
        offset = f"+{(at - start).total_seconds():.3f}s"
        return f"{offset:>9}"

    status = result.turns[0].before.status if result.turns else result.final.status
    print(f"{stamp(start)}  status {status.value}", file=out)
    for turn in result.turns:
        event = turn.event
        for effect in turn.decision.effects:
            if isinstance(effect, CallParticipant) and effect.attempt == 1:
                request = json.dumps(dict(effect.payload), separators=(",", ":"))
                print(
                    f"{stamp(turn.at)}  {effect.action.value:<10} {effect.step_name:<24} "
                    f"call {effect.method} with {request}",
                    file=out,
                )
            elif isinstance(effect, ScheduleRetry) and isinstance(event, StepFailed):
                step = workflow.steps[effect.step_index]
                print(
                    f"{stamp(turn.at)}  {effect.action.value:<10} {step.name:<24} attempt "
                    f"{effect.next_attempt - 1} failed: {event.code}; retry in {effect.delay_ms} ms",
                    file=out,
                )
            elif isinstance(effect, Commit):
                for log in effect.step_logs:
                    line = f"{stamp(turn.at)}  {log.action.value:<10} {log.step_name:<24} {log.status.value}"
                    if log.error_message:
                        line += f"  {log.error_message}"
                    print(line, file=out)
                if effect.state.status is not status:
                    names = ", ".join(e.event_type.value for e in effect.events)
                    print(
                        f"{stamp(turn.at)}  status {status.value} -> {effect.state.status.value}"
                        + (f"  (events: {names})" if names else ""),
                        file=out,
                    )
                    status = effect.state.status
    final = result.final
    print(f"final status: {final.status.value}", file=out)
    if final.error_message:
        print(f"error: {final.error_message}", file=out)


# ---------------------------------------------------------------- saga simulate --explore

EXPLORE_FORMATS = ("text", "markdown", "json")
# A row that broke a promise of the core: a bug of the server, never of the workflow.
EXIT_BROKEN_PROMISE = 3

_SECTIONS = {
    explore_cases.HAPPY: "The happy path",
    explore_cases.STEP_FAILS: "A forward step fails for good",
    explore_cases.COMPENSATION_FAILS: "A compensation fails for good",
    explore_cases.CANCEL: "A cancel at each step boundary",
    explore_cases.PAUSE: "A pause request at each step boundary",
    explore_cases.CRASH: "The executor dies before or after a commit",
    explore_cases.DEADLINE: "The deadline passes",
}

LEGEND = (
    (
        "calls",
        "every participant call in the order made: its action and step (and method, in text "
        "and JSON), how its last attempt ended (ok, a status code, TIMEOUT; xN: after N "
        "attempts) and the request it sent",
    ),
    ("=>", "the saga's final status and its error_message (in Markdown, the last two columns)"),
    (
        "samples",
        "each participant answers its step with its sample (--respond STEP=JSON, default {}) "
        "and a compensation with {}; a refusal is the step's first non-retryable code "
        "(FAILED_PRECONDITION when listed), an outage UNAVAILABLE",
    ),
    (
        "then resume",
        "a PAUSED saga waits for an operator; the rows under it (its number and a letter: 7a, "
        "7b) show what `saga resume` does once every participant answers its sample again: the "
        "default action "
        "(retry after a failure, continue after a pause request) and, for a pause in the "
        "forward phase, --action compensate",
    ),
    (
        "executor dies",
        "the saga is loaded from its last commit and resumed by another executor (lease "
        "expired), through the same decide; the marker shows where; commits are those of the "
        "happy path and of the path where the last step fails",
    ),
    (
        "INVALID_INPUT",
        "the step's expression is replaced by one that fails at run time (input gives null, "
        "when raises), as one meeting data it did not expect would",
    ),
    ("deadline", "the saga is dated so that deadline_secs falls during the step's first attempt"),
)

_PROMISES = (
    "every row was checked against the promises of saga.invariants (every step that may have "
    "taken effect compensated, once, newest first; skipped steps never; no call once "
    "compensation began; a cancel or pause answered 200 never lost; events in order)"
)
_CRASH_MARK = "-- the executor dies; another resumes the saga from its last commit --"


def explore_file(
    path: str,
    *,
    respond: Sequence[str],
    payload: str,
    fmt: str,
    out: TextIO,
    err: TextIO,
) -> int:
    """`saga simulate FILE --explore`: print the compensation matrix and the warnings; 0 with
    no warning, 1 with some, 2 for a bad file or flag, 3 when a row broke a promise."""
    try:
        workflow = load_workflow(path)
    except ValidationError as exc:
        print(f"{path}: {exc.message}", file=err)
        return 2
    body = _payload(payload, err)
    if body is None:
        return 2
    responses = _responses(workflow, respond, err)
    if responses is None:
        return 2
    return print_exploration(explore(workflow, payload=body, samples=responses), fmt, out, err)


def print_exploration(exploration: Exploration, fmt: str, out: TextIO, err: TextIO) -> int:
    """Write `exploration` as `fmt` (text, markdown or json) and give the exit status."""
    if fmt == "json":
        out.write(json.dumps(exploration_json(exploration), indent=2, ensure_ascii=False) + "\n")
    elif fmt == "markdown":
        out.write(exploration_markdown(exploration))
    else:
        out.write(exploration_text(exploration))
    if exploration.broken:
        print("\n".join(_bug_lines(exploration)), file=err)
        return EXIT_BROKEN_PROMISE
    return 1 if exploration.risks else 0


def _ids(exploration: Exploration) -> list[tuple[str, Row]]:
    """Every row with its number (`5`), its follow-ups after it (`5a`, `5b`)."""
    numbered: list[tuple[str, Row]] = []
    for n, row in enumerate(exploration.rows, 1):
        numbered.append((str(n), row))
        numbered.extend((f"{n}{chr(ord('a') + i)}", f) for i, f in enumerate(row.then))
    return numbered


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=dict)


def _result(call: Call) -> str:
    return call.result + (f" x{call.attempts}" if call.attempts > 1 else "")


def _summary(exploration: Exploration) -> str:
    wf = exploration.workflow
    return (
        f"{wf.name}: {exploration.cases} cases explored over {len(wf.steps)} steps, "
        f"and {exploration.resumes} resumes of paused sagas"
    )


def _samples_line(exploration: Exploration) -> str:
    samples = ", ".join(f"{n} {_compact(s)}" for n, s in exploration.samples.items())
    return f"payload {_compact(exploration.payload)}; samples: {samples}"


def _bug_lines(exploration: Exploration) -> list[str]:
    found = exploration.broken
    lines = [
        f"BUG: {len(found)} broken promise(s) of the saga core in this exploration. This is a "
        "bug of the saga server, not of the workflow: please report it with this output.",
    ]
    lines.extend(f"  {case}: {finding}" for case, finding in found)
    return lines


def exploration_text(exploration: Exploration) -> str:
    """The matrix and the warnings as a person reads them in a terminal."""
    wf = exploration.workflow
    lines = [_summary(exploration), _samples_line(exploration), "", "How to read it:"]
    lines.extend(f"  {key:<15}{text}" for key, text in LEGEND)
    step_width = max(len(n) for n in wf.step_names)
    methods = [m for s in wf.steps for m in (s.method, s.compensate) if m]
    method_width = max(len(m) for m in methods)
    every = [c for _, r in _ids(exploration) for c in r.calls]
    result_width = max((len(_result(c)) for c in every), default=2)

    def calls(row: Row) -> list[str]:
        out: list[str] = []
        for i, call in enumerate(row.calls):
            if row.recovered_after == i:
                out.append(f"    {_CRASH_MARK}")
            out.append(
                f"    {call.action.value:<10} {call.step:<{step_width}} "
                f"{call.method:<{method_width}} {_result(call):<{result_width}} "
                f"{_compact(call.request)}"
            )
        if row.recovered_after is not None and row.recovered_after >= len(row.calls):
            out.append(f"    {_CRASH_MARK}")
        if not row.calls and row.recovered_after is None:
            out.append("    (no call)")
        end = f"    => {row.status}" + (f": {row.error_message}" if row.error_message else "")
        out.append(end)
        out.extend(f"    !!! BROKEN PROMISE (a bug of the saga server): {b}" for b in row.broken)
        return out

    lines += ["", "COMPENSATION MATRIX"]
    kind = None
    for number, row in _ids(exploration):
        if row.kind != explore_cases.RESUME and row.kind != kind:
            kind = row.kind
            lines += ["", f"{_SECTIONS[row.kind]}:"]
        indent = "  " if row.kind == explore_cases.RESUME else ""
        lines.append(f"{indent}[{number}] {row.case}")
        lines.extend(indent + line for line in calls(row))
    lines += ["", f"WARNINGS ({len(exploration.risks)})" if exploration.risks else "NO WARNINGS"]
    lines.extend(f"  {r.step} [{r.kind}]: {r.text}" for r in exploration.risks)
    lines.append("")
    if exploration.broken:
        lines.extend(_bug_lines(exploration))
    else:
        lines.append(f"Invariants: {_PROMISES}: all kept.")
    return "\n".join(lines) + "\n"


def _plain(text: str) -> str:
    """Text for a Markdown table cell, shown as it is: every character Markdown could read as
    markup escaped, on one line."""
    text = re.sub(r"([\\`*\[\]<>|])", r"\\\1", text)
    # An underscore inside a word is never emphasis (CommonMark): only those at an edge are.
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    return text.replace("\n", " ")


def _code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest or text.startswith("`") or text.endswith("`") else ""
    # In a table a pipe ends the cell even in a code span, unless escaped (GFM).
    return f"{fence}{pad}{text}{pad}{fence}".replace("\n", " ").replace("|", "\\|")


def exploration_markdown(exploration: Exploration) -> str:
    """The matrix and the warnings for a review (GitHub-flavoured Markdown)."""
    wf = exploration.workflow
    samples = ", ".join(f"{_plain(n)} {_code(_compact(s))}" for n, s in exploration.samples.items())
    lines = [
        f"### {_plain(wf.name)}: compensation matrix",
        "",
        f"{exploration.cases} cases explored over {len(wf.steps)} steps, and "
        f"{exploration.resumes} resumes of paused sagas. Payload "
        f"{_code(_compact(exploration.payload))}; samples: {samples}.",
        "",
    ]
    lines.extend(f"- **{key}**: {text}" for key, text in LEGEND)
    lines += [
        "",
        "| # | case | calls, in order | final status | error_message |",
        "|---|---|---|---|---|",
    ]
    for number, row in _ids(exploration):
        parts: list[str] = []
        for i, call in enumerate(row.calls):
            if row.recovered_after == i:
                parts.append("*executor dies*")
            shown = f"{call.action.value} {call.step} {_compact(call.request)}"
            parts.append(f"{_code(shown)} {_plain(_result(call))}")
        if row.recovered_after is not None and row.recovered_after >= len(row.calls):
            parts.append("*executor dies*")
        case = ("↳ " if row.kind == explore_cases.RESUME else "") + _plain(row.case)
        status = f"**{row.status}**"
        if row.broken:
            status += " **BROKEN PROMISE: " + _plain("; ".join(row.broken)) + "**"
        calls = "<br>".join(parts) or "(no call)"
        cells = [number, case, calls, status, _plain(row.error_message or "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"#### Warnings ({len(exploration.risks)})", ""]
    lines.extend(
        f"- **{_plain(r.step)}** ({_code(r.kind)}): {_plain(r.text)}" for r in exploration.risks
    )
    if not exploration.risks:
        lines.append("None.")
    lines.append("")
    if exploration.broken:
        lines.extend(f"**{_plain(line.strip())}**" for line in _bug_lines(exploration))
    else:
        lines.append(f"Invariants: {_PROMISES}: all kept.")
    return "\n".join(lines) + "\n"


def exploration_json(exploration: Exploration) -> dict[str, Any]:
    """The same as data, for tooling."""

    def row(number: str, r: Row) -> dict[str, Any]:
        return {
            "id": number,
            "case": r.case,
            "kind": r.kind,
            "step": r.step,
            "calls": [
                {
                    "action": c.action.value,
                    "step": c.step,
                    "method": c.method,
                    "request": dict(c.request),
                    "attempts": c.attempts,
                    "result": c.result,
                }
                for c in r.calls
            ],
            "status": r.status,
            "error_message": r.error_message,
            "recovered_after": r.recovered_after,
            "broken": list(r.broken),
        }

    rows = []
    for n, r in enumerate(exploration.rows, 1):
        item = row(str(n), r)
        item["then"] = [row(f"{n}{chr(ord('a') + i)}", f) for i, f in enumerate(r.then)]
        rows.append(item)
    wf = exploration.workflow
    return {
        "workflow": wf.name,
        "steps": list(wf.step_names),
        "cases": exploration.cases,
        "resumes": exploration.resumes,
        "payload": exploration.payload,
        "samples": exploration.samples,
        "rows": rows,
        "warnings": [{"kind": r.kind, "step": r.step, "text": r.text} for r in exploration.risks],
        "broken": [{"case": case, "finding": f} for case, f in exploration.broken],
    }
