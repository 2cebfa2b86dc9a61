-- 0002 (SQLite): sagas that ended, by when they ended (the console's ended-per-minute and
-- retention read them; the partial index gets one entry per saga, when it ends).

CREATE INDEX idx_saga_states_ended ON saga_states (updated_at)
    WHERE status IN ('COMPLETED','FAILED','CANCELLED');
