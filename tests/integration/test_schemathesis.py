"""The served OpenAPI document says exactly what the server accepts: schemathesis (`st run
--checks all`, a fixed seed and example budget) drives the REST API of a real server on
127.0.0.1 (an engine executing sagas against a participant) and finds no 5xx, no schema-valid
request refused, and no response that does not match its schema.

Two things JSON Schema cannot say are handed to schemathesis in its own config, not hidden:
which strings are workflow documents (so `registerWorkflow` gets its positive data from the
document's example, and only negative data is generated for it), and which saga ids and
workflow names exist (dictionaries, so requests reach more than the 404 path)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

from saga_http.app import create_app
from saga_http.openapi import MAX_PAGE
from tests.integration.test_openapi import LoopbackServer, write_config
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

SEED = 20260220
MAX_EXAMPLES = 40
BEHAVIOUR = {
    "Shop.Charge": {
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "payment declined",
    },
    "Slow.Wait": {"sleep_ms": 6_000},
}
ORDER_YAML = """\
name: st-order
steps:
  - &reserve
    name: reserve
    service: shop
    method: Shop.Reserve
    compensate: Shop.Release
    timeout_secs: 5
    retry: {max_attempts: 1}
  - <<: *reserve
    name: charge
    method: Shop.Charge
    compensate: null
"""
SLOW_YAML = """\
name: st-slow
steps:
  - name: wait
    service: shop
    method: Slow.Wait
    compensate: Shop.Release
    timeout_secs: 30
    retry: {max_attempts: 1}
"""


class Served(NamedTuple):
    base: str
    saga_ids: list[str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The REST app on a loopback socket, with two workflows and sagas in every phase: done,
    failed and still running."""
    participant, port = start_participant_server(BEHAVIOUR)
    config = write_config(tmp_path_factory.mktemp("schemathesis"), port)
    engine = Engine.from_config(config)
    engine.start()
    server = LoopbackServer(create_app(config, engine))
    try:
        engine.register_workflow(ORDER_YAML)
        engine.register_workflow(SLOW_YAML)
        ids = [
            engine.start_saga("st-order", {"n": 1}, correlation_id="st")[0].saga_id,
            engine.start_saga("st-order", {"card": "declined"})[0].saga_id,
            engine.start_saga("st-slow", {})[0].saga_id,
        ]
        deadline = time.monotonic() + 15
        while any(engine.get_saga(i)[0].status.value == "STARTED" for i in ids):
            assert time.monotonic() < deadline, "the seeded sagas did not start"
            time.sleep(0.05)
        yield Served(server.base, ids)
    finally:
        server.close()
        engine.close(grace_secs=1)
        participant.stop(grace=None).wait(5)


def _config_file(directory: Path, served: Served) -> Path:
    ids = ", ".join(f'"{i}"' for i in served.saga_ids)
    path = directory / "schemathesis.toml"
    path.write_text(
        f"""\
seed = {SEED}

[generation]
max-examples = {MAX_EXAMPLES}

[dictionaries.sagas]
values = [{ids}]

[dictionaries.workflows]
values = ["st-order"]

[parameters]
"path.saga_id" = {{ dictionary = "sagas", probability = 0.5 }}
"body.workflow_name" = {{ dictionary = "workflows", probability = 0.5 }}
"query.workflow_name" = {{ dictionary = "workflows", probability = 0.3 }}

# A random string is not a workflow document, and JSON Schema cannot say which strings are:
# positive data for registerWorkflow is the document's example; the rest is negative data.
[[operations]]
include-operation-id = "registerWorkflow"
generation.mode = "negative"
""",
        encoding="utf-8",
    )
    return path


def test_schemathesis_finds_nothing(served: Served, tmp_path: Path) -> None:
    """`st run --checks all` over every operation passes: no 5xx, no schema-valid request
    refused, no invalid one accepted, every response as documented."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(_config_file(tmp_path, served)),
            "--no-color",
            "run",
            f"{served.base}/api/v1/openapi.json",
            "--checks",
            "all",
            "--workers",
            "1",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12_000:]
    assert "passed" in output and "failures" not in output.split("SUMMARY")[-1]


def test_page_maximum_is_the_one_the_server_enforces(served: Served) -> None:
    """The documented page maximum is accepted and one past it is a 400."""
    ok = requests.get(f"{served.base}/api/v1/sagas", params={"page": MAX_PAGE}, timeout=10)
    assert ok.status_code == 200, ok.text
    over = requests.get(f"{served.base}/api/v1/sagas", params={"page": MAX_PAGE + 1}, timeout=10)
    assert over.status_code == 400 and "page" in over.json()["error"]["message"]
