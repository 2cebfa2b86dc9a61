-- 0004: sagas that ended, by when they ended. The console's "ended per minute" and, later,
-- retention read terminal sagas by updated_at. A partial index gets an entry once per saga
-- (when it ends), so the commits of running sagas pay nothing for it.

CREATE INDEX idx_saga_states_ended ON {schema}.saga_states (updated_at)
    WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED');
