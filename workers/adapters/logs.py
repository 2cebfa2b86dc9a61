"""Log set-up for every process: one JSON object per line when not on a terminal (or with
SAGA_LOG_FORMAT=json), readable lines on a terminal. Records may carry `saga_id`, `step`
and `request_id` extras; payloads are never logged at INFO."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

_EXTRAS = ("saga_id", "step", "request_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key in _EXTRAS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str | None = None) -> None:
    wanted = os.environ.get("SAGA_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    if wanted == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("SAGA_LOG_LEVEL", "INFO"))
    logging.getLogger("kafka").setLevel(logging.WARNING)
