-- srserve job store, version 1: jobs (one row each, the truth about a job) and their progress events.
CREATE TABLE srserve_jobs (
    id             text PRIMARY KEY,
    seq            bigserial UNIQUE,            -- creation order (listing, pagination)
    request        jsonb NOT NULL,
    state          text NOT NULL,
    created_at     double precision NOT NULL,   -- epoch seconds
    updated_at     double precision NOT NULL,
    last_progress  double precision NOT NULL,   -- last write by a running attempt (stall detection)
    deadline       double precision,
    num_steps      integer NOT NULL,
    step           integer NOT NULL DEFAULT 0,
    total          integer NOT NULL DEFAULT 0,
    switch_step    integer,
    error_code     text,
    error          text,
    completed_at   double precision,
    video_key      text,
    video_bytes    bigint NOT NULL DEFAULT 0,
    handoff_key    text,
    handoff_bytes  bigint NOT NULL DEFAULT 0,
    latents_sha256 text,
    attempts       jsonb NOT NULL DEFAULT '{}',
    timeline       jsonb NOT NULL DEFAULT '{}',
    replicas       jsonb NOT NULL DEFAULT '{}',
    fence          bigint NOT NULL DEFAULT 0,   -- fencing token of the current stage attempt
    lease_owner    text,                        -- the orchestrator driving the job
    lease_expires  double precision             -- by the database's clock
);
CREATE INDEX srserve_jobs_live ON srserve_jobs (state, lease_expires)
    WHERE state NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX srserve_jobs_finished ON srserve_jobs (completed_at)
    WHERE state IN ('completed', 'failed', 'cancelled');

CREATE TABLE srserve_job_events (
    seq      bigserial PRIMARY KEY,
    job_id   text NOT NULL REFERENCES srserve_jobs (id) ON DELETE CASCADE,
    state    text NOT NULL,
    step     integer NOT NULL,
    total    integer NOT NULL,
    progress integer NOT NULL,
    time     double precision NOT NULL,
    message  text NOT NULL DEFAULT ''
);
CREATE INDEX srserve_job_events_job ON srserve_job_events (job_id, seq);
