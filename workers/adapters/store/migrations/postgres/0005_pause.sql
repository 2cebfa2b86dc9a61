-- 0005: operator actions (SPEC §11). The PAUSED status; a pause request flag beside the cancel
-- flag; why and where a saga paused; how many times it was resumed (each resume starts a new
-- generation of step log and event ids); whether the step at current_step may have been called
-- by an executor that is gone (kept across a pause); and the audit of pauses, resumes and
-- cancels.

ALTER TABLE {schema}.saga_states DROP CONSTRAINT saga_states_status_check;
ALTER TABLE {schema}.saga_states ADD CONSTRAINT saga_states_status_check CHECK (status IN
    ('STARTED', 'RUNNING', 'COMPLETED', 'COMPENSATING', 'FAILED', 'CANCELLED', 'PAUSED'));
ALTER TABLE {schema}.saga_states
    ADD COLUMN pause_requested BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN pause           JSONB,
    ADD COLUMN resumes         INT NOT NULL DEFAULT 0,
    ADD COLUMN in_doubt        BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE {schema}.operator_actions (
    seq              BIGSERIAL PRIMARY KEY,
    saga_id          UUID NOT NULL REFERENCES {schema}.saga_states (id) ON DELETE CASCADE,
    action           VARCHAR(20) NOT NULL CHECK (action IN ('pause', 'resume', 'cancel')),
    resume_action    VARCHAR(20),
    payload_replaced BOOLEAN NOT NULL DEFAULT FALSE,
    actor            VARCHAR(255),
    at               TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_operator_actions_saga ON {schema}.operator_actions (saga_id, seq);
