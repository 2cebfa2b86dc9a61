-- 0003: exact saga counts without counting rows. `list_sagas` needs `total_count`; count(*)
-- over a million matching rows costs ~100 ms, so triggers keep per (workflow, status)
-- counters in the same transaction as every insert, status change and delete (never stale).
-- The triggers are per statement over transition tables: a commit batch or a bulk load costs
-- one aggregated upsert per (workflow, status), not one per row. Each connection writes its
-- own slot (backend pid mod 16), so concurrent executors do not queue on one counter row;
-- a count is the sum over the slots.

CREATE TABLE {schema}.saga_counts (
    workflow_name  VARCHAR(255) NOT NULL,
    status         VARCHAR(50)  NOT NULL,
    slot           INT          NOT NULL,
    n              BIGINT       NOT NULL,
    PRIMARY KEY (workflow_name, status, slot)
);
CREATE INDEX idx_saga_counts_status ON {schema}.saga_counts (status);

CREATE FUNCTION {schema}.saga_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.saga_counts AS c (workflow_name, status, slot, n)
        SELECT workflow_name, status, pg_backend_pid() % 16, count(*) FROM new_rows GROUP BY 1, 2
    ON CONFLICT (workflow_name, status, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;

CREATE FUNCTION {schema}.saga_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.saga_counts AS c (workflow_name, status, slot, n)
        SELECT workflow_name, status, pg_backend_pid() % 16, -count(*) FROM old_rows GROUP BY 1, 2
    ON CONFLICT (workflow_name, status, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;

CREATE FUNCTION {schema}.saga_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.saga_counts AS c (workflow_name, status, slot, n)
        SELECT workflow_name, status, pg_backend_pid() % 16, sum(d) FROM (
            SELECT workflow_name, status, -1 AS d FROM old_rows
            UNION ALL
            SELECT workflow_name, status, 1 AS d FROM new_rows
        ) AS changes
        GROUP BY 1, 2
        HAVING sum(d) <> 0
    ON CONFLICT (workflow_name, status, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;

-- Writers wait while the counters are seeded, so the seed and the triggers agree exactly.
LOCK TABLE {schema}.saga_states IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER trg_saga_counts_insert AFTER INSERT ON {schema}.saga_states
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.saga_counts_insert();
CREATE TRIGGER trg_saga_counts_delete AFTER DELETE ON {schema}.saga_states
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.saga_counts_delete();
CREATE TRIGGER trg_saga_counts_update AFTER UPDATE ON {schema}.saga_states
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.saga_counts_update();

INSERT INTO {schema}.saga_counts (workflow_name, status, slot, n)
    SELECT workflow_name, status, 0, count(*) FROM {schema}.saga_states GROUP BY 1, 2;
