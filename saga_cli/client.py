"""The client commands of `saga` (start, get, list, cancel, pause, resume, workflows) against a
running server's REST API: readable tables for people, `--json` for scripts, a non-zero exit
status with the server's message on any error."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import requests

DEFAULT_URL = "http://127.0.0.1:8080"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


class ClientError(Exception):
    """A failed command: `message` for the user, `code` the exit status, `status` the HTTP
    status the server answered (None when it did not answer)."""

    def __init__(self, message: str, code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ClientError(f"cannot reach {self.url}: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            code = error.get("code", f"HTTP {response.status_code}")
            message = error.get("message", response.text[:200])
            raise ClientError(f"{code}: {message}", status=response.status_code)
        return response.status_code, body


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), file=out)


def _table(rows: list[list[str]], headers: list[str], out: TextIO) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _read_payload(text: str) -> Any:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ClientError(f"--payload: cannot read {text[1:]}: {exc.strerror}", 2) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"--payload: not valid JSON: {exc.msg}", 2) from None


def print_timeline(detail: dict[str, Any], out: TextIO) -> None:
    """A saga, its step logs and its operator actions, in time order, as a person reads them."""
    saga = detail["saga"]
    print(
        f"saga {saga['saga_id']}  workflow {saga['workflow_name']}  status {saga['status']}",
        file=out,
    )
    if saga.get("correlation_id"):
        print(f"correlation_id {saga['correlation_id']}", file=out)
    for line in timeline(detail):
        print(line, file=out)
    if saga.get("error_message"):
        print(f"error: {saga['error_message']}", file=out)


def timeline(detail: dict[str, Any]) -> list[str]:
    """Each step log and operator action as one line, in time order (a log when it ended,
    an action when it was asked for; a log first on a tie)."""
    entries = [
        (log["completed_at"] or log["started_at"] or "", 0, i, timeline_line(log))
        for i, log in enumerate(detail["step_logs"])
    ]
    entries += [
        (action["at"] or "", 1, i, operator_line(action))
        for i, action in enumerate(detail.get("operator_actions") or [])
    ]
    return [line for *_, line in sorted(entries)]


def operator_line(action: dict[str, Any]) -> str:
    """One operator action: what, how a resume went on, and who asked."""
    what = str(action["action"])
    if action.get("resume_action"):
        what += f" {action['resume_action']}"
    if action.get("payload_replaced"):
        what += " (payload replaced)"
    return f"  {action['at']}  {'OPERATOR':<10} {what:<24} by {action.get('by') or '-'}"


def timeline_line(log: dict[str, Any]) -> str:
    line = f"  {log['completed_at'] or log['started_at']}  {log['action']:<10} {log['step_name']:<24} {log['status']}"
    if log.get("error_message"):
        line += f"  {log['error_message']}"
    elif log["action"] == "COMPENSATE" and log.get("request_payload") is not None:
        line += "  sent " + json.dumps(log["request_payload"], separators=(",", ":"))
    return line


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    client = Client(args.url, getattr(args, "token", None))
    try:
        return _dispatch(client, args, out)
    except ClientError as exc:
        print(f"saga: {exc.message}", file=err)
        return exc.code


def _dispatch(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    command = args.client_command
    if command == "start":
        body: dict[str, Any] = {
            "workflow_name": args.workflow,
            "payload": _read_payload(args.payload),
        }
        if args.correlation_id:
            body["correlation_id"] = args.correlation_id
        if args.initiated_by:
            body["initiated_by"] = args.initiated_by
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        _, result = client.request("POST", "/api/v1/sagas", json=body, headers=headers)
        if args.json:
            _print_json(result, out)
        else:
            print(f"{result['saga_id']}  {result['status']}", file=out)
        return 0
    if command == "get":
        return _get(client, args, out)
    if command == "list":
        params = {
            k: v
            for k, v in (
                ("page", args.page),
                ("page_size", args.page_size),
                ("workflow_name", args.workflow),
                ("status", args.status),
                ("correlation_id", args.correlation_id),
            )
            if v is not None
        }
        _, result = client.request("GET", "/api/v1/sagas", params=params)
        if args.json:
            _print_json(result, out)
            return 0
        rows = [
            [s["saga_id"], s["workflow_name"], s["status"], str(s["current_step"]), s["created_at"]]
            for s in result["sagas"]
        ]
        _table(rows, ["SAGA ID", "WORKFLOW", "STATUS", "STEP", "CREATED"], out)
        p = result["pagination"]
        print(
            f"page {p['page']} of {max(1, -(-p['total_count'] // p['page_size']))}, "
            f"{p['total_count']} sagas" + (" (more: --page N)" if p["has_next"] else ""),
            file=out,
        )
        return 0
    if command == "cancel":
        _, result = client.request("POST", f"/api/v1/sagas/{args.saga_id}/cancel")
        if args.json:
            _print_json(result, out)
        else:
            print(result["message"], file=out)
        return 0
    if command == "pause":
        _, result = client.request("POST", f"/api/v1/sagas/{args.saga_id}/pause")
        if args.json:
            _print_json(result, out)
        else:
            print(result["message"], file=out)
        return 0
    if command == "resume":
        return _resume(client, args, out)
    if command == "workflows":
        if args.workflows_command == "register":
            try:
                text = Path(args.file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ClientError(f"{args.file}: {exc.strerror}", 2) from None
            _, result = client.request("POST", "/api/v1/workflows", json={"workflow_yaml": text})
            if args.json:
                _print_json(result, out)
            else:
                print(
                    f"registered {result['name']} v{result.get('version', '?')} ({result['step_count']} steps)",
                    file=out,
                )
            return 0
        _, result = client.request("GET", "/api/v1/workflows")
        if args.json:
            _print_json(result, out)
            return 0
        rows = [
            [w["name"], str(w.get("version", "")), str(w["step_count"]), ", ".join(w["step_names"])]
            for w in result["workflows"]
        ]
        _table(rows, ["NAME", "VERSION", "STEPS", "STEP NAMES"], out)
        return 0
    raise ClientError(f"unknown command {command}", 2)


def _resume(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """`saga resume ID`, or every saga that --status / --workflow select: one line each."""
    body: dict[str, Any] = {}
    if args.action:
        body["action"] = args.action
    bulk = args.status is not None or args.workflow is not None
    if args.saga_id is not None and bulk:
        raise ClientError("give a saga id or --status/--workflow, not both", 2)
    if args.saga_id is None and not bulk:
        raise ClientError("give a saga id, or --status PAUSED and/or --workflow NAME", 2)
    if not bulk:
        if args.payload is not None:
            body["payload"] = _read_payload(args.payload)
        _, result = client.request("POST", f"/api/v1/sagas/{args.saga_id}/resume", json=body)
        if args.json:
            _print_json(result, out)
        else:
            print(result["message"], file=out)
        return 0
    if args.payload is not None:
        raise ClientError("--payload: only with one saga id, never for many sagas at once", 2)
    status = args.status or "PAUSED"
    if status != "PAUSED":
        raise ClientError(f"--status: only PAUSED sagas can be resumed, not {status}", 2)
    # Every id first, then the resumes: a resumed saga leaves the PAUSED pages as they are read.
    ids = _all_saga_ids(client, {"status": status, "workflow_name": args.workflow})
    results = []
    failed = 0
    for saga_id in ids:
        try:
            _, result = client.request("POST", f"/api/v1/sagas/{saga_id}/resume", json=body)
            outcome, message = "ok", str(result["message"])
            results.append({"saga_id": saga_id, "ok": True, **result})
        except ClientError as exc:
            failed += 1
            outcome = str(exc.status) if exc.status is not None else "error"
            message = exc.message
            results.append(
                {"saga_id": saga_id, "ok": False, "status_code": exc.status, "message": message}
            )
        if not args.json:
            print(f"{saga_id}  {outcome}  {message}", file=out, flush=True)
    if args.json:
        _print_json({"results": results, "resumed": len(ids) - failed, "failed": failed}, out)
    else:
        print(f"{len(ids) - failed} resumed, {failed} failed", file=out)
    return 1 if failed else 0


def _all_saga_ids(client: Client, filters: dict[str, Any]) -> list[str]:
    """The ids of every saga the filters select, reading all pages (each id once)."""
    params = {k: v for k, v in filters.items() if v is not None}
    ids: list[str] = []
    seen: set[str] = set()
    page = 1
    while True:
        _, result = client.request(
            "GET", "/api/v1/sagas", params={**params, "page": page, "page_size": 100}
        )
        for saga in result["sagas"]:
            if saga["saga_id"] not in seen:
                seen.add(saga["saga_id"])
                ids.append(saga["saga_id"])
        if not result["pagination"]["has_next"]:
            return ids
        page += 1


def _get(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _, detail = client.request("GET", f"/api/v1/sagas/{args.saga_id}")
    if not args.watch:
        if args.json:
            _print_json(detail, out)
        else:
            print_timeline(detail, out)
        return 0
    seen: set[str] = set()
    actions_seen = 0
    status = None
    saga = detail["saga"]
    print(f"saga {saga['saga_id']}  workflow {saga['workflow_name']}", file=out)
    deadline = time.monotonic() + args.watch_timeout
    while True:
        saga = detail["saga"]
        for log in detail["step_logs"]:
            if log["id"] not in seen:
                seen.add(log["id"])
                print(json.dumps(log) if args.json else timeline_line(log), file=out, flush=True)
        actions = detail.get("operator_actions") or []
        for action in actions[actions_seen:]:
            print(json.dumps(action) if args.json else operator_line(action), file=out, flush=True)
        actions_seen = max(actions_seen, len(actions))
        if saga["status"] != status:
            status = saga["status"]
            print(f"  status {status}", file=out, flush=True)
        if status in TERMINAL:
            if saga.get("error_message"):
                print(f"error: {saga['error_message']}", file=out)
            return 0
        if time.monotonic() > deadline:
            raise ClientError(f"saga still {status} after {args.watch_timeout}s")
        time.sleep(0.5)
        _, detail = client.request("GET", f"/api/v1/sagas/{args.saga_id}")


def register(sub: Any) -> None:
    """Add the client sub-commands to the `saga` parser."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url", default=DEFAULT_URL, help=f"server REST URL (default {DEFAULT_URL})"
        )
        p.add_argument("--token", help="bearer token when the server has auth on")
        p.add_argument("--json", action="store_true", help="print the server's JSON")
        p.set_defaults(func=run)

    p = sub.add_parser("start", help="start a saga")
    p.add_argument("workflow")
    p.add_argument("--payload", default="{}", help="JSON object, or @file")
    p.add_argument("--correlation-id")
    p.add_argument("--initiated-by")
    p.add_argument("--idempotency-key")
    common(p)
    p.set_defaults(client_command="start")

    p = sub.add_parser("get", help="show a saga and its step logs")
    p.add_argument("saga_id")
    p.add_argument("--watch", action="store_true", help="follow it live until it ends")
    p.add_argument("--watch-timeout", type=float, default=600.0)
    common(p)
    p.set_defaults(client_command="get")

    p = sub.add_parser("list", help="list sagas, newest first")
    p.add_argument("--workflow")
    p.add_argument("--status")
    p.add_argument("--correlation-id")
    p.add_argument("--page")
    p.add_argument("--page-size")
    common(p)
    p.set_defaults(client_command="list")

    p = sub.add_parser(
        "cancel", help="cancel a STARTED or RUNNING saga, or one PAUSED before compensating"
    )
    p.add_argument("saga_id")
    common(p)
    p.set_defaults(client_command="cancel")

    p = sub.add_parser(
        "pause", help="pause a STARTED, RUNNING or COMPENSATING saga at its next step boundary"
    )
    p.add_argument("saga_id")
    common(p)
    p.set_defaults(client_command="pause")

    p = sub.add_parser(
        "resume",
        help="resume a PAUSED saga, or every PAUSED saga --status/--workflow select",
        description="Resume one PAUSED saga (SAGA_ID), or every saga that --status PAUSED "
        "and/or --workflow NAME select, reading all pages first and printing one line per saga "
        "(its id, ok or the HTTP status, the message); the exit status is 1 if any failed.",
    )
    p.add_argument(
        "saga_id", nargs="?", help="the saga to resume (omit it with --status/--workflow)"
    )
    p.add_argument(
        "--action",
        choices=("continue", "retry", "skip", "compensate"),
        help="how to go on (default: retry after a failure, continue after a pause request)",
    )
    p.add_argument(
        "--payload", help="replace the payload first: a JSON object, or @file (one saga only)"
    )
    p.add_argument("--status", help="resume every saga in this status (PAUSED)")
    p.add_argument("--workflow", help="resume every PAUSED saga of this workflow")
    common(p)
    p.set_defaults(client_command="resume")

    p = sub.add_parser("workflows", help="list or register workflows")
    wsub = p.add_subparsers(dest="workflows_command", metavar="list|register")
    wsub.required = True
    q = wsub.add_parser("list", help="list workflows")
    common(q)
    q.set_defaults(client_command="workflows")
    q = wsub.add_parser(
        "register", help="register a workflow file (a new version if the name exists)"
    )
    q.add_argument("file")
    common(q)
    q.set_defaults(client_command="workflows")
