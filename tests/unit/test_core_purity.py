"""The core stays pure: importing it loads no I/O library."""

from __future__ import annotations

import json
import subprocess
import sys

IO_MODULES = ("flask", "grpc", "psycopg", "psycopg_pool", "kafka", "sqlite3", "socket", "gunicorn")


def test_importing_saga_loads_no_io_library() -> None:
    """A fresh interpreter that imports every core module has none of the I/O libraries loaded."""
    code = (
        "import sys, json\n"
        "import saga, saga.codec, saga.decide, saga.events, saga.expressions, saga.explore, saga.invariants, saga.model, saga.simulation, saga.values, saga.workflow\n"
        f"print(json.dumps([m for m in {IO_MODULES!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == []
