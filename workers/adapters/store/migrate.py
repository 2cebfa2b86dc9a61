"""Schema migrations: versioned SQL files applied by the program itself (SPEC §7), one runner
for both SQL stores.

`migrations/<dialect>/NNNN_<name>.sql` (dialect `postgres` or `sqlite`) are applied in version
order, each in its own transaction, and recorded in `schema_migrations`. Concurrent starts are
safe: PostgreSQL holds a session advisory lock keyed on the schema, SQLite the database write
lock; one process applies, the others wait and then find nothing to do. Applied files are never
edited; a change is a new file (a new column: one file per dialect, same version).

The PostgreSQL files name their schema `{schema}`; only a validated identifier is substituted.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from attrs import frozen

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(__file__).resolve().parent / "migrations"
MIGRATIONS_DIR = MIGRATIONS_ROOT / "postgres"
SQLITE_MIGRATIONS_DIR = MIGRATIONS_ROOT / "sqlite"

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
    from psycopg.conninfo import conninfo_to_dict

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


def apply_pending(
    migrations: Iterable[Migration], done: set[int], apply: Callable[[Migration], None], where: str
) -> list[int]:
    """The runner: apply (with `apply`, one transaction each) every migration not in `done`,
    oldest first; return the versions applied."""
    applied_now: list[int] = []
    for mig in migrations:
        if mig.version in done:
            continue
        apply(mig)
        log.info("applied migration %04d_%s to %s", mig.version, mig.name, where)
        applied_now.append(mig.version)
    return applied_now


def sql_statements(sql: str) -> list[str]:
    """The statements of a migration file, for drivers that run one statement at a time: each
    ends with `;` at the end of a line; comment lines between statements are dropped."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if not current and (not line.strip() or line.strip().startswith("--")):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip())
            current = []
    if current:
        statements.append("\n".join(current).strip())
    return statements


def migrate_sqlite(conn: Any, now: str) -> list[int]:
    """Apply the pending SQLite migrations on `conn` (a `sqlite3` connection in autocommit
    mode), each under the database write lock (`BEGIN IMMEDIATE`)."""
    migrations = load_migrations(SQLITE_MIGRATIONS_DIR)

    def transaction(body: Callable[[], None]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            body()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def apply(mig: Migration) -> None:
        def body() -> None:
            # Another process may have applied it while this one waited for the lock.
            if conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (mig.version,)
            ).fetchone():
                return
            for statement in sql_statements(mig.sql):
                conn.execute(statement)
                if "writable_schema" in statement and "OFF" in statement.upper():
                    # A table definition was edited in place: every connection (this one
                    # first, before any later statement) must reload the schema.
                    version = int(conn.execute("PRAGMA schema_version").fetchone()[0])
                    conn.execute(f"PRAGMA schema_version = {version + 1}")
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (mig.version, mig.name, now),
            )

        transaction(body)

    transaction(
        lambda: conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
    )
    done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
    return apply_pending(migrations, done, apply, "the SQLite file")


def migrate_postgres(conninfo: str, schema: str = "saga") -> list[int]:
    """Apply the pending migrations to `schema` (created if missing), oldest first, each in its
    own transaction; return the versions this call applied (empty when up to date)."""
    import psycopg

    validate_schema(schema)
    migrations = load_migrations()
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

            def apply(mig: Migration) -> None:
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

            return apply_pending(migrations, done, apply, f"schema {schema}")
        finally:
            # Closing the connection releases the lock too, so a failed unlock (the connection
            # broke) must not hide the error that got us here.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_MIGRATE, schema))
