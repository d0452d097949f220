-- Tenants (srserve.serving.control.tenants): the tenant that created each job, the priority it asked for
-- (stored now; the store-side queue orders by it), and its predicted GPU-seconds once requests are priced.
-- Jobs stored before tenants existed belong to the default tenant, the one tenant of a deployment
-- without `tenants` (open, or the single `auth` token).
ALTER TABLE srserve_jobs ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'default';
ALTER TABLE srserve_jobs ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0;
ALTER TABLE srserve_jobs ADD COLUMN IF NOT EXISTS cost_gpu_s double precision;
-- A tenant's listing (by creation order) and its live jobs (the max_live_jobs quota, counted at admission).
CREATE INDEX IF NOT EXISTS srserve_jobs_tenant ON srserve_jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS srserve_jobs_tenant_live ON srserve_jobs (tenant)
    WHERE state NOT IN ('completed', 'failed', 'cancelled');
