-- The work snapshot (srserve.serving.control.store.work_snapshot) and the per-tenant job counts, read without a
-- pass over every live job.
--
-- Unfinished jobs that carry a measured quantity (a running stage's progress, or stamps of an earlier stage:
-- a handed-off job's encode and sketch): the newest of each are read by creation order through these
-- indexes, which hold only such jobs. Their predicates are the snapshot's, word for word
-- (work_snapshot.SAMPLE_KINDS), so the planner uses them.
CREATE INDEX IF NOT EXISTS srserve_jobs_sample_encode ON srserve_jobs (seq)
    WHERE state NOT IN ('completed', 'failed', 'cancelled') AND timeline ?& ARRAY['encode_start', 'encode_end'];
CREATE INDEX IF NOT EXISTS srserve_jobs_sample_sketch ON srserve_jobs (seq)
    WHERE state NOT IN ('completed', 'failed', 'cancelled') AND switch_step <> 0
      AND timeline ?& ARRAY['sketch_start', 'sketch_end'];
CREATE INDEX IF NOT EXISTS srserve_jobs_sample_sketching ON srserve_jobs (seq)
    WHERE state NOT IN ('completed', 'failed', 'cancelled') AND state = 'sketching' AND step > 0
      AND timeline ? 'sketch_start';
CREATE INDEX IF NOT EXISTS srserve_jobs_sample_render ON srserve_jobs (seq)
    WHERE state NOT IN ('completed', 'failed', 'cancelled') AND num_steps > switch_step
      AND timeline ?& ARRAY['render_start', 'decode_start'];
CREATE INDEX IF NOT EXISTS srserve_jobs_sample_rendering ON srserve_jobs (seq)
    WHERE state NOT IN ('completed', 'failed', 'cancelled') AND state = 'rendering' AND step > switch_step
      AND timeline ? 'render_start';
CREATE INDEX IF NOT EXISTS srserve_jobs_sample_decode ON srserve_jobs (seq)
    WHERE state NOT IN ('completed', 'failed', 'cancelled') AND timeline ?& ARRAY['decode_start', 'render_end'];
CREATE INDEX IF NOT EXISTS srserve_jobs_sample_switch ON srserve_jobs (seq)
    WHERE state NOT IN ('completed', 'failed', 'cancelled') AND switch_step IS NOT NULL AND num_steps <> 0
      AND request->'switch'->>'kind' = 'adaptive';

-- Jobs per tenant and state (JobStore.tenant_counts: the per-tenant gauges), kept as migration 0004 keeps
-- the per-state counts: a new job adds here directly; every later change is already a row of
-- srserve_count_deltas (it has the state and the tenant), and whatever folds deltas away (admission)
-- adds them here in the same statement. A reader's count is this plus the unfolded deltas.
CREATE TABLE srserve_tenant_state_counts (
    tenant text NOT NULL,
    state  text NOT NULL,
    n      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, state)
);
-- The jobs now, less the deltas not folded yet (those are added when folded).
INSERT INTO srserve_tenant_state_counts (tenant, state, n)
SELECT tenant, state, sum(n) FROM (
    SELECT tenant, state, count(*) AS n FROM srserve_jobs GROUP BY tenant, state
    UNION ALL SELECT tenant, state, -sum(n) FROM srserve_count_deltas GROUP BY tenant, state
) c GROUP BY tenant, state;

CREATE FUNCTION srserve_tenant_states_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO srserve_tenant_state_counts AS c (tenant, state, n)
    SELECT tenant, state, count(*) FROM new_rows GROUP BY tenant, state
    ON CONFLICT (tenant, state) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;
CREATE TRIGGER srserve_jobs_tenant_states_insert AFTER INSERT ON srserve_jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION srserve_tenant_states_inserted();

CREATE FUNCTION srserve_tenant_states_folded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO srserve_tenant_state_counts AS c (tenant, state, n)
    SELECT tenant, state, sum(n) FROM folded GROUP BY tenant, state
    ON CONFLICT (tenant, state) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;
CREATE TRIGGER srserve_count_deltas_folded AFTER DELETE ON srserve_count_deltas
    REFERENCING OLD TABLE AS folded FOR EACH STATEMENT EXECUTE FUNCTION srserve_tenant_states_folded();
