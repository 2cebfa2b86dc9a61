"""Log set-up for every process: readable lines on a terminal, one JSON object per line
otherwise (`--log-format text|json`, else `SAGA_LOG_FORMAT`, else by whether stderr is a
terminal). Level: `SAGA_LOG_LEVEL` (default INFO).

A JSON line has `ts`, `level`, `logger`, `message`, `pid`, and `saga_id`, `step`,
`request_id` when the record carries them (`extra=`; the executor names the saga and step on
every line about one). Payloads are never logged at INFO or above. Secrets never reach a line:
whatever a message or a traceback says, the credentials of a URL, a bearer token and a
`password=`/`secret=`/`token=` value are masked before the line is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import IO

LOG_FORMATS = ("text", "json")
_EXTRAS = ("saga_id", "step", "request_id")
# Always present on a line that names a saga (null when the saga is at no step).
_SAGA_EXTRAS = ("saga_id", "step")

_MASK = "***"
_SECRETS = (
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), rf"\1{_MASK}@"),
    # Authorization: Basic <credentials>
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)\S+"), rf"\1{_MASK}"),
    # Bearer <token>
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{_MASK}"),
    # password=..., "password": "...", sasl_plain_password='...', secret: ..., token=...
    (
        re.compile(
            r"(?i)((?:password|passwd|secret)[a-z_]*[\"']?\s*[:=]\s*[\"']?"
            r"|token[\"']?\s*=\s*[\"']?|[\"']token[\"']\s*:\s*[\"'])[^\s\"',;}&]+"
        ),
        rf"\1{_MASK}",
    ),
)


def redact(text: str) -> str:
    """`text` with URL credentials, bearer tokens and password/secret/token values masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pid": record.process,
        }
        for key in _EXTRAS:
            if key in record.__dict__:
                value = record.__dict__[key]
                if value is not None or key in _SAGA_EXTRAS:
                    entry[key] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [step=... request_id=...]`, for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        message = record.getMessage()
        tags = [
            f"{key}={record.__dict__[key]}"
            for key in _EXTRAS
            if record.__dict__.get(key) is not None and str(record.__dict__[key]) not in message
        ]
        if tags:
            head, sep, tail = line.partition("\n")  # after the message, before a traceback
            line = f"{head} [{' '.join(tags)}]{sep}{tail}"
        return redact(line)


def log_format(wanted: str | None = None, stream: IO[str] | None = None) -> str:
    """The format to use: `wanted`, else `SAGA_LOG_FORMAT`, else text on a terminal and JSON
    otherwise ("auto", an empty or an unknown value: the same as none)."""
    for choice in (wanted, os.environ.get("SAGA_LOG_FORMAT")):
        if choice and choice.strip().lower() in LOG_FORMATS:
            return choice.strip().lower()
    target = stream if stream is not None else sys.stderr
    try:
        return "text" if target.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or odd stream
        return "json"


def setup_logging(
    level: str | None = None, fmt: str | None = None, stream: IO[str] | None = None
) -> None:
    """Send every log record to stderr (or `stream`) in `fmt` (see `log_format`), at `level`
    (else `SAGA_LOG_LEVEL`, else INFO). Uncaught exceptions, in any thread, are logged too, so
    a JSON log stays one object per line."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if log_format(fmt, out) == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("SAGA_LOG_LEVEL") or "INFO").upper())
    logging.getLogger("kafka").setLevel(logging.WARNING)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("saga").critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("saga").critical(
        "uncaught %s in thread %s",
        args.exc_type.__name__,
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
