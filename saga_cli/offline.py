"""`saga validate` and `saga simulate`: tools built on the pure core alone (no server, no I/O
beyond reading the named files and printing)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from saga.errors import ValidationError
from saga.events import CallParticipant, Commit, ScheduleRetry, StepFailed
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
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        print(f"--payload: not valid JSON: {exc.msg}", file=err)
        return 2
    if not isinstance(body, dict):
        print("--payload: must be a JSON object", file=err)
        return 2
    responses: dict[str, dict[str, object]] = {}
    for item in respond:
        step, sep, text = item.partition("=")
        if not sep or step not in names:
            print(
                f"--respond: expected STEP=JSON with a step of {workflow.name}, got {item!r}",
                file=err,
            )
            return 2
        try:
            reply = json.loads(text)
        except json.JSONDecodeError as exc:
            print(f"--respond {step}: not valid JSON: {exc.msg}", file=err)
            return 2
        if not isinstance(reply, dict):
            print(f"--respond {step}: must be a JSON object", file=err)
            return 2
        responses[step] = reply

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
