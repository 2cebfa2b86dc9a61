"""The PostgreSQL saga store (production): many API and worker processes share one database.

It writes what `saga.decide` committed and never decides anything about a saga. Leases are
taken with `FOR UPDATE SKIP LOCKED` on the database clock; every executor write is fenced by
(lease_owner, lease_token). A batch of commits is one statement (one round trip, one
transaction): the fenced UPDATE's RETURNING feeds the step-log and outbox inserts, so a fenced
saga gets no state, no log and no event.

Edge conversions live here: saga ids are `str` in the core and UUID columns here; statuses
and actions are stored as their string values; JSON goes in as JSONB; timestamps come back as
UTC datetimes. Schema objects are named through a validated identifier, values are always
bound parameters.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from attrs import evolve
from psycopg import Connection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from saga.codec import (
    compensation_to_dict,
    pause_to_dict,
    workflow_from_dict,
    workflow_to_dict,
)
from saga.events import Commit
from saga.model import (
    ACTIVE_STATUSES,
    CANCELLABLE_STATUSES,
    PAUSABLE_STATUSES,
    TERMINAL_STATUSES,
    UNLEASED_STATUSES,
    Action,
    OperatorAction,
    SagaState,
    SagaStatus,
    StepLog,
    StepStatus,
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
from workers.adapters.store.migrate import (
    LOCK_WORKFLOW,
    connect_kwargs,
    migrate_postgres,
    qualify,
    validate_schema,
)
from workers.adapters.store.rows import (
    ACTION_COLUMNS,
    LOG_COLUMNS,
    STATE_COLUMNS,
    action_from_row,
    log_from_row,
    sql_list,
    state_from_row,
)

log = logging.getLogger(__name__)

# What PostgreSQL (or psycopg, adapting a value) raises for data it will not keep: a NUL or a
# bad escape in text/JSONB, a broken constraint. Connection errors are not among them.
_REFUSALS = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgrammingError,
    UnicodeError,
    ValueError,
    TypeError,
)

_STATE_COLUMNS = STATE_COLUMNS
_LOG_COLUMNS = LOG_COLUMNS


_ACTIVE = sql_list(ACTIVE_STATUSES)
_PAUSABLE = sql_list(PAUSABLE_STATUSES)
_CANCELLABLE = sql_list(CANCELLABLE_STATUSES)
# In the order the partial index on ended sagas lists them (migration "ended_index"): SQLite
# uses a partial index only when the query's condition spells its predicate the same way.
_TERMINAL = sql_list(TERMINAL_STATUSES, order=("COMPLETED", "FAILED", "CANCELLED"))

# --------------------------------------------------------------------------- statements
# `{schema}` is replaced once per store by a validated identifier (see `qualify`).

_CREATE_COLUMNS = """
    id, workflow_name, workflow_version, status, current_step, payload, correlation_id,
    initiated_by, error_message, created_at, updated_at, compensation,
    idempotency_key, request_hash, trace_context, lease_owner, lease_token, lease_expires_at"""

# A saga started leased to the accepting executor (`StartLease`) holds the first token.
_CREATE_LEASE = f"""
        %(lease_owner)s, CASE WHEN %(lease_owner)s::text IS NULL THEN 0 ELSE {START_LEASE_TOKEN} END,
        CASE WHEN %(lease_owner)s::text IS NULL THEN NULL
             ELSE now() + make_interval(secs => %(lease_secs)s) END"""

# Any conflict inserts nothing: on the idempotency key (another request's saga, read next), or
# on the id, which only this request's earlier attempt can have written (ids are random), when
# a broken connection lost its answer and the statement was sent again.
# Every new saga not leased at its start tells the listening executors (`wakeups`): NOTIFY
# is sent at commit, only if the row was inserted.
_CREATE_SAGA = f"""
WITH ins AS (
    INSERT INTO {{schema}}.saga_states ({_CREATE_COLUMNS})
    VALUES (
        %(id)s, %(workflow_name)s, %(workflow_version)s, %(status)s, %(current_step)s,
        %(payload)s, %(correlation_id)s, %(initiated_by)s, %(error_message)s, %(created_at)s,
        %(updated_at)s, %(compensation)s, %(idempotency_key)s, %(request_hash)s,
        %(trace_context)s, {_CREATE_LEASE})
    ON CONFLICT DO NOTHING
    RETURNING {_STATE_COLUMNS}, request_hash
),
told AS (SELECT pg_notify(%(channel)s, '') FROM ins WHERE %(lease_owner)s::text IS NULL)
SELECT ins.*, (SELECT count(*) FROM told) AS told FROM ins
"""

# The same at the latest version of the workflow, resolved in the statement: a start is one
# round trip. No row when the workflow has no version (or on a conflict, as above).
_CREATE_SAGA_LATEST = f"""
WITH wf AS (
    SELECT version FROM {{schema}}.workflow_definitions
    WHERE name = %(workflow_name)s ORDER BY version DESC LIMIT 1
),
ins AS (
    INSERT INTO {{schema}}.saga_states ({_CREATE_COLUMNS})
    SELECT
        %(id)s, %(workflow_name)s, wf.version, %(status)s, %(current_step)s,
        %(payload)s, %(correlation_id)s, %(initiated_by)s, %(error_message)s, %(created_at)s,
        %(updated_at)s, %(compensation)s, %(idempotency_key)s, %(request_hash)s,
        %(trace_context)s, {_CREATE_LEASE}
    FROM wf
    ON CONFLICT DO NOTHING
    RETURNING {_STATE_COLUMNS}, request_hash
),
told AS (SELECT pg_notify(%(channel)s, '') FROM ins WHERE %(lease_owner)s::text IS NULL)
SELECT ins.*, (SELECT count(*) FROM told) AS told FROM ins
"""

_SAGA_BY_ID = f"""
SELECT {_STATE_COLUMNS}, request_hash FROM {{schema}}.saga_states WHERE id = %s
"""

_WORKFLOW_EXISTS = "SELECT 1 FROM {schema}.workflow_definitions WHERE name = %s LIMIT 1"

_NOTIFY = "SELECT pg_notify(%s, '')"

_SAGA_BY_IDEMPOTENCY_KEY = f"""
SELECT {_STATE_COLUMNS}, request_hash FROM {{schema}}.saga_states WHERE idempotency_key = %s
"""

_GET_SAGA = f"SELECT {_STATE_COLUMNS} FROM {{schema}}.saga_states WHERE id = %s"

# Insertion order. Logs are written when a step ends, by the one executor holding the saga, so
# this is completion order; unlike completed_at it stays right across a take-over by an executor
# whose clock runs behind (the memory and SQLite stores order the same way).
_GET_STEP_LOGS = f"""
SELECT {_LOG_COLUMNS} FROM {{schema}}.saga_step_logs
WHERE saga_id = %s
ORDER BY seq
"""

# The UPDATE decides on the newest row version (it waits for an executor's commit that holds
# the row, then re-checks the status), so RETURNING is the saga the flag was set on. When it
# sets nothing, `_GET_SAGA` (a new statement, a new snapshot) says what the saga is now: a
# cancel that lost the race to COMPLETED gets its 409, never a 200 with nothing set.
_REQUEST_CANCEL = f"""
UPDATE {{schema}}.saga_states SET cancel_requested = TRUE
WHERE id = %(id)s AND status IN ({_CANCELLABLE})
RETURNING {_STATE_COLUMNS}
"""

_STATUS_COUNTS = """
SELECT status, COALESCE(sum(n), 0) AS n FROM {schema}.saga_counts GROUP BY status
"""

_STARTED_BY_MINUTE = """
SELECT date_trunc('minute', created_at) AS minute, count(*) AS n FROM {schema}.saga_states
WHERE created_at >= %s GROUP BY 1
"""

_ENDED_BY_MINUTE = f"""
SELECT date_trunc('minute', updated_at) AS minute, count(*) AS n FROM {{schema}}.saga_states
WHERE status IN ({_TERMINAL}) AND updated_at >= %s GROUP BY 1
"""

# What claimed sagas' step expressions see of earlier steps (`SagaState.steps`).
_FORWARD_LOGS = f"""
SELECT {_LOG_COLUMNS} FROM {{schema}}.saga_step_logs
WHERE saga_id = ANY(%s::uuid[]) AND action = 'EXECUTE' AND status = 'SUCCESS'
ORDER BY seq
"""

_REQUEST_PAUSE = f"""
UPDATE {{schema}}.saga_states SET pause_requested = TRUE
WHERE id = %(id)s AND status IN ({_PAUSABLE})
RETURNING {_STATE_COLUMNS}
"""

_INSERT_ACTION = """
INSERT INTO {schema}.operator_actions (saga_id, action, resume_action, payload_replaced, actor, at)
VALUES (%s, %s, %s, %s, %s, %s)
"""

# Kept exact by the counter triggers of 0003 (no row of saga_states is read).
_PAUSED_BY_WORKFLOW = """
SELECT workflow_name, COALESCE(sum(n), 0) AS n FROM {schema}.saga_counts
WHERE status = 'PAUSED' GROUP BY workflow_name
"""

# GET of one saga in one round trip: the saga row, with its step logs and operator actions
# as JSON arrays (read back with `_from_json_row`), each in the order of its own statement.
_SAGA_DETAIL = f"""
SELECT {_STATE_COLUMNS},
    (SELECT COALESCE(json_agg(l ORDER BY l.seq), '[]'::json) FROM (
        SELECT seq, {_LOG_COLUMNS} FROM {{schema}}.saga_step_logs WHERE saga_id = s.id) l
    ) AS step_logs,
    (SELECT COALESCE(json_agg(a ORDER BY a.seq), '[]'::json) FROM (
        SELECT seq, {ACTION_COLUMNS} FROM {{schema}}.operator_actions WHERE saga_id = s.id) a
    ) AS operator_actions
FROM {{schema}}.saga_states s WHERE s.id = %s
"""

_OPERATOR_ACTIONS = f"""
SELECT {ACTION_COLUMNS} FROM {{schema}}.operator_actions WHERE saga_id = %s ORDER BY seq
"""

# An operator's decision on a PAUSED saga, only if no other was written since it was read.
_COMMIT_OPERATOR = """
UPDATE {schema}.saga_states
SET status = %(status)s, current_step = %(current_step)s, payload = %(payload)s,
    error_message = %(error_message)s, updated_at = %(updated_at)s,
    compensation = %(compensation)s, pause = %(pause)s, resumes = %(resumes)s,
    in_doubt = %(in_doubt)s, lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND status = 'PAUSED' AND resumes = %(expected)s
"""

_INSERT_LOGS = """
INSERT INTO {schema}.saga_step_logs (
    id, saga_id, step_index, step_name, action, status, request_payload, response_payload,
    error_message, started_at, completed_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO NOTHING
"""

_INSERT_EVENTS = """
INSERT INTO {schema}.outbox (event_id, saga_id, event_type, body) VALUES (%s, %s, %s, %s)
ON CONFLICT (event_id) DO NOTHING
"""

_IS_CANCEL_REQUESTED = "SELECT cancel_requested FROM {schema}.saga_states WHERE id = %s"

# `prev_owner` is read under the row lock (FOR UPDATE re-reads the newest row version), so it is
# the owner whose expired lease is being taken over, or NULL for a free saga.
_CLAIM = f"""
WITH candidate AS (
    SELECT id, lease_owner AS prev_owner
    FROM {{schema}}.saga_states
    WHERE status IN ({_ACTIVE})
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE {{schema}}.saga_states AS s
    SET lease_owner = %(owner)s,
        lease_token = s.lease_token + 1,
        lease_expires_at = now() + make_interval(secs => %(lease_secs)s)
    WHERE s.id = ANY(ARRAY(SELECT id FROM candidate))
    RETURNING {_STATE_COLUMNS}, lease_token, cancel_requested, pause_requested
)
SELECT claimed.*, candidate.prev_owner
FROM claimed JOIN candidate ON candidate.id = claimed.id
"""

# Statements that update several held sagas first lock them in id order (`held`): an executor's
# renewals and commits run at the same time on overlapping sets, and a common lock order keeps
# them from deadlocking. FOR UPDATE re-checks owner and token on the newest row version.
#
# Rows picked by a CTE are updated through `= ANY(ARRAY(SELECT ...))` rather than a join: that
# is always a primary-key lookup, where a join may be planned as a hash join over the table.
_HELD = """
held AS (
    SELECT s.id, s.cancel_requested, s.pause_requested
    FROM {schema}.saga_states AS s JOIN v ON v.id = s.id
    WHERE s.lease_owner = %(owner)s AND s.lease_token = v.token
    ORDER BY s.id
    FOR UPDATE OF s
)"""

_RENEW = f"""
WITH v AS (SELECT * FROM unnest(%(ids)s::uuid[], %(tokens)s::bigint[]) AS v(id, token)),
{_HELD}
UPDATE {{schema}}.saga_states AS s
SET lease_expires_at = now() + make_interval(secs => %(lease_secs)s)
WHERE s.id = ANY(ARRAY(SELECT id FROM held))
RETURNING s.id
"""

_RELEASE = f"""
WITH v AS (SELECT * FROM unnest(%(ids)s::uuid[], %(tokens)s::bigint[]) AS v(id, token)),
{_HELD}
UPDATE {{schema}}.saga_states AS s
SET lease_owner = NULL, lease_expires_at = NULL
WHERE s.id = ANY(ARRAY(SELECT id FROM held))
"""

# One round trip for a whole batch. `written` holds the sagas whose lease still matched; the
# log and event inserts take only their rows. The payload is not rewritten: it is the saga's
# input and never changes after create (rewriting a large JSONB would copy it on every step).
# ON CONFLICT DO NOTHING: log and event ids are derived from the saga id, so replaying a commit
# whose outcome was lost with the connection writes nothing twice.
# The batch arrives as three JSON documents (sagas, logs, events: one array of objects each,
# encoded by `json` in one call) rather than one array parameter per column, which the driver
# would encode element by element in Python.
_COMMIT = f"""
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(sagas)s::jsonb) AS v(
        id uuid, token bigint, status text, current_step int, error_message text,
        updated_at timestamptz, compensation jsonb, terminal boolean, guard boolean,
        pause_guard boolean, pause jsonb, resumes int, in_doubt boolean)
),
{_HELD},
written AS (
    UPDATE {{schema}}.saga_states AS s
    SET status = v.status,
        current_step = v.current_step,
        error_message = v.error_message,
        updated_at = v.updated_at,
        compensation = v.compensation,
        pause = v.pause,
        resumes = v.resumes,
        in_doubt = v.in_doubt,
        pause_requested = CASE WHEN v.status = 'PAUSED' THEN FALSE ELSE s.pause_requested END,
        lease_owner = CASE WHEN v.terminal THEN NULL ELSE s.lease_owner END,
        lease_expires_at = CASE WHEN v.terminal THEN NULL
                                ELSE now() + make_interval(secs => %(lease_secs)s) END
    FROM v JOIN held ON held.id = v.id
    WHERE s.id = v.id AND NOT (v.guard AND s.cancel_requested)
      AND NOT (v.pause_guard AND s.pause_requested)
    RETURNING s.id, s.cancel_requested, s.pause_requested
),
logs AS (
    INSERT INTO {{schema}}.saga_step_logs (
        id, saga_id, step_index, step_name, action, status, request_payload,
        response_payload, error_message, started_at, completed_at)
    SELECT l.id, l.saga_id, l.step_index, l.step_name, l.action, l.status, l.request_payload,
           l.response_payload, l.error_message, l.started_at, l.completed_at
    FROM jsonb_to_recordset(%(logs)s::jsonb) AS l(
        id uuid, saga_id uuid, step_index int, step_name text, action text, status text,
        request_payload jsonb, response_payload jsonb, error_message text,
        started_at timestamptz, completed_at timestamptz, ord int)
    WHERE l.saga_id IN (SELECT id FROM written)
    ORDER BY l.ord
    ON CONFLICT (id) DO NOTHING
),
events AS (
    INSERT INTO {{schema}}.outbox (event_id, saga_id, event_type, body)
    SELECT e.event_id, e.saga_id, e.event_type, e.body
    FROM jsonb_to_recordset(%(events)s::jsonb) AS e(
        event_id uuid, saga_id uuid, event_type text, body jsonb, ord int)
    WHERE e.saga_id IN (SELECT id FROM written)
    ORDER BY e.ord
    ON CONFLICT (event_id) DO NOTHING
)
SELECT v.id,
       written.id IS NOT NULL AS written,
       held.id IS NOT NULL AS held,
       COALESCE(written.cancel_requested, held.cancel_requested, s.cancel_requested, FALSE)
           AS cancel_requested,
       COALESCE(written.pause_requested, held.pause_requested, s.pause_requested, FALSE)
           AS pause_requested,
       v.guard AND held.cancel_requested AS cancel_first
FROM v
LEFT JOIN written ON written.id = v.id
LEFT JOIN held ON held.id = v.id
LEFT JOIN {{schema}}.saga_states AS s ON s.id = v.id
"""

_REGISTER_WORKFLOW = """
INSERT INTO {schema}.workflow_definitions (name, version, definition)
SELECT %(name)s::text, COALESCE(MAX(version), 0) + 1, %(definition)s
FROM {schema}.workflow_definitions WHERE name = %(name)s::text
RETURNING version
"""

_GET_WORKFLOW_VERSION = """
SELECT name, version, definition FROM {schema}.workflow_definitions
WHERE name = %s AND version = %s
"""

_GET_WORKFLOW_LATEST = """
SELECT name, version, definition FROM {schema}.workflow_definitions
WHERE name = %s ORDER BY version DESC LIMIT 1
"""

_LIST_WORKFLOWS = """
SELECT DISTINCT ON (name) name, version, definition FROM {schema}.workflow_definitions
ORDER BY name, version DESC
"""

# A row is handed out only when every older unpublished row of its saga is in this same claim:
# a row held by another relay, or locked right now by a concurrent claim (so not in
# `candidate`), holds back the newer rows of its saga. Rows this relay still holds are
# candidates again (a send that failed is retried first, in order, not after its claim ends).
_CLAIM_OUTBOX = """
WITH candidate AS (
    SELECT seq, saga_id FROM {schema}.outbox
    WHERE published_at IS NULL
      AND (claim_expires_at IS NULL OR claim_expires_at < now()
           OR claimed_by = %(owner)s)
    ORDER BY seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
ready AS (
    SELECT c.seq FROM candidate AS c
    WHERE NOT EXISTS (
        SELECT 1 FROM {schema}.outbox AS older
        WHERE older.saga_id = c.saga_id
          AND older.published_at IS NULL
          AND older.seq < c.seq
          AND older.seq NOT IN (SELECT seq FROM candidate)
    )
)
UPDATE {schema}.outbox AS o
SET claimed_by = %(owner)s,
    claim_expires_at = now() + make_interval(secs => %(lease_secs)s)
WHERE o.seq = ANY(ARRAY(SELECT seq FROM ready))
RETURNING o.seq, o.event_id, o.saga_id, o.event_type, o.body
"""

_MARK_PUBLISHED = """
UPDATE {schema}.outbox SET published_at = now()
WHERE seq = ANY(%s::bigint[]) AND published_at IS NULL
"""

_OUTBOX_STATS = """
SELECT (SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL) AS unpublished,
       EXTRACT(EPOCH FROM now() - (
           SELECT created_at FROM {schema}.outbox WHERE published_at IS NULL
           ORDER BY seq LIMIT 1)) AS oldest_age
"""

_PRUNE_OUTBOX = """
DELETE FROM {schema}.outbox
WHERE published_at IS NOT NULL AND published_at <= now() - make_interval(secs => %s)
"""

# Retention (SPEC §13). The turn is a session advisory lock (namespaces: see migrate.py),
# held by the one connection that runs the batches; it goes with that session if the process dies.
_LOCK_RETENTION = 0x5A6A03
_RETENTION_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
_RETENTION_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(%s))"

# Rows are numbered as they are written: every row written before a time has a lower seq than
# the first one written after it (the older rows are few once the relay has pruned).
_OUTBOX_FIRST_AFTER = """
SELECT seq FROM {schema}.outbox WHERE created_at > %s ORDER BY seq LIMIT 1
"""

# One statement, one short transaction: terminal sagas by idx_saga_states_ended (0004), oldest
# first, none with an event still unpublished (idx_outbox_unpublished_saga); their published
# events within the seq range; the sagas, whose step logs (and every other row referencing
# them) go by ON DELETE CASCADE. The delete trigger of 0003 keeps saga_counts exact.
_DELETE_ENDED = f"""
WITH ended AS (
    SELECT s.id FROM {{schema}}.saga_states AS s
    WHERE s.status IN ({_TERMINAL}) AND s.updated_at < %(before)s
      AND NOT EXISTS (
          SELECT 1 FROM {{schema}}.outbox AS o
          WHERE o.saga_id = s.id AND o.published_at IS NULL)
    ORDER BY s.updated_at
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
),
events AS (
    DELETE FROM {{schema}}.outbox AS o
    WHERE o.seq < %(seq_bound)s AND o.saga_id = ANY(ARRAY(SELECT id FROM ended))
)
DELETE FROM {{schema}}.saga_states AS s
WHERE s.id = ANY(ARRAY(SELECT id FROM ended))
"""
_NO_SEQ_BOUND = 2**63 - 1

_SESSION_SETUP = """
SELECT set_config('saga.keep_updated_at', 'on', false), set_config('TimeZone', 'UTC', false),
       set_config('statement_timeout', %s, false)
"""


def list_statements(schema: str, filters: SagaFilter) -> tuple[str, str, list[Any]]:
    """(count SQL, page SQL, filter parameters) of `list_sagas`; the page SQL takes LIMIT and
    OFFSET as two more parameters. Exposed so tests can EXPLAIN exactly what runs."""
    conditions: list[str] = []
    params: list[Any] = []
    if filters.workflow_name is not None:
        conditions.append("workflow_name = %s")
        params.append(filters.workflow_name)
    if filters.status is not None:
        conditions.append("status = %s")
        params.append(SagaStatus(filters.status).value)
    if filters.correlation_id is not None:
        conditions.append("correlation_id = %s")
        params.append(filters.correlation_id)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    if filters.correlation_id is None:
        # Kept exact by the trigger of migration 0003; a correlation id is selective enough
        # for count(*) over its index.
        count_sql = qualify(
            f"SELECT COALESCE(sum(n), 0) AS n FROM {{schema}}.saga_counts{where}", schema
        )
    else:
        count_sql = qualify(f"SELECT count(*) AS n FROM {{schema}}.saga_states{where}", schema)
    page_sql = qualify(
        f"SELECT {_STATE_COLUMNS} FROM {{schema}}.saga_states{where}"
        " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
        schema,
    )
    return count_sql, page_sql, params


# --------------------------------------------------------------------------- conversions


def _json_default(value: object) -> object:
    # Core values are read-only Mappings and tuples; JSON wants dicts and lists.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(value: object) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _iso(value: datetime | None) -> str | None:
    """A timestamp for a JSON document PostgreSQL reads as timestamptz (naive means UTC)."""
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


def _jsonb(value: object | None) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=_dumps)


def _uuid(saga_id: str) -> uuid.UUID | None:
    """The id as a UUID, or None when it is not one (so it names no saga)."""
    try:
        return uuid.UUID(saga_id)
    except (ValueError, TypeError, AttributeError):
        return None


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _utc_required(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _as_is(value: Any) -> Any:
    return value


def _state_from_row(row: Mapping[str, Any]) -> SagaState:
    return state_from_row(row, _utc_required, _as_is)


def _log_from_row(row: Mapping[str, Any]) -> StepLog:
    return log_from_row(row, _utc_required, _as_is)


def _from_json_time(value: str) -> datetime:
    # json_agg writes a timestamptz in ISO 8601 (the session's time zone is UTC).
    return datetime.fromisoformat(value).astimezone(UTC)


def _workflow_from_row(row: Mapping[str, Any]) -> Workflow:
    definition = dict(row["definition"])
    definition.pop("version", None)
    return evolve(workflow_from_dict(definition), name=row["name"], version=row["version"])


def _session_setup(statement_timeout: float | None) -> Callable[[Connection[Any]], None]:
    """The pool's `configure` callback: store writes set updated_at themselves (see the
    trigger in 0001_initial.sql), timestamps come back in UTC, and a statement running longer
    than `statement_timeout` seconds is cancelled by the server (None or 0: never). The pool
    runs it on every new connection (autocommit: no open transaction)."""
    # In milliseconds, PostgreSQL's unit; a positive value under 1 ms must not become 0 (off).
    timeout_ms = 0 if not statement_timeout else max(1, round(statement_timeout * 1000))

    def configure(conn: Connection[Any]) -> None:
        conn.execute(_SESSION_SETUP, (str(timeout_ms),))

    return configure


# A call that finds its connection broken is sent again this many times in all (`_rows`);
# idle connections are checked at most this often.
_ATTEMPTS = 3
_CHECK_EVERY_SECS = 0.2


def _connection_lost(exc: psycopg.OperationalError) -> bool:
    """The connection went away under the statement (client side: no SQLSTATE; or the server
    ending sessions: class 08, admin/crash shutdown), as opposed to an error of the statement
    itself (a cancelled query) or a pool with no connection to give (`PoolTimeout`)."""
    if isinstance(exc, PoolTimeout):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def wake_channel(schema: str) -> str:
    """The NOTIFY channel of one schema's sagas (a channel name is at most 63 bytes)."""
    name = f"saga_wake.{schema}"
    if len(name.encode()) <= 63:
        return name
    return "saga_wake." + hashlib.sha256(schema.encode()).hexdigest()[:40]


class _Listener:
    """One `LISTEN` connection and its thread (see `PostgresStore.wakeups`)."""

    def __init__(
        self,
        conninfo: str,
        kwargs: Mapping[str, Any],
        channel: str,
        wake: Callable[[], None],
    ) -> None:
        self._conninfo = conninfo
        self._kwargs = {**kwargs, "autocommit": True}
        self._channel = channel
        self._wake = wake
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="saga-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(_LISTEN_POLL_SECS * 2)

    def _run(self) -> None:
        backoff = 0.1
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, **self._kwargs) as conn:
                    conn.execute(listen)
                    backoff = 0.1
                    self._wake()  # whatever was started while nobody listened
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=_LISTEN_POLL_SECS):
                            self._wake()
            except psycopg.Error as exc:
                log.debug("listen connection lost (%s); retrying", type(exc).__name__)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)


_LISTEN_POLL_SECS = 0.1  # how soon the listening thread sees it is to stop


# --------------------------------------------------------------------------- the store


class PostgresStore(Store):
    """A `Store` on PostgreSQL, with a connection pool that heals itself after a server restart.

    When the server is unreachable, calls raise `psycopg.OperationalError` (a
    `psycopg_pool.PoolTimeout` after `timeout` seconds at most) instead of hanging.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "saga",
        outbox: bool = False,
        min_size: int = 1,
        max_size: int = 10,
        migrate: bool = True,
        timeout: float = 10.0,
        reconnect_timeout: float = 60.0,
        max_lifetime: float = 300.0,
        statement_timeout: float | None = 30.0,
    ) -> None:
        self._schema = validate_schema(schema)
        self._outbox = outbox
        if migrate:
            applied = migrate_postgres(conninfo, schema)
            if applied:
                log.info("schema %s migrated to version %d", schema, applied[-1])
        kwargs = connect_kwargs(conninfo, autocommit=True)
        if "application_name" not in conninfo_to_dict(conninfo):
            kwargs["application_name"] = "saga-store"
        self._pool: ConnectionPool[Connection[Any]] = ConnectionPool(
            conninfo,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            open=False,
            configure=_session_setup(statement_timeout),
            max_lifetime=max_lifetime,  # `database.conn_max_lifetime`
            # No probe on every checkout (a round trip per call): a connection found broken by
            # a call makes the pool check every idle one, and the call is sent again when that
            # is safe (`_rows`), so a server restart still costs no failed call.
            timeout=timeout,
            reconnect_timeout=reconnect_timeout,
            name=f"saga-store-{schema}",
        )
        self._pool.open(wait=True, timeout=timeout)
        self._conninfo = conninfo
        self._connect_kwargs = kwargs
        self._channel = wake_channel(self._schema)
        self._last_check = 0.0
        q = self._q
        self._create_saga = q(_CREATE_SAGA)
        self._create_saga_latest = q(_CREATE_SAGA_LATEST)
        self._saga_by_id = q(_SAGA_BY_ID)
        self._workflow_exists = q(_WORKFLOW_EXISTS)
        self._saga_by_key = q(_SAGA_BY_IDEMPOTENCY_KEY)
        self._get_saga = q(_GET_SAGA)
        self._get_step_logs = q(_GET_STEP_LOGS)
        self._saga_detail = q(_SAGA_DETAIL)
        self._request_cancel = q(_REQUEST_CANCEL)
        self._is_cancel_requested = q(_IS_CANCEL_REQUESTED)
        self._request_pause = q(_REQUEST_PAUSE)
        self._insert_action = q(_INSERT_ACTION)
        self._operator_actions = q(_OPERATOR_ACTIONS)
        self._paused_by_workflow = q(_PAUSED_BY_WORKFLOW)
        self._commit_operator = q(_COMMIT_OPERATOR)
        self._insert_logs = q(_INSERT_LOGS)
        self._insert_events = q(_INSERT_EVENTS)
        self._forward_logs = q(_FORWARD_LOGS)
        self._status_counts = q(_STATUS_COUNTS)
        self._started_by_minute = q(_STARTED_BY_MINUTE)
        self._ended_by_minute = q(_ENDED_BY_MINUTE)
        self._claim = q(_CLAIM)
        self._renew = q(_RENEW)
        self._release = q(_RELEASE)
        self._commit = q(_COMMIT)
        self._register_workflow = q(_REGISTER_WORKFLOW)
        self._get_workflow_version = q(_GET_WORKFLOW_VERSION)
        self._get_workflow_latest = q(_GET_WORKFLOW_LATEST)
        self._list_workflows = q(_LIST_WORKFLOWS)
        self._claim_outbox = q(_CLAIM_OUTBOX)
        self._mark_published = q(_MARK_PUBLISHED)
        self._outbox_stats = q(_OUTBOX_STATS)
        self._prune_outbox = q(_PRUNE_OUTBOX)

    @property
    def schema(self) -> str:
        return self._schema

    def _q(self, sql: str) -> str:
        return qualify(sql, self._schema)

    @contextmanager
    def _connection(self) -> Iterator[Connection[Any]]:
        """A pooled connection. When a call finds it broken (the server restarted or ended the
        session), every idle connection is checked at once, so the calls that follow get
        live ones instead of each finding a dead one in turn."""
        with self._pool.connection() as conn:
            try:
                yield conn
            except psycopg.OperationalError:
                if conn.broken:
                    self._check_idle()
                raise

    def _check_idle(self) -> None:
        now = time.monotonic()
        if now - self._last_check < _CHECK_EVERY_SECS:
            return
        self._last_check = now
        try:
            self._pool.check()
        except Exception:  # noqa: BLE001 - the next call reports the outage itself
            log.debug("pool check failed", exc_info=True)

    def _rows(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (), *, retry: bool = True
    ) -> list[dict[str, Any]]:
        """Run one autocommit statement. With `retry` (the statement may safely run twice: a
        read, or a write whose second run changes nothing), a connection found broken costs
        no failed call: the statement is sent again on another connection."""
        for attempt in range(_ATTEMPTS):
            try:
                with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    cur.execute(sql, params)
                    return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError as exc:
                if not (retry and attempt + 1 < _ATTEMPTS and _connection_lost(exc)):
                    raise
        raise AssertionError("unreachable")

    def _rowcount(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        for attempt in range(_ATTEMPTS):
            try:
                with self._connection() as conn, conn.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.rowcount
            except psycopg.OperationalError as exc:
                if not (attempt + 1 < _ATTEMPTS and _connection_lost(exc)):
                    raise
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- workflows

    def register_workflow(self, workflow: Workflow) -> Workflow:
        definition = workflow_to_dict(workflow)
        definition.pop("version", None)
        with self._connection() as conn, conn.transaction():
            # MAX(version)+1 alone races for a new name (no row to lock); this lock serialises
            # registrations of one name until commit.
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (LOCK_WORKFLOW, f"{self._schema}.{workflow.name}"),
            )
            row = conn.execute(
                self._register_workflow,
                {"name": workflow.name, "definition": _jsonb(definition)},
            ).fetchone()
        assert row is not None
        return evolve(workflow, version=int(row[0]))

    def get_workflow(self, name: str, version: int | None = None) -> Workflow | None:
        if version is None:
            rows = self._rows(self._get_workflow_latest, (name,))
        else:
            rows = self._rows(self._get_workflow_version, (name, version))
        return _workflow_from_row(rows[0]) if rows else None

    def list_workflows(self) -> list[Workflow]:
        return [_workflow_from_row(row) for row in self._rows(self._list_workflows)]

    # ---------------------------------------------------------------- sagas (API side)

    def create_saga(
        self,
        state: SagaState,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        latest_version: bool = False,
        lease: StartLease | None = None,
    ) -> tuple[SagaState, str | None, bool]:
        sid = uuid.UUID(state.saga_id)
        params = {
            "id": sid,
            "workflow_name": state.workflow_name,
            "workflow_version": state.workflow_version,
            "status": SagaStatus(state.status).value,
            "current_step": state.current_step,
            "payload": _jsonb(state.payload),
            "correlation_id": state.correlation_id,
            "initiated_by": state.initiated_by,
            "error_message": state.error_message,
            "created_at": state.created_at,
            "updated_at": state.updated_at,
            "compensation": _jsonb(compensation_to_dict(state.compensation)),
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "trace_context": state.trace_context,
            "lease_owner": None if lease is None else lease.owner,
            "lease_secs": 0.0 if lease is None else float(lease.lease_secs),
            "channel": self._channel,
        }
        statement = self._create_saga_latest if latest_version else self._create_saga
        # Another request with the same key may commit between our INSERT and SELECT, or (rarely)
        # the row it names may be gone by then; a few rounds settle either way. The INSERT is
        # safe to send again (`_rows` does on a broken connection): a row with our id can only
        # be this request's own.
        for _ in range(5):
            rows = self._rows(statement, params)
            if rows:
                return _state_from_row(rows[0]), rows[0]["request_hash"], True
            mine = self._rows(self._saga_by_id, (sid,))
            if mine and mine[0]["request_hash"] == request_hash:
                return _state_from_row(mine[0]), mine[0]["request_hash"], True
            if idempotency_key is not None:
                existing = self._rows(self._saga_by_key, (idempotency_key,))
                if existing:
                    return _state_from_row(existing[0]), existing[0]["request_hash"], False
            if latest_version and not self._rows(self._workflow_exists, (state.workflow_name,)):
                raise UnknownWorkflow(state.workflow_name)
        raise RuntimeError(f"idempotency key {idempotency_key!r} neither inserted nor found")

    def get_saga(self, saga_id: str, *, with_steps: bool = False) -> SagaState | None:
        sid = _uuid(saga_id)
        if sid is None:
            return None
        rows = self._rows(self._get_saga, (sid,))
        if not rows:
            return None
        state = _state_from_row(rows[0])
        if with_steps and state.status is not SagaStatus.STARTED:
            logs = [_log_from_row(r) for r in self._rows(self._forward_logs, ([sid],))]
            state = evolve(state, steps=steps_from_logs(logs))
        return state

    def saga_detail(
        self, saga_id: str
    ) -> tuple[SagaState, list[StepLog], list[OperatorAction]] | None:
        sid = _uuid(saga_id)
        if sid is None:
            return None
        rows = self._rows(self._saga_detail, (sid,))
        if not rows:
            return None
        row = rows[0]
        logs = [log_from_row(g, _from_json_time, _as_is) for g in row["step_logs"]]
        actions = [action_from_row(a, _from_json_time) for a in row["operator_actions"]]
        return _state_from_row(row), logs, actions

    def get_step_logs(self, saga_id: str) -> list[StepLog]:
        sid = _uuid(saga_id)
        if sid is None:
            return []
        return [_log_from_row(row) for row in self._rows(self._get_step_logs, (sid,))]

    def list_sagas(self, filters: SagaFilter, page: int, page_size: int) -> SagaPage:
        if page < 1 or page_size < 1:
            raise ValueError(f"page ({page}) and page_size ({page_size}) must be >= 1")
        count_sql, page_sql, params = list_statements(self._schema, filters)
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(count_sql, params)
            count_row = cur.fetchone()
            total = int(count_row["n"]) if count_row else 0
            offset = (page - 1) * page_size
            # A page past the end is empty: answer it from the count, without making the
            # server walk `offset` rows for nothing.
            rows = []
            if offset < total:
                cur.execute(page_sql, [*params, page_size, offset])
                rows = cur.fetchall()
        return SagaPage(
            sagas=tuple(_state_from_row(row) for row in rows),
            total_count=total,
            page=page,
            page_size=page_size,
        )

    def stats(self, since: datetime) -> SagaStats:
        counts = dict.fromkeys(SagaStatus, 0)
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self._status_counts)
            for row in cur.fetchall():
                counts[SagaStatus(row["status"])] = int(row["n"])
            cur.execute(self._started_by_minute, (since,))
            started = {_utc_required(r["minute"]): int(r["n"]) for r in cur.fetchall()}
            cur.execute(self._ended_by_minute, (since,))
            ended = {_utc_required(r["minute"]): int(r["n"]) for r in cur.fetchall()}
        return SagaStats(counts, started, ended)

    def request_cancel(
        self, saga_id: str, *, by: str | None = None, at: datetime | None = None
    ) -> RequestOutcome | None:
        return self._request(self._request_cancel, saga_id, "cancel", by, at)

    def request_pause(self, saga_id: str, *, by: str | None, at: datetime) -> RequestOutcome | None:
        return self._request(self._request_pause, saga_id, "pause", by, at)

    def _request(
        self, statement: str, saga_id: str, action: str, by: str | None, at: datetime | None
    ) -> RequestOutcome | None:
        sid = _uuid(saga_id)
        if sid is None:
            return None
        with (
            self._connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            cur.execute(statement, {"id": sid})
            row = cur.fetchone()
            if row is not None:
                if at is not None:
                    cur.execute(self._insert_action, (sid, action, None, False, by, at))
                return RequestOutcome(_state_from_row(row), True)
        rows = self._rows(self._get_saga, (sid,))
        return RequestOutcome(_state_from_row(rows[0]), False) if rows else None

    def commit_operator(
        self, commit: Commit, expected_resumes: int, action: OperatorAction
    ) -> bool:
        state = commit.state
        sid = uuid.UUID(state.saga_id)
        try:
            with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    self._commit_operator,
                    {
                        "status": state.status.value,
                        "current_step": state.current_step,
                        "payload": _jsonb(state.payload),
                        "error_message": state.error_message,
                        "updated_at": state.updated_at,
                        "compensation": _jsonb(compensation_to_dict(state.compensation)),
                        "pause": _jsonb(pause_to_dict(state.pause)),
                        "resumes": state.resumes,
                        "in_doubt": state.in_doubt,
                        "id": sid,
                        "expected": expected_resumes,
                    },
                )
                if cur.rowcount != 1:
                    return False
                if commit.step_logs:
                    cur.executemany(
                        self._insert_logs,
                        [
                            (
                                uuid.UUID(g.id),
                                sid,
                                g.step_index,
                                g.step_name,
                                g.action.value,
                                g.status.value,
                                _jsonb(g.request_payload),
                                _jsonb(g.response_payload),
                                g.error_message,
                                g.started_at,
                                g.completed_at,
                            )
                            for g in commit.step_logs
                        ],
                    )
                if self._outbox and commit.events:
                    cur.executemany(
                        self._insert_events,
                        [
                            (uuid.UUID(e.event_id), sid, e.event_type.value, _jsonb(event_body(e)))
                            for e in commit.events
                        ],
                    )
                cur.execute(
                    self._insert_action,
                    (
                        sid,
                        action.action,
                        None if action.resume_action is None else action.resume_action.value,
                        action.payload_replaced,
                        action.by,
                        action.at,
                    ),
                )
                if state.status in ACTIVE_STATUSES:
                    cur.execute(_NOTIFY, (self._channel,))  # sent at commit
            return True
        except _REFUSALS as exc:
            raise StoreRefused(refusal_reason(exc)) from exc

    def paused_by_workflow(self) -> dict[str, int]:
        rows = self._rows(self._paused_by_workflow)
        return {r["workflow_name"]: int(r["n"]) for r in rows if int(r["n"]) > 0}

    def operator_actions(self, saga_id: str) -> list[OperatorAction]:
        sid = _uuid(saga_id)
        if sid is None:
            return []
        return [
            action_from_row(r, _utc_required) for r in self._rows(self._operator_actions, (sid,))
        ]

    def is_cancel_requested(self, saga_id: str) -> bool:
        sid = _uuid(saga_id)
        if sid is None:
            return False
        rows = self._rows(self._is_cancel_requested, (sid,))
        return bool(rows[0]["cancel_requested"]) if rows else False

    # ---------------------------------------------------------------- execution

    def claim(self, owner: str, limit: int, lease_secs: float) -> list[Claimed]:
        if limit <= 0:
            return []
        # Not sent again on a broken connection: a claim whose answer was lost leased sagas
        # to us that a second claim would not return (they come back when the lease expires).
        rows = self._rows(
            self._claim,
            {"owner": owner, "limit": limit, "lease_secs": float(lease_secs)},
            retry=False,
        )
        claimed = [
            Claimed(
                state=_state_from_row(row),
                lease_token=int(row["lease_token"]),
                cancel_requested=bool(row["cancel_requested"]),
                taken_over=row["prev_owner"] is not None and row["prev_owner"] != owner,
                lease_expired=row["prev_owner"] is not None,
                pause_requested=bool(row["pause_requested"]),
            )
            for row in rows
        ]
        claimed.sort(key=lambda c: (c.state.created_at, c.state.saga_id))
        return self._with_steps(claimed)

    def _with_steps(self, claimed: list[Claimed]) -> list[Claimed]:
        """Rebuild `steps` from the logs of the claimed sagas that have run a step (one query)."""
        ran = [c.state.saga_id for c in claimed if c.state.status is not SagaStatus.STARTED]
        if not ran:
            return claimed
        by_saga: dict[str, list[StepLog]] = {}
        for row in self._rows(self._forward_logs, ([uuid.UUID(i) for i in ran],)):
            log_ = _log_from_row(row)
            by_saga.setdefault(log_.saga_id, []).append(log_)
        return [
            c
            if c.state.status is SagaStatus.STARTED
            else evolve(
                c, state=evolve(c.state, steps=steps_from_logs(by_saga.get(c.state.saga_id, ())))
            )
            for c in claimed
        ]

    def _lease_arrays(self, leases: dict[str, int]) -> tuple[list[uuid.UUID], list[int]]:
        ids: list[uuid.UUID] = []
        tokens: list[int] = []
        for saga_id, token in leases.items():
            sid = _uuid(saga_id)
            if sid is not None:
                ids.append(sid)
                tokens.append(token)
        return ids, tokens

    def renew(self, owner: str, leases: dict[str, int], lease_secs: float) -> set[str]:
        ids, tokens = self._lease_arrays(leases)
        if not ids:
            return set()
        rows = self._rows(
            self._renew,
            {"owner": owner, "ids": ids, "tokens": tokens, "lease_secs": float(lease_secs)},
        )
        held = {str(row["id"]) for row in rows}
        # Answer with the caller's spelling of each id.
        return {saga_id for saga_id in leases if str(_uuid(saga_id)) in held}

    def release(self, owner: str, leases: dict[str, int]) -> None:
        ids, tokens = self._lease_arrays(leases)
        if ids:
            self._rowcount(self._release, {"owner": owner, "ids": ids, "tokens": tokens})

    def commit(
        self, owner: str, requests: Sequence[CommitRequest], lease_secs: float
    ) -> list[CommitResult]:
        if not requests:
            return []
        # One statement per "round": a saga that appears twice in the batch has its second
        # commit in the next round (an UPDATE ... FROM applies one row per target only).
        rounds: list[list[int]] = []
        seen: dict[str, int] = {}
        for index, request in enumerate(requests):
            n = seen.get(request.commit.state.saga_id, 0)
            seen[request.commit.state.saga_id] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(index)

        outcome: dict[int, tuple[bool, bool, bool, bool, bool]] = {}
        try:
            with self._connection() as conn:
                if len(rounds) == 1:
                    outcome.update(self._commit_round(conn, owner, requests, rounds[0], lease_secs))
                else:
                    with conn.transaction():
                        for indexes in rounds:
                            outcome.update(
                                self._commit_round(conn, owner, requests, indexes, lease_secs)
                            )
        except _REFUSALS as exc:
            raise StoreRefused(refusal_reason(exc)) from exc
        results: list[CommitResult] = []
        for index, request in enumerate(requests):
            written, held, cancel, pause, cancel_first = outcome.get(
                index, (False, False, False, False, False)
            )
            refused = held and not written
            results.append(
                CommitResult(
                    saga_id=request.commit.state.saga_id,
                    fenced=not held,
                    cancel_requested=cancel,
                    cancel_first=refused and cancel_first,
                    pause_requested=pause,
                    pause_first=refused and not cancel_first,
                )
            )
        return results

    def _commit_round(
        self,
        conn: Connection[Any],
        owner: str,
        requests: Sequence[CommitRequest],
        indexes: list[int],
        lease_secs: float,
    ) -> dict[int, tuple[bool, bool, bool, bool, bool]]:
        params = self._commit_params(owner, [requests[i] for i in indexes], lease_secs)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self._commit, params)
            by_id = {
                str(row["id"]): (
                    bool(row["written"]),
                    bool(row["held"]),
                    bool(row["cancel_requested"]),
                    bool(row["pause_requested"]),
                    bool(row["cancel_first"]),
                )
                for row in cur.fetchall()
            }
        outcome: dict[int, tuple[bool, bool, bool, bool, bool]] = {}
        for i in indexes:
            sid = _uuid(requests[i].commit.state.saga_id)
            outcome[i] = by_id.get(str(sid), (False, False, False, False, False))
        return outcome

    def _commit_params(
        self, owner: str, requests: Sequence[CommitRequest], lease_secs: float
    ) -> dict[str, Any]:
        sagas: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for request in requests:
            state = request.commit.state
            sid = _uuid(state.saga_id)
            if sid is None:
                # Names no stored saga: reported fenced, like any saga we do not hold.
                continue
            status = SagaStatus(state.status)
            sagas.append(
                {
                    "id": str(sid),
                    "token": request.lease_token,
                    "status": status.value,
                    "current_step": state.current_step,
                    "error_message": state.error_message,
                    "updated_at": _iso(state.updated_at),
                    "compensation": compensation_to_dict(state.compensation),
                    "terminal": status in UNLEASED_STATUSES,
                    "guard": request.commit.unless_cancel_requested,
                    "pause_guard": request.commit.unless_pause_requested,
                    "pause": pause_to_dict(state.pause),
                    "resumes": state.resumes,
                    "in_doubt": state.in_doubt,
                }
            )
            for step_log in request.commit.step_logs:
                logs.append(
                    {
                        "id": str(uuid.UUID(step_log.id)),
                        "saga_id": str(sid),
                        "step_index": step_log.step_index,
                        "step_name": step_log.step_name,
                        "action": Action(step_log.action).value,
                        "status": StepStatus(step_log.status).value,
                        "request_payload": step_log.request_payload,
                        "response_payload": step_log.response_payload,
                        "error_message": step_log.error_message,
                        "started_at": _iso(step_log.started_at),
                        "completed_at": _iso(step_log.completed_at),
                        "ord": len(logs),
                    }
                )
            if self._outbox:
                for event in request.commit.events:
                    events.append(
                        {
                            "event_id": str(uuid.UUID(event.event_id)),
                            "saga_id": str(sid),
                            "event_type": event.event_type.value,
                            "body": event_body(event),
                            "ord": len(events),
                        }
                    )
        return {
            "owner": owner,
            "lease_secs": float(lease_secs),
            "sagas": _jsonb(sagas),
            "logs": _jsonb(logs),
            "events": _jsonb(events),
        }

    # ---------------------------------------------------------------- outbox

    def outbox_enabled(self) -> bool:
        return self._outbox

    def claim_outbox(self, owner: str, limit: int, lease_secs: float) -> list[OutboxRow]:
        if limit <= 0:
            return []
        rows = self._rows(
            self._claim_outbox, {"owner": owner, "limit": limit, "lease_secs": float(lease_secs)}
        )
        out = [
            OutboxRow(
                seq=int(row["seq"]),
                event_id=str(row["event_id"]),
                saga_id=str(row["saga_id"]),
                event_type=row["event_type"],
                body=row["body"],
            )
            for row in rows
        ]
        out.sort(key=lambda r: r.seq)
        return out

    def mark_published(self, seqs: Sequence[int]) -> None:
        if seqs:
            self._rowcount(self._mark_published, ([int(s) for s in seqs],))

    def outbox_stats(self) -> tuple[int, float | None]:
        rows = self._rows(self._outbox_stats)
        row = rows[0]
        age = row["oldest_age"]
        return int(row["unpublished"]), (None if age is None else max(0.0, float(age)))

    def prune_outbox(self, older_than_secs: float) -> int:
        return self._rowcount(self._prune_outbox, (float(older_than_secs),))

    # ---------------------------------------------------------------- lifecycle

    def ping(self) -> None:
        self._rows("SELECT 1")

    def wakeups(self, wake: Callable[[], None]) -> StopListening:
        """`LISTEN` on this schema's channel on a connection of its own (not the pool's), in a
        thread that calls `wake` for each notification; it reconnects with back-off after a
        lost connection (meanwhile polling finds the work)."""
        listener = _Listener(self._conninfo, self._connect_kwargs, self._channel, wake)
        listener.start()
        return listener.stop

    def close(self) -> None:
        self._pool.close()

    # ---------------------------------------------------------------- retention

    @contextmanager
    def retention_turn(self) -> Iterator[DeleteEnded | None]:
        """The turn holds one pooled connection for the block; the batches run on it."""
        lock = (_LOCK_RETENTION, self._schema)
        with self._connection() as conn:
            row = conn.execute(_RETENTION_TRY_LOCK, lock).fetchone()
            if not (row and row[0]):
                yield None
                return
            try:
                yield functools.partial(self._delete_ended, conn)
            finally:
                try:
                    conn.execute(_RETENTION_UNLOCK, lock)
                except psycopg.Error:
                    conn.close()  # the lock goes with the session; the pool drops it

    def _delete_ended(self, conn: Connection[Any], ended_before: datetime, limit: int) -> int:
        if not 0 < limit <= MAX_RETENTION_BATCH:
            raise ValueError(f"limit must be 1..{MAX_RETENTION_BATCH}, not {limit}")
        events_until = ended_before + timedelta(seconds=RETENTION_EVENTS_MARGIN_SECS)
        # Unprepared: planned for these values (a generic plan would not see that the seq
        # range is small), and never a prepared statement the pool's next user inherits.
        first_after = conn.execute(
            self._q(_OUTBOX_FIRST_AFTER), (events_until,), prepare=False
        ).fetchone()
        params = {
            "before": ended_before,
            "limit": limit,
            "seq_bound": first_after[0] if first_after else _NO_SEQ_BOUND,
        }
        cur = conn.execute(self._q(_DELETE_ENDED), params, prepare=False)
        return cur.rowcount
