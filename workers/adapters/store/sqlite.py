"""The embedded default store: one SQLite file in WAL mode, safe for several processes on one
machine. Writes take the database write lock (`BEGIN IMMEDIATE`), so claims never overlap;
lease times come from this machine's clock, which every process on it shares."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attrs import evolve

from saga.codec import (
    compensation_from_dict,
    compensation_to_dict,
    workflow_from_dict,
    workflow_to_dict,
)
from saga.model import Action, SagaState, SagaStatus, StepLog, StepStatus, Workflow
from workers.adapters.store.base import (
    CancelOutcome,
    Claimed,
    CommitRequest,
    CommitResult,
    OutboxRow,
    SagaFilter,
    SagaPage,
    SagaStats,
    Store,
    StoreRefused,
    refusal_reason,
)
from workers.adapters.store.events import event_body

# What SQLite (or the binding of a value) raises for data it will not keep; the rest
# (OperationalError: locked, I/O) means it could not answer.
_REFUSALS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    UnicodeError,
    ValueError,
    TypeError,
    OverflowError,
)

_ACTIVE = ("STARTED", "RUNNING", "COMPENSATING")

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
        CREATE TABLE saga_states (
            id TEXT PRIMARY KEY,
            workflow_name TEXT NOT NULL CHECK (length(workflow_name) <= 255),
            workflow_version INTEGER NOT NULL DEFAULT 1,
            current_step INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'STARTED' CHECK (status IN
                ('STARTED','RUNNING','COMPLETED','COMPENSATING','FAILED','CANCELLED')),
            payload TEXT,
            correlation_id TEXT,
            initiated_by TEXT,
            error_message TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            compensation TEXT,
            lease_owner TEXT,
            lease_token INTEGER NOT NULL DEFAULT 0,
            lease_expires_at REAL,
            idempotency_key TEXT UNIQUE,
            request_hash TEXT,
            seq INTEGER NOT NULL
        );
        CREATE INDEX idx_saga_states_workflow_name ON saga_states (workflow_name, created_at);
        CREATE INDEX idx_saga_states_status ON saga_states (status, created_at);
        CREATE INDEX idx_saga_states_created_at ON saga_states (created_at);
        CREATE INDEX idx_saga_states_correlation_id ON saga_states (correlation_id)
            WHERE correlation_id IS NOT NULL;
        CREATE INDEX idx_saga_states_claim ON saga_states (created_at)
            WHERE status IN ('STARTED','RUNNING','COMPENSATING');
        CREATE TABLE saga_step_logs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            saga_id TEXT NOT NULL REFERENCES saga_states (id) ON DELETE CASCADE,
            step_index INTEGER NOT NULL,
            step_name TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('EXECUTE','COMPENSATE')),
            status TEXT NOT NULL CHECK (status IN ('SUCCESS','FAILED','TIMEOUT','SKIPPED')),
            request_payload TEXT,
            response_payload TEXT,
            error_message TEXT,
            started_at TEXT NOT NULL,
            completed_at TEXT
        );
        CREATE INDEX idx_saga_step_logs_saga_id_step_index ON saga_step_logs (saga_id, step_index);
        CREATE TABLE workflow_definitions (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            definition TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (name, version)
        );
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            saga_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            published_at REAL,
            claimed_by TEXT,
            claim_expires_at REAL
        );
        CREATE INDEX idx_outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
        """,
    ),
    (
        2,
        "ended_index",
        """
        CREATE INDEX idx_saga_states_ended ON saga_states (updated_at)
            WHERE status IN ('COMPLETED','FAILED','CANCELLED');
        """,
    ),
]

_SAGA_COLUMNS = (
    "id, workflow_name, workflow_version, current_step, status, payload, correlation_id, "
    "initiated_by, error_message, created_at, updated_at, compensation"
)


def _ts(value: datetime | None) -> str | None:
    """Fixed-width UTC text, so text order is time order."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dt(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _unjson(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _state(row: sqlite3.Row | tuple[Any, ...]) -> SagaState:
    created = _dt(row[9])
    updated = _dt(row[10])
    assert created is not None and updated is not None
    return SagaState(
        saga_id=row[0],
        workflow_name=row[1],
        workflow_version=row[2],
        current_step=row[3],
        status=SagaStatus(row[4]),
        payload=_unjson(row[5]) or {},
        correlation_id=row[6],
        initiated_by=row[7],
        error_message=row[8],
        created_at=created,
        updated_at=updated,
        compensation=compensation_from_dict(_unjson(row[11])),
    )


def _by_minute(rows: Sequence[tuple[str, int]]) -> dict[datetime, int]:
    return {
        datetime.strptime(minute, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC): n for minute, n in rows
    }


class SqliteStore(Store):
    def __init__(
        self,
        path: str,
        *,
        outbox: bool = False,
        busy_timeout_secs: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # `clock` (seconds since the epoch) times leases and outbox claims; tests move it.
        self._clock = clock
        self._path = path
        self._outbox_on = outbox
        self._busy = busy_timeout_secs
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # ---------------------------------------------------------------- connections

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, timeout=self._busy, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy * 1000)}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in MIGRATIONS:
                if version in done:
                    continue
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, name, _ts(datetime.now(UTC))),
                )

    def applied_migrations(self) -> list[int]:
        return [
            r[0] for r in self._conn().execute("SELECT version FROM schema_migrations ORDER BY 1")
        ]

    # ---------------------------------------------------------------- workflows

    def register_workflow(self, workflow: Workflow) -> Workflow:
        with self._write() as conn:
            (latest,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM workflow_definitions WHERE name = ?",
                (workflow.name,),
            ).fetchone()
            stored = evolve(workflow, version=latest + 1)
            conn.execute(
                "INSERT INTO workflow_definitions VALUES (?, ?, ?, ?)",
                (
                    stored.name,
                    stored.version,
                    _json(workflow_to_dict(stored)),
                    _ts(datetime.now(UTC)),
                ),
            )
        return stored

    def get_workflow(self, name: str, version: int | None = None) -> Workflow | None:
        if version is None:
            row = (
                self._conn()
                .execute(
                    "SELECT definition FROM workflow_definitions WHERE name = ? ORDER BY version DESC LIMIT 1",
                    (name,),
                )
                .fetchone()
            )
        else:
            row = (
                self._conn()
                .execute(
                    "SELECT definition FROM workflow_definitions WHERE name = ? AND version = ?",
                    (name, version),
                )
                .fetchone()
            )
        return None if row is None else workflow_from_dict(json.loads(row[0]))

    def list_workflows(self) -> list[Workflow]:
        rows = (
            self._conn()
            .execute(
                "SELECT definition FROM workflow_definitions d WHERE version = "
                "(SELECT MAX(version) FROM workflow_definitions WHERE name = d.name) ORDER BY name"
            )
            .fetchall()
        )
        return [workflow_from_dict(json.loads(r[0])) for r in rows]

    # ---------------------------------------------------------------- sagas

    def create_saga(
        self,
        state: SagaState,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[SagaState, str | None, bool]:
        with self._write() as conn:
            if idempotency_key is not None:
                row = conn.execute(
                    f"SELECT {_SAGA_COLUMNS}, request_hash FROM saga_states WHERE idempotency_key = ?",
                    (idempotency_key,),
                ).fetchone()
                if row is not None:
                    return _state(row), row[12], False
            (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM saga_states").fetchone()
            conn.execute(
                "INSERT INTO saga_states (id, workflow_name, workflow_version, current_step, status, "
                "payload, correlation_id, initiated_by, error_message, created_at, updated_at, "
                "idempotency_key, request_hash, seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    state.saga_id,
                    state.workflow_name,
                    state.workflow_version,
                    state.current_step,
                    state.status.value,
                    _json(dict(state.payload)),
                    state.correlation_id,
                    state.initiated_by,
                    state.error_message,
                    _ts(state.created_at),
                    _ts(state.updated_at),
                    idempotency_key,
                    request_hash,
                    seq,
                ),
            )
        return state, request_hash, True

    def get_saga(self, saga_id: str) -> SagaState | None:
        row = (
            self._conn()
            .execute(f"SELECT {_SAGA_COLUMNS} FROM saga_states WHERE id = ?", (saga_id,))
            .fetchone()
        )
        return None if row is None else _state(row)

    def get_step_logs(self, saga_id: str) -> list[StepLog]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, saga_id, step_index, step_name, action, status, request_payload, "
                "response_payload, error_message, started_at, completed_at FROM saga_step_logs "
                "WHERE saga_id = ? ORDER BY seq",
                (saga_id,),
            )
            .fetchall()
        )
        logs = []
        for r in rows:
            started = _dt(r[9])
            assert started is not None
            logs.append(
                StepLog(
                    id=r[0],
                    saga_id=r[1],
                    step_index=r[2],
                    step_name=r[3],
                    action=Action(r[4]),
                    status=StepStatus(r[5]),
                    request_payload=_unjson(r[6]),
                    response_payload=_unjson(r[7]),
                    error_message=r[8],
                    started_at=started,
                    completed_at=_dt(r[10]),
                )
            )
        return logs

    def list_sagas(self, filters: SagaFilter, page: int, page_size: int) -> SagaPage:
        where, params = [], []
        if filters.workflow_name is not None:
            where.append("workflow_name = ?")
            params.append(filters.workflow_name)
        if filters.status is not None:
            where.append("status = ?")
            params.append(filters.status.value)
        if filters.correlation_id is not None:
            where.append("correlation_id = ?")
            params.append(filters.correlation_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        conn = self._conn()
        (total,) = conn.execute(f"SELECT COUNT(*) FROM saga_states {clause}", params).fetchone()
        offset = (page - 1) * page_size
        if offset >= total:  # past the end: empty, without walking `offset` rows
            return SagaPage((), total, page, page_size)
        rows = conn.execute(
            f"SELECT {_SAGA_COLUMNS} FROM saga_states {clause} "
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, page_size, offset],
        ).fetchall()
        return SagaPage(tuple(_state(r) for r in rows), total, page, page_size)

    def stats(self, since: datetime) -> SagaStats:
        conn = self._conn()
        counts = dict.fromkeys(SagaStatus, 0)
        for status, n in conn.execute("SELECT status, count(*) FROM saga_states GROUP BY status"):
            counts[SagaStatus(status)] = n
        start = _ts(since)
        started = conn.execute(
            "SELECT substr(created_at, 1, 16), count(*) FROM saga_states "
            "WHERE created_at >= ? GROUP BY 1",
            (start,),
        ).fetchall()
        ended = conn.execute(
            "SELECT substr(updated_at, 1, 16), count(*) FROM saga_states "
            "WHERE status IN ('COMPLETED','FAILED','CANCELLED') AND updated_at >= ? GROUP BY 1",
            (start,),
        ).fetchall()
        return SagaStats(counts, _by_minute(started), _by_minute(ended))

    def request_cancel(self, saga_id: str) -> CancelOutcome | None:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE saga_states SET cancel_requested = 1 "
                "WHERE id = ? AND status IN ('STARTED', 'RUNNING') "
                f"RETURNING {_SAGA_COLUMNS}",
                (saga_id,),
            ).fetchone()
            if row is not None:
                return CancelOutcome(_state(row), True)
            row = conn.execute(
                f"SELECT {_SAGA_COLUMNS} FROM saga_states WHERE id = ?", (saga_id,)
            ).fetchone()
        return None if row is None else CancelOutcome(_state(row), False)

    def is_cancel_requested(self, saga_id: str) -> bool:
        row = (
            self._conn()
            .execute("SELECT cancel_requested FROM saga_states WHERE id = ?", (saga_id,))
            .fetchone()
        )
        return bool(row and row[0])

    # ---------------------------------------------------------------- execution

    def claim(self, owner: str, limit: int, lease_secs: float) -> list[Claimed]:
        if limit <= 0:
            return []
        # A read first: an idle poll must not take the database write lock.
        waiting = (
            self._conn()
            .execute(
                "SELECT 1 FROM saga_states WHERE status IN ('STARTED','RUNNING','COMPENSATING') "
                "AND (lease_expires_at IS NULL OR lease_expires_at < ?) LIMIT 1",
                (self._clock(),),
            )
            .fetchone()
        )
        if waiting is None:
            return []
        with self._write() as conn:
            # The clock is read once the write lock is held: a lease taken after a wait for
            # the lock must not be born already (partly) expired.
            now = self._clock()
            rows = conn.execute(
                f"SELECT {_SAGA_COLUMNS}, cancel_requested, lease_owner, lease_token FROM saga_states "
                "WHERE status IN ('STARTED','RUNNING','COMPENSATING') "
                "AND (lease_expires_at IS NULL OR lease_expires_at < ?) "
                "ORDER BY created_at, seq LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE saga_states SET lease_owner = ?, lease_token = lease_token + 1, "
                "lease_expires_at = ? WHERE id = ?",
                [(owner, now + lease_secs, r[0]) for r in rows],
            )
        return [
            Claimed(
                _state(r),
                r[14] + 1,
                bool(r[12]),
                r[13] is not None and r[13] != owner,
                r[13] is not None,
            )
            for r in rows
        ]

    def renew(self, owner: str, leases: dict[str, int], lease_secs: float) -> set[str]:
        if not leases:
            return set()
        held: set[str] = set()
        with self._write() as conn:
            expires = self._clock() + lease_secs
            for saga_id, token in leases.items():
                cur = conn.execute(
                    "UPDATE saga_states SET lease_expires_at = ? WHERE id = ? AND lease_owner = ? "
                    "AND lease_token = ? AND status IN ('STARTED','RUNNING','COMPENSATING')",
                    (expires, saga_id, owner, token),
                )
                if cur.rowcount:
                    held.add(saga_id)
        return held

    def release(self, owner: str, leases: dict[str, int]) -> None:
        if not leases:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE saga_states SET lease_owner = NULL, lease_expires_at = NULL "
                "WHERE id = ? AND lease_owner = ? AND lease_token = ?",
                [(saga_id, owner, token) for saga_id, token in leases.items()],
            )

    def commit(
        self, owner: str, requests: Sequence[CommitRequest], lease_secs: float
    ) -> list[CommitResult]:
        try:
            return self._commit(owner, requests, lease_secs)
        except _REFUSALS as exc:
            raise StoreRefused(refusal_reason(exc)) from exc

    def _commit(
        self, owner: str, requests: Sequence[CommitRequest], lease_secs: float
    ) -> list[CommitResult]:
        results: list[CommitResult] = []
        with self._write() as conn:
            expires = self._clock() + lease_secs
            logs: list[tuple[Any, ...]] = []
            events: list[tuple[Any, ...]] = []
            now = time.time()
            for request in requests:
                state = request.commit.state
                terminal = state.terminal
                guard = 1 if request.commit.unless_cancel_requested else 0
                row = conn.execute(
                    "UPDATE saga_states SET status = ?, current_step = ?, error_message = ?, "
                    "updated_at = ?, compensation = ?, lease_owner = ?, lease_expires_at = ? "
                    "WHERE id = ? AND lease_owner = ? AND lease_token = ? "
                    "AND NOT (? AND cancel_requested) RETURNING cancel_requested",
                    (
                        state.status.value,
                        state.current_step,
                        state.error_message,
                        _ts(state.updated_at),
                        _json(compensation_to_dict(state.compensation)),
                        None if terminal else owner,
                        None if terminal else expires,
                        state.saga_id,
                        owner,
                        request.lease_token,
                        guard,
                    ),
                ).fetchone()
                if row is None:
                    flag = conn.execute(
                        "SELECT cancel_requested, lease_owner = ? AND lease_token = ? "
                        "FROM saga_states WHERE id = ?",
                        (owner, request.lease_token, state.saga_id),
                    ).fetchone()
                    held = bool(flag and flag[1])
                    results.append(
                        CommitResult(
                            state.saga_id,
                            not held,
                            bool(flag and flag[0]),
                            cancel_first=held,
                        )
                    )
                    continue
                results.append(CommitResult(state.saga_id, False, bool(row[0])))
                logs.extend(
                    (
                        g.id,
                        g.saga_id,
                        g.step_index,
                        g.step_name,
                        g.action.value,
                        g.status.value,
                        _json(None if g.request_payload is None else dict(g.request_payload)),
                        _json(None if g.response_payload is None else dict(g.response_payload)),
                        g.error_message,
                        _ts(g.started_at),
                        _ts(g.completed_at),
                    )
                    for g in request.commit.step_logs
                )
                if self._outbox_on:
                    events.extend(
                        (e.event_id, e.saga_id, e.event_type.value, _json(event_body(e)), now)
                        for e in request.commit.events
                    )
            if logs:
                conn.executemany(
                    "INSERT OR IGNORE INTO saga_step_logs (id, saga_id, step_index, step_name, action, status, "
                    "request_payload, response_payload, error_message, started_at, completed_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    logs,
                )
            if events:
                conn.executemany(
                    "INSERT INTO outbox (event_id, saga_id, event_type, body, created_at) "
                    "VALUES (?,?,?,?,?) ON CONFLICT (event_id) DO NOTHING",
                    events,
                )
        return results

    # ---------------------------------------------------------------- outbox

    def outbox_enabled(self) -> bool:
        return self._outbox_on

    def claim_outbox(self, owner: str, limit: int, lease_secs: float) -> list[OutboxRow]:
        now = self._clock()
        with self._write() as conn:
            rows = conn.execute(
                "SELECT seq, event_id, saga_id, event_type, body FROM outbox o "
                "WHERE published_at IS NULL "
                "AND (claimed_by IS NULL OR claimed_by = ? OR claim_expires_at < ?) "
                "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.saga_id = o.saga_id "
                "  AND p.seq < o.seq AND p.published_at IS NULL "
                "  AND p.claimed_by IS NOT NULL AND p.claimed_by <> ? AND p.claim_expires_at >= ?) "
                "ORDER BY seq LIMIT ?",
                (owner, now, owner, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE outbox SET claimed_by = ?, claim_expires_at = ? WHERE seq = ?",
                [(owner, now + lease_secs, r[0]) for r in rows],
            )
        return [OutboxRow(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def mark_published(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "UPDATE outbox SET published_at = ? WHERE seq = ?", [(now, s) for s in seqs]
            )

    def outbox_stats(self) -> tuple[int, float | None]:
        count, oldest = (
            self._conn()
            .execute("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL")
            .fetchone()
        )
        return count, None if oldest is None else max(0.0, time.time() - oldest)

    def prune_outbox(self, older_than_secs: float) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?",
                (time.time() - older_than_secs,),
            )
            return cur.rowcount

    # ---------------------------------------------------------------- lifecycle

    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()
