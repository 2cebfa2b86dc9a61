-- 0001 (SQLite): the saga model in one file (SPEC §7), with the lease, idempotency and
-- outbox columns of the PostgreSQL schema.

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
