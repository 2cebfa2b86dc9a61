-- 0003 (SQLite): operator actions (SPEC §11), as postgres/0005. SQLite cannot alter a CHECK
-- constraint, so the status list is widened in the stored table definition itself (the way
-- SQLite documents for changes that leave every stored row valid); the runner then bumps the
-- schema version so every open connection reloads it.

PRAGMA writable_schema = ON;
UPDATE sqlite_master
SET sql = replace(sql, '''CANCELLED''))', '''CANCELLED'',''PAUSED''))')
WHERE type = 'table' AND name = 'saga_states';
PRAGMA writable_schema = OFF;
ALTER TABLE saga_states ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE saga_states ADD COLUMN pause TEXT;
ALTER TABLE saga_states ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE saga_states ADD COLUMN in_doubt INTEGER NOT NULL DEFAULT 0;
CREATE TABLE operator_actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id TEXT NOT NULL REFERENCES saga_states (id) ON DELETE CASCADE,
    action TEXT NOT NULL CHECK (action IN ('pause', 'resume', 'cancel')),
    resume_action TEXT,
    payload_replaced INTEGER NOT NULL DEFAULT 0,
    actor TEXT,
    at TEXT NOT NULL
);
CREATE INDEX idx_operator_actions_saga ON operator_actions (saga_id, seq);
