"""The embedded default store: one SQLite file in WAL mode, safe for several processes on one
machine. Writes take the database write lock (`BEGIN IMMEDIATE`), so claims never overlap;
lease times come from this machine's clock, which every process on it shares.

Shaped like the PostgreSQL store: named statements below, rows read by column name and mapped
by `rows`, versioned `.sql` migrations (`migrations/sqlite/`) run by the same runner. It writes
what `saga.decide` committed and never decides anything about a saga; the status sets it
filters on come from `saga.model`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attrs import evolve

from saga.codec import compensation_to_dict, pause_to_dict, workflow_from_dict, workflow_to_dict
from saga.events import Commit
from saga.model import (
    ACTIVE_STATUSES,
    CANCELLABLE_STATUSES,
    PAUSABLE_STATUSES,
    TERMINAL_STATUSES,
    UNLEASED_STATUSES,
    OperatorAction,
    SagaState,
    SagaStatus,
    StepLog,
    Workflow,
    steps_from_logs,
)
from workers.adapters.store.base import (
    MAX_RETENTION_BATCH,
    RETENTION_EVENTS_MARGIN_SECS,
    START_LEASE_TOKEN,
    Claimed,
    CommitRequest,
    CommitResult,
    DeleteEnded,
    OutboxRow,
    RequestOutcome,
    SagaFilter,
    SagaPage,
    SagaStats,
    StartLease,
    StopListening,
    Store,
    StoreRefused,
    UnknownWorkflow,
    refusal_reason,
)
from workers.adapters.store.events import event_body
from workers.adapters.store.migrate import migrate_sqlite
from workers.adapters.store.rows import (
    ACTION_COLUMNS,
    LOG_COLUMNS,
    STATE_COLUMNS,
    action_from_row,
    log_from_row,
    sql_list,
    state_from_row,
)

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


_ACTIVE = sql_list(ACTIVE_STATUSES)
_PAUSABLE = sql_list(PAUSABLE_STATUSES)
_CANCELLABLE = sql_list(CANCELLABLE_STATUSES)
# In the order the partial index on ended sagas lists them (migration "ended_index"): SQLite
# uses a partial index only when the query's condition spells its predicate the same way.
_TERMINAL = sql_list(TERMINAL_STATUSES, order=("COMPLETED", "FAILED", "CANCELLED"))

# --------------------------------------------------------------------------- statements

_LATEST_VERSION = "SELECT COALESCE(MAX(version), 0) AS v FROM workflow_definitions WHERE name = ?"
_INSERT_WORKFLOW = """
INSERT INTO workflow_definitions (name, version, definition, created_at) VALUES (?, ?, ?, ?)
"""
_GET_WORKFLOW_LATEST = """
SELECT definition FROM workflow_definitions WHERE name = ? ORDER BY version DESC LIMIT 1
"""
_GET_WORKFLOW_VERSION = "SELECT definition FROM workflow_definitions WHERE name = ? AND version = ?"
_LIST_WORKFLOWS = """
SELECT definition FROM workflow_definitions AS d
WHERE version = (SELECT MAX(version) FROM workflow_definitions WHERE name = d.name)
ORDER BY name
"""

_SAGA_BY_IDEMPOTENCY_KEY = (
    f"SELECT {STATE_COLUMNS}, request_hash FROM saga_states WHERE idempotency_key = ?"
)
_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM saga_states"
_CREATE_SAGA = """
INSERT INTO saga_states (
    id, workflow_name, workflow_version, current_step, status, payload, correlation_id,
    initiated_by, error_message, created_at, updated_at, idempotency_key, request_hash, seq,
    trace_context, lease_owner, lease_token, lease_expires_at)
VALUES (:id, :workflow_name, :workflow_version, :current_step, :status, :payload,
        :correlation_id, :initiated_by, :error_message, :created_at, :updated_at,
        :idempotency_key, :request_hash, :seq, :trace_context, :lease_owner, :lease_token,
        :lease_expires_at)
"""
_GET_SAGA = f"SELECT {STATE_COLUMNS} FROM saga_states WHERE id = ?"
# Insertion order: logs are written when a step ends, by the one executor holding the saga.
_GET_STEP_LOGS = f"SELECT {LOG_COLUMNS} FROM saga_step_logs WHERE saga_id = ? ORDER BY seq"
# What a claimed saga's step expressions see of earlier steps (`SagaState.steps`).
_FORWARD_LOGS = f"""
SELECT {LOG_COLUMNS} FROM saga_step_logs
WHERE saga_id = ? AND action = 'EXECUTE' AND status = 'SUCCESS' ORDER BY seq
"""

_STATUS_COUNTS = "SELECT status, count(*) AS n FROM saga_states GROUP BY status"
_STARTED_BY_MINUTE = """
SELECT substr(created_at, 1, 16) AS minute, count(*) AS n FROM saga_states
WHERE created_at >= ? GROUP BY 1
"""
_ENDED_BY_MINUTE = f"""
SELECT substr(updated_at, 1, 16) AS minute, count(*) AS n FROM saga_states
WHERE status IN ({_TERMINAL}) AND updated_at >= ? GROUP BY 1
"""

_REQUEST_CANCEL = f"""
UPDATE saga_states SET cancel_requested = 1
WHERE id = ? AND status IN ({_CANCELLABLE})
RETURNING {STATE_COLUMNS}
"""
_IS_CANCEL_REQUESTED = "SELECT cancel_requested FROM saga_states WHERE id = ?"
_REQUEST_PAUSE = f"""
UPDATE saga_states SET pause_requested = 1
WHERE id = ? AND status IN ({_PAUSABLE})
RETURNING {STATE_COLUMNS}
"""
_INSERT_ACTION = """
INSERT INTO operator_actions (saga_id, action, resume_action, payload_replaced, actor, at)
VALUES (?, ?, ?, ?, ?, ?)
"""
_PAUSED_BY_WORKFLOW = """
SELECT workflow_name, count(*) AS n FROM saga_states WHERE status = 'PAUSED' GROUP BY 1
"""
_OPERATOR_ACTIONS = f"SELECT {ACTION_COLUMNS} FROM operator_actions WHERE saga_id = ? ORDER BY seq"
# An operator's decision on a PAUSED saga, only if no other was written since it was read.
_COMMIT_OPERATOR = """
UPDATE saga_states
SET status = :status, current_step = :current_step, payload = :payload,
    error_message = :error_message, updated_at = :updated_at, compensation = :compensation,
    pause = :pause, resumes = :resumes, in_doubt = :in_doubt, lease_owner = NULL,
    lease_expires_at = NULL
WHERE id = :id AND status = 'PAUSED' AND resumes = :expected
"""

# A read first: an idle poll must not take the database write lock.
_ANY_CLAIMABLE = f"""
SELECT 1 FROM saga_states
WHERE status IN ({_ACTIVE}) AND (lease_expires_at IS NULL OR lease_expires_at < ?) LIMIT 1
"""
_CLAIMABLE = f"""
SELECT {STATE_COLUMNS}, cancel_requested, pause_requested, lease_owner, lease_token
FROM saga_states
WHERE status IN ({_ACTIVE}) AND (lease_expires_at IS NULL OR lease_expires_at < ?)
ORDER BY created_at, seq LIMIT ?
"""
_TAKE_LEASE = """
UPDATE saga_states SET lease_owner = ?, lease_token = lease_token + 1, lease_expires_at = ?
WHERE id = ?
"""
_RENEW = f"""
UPDATE saga_states SET lease_expires_at = ?
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND status IN ({_ACTIVE})
"""
_RELEASE = """
UPDATE saga_states SET lease_owner = NULL, lease_expires_at = NULL
WHERE id = ? AND lease_owner = ? AND lease_token = ?
"""

# Fenced by (owner, token); with a guard, not over a cancel (pause) set since the executor last
# read it. A commit into PAUSED clears the pause flag: the pause took effect.
_COMMIT = """
UPDATE saga_states
SET status = :status, current_step = :current_step, error_message = :error_message,
    updated_at = :updated_at, compensation = :compensation, pause = :pause, resumes = :resumes,
    in_doubt = :in_doubt, lease_owner = :lease_owner, lease_expires_at = :lease_expires_at,
    pause_requested = CASE WHEN :status = 'PAUSED' THEN 0 ELSE pause_requested END
WHERE id = :id AND lease_owner = :owner AND lease_token = :token
  AND NOT (:guard AND cancel_requested) AND NOT (:pause_guard AND pause_requested)
RETURNING cancel_requested, pause_requested
"""
_NOT_WRITTEN = """
SELECT cancel_requested, pause_requested, lease_owner = ? AND lease_token = ? AS held
FROM saga_states WHERE id = ?
"""
_INSERT_LOG = """
INSERT OR IGNORE INTO saga_step_logs (
    id, saga_id, step_index, step_name, action, status, request_payload, response_payload,
    error_message, started_at, completed_at)
VALUES (?,?,?,?,?,?,?,?,?,?,?)
"""
_INSERT_EVENT = """
INSERT INTO outbox (event_id, saga_id, event_type, body, created_at) VALUES (?,?,?,?,?)
ON CONFLICT (event_id) DO NOTHING
"""

# A row is handed out only when no older unpublished row of its saga is held by another relay.
_CLAIM_OUTBOX = """
SELECT seq, event_id, saga_id, event_type, body FROM outbox AS o
WHERE published_at IS NULL
  AND (claimed_by IS NULL OR claimed_by = :owner OR claim_expires_at < :now)
  AND NOT EXISTS (
      SELECT 1 FROM outbox AS p
      WHERE p.saga_id = o.saga_id AND p.seq < o.seq AND p.published_at IS NULL
        AND p.claimed_by IS NOT NULL AND p.claimed_by <> :owner AND p.claim_expires_at >= :now)
ORDER BY seq LIMIT :limit
"""
_TAKE_OUTBOX = "UPDATE outbox SET claimed_by = ?, claim_expires_at = ? WHERE seq = ?"
_MARK_PUBLISHED = "UPDATE outbox SET published_at = ? WHERE seq = ?"
_OUTBOX_STATS = (
    "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL"
)
_PRUNE_OUTBOX = "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?"

# Retention (SPEC §13). The statuses are spelled as the WHERE of idx_saga_states_ended
# (migration 0002), term for term: SQLite uses a partial index only for a query that repeats
# its terms, and INDEXED BY turns a change there into an error instead of a table scan.
_ENDED_INDEXED = ", ".join(
    f"'{s.value}'" for s in (SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.CANCELLED)
)
_ENDED_BEFORE = f"""
SELECT id FROM saga_states INDEXED BY idx_saga_states_ended
WHERE status IN ({_ENDED_INDEXED}) AND updated_at < ?
  AND id NOT IN (SELECT saga_id FROM outbox WHERE published_at IS NULL)
ORDER BY updated_at LIMIT ?
"""
# Rows are numbered as they are written: every row written before a time has a lower seq
# than the first one written after it (the older rows are few once the relay has pruned).
_OUTBOX_FIRST_AFTER = "SELECT seq FROM outbox WHERE created_at > ? ORDER BY seq LIMIT 1"
_DELETE_EVENTS_OF = """
DELETE FROM outbox WHERE seq < ? AND saga_id IN (SELECT value FROM json_each(?))
"""
# Step logs (and every other row that references the saga) go by ON DELETE CASCADE.
_DELETE_SAGAS = "DELETE FROM saga_states WHERE id IN (SELECT value FROM json_each(?))"
_NO_SEQ_BOUND = 2**63 - 1
# The turn of a store on ":memory:" (a file's turn is a lock on a file next to it).
_MEMORY_TURN = threading.Lock()

# --------------------------------------------------------------------------- conversions


def _ts(value: datetime | None) -> str | None:
    """Fixed-width UTC text, so text order is time order."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # The text of strftime("%Y-%m-%dT%H:%M:%S.%fZ"), at half its cost.
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _dt(text: str) -> datetime:
    # `_ts`'s text (strptime's "%Y-%m-%dT%H:%M:%S.%fZ" reads it too, six times slower).
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _unjson(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _state(row: sqlite3.Row) -> SagaState:
    return state_from_row(row, _dt, _unjson)


def _by_minute(rows: Sequence[sqlite3.Row]) -> dict[datetime, int]:
    return {
        datetime.strptime(r["minute"], "%Y-%m-%dT%H:%M").replace(tzinfo=UTC): r["n"] for r in rows
    }


def _log_values(g: StepLog) -> tuple[Any, ...]:
    return (
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


def _event_values(commit: Commit, now: float) -> list[tuple[Any, ...]]:
    return [
        (e.event_id, e.saga_id, e.event_type.value, _json(event_body(e)), now)
        for e in commit.events
    ]


# --------------------------------------------------------------------------- the store


class _Start:
    """One `create_saga` call waiting for its group's transaction."""

    __slots__ = (
        "state",
        "key",
        "request_hash",
        "latest_version",
        "lease",
        "done",
        "result",
        "error",
    )

    def __init__(
        self,
        state: SagaState,
        key: str | None,
        request_hash: str | None,
        latest: bool,
        lease: StartLease | None,
    ) -> None:
        self.state = state
        self.key = key
        self.request_hash = request_hash
        self.latest_version = latest
        self.lease = lease
        self.done = threading.Event()
        self.result: tuple[SagaState, str | None, bool] | None = None
        self.error: BaseException | None = None


class _Wakes:
    """Wake-ups between the processes of one SQLite file: each listening process binds a
    datagram socket in one directory (named after the file's real path, in the temporary
    directory: socket paths are short), and a process that commits a saga to be run sends one
    byte to each socket there. Never blocks: a full socket already has a wake-up waiting, and a
    socket nobody reads any more (its process was killed) is removed by the first sender."""

    def __init__(self, path: str | None) -> None:
        self._dir: Path | None = None
        if path is not None:
            key = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
            base = tempfile.gettempdir()
            if len(base) > _MAX_WAKE_BASE and os.path.isdir("/tmp"):
                base = "/tmp"  # a socket path is at most 107 bytes
            self._dir = Path(base) / f"saga-wake-{os.getuid()}-{key}"
        self._sender: socket.socket | None = None
        self._sender_pid = 0

    def tell(self) -> None:
        if self._dir is None:
            return
        try:
            names = os.listdir(self._dir)
        except OSError:
            return  # nobody listens
        if self._sender is None or self._sender_pid != os.getpid():
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
            self._sender_pid = os.getpid()
        for name in names:
            target = str(self._dir / name)
            try:
                self._sender.sendto(b"w", target)
            except BlockingIOError:
                pass  # its queue is full: it is woken already
            except ConnectionRefusedError:
                with suppress(OSError):
                    os.unlink(target)  # bound by a process that is gone
            except OSError:
                pass

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        if self._dir is None:
            return lambda: None
        self._dir.mkdir(mode=0o700, exist_ok=True)
        path = self._dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(_WAKE_POLL_SECS)
        stopping = threading.Event()

        def run() -> None:
            while not stopping.is_set():
                try:
                    sock.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not stopping.is_set():
                    wake()

        thread = threading.Thread(target=run, name="saga-listen", daemon=True)
        thread.start()

        def stop() -> None:
            stopping.set()
            with suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as poke:
                poke.setblocking(False)
                poke.sendto(b"s", str(path))  # the thread sees `stopping` now
            thread.join(_WAKE_POLL_SECS * 2)
            with suppress(OSError):
                os.unlink(path)
            sock.close()

        return stop


_WAKE_POLL_SECS = 0.5
_MAX_WAKE_BASE = 48


class SqliteStore(Store):
    """A `Store` in one SQLite file; `clock` (seconds since the epoch) times leases and outbox
    claims (tests move it)."""

    def __init__(
        self,
        path: str,
        *,
        outbox: bool = False,
        busy_timeout_secs: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._path = path
        self._outbox_on = outbox
        self._busy = busy_timeout_secs
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._starts_lock = threading.Lock()
        self._starts: list[_Start] = []
        self._starts_leader = False
        self._lock_fd: int | None = None
        self._lock_pid = 0
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._wakes = _Wakes(None if path == ":memory:" else path)
        migrate_sqlite(self._conn(), _ts(datetime.now(UTC)) or "")

    # ---------------------------------------------------------------- connections

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, timeout=self._busy, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
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
        with self._writer():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """The turn to write, across threads and processes: a thread lock, then an exclusive
        `flock` on `<file>.write-lock`. SQLite's own busy handler waits for its write lock by
        sleeping ever longer (a start could wait a second behind an executor's batches); a
        process blocked in `flock` is woken the moment the holder lets go. `BEGIN IMMEDIATE`
        still takes SQLite's lock, so a writer that does not use this file stays correct."""
        with self._writer_lock:
            fd = self._writer_fd()
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _writer_fd(self) -> int | None:
        if self._path == ":memory:":
            return None
        # One open file per process: a descriptor inherited over fork() shares its lock with
        # the parent, so it would not keep the two apart.
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(f"{self._path}.write-lock", os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_pid = os.getpid()
        return self._lock_fd

    def applied_migrations(self) -> list[int]:
        rows = self._conn().execute("SELECT version FROM schema_migrations ORDER BY 1")
        return [r["version"] for r in rows]

    # ---------------------------------------------------------------- workflows

    def register_workflow(self, workflow: Workflow) -> Workflow:
        with self._write() as conn:
            latest = conn.execute(_LATEST_VERSION, (workflow.name,)).fetchone()["v"]
            stored = evolve(workflow, version=latest + 1)
            conn.execute(
                _INSERT_WORKFLOW,
                (
                    stored.name,
                    stored.version,
                    _json(workflow_to_dict(stored)),
                    _ts(datetime.now(UTC)),
                ),
            )
        return stored

    def get_workflow(self, name: str, version: int | None = None) -> Workflow | None:
        conn = self._conn()
        if version is None:
            row = conn.execute(_GET_WORKFLOW_LATEST, (name,)).fetchone()
        else:
            row = conn.execute(_GET_WORKFLOW_VERSION, (name, version)).fetchone()
        return None if row is None else workflow_from_dict(json.loads(row["definition"]))

    def list_workflows(self) -> list[Workflow]:
        rows = self._conn().execute(_LIST_WORKFLOWS).fetchall()
        return [workflow_from_dict(json.loads(r["definition"])) for r in rows]

    # ---------------------------------------------------------------- sagas

    def create_saga(
        self,
        state: SagaState,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        latest_version: bool = False,
        lease: StartLease | None = None,
    ) -> tuple[SagaState, str | None, bool]:
        """Starts are written in groups (group commit): the first start to arrive takes the
        write lock, and every start that arrives while it waits for it is written in the same
        transaction, each under a savepoint of its own (one start's error is its own). Under
        load this turns a queue of starts for the one write lock into one turn."""
        item = _Start(state, idempotency_key, request_hash, latest_version, lease)
        with self._starts_lock:
            self._starts.append(item)
            lead = not self._starts_leader
            self._starts_leader = True
        if not lead:
            item.done.wait()
        else:
            group: list[_Start] | None = None

            def take() -> list[_Start]:
                with self._starts_lock:
                    taken, self._starts = self._starts, []
                    self._starts_leader = False  # the next arrival leads the next group
                return taken

            try:
                with self._write() as conn:
                    group = take()
                    for each in group:
                        conn.execute("SAVEPOINT start")
                        try:
                            each.result = self._create_one(conn, each)
                        except Exception as exc:  # noqa: BLE001 - handed to its caller
                            conn.execute("ROLLBACK TO start")
                            each.error = exc
                        conn.execute("RELEASE start")
            except BaseException as exc:
                # Nothing of the group was written (or the lock was never had): each fails.
                for each in group if group is not None else take():
                    each.result, each.error = None, exc
                    each.done.set()
                raise
            if any(
                each.result is not None and each.result[2] and each.lease is None for each in group
            ):
                self._wakes.tell()
            for each in group:
                each.done.set()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _create_one(
        self, conn: sqlite3.Connection, item: _Start
    ) -> tuple[SagaState, str | None, bool]:
        state, idempotency_key, request_hash = item.state, item.key, item.request_hash
        if idempotency_key is not None:
            row = conn.execute(_SAGA_BY_IDEMPOTENCY_KEY, (idempotency_key,)).fetchone()
            if row is not None:
                return _state(row), row["request_hash"], False
        if item.latest_version:
            version = conn.execute(_LATEST_VERSION, (state.workflow_name,)).fetchone()["v"]
            if not version:
                raise UnknownWorkflow(state.workflow_name)
            state = evolve(state, workflow_version=version)
        seq = conn.execute(_NEXT_SEQ).fetchone()["seq"]
        lease = item.lease
        conn.execute(
            _CREATE_SAGA,
            {
                "id": state.saga_id,
                "workflow_name": state.workflow_name,
                "workflow_version": state.workflow_version,
                "current_step": state.current_step,
                "status": state.status.value,
                "payload": _json(dict(state.payload)),
                "correlation_id": state.correlation_id,
                "initiated_by": state.initiated_by,
                "error_message": state.error_message,
                "created_at": _ts(state.created_at),
                "updated_at": _ts(state.updated_at),
                "idempotency_key": idempotency_key,
                "request_hash": request_hash,
                "seq": seq,
                "trace_context": state.trace_context,
                "lease_owner": None if lease is None else lease.owner,
                "lease_token": 0 if lease is None else START_LEASE_TOKEN,
                "lease_expires_at": None if lease is None else self._clock() + lease.lease_secs,
            },
        )
        return state, request_hash, True

    def get_saga(self, saga_id: str, *, with_steps: bool = False) -> SagaState | None:
        row = self._conn().execute(_GET_SAGA, (saga_id,)).fetchone()
        if row is None:
            return None
        return self._with_steps(_state(row)) if with_steps else _state(row)

    def get_step_logs(self, saga_id: str) -> list[StepLog]:
        rows = self._conn().execute(_GET_STEP_LOGS, (saga_id,)).fetchall()
        return [log_from_row(r, _dt, _unjson) for r in rows]

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
        total = conn.execute(f"SELECT COUNT(*) AS n FROM saga_states {clause}", params).fetchone()
        offset = (page - 1) * page_size
        if offset >= total["n"]:  # past the end: empty, without walking `offset` rows
            return SagaPage((), total["n"], page, page_size)
        rows = conn.execute(
            f"SELECT {STATE_COLUMNS} FROM saga_states {clause} "
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, page_size, offset],
        ).fetchall()
        return SagaPage(tuple(_state(r) for r in rows), total["n"], page, page_size)

    def stats(self, since: datetime) -> SagaStats:
        conn = self._conn()
        counts = dict.fromkeys(SagaStatus, 0)
        for row in conn.execute(_STATUS_COUNTS):
            counts[SagaStatus(row["status"])] = row["n"]
        start = _ts(since)
        started = conn.execute(_STARTED_BY_MINUTE, (start,)).fetchall()
        ended = conn.execute(_ENDED_BY_MINUTE, (start,)).fetchall()
        return SagaStats(counts, _by_minute(started), _by_minute(ended))

    def request_cancel(
        self, saga_id: str, *, by: str | None = None, at: datetime | None = None
    ) -> RequestOutcome | None:
        return self._request(_REQUEST_CANCEL, saga_id, "cancel", by, at)

    def request_pause(self, saga_id: str, *, by: str | None, at: datetime) -> RequestOutcome | None:
        return self._request(_REQUEST_PAUSE, saga_id, "pause", by, at)

    def _request(
        self, statement: str, saga_id: str, action: str, by: str | None, at: datetime | None
    ) -> RequestOutcome | None:
        with self._write() as conn:
            row = conn.execute(statement, (saga_id,)).fetchone()
            if row is not None:
                if at is not None:
                    conn.execute(_INSERT_ACTION, (saga_id, action, None, 0, by, _ts(at)))
                return RequestOutcome(_state(row), True)
            row = conn.execute(_GET_SAGA, (saga_id,)).fetchone()
        return None if row is None else RequestOutcome(_state(row), False)

    def commit_operator(
        self, commit: Commit, expected_resumes: int, action: OperatorAction
    ) -> bool:
        state = commit.state
        try:
            with self._write() as conn:
                written = conn.execute(
                    _COMMIT_OPERATOR,
                    {
                        "status": state.status.value,
                        "current_step": state.current_step,
                        "payload": _json(dict(state.payload)),
                        "error_message": state.error_message,
                        "updated_at": _ts(state.updated_at),
                        "compensation": _json(compensation_to_dict(state.compensation)),
                        "pause": _json(pause_to_dict(state.pause)),
                        "resumes": state.resumes,
                        "in_doubt": 1 if state.in_doubt else 0,
                        "id": state.saga_id,
                        "expected": expected_resumes,
                    },
                ).rowcount
                if not written:
                    return False
                conn.executemany(_INSERT_LOG, [_log_values(g) for g in commit.step_logs])
                if self._outbox_on:
                    conn.executemany(_INSERT_EVENT, _event_values(commit, time.time()))
                conn.execute(
                    _INSERT_ACTION,
                    (
                        state.saga_id,
                        action.action,
                        None if action.resume_action is None else action.resume_action.value,
                        1 if action.payload_replaced else 0,
                        action.by,
                        _ts(action.at),
                    ),
                )
            if state.status in ACTIVE_STATUSES:
                self._wakes.tell()
            return True
        except _REFUSALS as exc:
            raise StoreRefused(refusal_reason(exc)) from exc

    def paused_by_workflow(self) -> dict[str, int]:
        rows = self._conn().execute(_PAUSED_BY_WORKFLOW).fetchall()
        return {r["workflow_name"]: r["n"] for r in rows}

    def operator_actions(self, saga_id: str) -> list[OperatorAction]:
        rows = self._conn().execute(_OPERATOR_ACTIONS, (saga_id,)).fetchall()
        return [action_from_row(r, _dt) for r in rows]

    def is_cancel_requested(self, saga_id: str) -> bool:
        row = self._conn().execute(_IS_CANCEL_REQUESTED, (saga_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    # ---------------------------------------------------------------- execution

    def claim(self, owner: str, limit: int, lease_secs: float) -> list[Claimed]:
        if limit <= 0:
            return []
        if self._conn().execute(_ANY_CLAIMABLE, (self._clock(),)).fetchone() is None:
            return []
        with self._write() as conn:
            # The clock is read once the write lock is held: a lease taken after a wait for
            # the lock must not be born already (partly) expired.
            now = self._clock()
            rows = conn.execute(_CLAIMABLE, (now, limit)).fetchall()
            conn.executemany(_TAKE_LEASE, [(owner, now + lease_secs, r["id"]) for r in rows])
        return [
            Claimed(
                self._with_steps(_state(r)),
                r["lease_token"] + 1,
                bool(r["cancel_requested"]),
                taken_over=r["lease_owner"] is not None and r["lease_owner"] != owner,
                lease_expired=r["lease_owner"] is not None,
                pause_requested=bool(r["pause_requested"]),
            )
            for r in rows
        ]

    def _with_steps(self, state: SagaState) -> SagaState:
        """`state` with `steps` rebuilt from its logs (a saga that has run a step)."""
        if state.status is SagaStatus.STARTED:
            return state
        rows = self._conn().execute(_FORWARD_LOGS, (state.saga_id,)).fetchall()
        return evolve(state, steps=steps_from_logs(log_from_row(r, _dt, _unjson) for r in rows))

    def renew(self, owner: str, leases: dict[str, int], lease_secs: float) -> set[str]:
        if not leases:
            return set()
        held: set[str] = set()
        with self._write() as conn:
            expires = self._clock() + lease_secs
            for saga_id, token in leases.items():
                if conn.execute(_RENEW, (expires, saga_id, owner, token)).rowcount:
                    held.add(saga_id)
        return held

    def release(self, owner: str, leases: dict[str, int]) -> None:
        if not leases:
            return
        with self._write() as conn:
            conn.executemany(
                _RELEASE, [(saga_id, owner, token) for saga_id, token in leases.items()]
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
                terminal = state.status in UNLEASED_STATUSES
                row = conn.execute(
                    _COMMIT,
                    {
                        "status": state.status.value,
                        "current_step": state.current_step,
                        "error_message": state.error_message,
                        "updated_at": _ts(state.updated_at),
                        "compensation": _json(compensation_to_dict(state.compensation)),
                        "pause": _json(pause_to_dict(state.pause)),
                        "resumes": state.resumes,
                        "in_doubt": 1 if state.in_doubt else 0,
                        "lease_owner": None if terminal else owner,
                        "lease_expires_at": None if terminal else expires,
                        "id": state.saga_id,
                        "owner": owner,
                        "token": request.lease_token,
                        "guard": 1 if request.commit.unless_cancel_requested else 0,
                        "pause_guard": 1 if request.commit.unless_pause_requested else 0,
                    },
                ).fetchone()
                if row is None:
                    found = conn.execute(
                        _NOT_WRITTEN, (owner, request.lease_token, state.saga_id)
                    ).fetchone()
                    held = bool(found and found["held"])
                    cancel = bool(found and found["cancel_requested"])
                    pause = bool(found and found["pause_requested"])
                    guard_cancel = request.commit.unless_cancel_requested and cancel
                    results.append(
                        CommitResult(
                            state.saga_id,
                            not held,
                            cancel,
                            cancel_first=held and guard_cancel,
                            pause_requested=pause,
                            pause_first=held and not guard_cancel,
                        )
                    )
                    continue
                results.append(
                    CommitResult(
                        state.saga_id,
                        False,
                        bool(row["cancel_requested"]),
                        pause_requested=bool(row["pause_requested"]),
                    )
                )
                logs.extend(_log_values(g) for g in request.commit.step_logs)
                if self._outbox_on:
                    events.extend(_event_values(request.commit, now))
            if logs:
                conn.executemany(_INSERT_LOG, logs)
            if events:
                conn.executemany(_INSERT_EVENT, events)
        return results

    # ---------------------------------------------------------------- outbox

    def outbox_enabled(self) -> bool:
        return self._outbox_on

    def claim_outbox(self, owner: str, limit: int, lease_secs: float) -> list[OutboxRow]:
        now = self._clock()
        with self._write() as conn:
            rows = conn.execute(
                _CLAIM_OUTBOX, {"owner": owner, "now": now, "limit": limit}
            ).fetchall()
            conn.executemany(_TAKE_OUTBOX, [(owner, now + lease_secs, r["seq"]) for r in rows])
        return [
            OutboxRow(r["seq"], r["event_id"], r["saga_id"], r["event_type"], json.loads(r["body"]))
            for r in rows
        ]

    def mark_published(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        now = time.time()
        with self._write() as conn:
            conn.executemany(_MARK_PUBLISHED, [(now, s) for s in seqs])

    def outbox_stats(self) -> tuple[int, float | None]:
        row = self._conn().execute(_OUTBOX_STATS).fetchone()
        oldest = row["oldest"]
        return row["n"], None if oldest is None else max(0.0, time.time() - oldest)

    def prune_outbox(self, older_than_secs: float) -> int:
        with self._write() as conn:
            return conn.execute(_PRUNE_OUTBOX, (time.time() - older_than_secs,)).rowcount

    # ---------------------------------------------------------------- lifecycle

    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def wakeups(self, wake: Callable[[], None]) -> StopListening:
        """A datagram socket of this process's own in a directory shared by every process of
        this file (see `_Wakes`); a thread calls `wake` for what arrives."""
        return self._wakes.listen(wake)

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()
        with self._writer_lock:
            if self._lock_fd is not None and self._lock_pid == os.getpid():
                os.close(self._lock_fd)
            self._lock_fd = None

    # ---------------------------------------------------------------- retention

    @contextmanager
    def retention_turn(self) -> Iterator[DeleteEnded | None]:
        """The turn is an exclusive `flock` on `<file>.retention-lock`, held for the block:
        the kernel drops it when the process dies, so a crashed deleter never blocks the next."""
        if self._path == ":memory:":
            if not _MEMORY_TURN.acquire(blocking=False):
                yield None
                return
            try:
                yield self._delete_ended
            finally:
                _MEMORY_TURN.release()
            return
        fd = os.open(f"{self._path}.retention-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield self._delete_ended
        finally:
            os.close(fd)  # releases the lock

    def _delete_ended(self, ended_before: datetime, limit: int) -> int:
        if not 0 < limit <= MAX_RETENTION_BATCH:
            raise ValueError(f"limit must be 1..{MAX_RETENTION_BATCH}, not {limit}")
        before = _ts(ended_before)
        # A read first: a pass with nothing to delete must not take the write lock.
        if not self._conn().execute(_ENDED_BEFORE, (before, 1)).fetchone():
            return 0
        events_until = ended_before.timestamp() + RETENTION_EVENTS_MARGIN_SECS
        with self._write() as conn:
            ids = [r["id"] for r in conn.execute(_ENDED_BEFORE, (before, limit))]
            if ids:
                first_after = conn.execute(_OUTBOX_FIRST_AFTER, (events_until,)).fetchone()
                listed = json.dumps(ids)
                conn.execute(
                    _DELETE_EVENTS_OF,
                    (first_after["seq"] if first_after else _NO_SEQ_BOUND, listed),
                )
                conn.execute(_DELETE_SAGAS, (listed,))
        return len(ids)
