"""Logs as an operator reads them: one JSON object per line off a terminal (readable lines on
one, `--log-format` to choose), executor lines naming the saga and the step, no payload at
INFO or above, and no secret anywhere: not a database or Kafka password from the config, not
a bearer token from a request."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import (
    ParticipantProcess,
    free_port,
    step,
    wait_until,
    workflow_file,
    write_config,
)
from workers.adapters.logs import JsonFormatter, TextFormatter, redact, setup_logging
from workers.config import load_config
from workers.service.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
MARKER = f"payload-marker-{uuid.uuid4().hex}"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log record of this process, as the JSON lines a production process writes, at
    DEBUG; the logging set-up of the test run comes back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    out = io.StringIO()
    setup_logging(level="DEBUG", fmt="json", stream=out)
    try:
        yield out
    finally:
        root.handlers[:], level, sys.excepthook, threading.excepthook = saved
        root.setLevel(level)


def lines_of(text: str) -> list[dict[str, Any]]:
    """Each line as the JSON object it must be (a line that is not one fails the test)."""
    parsed = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "message"} <= set(entry), line
        assert entry["level"] in LEVELS, line
        parsed.append(entry)
    return parsed


def test_executor_lines_name_the_saga_and_step_and_carry_no_payload(
    tmp_path: Path, captured: io.StringIO
) -> None:
    """Running sagas (one retried, one compensated) at DEBUG: every executor line about a saga
    carries its `saga_id` and `step`, and no line at INFO or above holds the payload (which
    the participant also echoes in its reply)."""
    proc = ParticipantProcess(
        {
            "Pay.Charge": {
                "fail_if_payload": {"field": "card", "equals": "declined"},
                "fail": "FAILED_PRECONDITION",
            },
            "Stock.Reserve": {"fail_times": 1, "fail": "UNAVAILABLE"},
        },
        tmp_path,
    )
    retry = {"max_attempts": 3, "initial_interval_ms": 20}
    workflow_file(
        tmp_path / "wf",
        "logged",
        [
            step("reserve", "inventory-service", "Stock.Reserve", "Stock.Release", retry=retry),
            step("charge", "payment-service", "Pay.Charge", "Pay.Refund", retry=retry),
        ],
    )
    path = write_config(tmp_path / "c.yaml", port=proc.port, workflow_dir=tmp_path / "wf")
    try:
        engine = Engine.from_config(load_config(str(path), environ={}), execute=True)
    except BaseException:
        proc.stop()
        raise
    engine.start()
    try:
        ok, _ = engine.start_saga("logged", {"card": "ok", "note": MARKER})
        declined, _ = engine.start_saga("logged", {"card": "declined", "note": MARKER})
        for saga in (ok, declined):
            wait_until(lambda s=saga: engine.get_saga(s.saga_id)[0].terminal, 15, what="saga end")
        assert engine.get_saga(declined.saga_id)[1][-1].response_payload == {
            "card": "declined",
            "note": MARKER,
            "ok": True,
        }  # the compensation's reply echoed the payload: it passed through the executor
    finally:
        engine.close()
        proc.stop()

    entries = lines_of(captured.getvalue())
    ids = {ok.saga_id, declined.saga_id}
    about_a_saga = [
        e
        for e in entries
        if e["logger"] == "saga.executor"
        and ("saga_id" in e or any(i in e["message"] for i in ids))
    ]
    assert about_a_saga, "the executor wrote no line about the sagas it ran"
    for entry in about_a_saga:
        assert entry.get("saga_id") in ids and "step" in entry, entry
    steps_seen = {(e["saga_id"], e["step"]) for e in about_a_saga}
    assert {(ok.saga_id, "reserve"), (ok.saga_id, "charge"), (declined.saga_id, "charge")} <= (
        steps_seen
    )
    loud = [e for e in entries if e["level"] != "DEBUG"]
    assert loud, "nothing was logged at INFO or above"
    assert not [e for e in loud if MARKER in json.dumps(e)]


def test_a_bearer_token_never_reaches_the_log(tmp_path: Path, captured: io.StringIO) -> None:
    """REST calls with a good token, a token for another audience and a forged one: the log
    holds none of the tokens (nor their signatures)."""
    from saga_http.app import create_app
    from tests.security.jwks import JwksServer, Keys, auth_section

    keys = Keys()
    jwks = JwksServer(keys)
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "saga": {
                    "sqlite_path": str(tmp_path / "s.sqlite3"),
                    "workflow_dir": str(tmp_path / "none"),
                    "execute": False,
                },
                "auth": auth_section(jwks.url),
            }
        )
    )
    config = load_config(str(path), environ={})
    tokens = [
        keys.token(),
        keys.token(aud="another-service"),
        keys.token(kid="rsa-2"),  # a key the JWKS does not publish: a refresh, then 401
        keys.hs256_with_public_key(),
    ]
    try:
        client = create_app(config).test_client()
        codes = [
            client.get("/api/v1/sagas", headers={"Authorization": f"Bearer {t}"}).status_code
            for t in tokens
        ]
        client.get("/api/v1/sagas", headers={"Authorization": "Bearer not-a-jwt-" + MARKER})
    finally:
        jwks.close()
    assert codes == [200, 401, 401, 401]
    text = captured.getvalue()
    lines_of(text)
    for token in tokens:
        assert token not in text and token.split(".")[2] not in text
    assert MARKER not in text


def _run_saga(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """`python -m saga_cli ARGS`, stdin closed, stderr (and stdout) captured through a pipe."""
    done = subprocess.run(
        [sys.executable, "-m", "saga_cli", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stderr


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SAGA_LOG_FORMAT", "CONFIG_PATH")}
    env.pop("DATABASE_URL", None)
    return {**env, **extra}


def test_config_passwords_never_reach_the_log(tmp_path: Path) -> None:
    """A worker whose database cannot be reached, and one whose Kafka (SASL) cannot: their
    logs are JSON lines (the start-up failure too) and hold neither password."""
    db_secret = f"db-{uuid.uuid4().hex}"
    kafka_secret = f"kafka-{uuid.uuid4().hex}"
    closed = free_port()
    db_config = tmp_path / "db.yaml"
    db_config.write_text(
        yaml.safe_dump(
            {
                "database": {
                    "host": "127.0.0.1",
                    "port": closed,
                    "name": "saga",
                    "user": "saga",
                    "password": db_secret,
                }
            }
        )
    )
    code, err = _run_saga(["worker", "--config", str(db_config), "--log-format", "json"], _env())
    assert code != 0
    entries = lines_of(err)
    assert any(e["level"] == "CRITICAL" and "exc" in e for e in entries), err
    assert db_secret not in err

    kafka_config = tmp_path / "kafka.yaml"
    kafka_config.write_text(
        yaml.safe_dump(
            {
                "saga": {"sqlite_path": str(tmp_path / "k.sqlite3")},
                "kafka": {
                    "brokers": [f"127.0.0.1:{closed}"],
                    "security_protocol": "SASL_PLAINTEXT",
                    "sasl": {"mechanism": "PLAIN", "username": "u", "password": kafka_secret},
                },
            }
        )
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "saga_cli", "worker", "--config", str(kafka_config)],
        cwd=ROOT,
        env=_env(SAGA_LOG_FORMAT="json"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = worker.communicate(timeout=6)[1]
    except subprocess.TimeoutExpired:
        worker.terminate()
        out = worker.communicate(timeout=20)[1]
    assert any("executing sagas" in e["message"] for e in lines_of(out)), out
    assert kafka_secret not in out


def _stderr_on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run `python -m saga_cli ARGS` with stderr on a pseudo-terminal; what it wrote there."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "saga_cli", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the process closed its end
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(60) == 0
    finally:
        os.close(leader)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def test_log_format_follows_the_terminal_unless_chosen(tmp_path: Path) -> None:
    """`saga migrate` writes readable lines to a terminal and JSON lines to a pipe; with
    `--log-format json` (or `SAGA_LOG_FORMAT=json`) JSON on the terminal too, with
    `--log-format text` text into the pipe."""

    def config(name: str) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"saga": {"sqlite_path": str(tmp_path / f"{name}.db")}}))
        return str(path)

    on_tty = _stderr_on_a_terminal(["migrate", "--config", config("a")], _env())
    assert "INFO" in on_tty and "applied migration 0001" in on_tty
    assert not on_tty.lstrip().startswith("{")

    _, piped = _run_saga(["migrate", "--config", config("b")], _env())
    assert any("applied migration 0001" in e["message"] for e in lines_of(piped))

    chosen = _stderr_on_a_terminal(
        ["migrate", "--config", config("c"), "--log-format", "json"], _env()
    )
    assert any("applied migration 0001" in e["message"] for e in lines_of(chosen))
    by_env = _stderr_on_a_terminal(
        ["migrate", "--config", config("d")], _env(SAGA_LOG_FORMAT="json")
    )
    assert lines_of(by_env)

    _, text = _run_saga(["migrate", "--config", config("e"), "--log-format", "text"], _env())
    assert "applied migration 0001" in text and not text.lstrip().startswith("{")


def _record(message: str, *args: Any, exc: BaseException | None = None, **extra: Any) -> Any:
    record = logging.LogRecord("saga.test", logging.ERROR, __file__, 1, message, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("could not connect to postgres://saga:Hunter2-pw@db.internal:5432/saga", "Hunter2-pw"),
        (
            "headers {'Authorization': 'Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln'}",
            "eyJhbGciOiJSUzI1NiJ9",
        ),
        ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
        ("sasl_plain_password='k4fka-pw' rejected", "k4fka-pw"),
        ('config {"password": "p@ss-w0rd", "user": "saga"}', "p@ss-w0rd"),
        ("refresh failed: GET https://sso/token?access_token=abc123def", "abc123def"),
    ],
)
def test_secrets_in_a_message_or_traceback_are_masked(text: str, secret: str) -> None:
    """Whatever a message or a traceback quotes, URL credentials, bearer and basic
    credentials and password/secret/token values are masked, in JSON and in text."""
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        record = _record("failed: %s", text, exc=exc, saga_id="s-1", step="charge")
    as_json = JsonFormatter().format(record)
    as_text = TextFormatter().format(record)
    assert secret not in as_json and secret not in as_text
    assert "***" in json.loads(as_json)["message"] and "***" in json.loads(as_json)["exc"]
    assert redact(text) != text
    assert json.loads(as_json)["saga_id"] == "s-1" and "[saga_id=s-1 step=charge]" in as_text
