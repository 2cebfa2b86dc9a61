-- 0002: what scale-out and exactly-once starts need (SPEC §7, "beyond"): the workflow version a
-- saga runs, its cancel flag and compensation progress, executor leases with a fencing token,
-- idempotency keys, a step-log insertion order, list/claim indexes and the event outbox.

ALTER TABLE {schema}.saga_states
    ADD COLUMN workflow_version  INT NOT NULL DEFAULT 1,
    ADD COLUMN cancel_requested  BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN compensation      JSONB,
    ADD COLUMN lease_owner       TEXT,
    ADD COLUMN lease_token       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN lease_expires_at  TIMESTAMPTZ,
    ADD COLUMN idempotency_key   VARCHAR(255),
    ADD COLUMN request_hash      TEXT;

-- NULL keys are distinct: sagas started without a key never collide.
CREATE UNIQUE INDEX uq_saga_states_idempotency_key ON {schema}.saga_states (idempotency_key);

-- claim(): active sagas, oldest first; the lease test is a filter on this small set.
CREATE INDEX idx_saga_states_claimable ON {schema}.saga_states (created_at)
    WHERE status IN ('STARTED', 'RUNNING', 'COMPENSATING');

-- list_sagas(): each filter + ORDER BY created_at DESC, id DESC + LIMIT reads one index range.
CREATE INDEX idx_saga_states_list ON {schema}.saga_states (created_at DESC, id DESC);
CREATE INDEX idx_saga_states_status_list ON {schema}.saga_states (status, created_at DESC, id DESC);
CREATE INDEX idx_saga_states_workflow_list
    ON {schema}.saga_states (workflow_name, created_at DESC, id DESC);
CREATE INDEX idx_saga_states_correlation_list
    ON {schema}.saga_states (correlation_id, created_at DESC, id DESC)
    WHERE correlation_id IS NOT NULL;
-- The single-column indexes of 0001 are prefixes of these: every lookup they served is served
-- by the composite ones. Each saga commit is a non-HOT update (status/current_step change), so
-- every index costs a write per commit; the duplicates go.
DROP INDEX {schema}.idx_saga_states_workflow_name;
DROP INDEX {schema}.idx_saga_states_status;
DROP INDEX {schema}.idx_saga_states_created_at;
DROP INDEX {schema}.idx_saga_states_correlation_id;

-- Insertion order of step logs (ties in completion time keep the order they were written).
ALTER TABLE {schema}.saga_step_logs ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;

CREATE TABLE {schema}.outbox (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          UUID UNIQUE NOT NULL,
    saga_id           UUID NOT NULL,
    event_type        VARCHAR(50) NOT NULL,
    body              JSONB NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    published_at      TIMESTAMPTZ,
    claimed_by        TEXT,
    claim_expires_at  TIMESTAMPTZ
);

-- The relay's work queue, and the per-saga "is an older event still pending?" probe.
CREATE INDEX idx_outbox_unpublished ON {schema}.outbox (seq) WHERE published_at IS NULL;
CREATE INDEX idx_outbox_unpublished_saga ON {schema}.outbox (saga_id, seq)
    WHERE published_at IS NULL;
-- prune_outbox(): published rows by age.
CREATE INDEX idx_outbox_published_at ON {schema}.outbox (published_at)
    WHERE published_at IS NOT NULL;
