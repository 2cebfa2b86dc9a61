-- 0001: the original tables (SPEC §7), unchanged in shape so existing readers keep working.
-- `{schema}` is replaced by the migration runner with a validated identifier.

CREATE TABLE {schema}.saga_states (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_name   VARCHAR(255) NOT NULL,
    current_step    INT NOT NULL DEFAULT 0,
    status          VARCHAR(50) NOT NULL DEFAULT 'STARTED'
                    CONSTRAINT saga_states_status_check CHECK (status IN
                        ('STARTED', 'RUNNING', 'COMPLETED', 'COMPENSATING', 'FAILED', 'CANCELLED')),
    payload         JSONB,
    correlation_id  VARCHAR(255),
    initiated_by    VARCHAR(255),
    error_message   TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_saga_states_workflow_name ON {schema}.saga_states (workflow_name);
CREATE INDEX idx_saga_states_status ON {schema}.saga_states (status);
CREATE INDEX idx_saga_states_created_at ON {schema}.saga_states (created_at);
CREATE INDEX idx_saga_states_correlation_id ON {schema}.saga_states (correlation_id)
    WHERE correlation_id IS NOT NULL;

-- updated_at: an UPDATE that does not change updated_at itself gets NOW() (hand-written SQL,
-- older tools). The saga store always writes updated_at explicitly (the core's clock) and marks
-- its sessions with `saga.keep_updated_at = on`, so its writes are kept exactly as given, even
-- when the value is unchanged (a lease renewal is not a change of the saga).
CREATE FUNCTION {schema}.saga_states_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at
       AND current_setting('saga.keep_updated_at', true) IS DISTINCT FROM 'on' THEN
        NEW.updated_at := NOW();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trg_saga_states_updated_at
    BEFORE UPDATE ON {schema}.saga_states
    FOR EACH ROW EXECUTE FUNCTION {schema}.saga_states_touch_updated_at();

CREATE TABLE {schema}.saga_step_logs (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    saga_id           UUID NOT NULL REFERENCES {schema}.saga_states (id) ON DELETE CASCADE,
    step_index        INT NOT NULL,
    step_name         VARCHAR(255) NOT NULL,
    action            VARCHAR(50) NOT NULL
                      CONSTRAINT saga_step_logs_action_check CHECK (action IN ('EXECUTE', 'COMPENSATE')),
    status            VARCHAR(50) NOT NULL
                      CONSTRAINT saga_step_logs_status_check CHECK (status IN
                          ('SUCCESS', 'FAILED', 'TIMEOUT', 'SKIPPED')),
    request_payload   JSONB,
    response_payload  JSONB,
    error_message     TEXT,
    started_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    completed_at      TIMESTAMPTZ
);

CREATE INDEX idx_saga_step_logs_saga_id_step ON {schema}.saga_step_logs (saga_id, step_index);

CREATE TABLE {schema}.workflow_definitions (
    name        VARCHAR(255) NOT NULL,
    version     INT NOT NULL,
    definition  JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (name, version)
);
