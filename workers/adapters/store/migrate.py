"""PostgreSQL schema migrations: versioned SQL files applied by the program itself (SPEC §7).

`migrations/NNNN_<name>.sql` are applied in version order, each in its own transaction, and
recorded in `<schema>.schema_migrations`. A session advisory lock keyed on the schema makes
concurrent starts safe: one process applies, the others wait and then find nothing to do.
Applied files are never edited; a change is a new file.

The SQL files name their schema `{schema}`; only a validated identifier is substituted.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any

import psycopg
from attrs import frozen
from psycopg.conninfo import conninfo_to_dict

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_FILE_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

# Advisory lock namespaces (first key of the two-key form); the second key hashes the schema
# (or schema + workflow name), so separate schemas never wait on each other.
LOCK_MIGRATE = 0x5A6A01
LOCK_WORKFLOW = 0x5A6A02

# Connection defaults (each only when the conninfo does not set it): fail fast when the server
# is unreachable, and notice a dead peer instead of waiting on it forever.
CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


@frozen
class Migration:
    version: int
    name: str
    sql: str


def validate_schema(schema: str) -> str:
    """The schema name if it is a plain lower-case SQL identifier, else ValueError."""
    if not _SCHEMA_RE.fullmatch(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: use 1-63 of a-z, 0-9, _ (not starting with a digit)"
        )
    return schema


def qualify(sql: str, schema: str) -> str:
    """Put the (validated) schema name where the text says `{schema}`."""
    return sql.replace("{schema}", validate_schema(schema))


def connect_kwargs(conninfo: str, **overrides: Any) -> dict[str, Any]:
    """`CONNECT_DEFAULTS` for the keys `conninfo` leaves unset, plus `overrides`."""
    given = conninfo_to_dict(conninfo)
    kwargs = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
    kwargs.update(overrides)
    return kwargs


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file, in version order; versions must be 1, 2, 3, ... without gaps."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_RE.fullmatch(path.name)
        if m is None:
            raise ValueError(f"migration file name not NNNN_name.sql: {path.name}")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    expected = list(range(1, len(found) + 1))
    if [mig.version for mig in found] != expected:
        raise ValueError(
            f"migration versions must run 1..{len(found)} without gaps or duplicates, "
            f"got {[mig.version for mig in found]}"
        )
    return found


def migrate_postgres(conninfo: str, schema: str = "saga") -> list[int]:
    """Apply the pending migrations to `schema` (created if missing), oldest first, each in its
    own transaction; return the versions this call applied (empty when up to date)."""
    validate_schema(schema)
    migrations = load_migrations()
    applied_now: list[int] = []
    with psycopg.connect(conninfo, autocommit=True, **connect_kwargs(conninfo)) as conn:
        # Session-level: held across the per-migration transactions, released on disconnect
        # if this process dies half-way.
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_MIGRATE, schema))
        try:
            conn.execute(qualify("CREATE SCHEMA IF NOT EXISTS {schema}", schema))
            conn.execute(
                qualify(
                    "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
                    " version INT PRIMARY KEY,"
                    " name TEXT NOT NULL,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())",
                    schema,
                )
            )
            cur = conn.execute(qualify("SELECT version FROM {schema}.schema_migrations", schema))
            done = {int(row[0]) for row in cur.fetchall()}
            for mig in migrations:
                if mig.version in done:
                    continue
                with conn.transaction():
                    conn.execute(qualify(mig.sql, schema))
                    conn.execute(
                        qualify(
                            "INSERT INTO {schema}.schema_migrations (version, name)"
                            " VALUES (%s, %s)",
                            schema,
                        ),
                        (mig.version, mig.name),
                    )
                log.info(
                    "applied migration %04d_%s to schema %s",
                    mig.version,
                    mig.name,
                    schema,
                )
                applied_now.append(mig.version)
        finally:
            # Closing the connection releases the lock too, so a failed unlock (the connection
            # broke) must not hide the error that got us here.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_MIGRATE, schema))
    return applied_now
