-- Admission whose cost does not grow with the live jobs (JobStore.create).
--
-- srserve_state_counts: jobs per state; srserve_tenant_live: each tenant's unfinished jobs and their
-- predicted GPU-seconds. Inserting a job adds to them at once (admissions are serialised by the admission
-- lock, held for one statement: the next admission reads them exactly). Every other change (a state
-- change, an end, a delete) only appends to srserve_count_deltas, which never waits on a lock, so workers'
-- transactions never contend on a counter; the next admission folds the deltas in. A reader's count is the
-- base row plus the unfolded deltas (one snapshot sees both consistently: a fold is one transaction).
CREATE TABLE srserve_state_counts (
    state text PRIMARY KEY,
    n     bigint NOT NULL DEFAULT 0
);
CREATE TABLE srserve_tenant_live (
    tenant text PRIMARY KEY,
    live   bigint NOT NULL DEFAULT 0,
    gpu_s  numeric NOT NULL DEFAULT 0          -- exact: sums of adds and subtracts leave no residue
);
CREATE TABLE srserve_count_deltas (
    seq    bigserial PRIMARY KEY,
    state  text NOT NULL,
    tenant text NOT NULL,
    n      integer NOT NULL,                   -- jobs in `state`
    live   integer NOT NULL,                   -- the tenant's unfinished jobs
    gpu_s  numeric NOT NULL                    -- their predicted GPU-seconds
);

INSERT INTO srserve_state_counts (state, n)
SELECT s, (SELECT count(*) FROM srserve_jobs WHERE state = s)
FROM unnest(ARRAY['queued', 'encoding', 'sketching', 'handed_off', 'rendering', 'decoding', 'completed', 'failed',
                  'cancelled']) AS s;
INSERT INTO srserve_tenant_live (tenant, live, gpu_s)
SELECT tenant, count(*), coalesce(sum(cost_gpu_s::numeric), 0) FROM srserve_jobs
WHERE state NOT IN ('completed', 'failed', 'cancelled') GROUP BY tenant;

-- New jobs (one statement may insert many: a bulk load): straight into the base rows.
CREATE FUNCTION srserve_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO srserve_state_counts AS c (state, n)
    SELECT state, count(*) FROM new_rows GROUP BY state
    ON CONFLICT (state) DO UPDATE SET n = c.n + EXCLUDED.n;
    INSERT INTO srserve_tenant_live AS t (tenant, live, gpu_s)
    SELECT tenant, count(*), coalesce(sum(cost_gpu_s::numeric), 0) FROM new_rows
    WHERE state NOT IN ('completed', 'failed', 'cancelled') GROUP BY tenant
    ON CONFLICT (tenant) DO UPDATE SET live = t.live + EXCLUDED.live, gpu_s = t.gpu_s + EXCLUDED.gpu_s;
    RETURN NULL;
END $$;
CREATE TRIGGER srserve_jobs_counted_insert AFTER INSERT ON srserve_jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION srserve_count_inserted();

-- A job's state (or tenant, or cost) changed: minus its old contribution, plus its new one.
CREATE FUNCTION srserve_count_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_live integer := CASE WHEN OLD.state IN ('completed', 'failed', 'cancelled') THEN 0 ELSE 1 END;
    is_live  integer := CASE WHEN NEW.state IN ('completed', 'failed', 'cancelled') THEN 0 ELSE 1 END;
BEGIN
    INSERT INTO srserve_count_deltas (state, tenant, n, live, gpu_s) VALUES
        (OLD.state, OLD.tenant, -1, -was_live, -was_live * coalesce(OLD.cost_gpu_s::numeric, 0)),
        (NEW.state, NEW.tenant, 1, is_live, is_live * coalesce(NEW.cost_gpu_s::numeric, 0));
    RETURN NULL;
END $$;
CREATE TRIGGER srserve_jobs_counted_update AFTER UPDATE ON srserve_jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.tenant IS DISTINCT FROM NEW.tenant
          OR OLD.cost_gpu_s IS DISTINCT FROM NEW.cost_gpu_s)
    EXECUTE FUNCTION srserve_count_changed();

-- Deleted jobs (retention deletes many at once).
CREATE FUNCTION srserve_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO srserve_count_deltas (state, tenant, n, live, gpu_s)
    SELECT state, tenant, -count(*),
           -count(*) FILTER (WHERE state NOT IN ('completed', 'failed', 'cancelled')),
           -coalesce(sum(cost_gpu_s::numeric) FILTER (WHERE state NOT IN ('completed', 'failed', 'cancelled')), 0)
    FROM old_rows GROUP BY state, tenant;
    RETURN NULL;
END $$;
CREATE TRIGGER srserve_jobs_counted_delete AFTER DELETE ON srserve_jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION srserve_count_deleted();

-- Indexes so that no per-call query of the control plane reads every live job: a heartbeat (one owner's
-- leases), a claim (live jobs unleased or with an expired lease), the newest finished jobs (a step's price).
CREATE INDEX IF NOT EXISTS srserve_jobs_lease_owner ON srserve_jobs (lease_owner)
    WHERE state NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS srserve_jobs_lease_expires ON srserve_jobs (lease_expires)
    WHERE state NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS srserve_jobs_unleased ON srserve_jobs (seq)
    WHERE state NOT IN ('completed', 'failed', 'cancelled') AND lease_owner IS NULL;
CREATE INDEX IF NOT EXISTS srserve_jobs_finished_seq ON srserve_jobs (seq)
    WHERE state IN ('completed', 'failed', 'cancelled');

-- Admission's counts, exact: under the admission lock (pg_advisory_xact_lock, held until the admitting
-- statement commits: no client round trip inside), fold the deltas in, then read the counters. Each
-- statement here takes a fresh snapshot, so the counts include every admission committed before the lock.
CREATE FUNCTION srserve_admission_counts(p_tenant text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(7265302);
    WITH folded AS (DELETE FROM srserve_count_deltas RETURNING state, tenant, n, live, gpu_s),
         states AS (
             UPDATE srserve_state_counts c SET n = c.n + d.n
             FROM (SELECT state, sum(n) AS n FROM folded GROUP BY state) d WHERE c.state = d.state
         )
    INSERT INTO srserve_tenant_live AS t (tenant, live, gpu_s)
    SELECT tenant, sum(live), sum(gpu_s) FROM folded GROUP BY tenant
    ON CONFLICT (tenant) DO UPDATE SET live = t.live + EXCLUDED.live, gpu_s = t.gpu_s + EXCLUDED.gpu_s;
    SELECT jsonb_build_object(
        'states', (SELECT jsonb_object_agg(state, n) FROM srserve_state_counts),
        'live', coalesce((SELECT live FROM srserve_tenant_live WHERE tenant = p_tenant), 0),
        'gpu_s', coalesce((SELECT gpu_s FROM srserve_tenant_live WHERE tenant = p_tenant), 0)
    ) INTO result;
    RETURN result;
END $$;
