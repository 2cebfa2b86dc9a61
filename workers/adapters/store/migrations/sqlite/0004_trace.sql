-- 0004 (SQLite): the W3C trace context of each saga (SPEC §12), as postgres/0006.

ALTER TABLE saga_states ADD COLUMN trace_context TEXT;
