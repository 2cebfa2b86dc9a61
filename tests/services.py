"""Where the real test services are: PostgreSQL and Kafka started by ``scripts/services.sh up``.

Each address comes from its environment variable, else from ``.services/env`` in the repo root
(written by ``scripts/services.sh up``)::

    SAGA_TEST_DATABASE_URL      postgresql://saga:saga@127.0.0.1:55432/saga
    SAGA_TEST_KAFKA_BOOTSTRAP   127.0.0.1:9092
    SAGA_TEST_PG_CLUSTER        "15 saga_test"  (for: pg_ctlcluster 15 saga_test restart)

``require_postgres()`` / ``require_kafka()`` return the address, or end the test when it is
missing: ``pytest.fail`` when CI=true (CI must run them), ``pytest.skip`` otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = REPO_ROOT / ".services" / "env"

_UP = "run `bash scripts/services.sh up` first"


def _env_file() -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = ENV_FILE.read_text(encoding="utf-8")
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _get(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    if value:
        return value
    return _env_file().get(name) or None


def database_url() -> str | None:
    """PostgreSQL URL for tests, or None."""
    return _get("SAGA_TEST_DATABASE_URL")


def kafka_bootstrap() -> str | None:
    """Kafka bootstrap address (host:port) for tests, or None."""
    return _get("SAGA_TEST_KAFKA_BOOTSTRAP")


def pg_cluster() -> str | None:
    """Debian cluster of the test server as "<version> <name>" (for pg_ctlcluster), or None.

    None also when SAGA_TEST_DATABASE_URL points at an external server we do not manage.
    """
    return _get("SAGA_TEST_PG_CLUSTER")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(what: str, var: str) -> None:
    import pytest  # only when needed

    if in_ci():
        pytest.fail(
            f"{what} is required in CI but not configured: {var} is unset and {ENV_FILE} has no "
            f"{var} (did `bash scripts/services.sh up` fail in .ci/run?)",
            pytrace=False,
        )
    reason = f"{what} not available ({var} unset, nothing in .services/env): {_UP}"
    pytest.skip(reason)  # never under CI=true: that failed above


def require_postgres() -> str:
    """The PostgreSQL URL, or fail (CI) / skip (elsewhere) the calling test."""
    url = database_url()
    if url is None:
        _missing("PostgreSQL", "SAGA_TEST_DATABASE_URL")
    return url  # type: ignore[return-value]


def require_kafka() -> str:
    """The Kafka bootstrap address, or fail (CI) / skip (elsewhere) the calling test."""
    bootstrap = kafka_bootstrap()
    if bootstrap is None:
        _missing("Kafka", "SAGA_TEST_KAFKA_BOOTSTRAP")
    return bootstrap  # type: ignore[return-value]
