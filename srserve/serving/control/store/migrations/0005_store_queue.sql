-- The store is the queue (srserve.serving.control.queueing.dispatch): a job waits here for a slot on the pool its next
-- stage runs on, and the next job for a free slot is chosen by one statement.
--
-- wait_pool:   the pool the job waits for (its driver set it), NULL when not waiting;
-- wait_charge: what its stage will cost the tenant's fair share of that pool (work units, ~GPU-seconds);
-- slot_pool:   the pool whose slot the job holds while its stage is on the way to or in a replica.
ALTER TABLE srserve_jobs ADD COLUMN IF NOT EXISTS wait_pool text;
ALTER TABLE srserve_jobs ADD COLUMN IF NOT EXISTS wait_charge double precision;
ALTER TABLE srserve_jobs ADD COLUMN IF NOT EXISTS slot_pool text;

-- Each tenant's head of the line on a pool: its highest priority, then its oldest waiting job.
CREATE INDEX IF NOT EXISTS srserve_jobs_waiting ON srserve_jobs (wait_pool, tenant, priority DESC, seq)
    WHERE wait_pool IS NOT NULL;
-- The slots a pool has handed out (counted before each grant).
CREATE INDEX IF NOT EXISTS srserve_jobs_slots ON srserve_jobs (slot_pool) WHERE slot_pool IS NOT NULL;

-- The pool replicas alive now and how many jobs each takes at once (one running, one waiting inside it):
-- a pool's capacity. Each replica refreshes its row; a row past `expires` (database clock) counts no more.
CREATE TABLE IF NOT EXISTS srserve_pool_replicas (
    replica text PRIMARY KEY,
    pool    text NOT NULL,
    slots   integer NOT NULL,
    expires double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS srserve_pool_replicas_pool ON srserve_pool_replicas (pool, expires);

-- Weighted fair share (start-time fair queueing) per pool: each tenant's virtual time (the work it was
-- granted, divided by its weight) and the pool's own, the start tag of its last grant. A tenant that was
-- idle starts again at the pool's virtual time, not below it: idling earns no credit.
CREATE TABLE IF NOT EXISTS srserve_fair_share (
    pool   text NOT NULL,
    tenant text NOT NULL,
    vtime  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (pool, tenant)
);
CREATE TABLE IF NOT EXISTS srserve_pool_vtime (
    pool  text PRIMARY KEY,
    vtime double precision NOT NULL DEFAULT 0
);
