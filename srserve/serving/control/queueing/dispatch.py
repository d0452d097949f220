"""The store is the queue: which job a pool's free slot goes to, decided in one statement.

A job's driver (an ingress's orchestrator) does not call a pool as soon as the job needs it: it marks the job
as waiting for that pool (`wait_pool`) and awaits a slot. Whenever a pool may have a free slot (a stage
ended, a job started waiting, a replica joined, and once per maintenance tick), an orchestrator grants the
pool's next job, `GRANT_SQL`, under the pool's dispatch lock:

- the pool's capacity is its live replicas' slots (`srserve_pool_replicas`: each replica takes one job
  running and one waiting inside it, so its GPU never idles between jobs), at least one, so that a pool
  with no replica yet (starting, or scaled to zero) still gets one call, which wakes Serve's autoscaler;
- when fewer slots are held than that, each tenant's head of the line on the pool (its highest priority,
  then its oldest job: one index probe per tenant) competes, and the winner is the highest priority, then
  the lowest virtual time (weighted fair share of the pool's GPU-seconds, start-time fair queueing: a
  tenant's virtual time grows by each granted stage's cost divided by its weight, and one that was idle
  restarts at the pool's virtual time, so idling earns no credit, and when the whole pool goes idle its
  virtual time catches up with every tenant's, so past use is not held against anyone), then arrival order;
- the winner's row gets the slot (`slot_pool`) and the tenant's and the pool's virtual times move on; the
  grant is announced (NOTIFY `srserve_dispatch`) so its driver, in whichever ingress, calls the pool.

A stage's cost is its steps times the job's work units (megapixel-frames per step, doubled under
guidance): proportional to the GPU-seconds it takes on that pool, which is all a share of one pool needs.
A job handed back to the queue (a retry, a resumed job after its driver died) waits again under the same
rules with its original arrival order, never ahead of them. Plain asyncio and SQL, no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from srserve.serving.control.jobs import Job
from srserve.serving.control.pricing.pool_work import expected_sketch_steps
from srserve.serving.control.pricing.request_limits import job_units
from srserve.serving.control.store.clock import NOW_SQL as _NOW

DISPATCH_CHANNEL = "srserve_dispatch"  # payloads: "granted:<job id>", "freed:<pool>", "waiting:<pool>"
DISPATCH_LOCK = 7_265_303  # pg_advisory_xact_lock(key, hashtext(pool)): one granter per pool at a time


@dataclass(frozen=True)
class DispatchPlan:
    """Where each stage of a job runs and how the fair share is weighted.

    `pools`: the pool each stage is routed to; `whole_job`: the stages whose call runs the whole job (the
    colocated layout's sketch stage), charged all its steps; `weights`: each tenant's share (missing: 1).
    """

    pools: Mapping[str, str] = field(default_factory=lambda: {"sketch": "sketch", "render": "render"})
    whole_job: frozenset[str] = frozenset()
    weights: Mapping[str, float] = field(default_factory=dict)

    @property
    def dispatched(self) -> tuple[str, ...]:
        """The pools whose slots are handed out from the queue."""
        return tuple(dict.fromkeys(self.pools.values()))


def stage_charge(job: Job, stage: str, whole_job: bool = False) -> float:
    """What `stage` of `job` adds to its tenant's use of the pool: its steps there times its work units
    (1 per step for a request without a size, so every job still pays)."""
    if whole_job:
        steps = job.num_steps
    elif stage == "render":
        steps = job.num_steps - (job.switch_step or 0)
    else:
        steps = expected_sketch_steps(job, None)
    return max(0, steps) * (job_units(job) or 1.0)


GRANT_SQL = f"""
WITH cap AS (
    SELECT greatest(coalesce(sum(slots), 0), 1) AS n FROM srserve_pool_replicas
    WHERE pool = %(pool)s AND expires > {_NOW}
), used AS (
    SELECT count(*) AS n FROM srserve_jobs WHERE slot_pool = %(pool)s
), pool_clock AS (
    SELECT coalesce((SELECT vtime FROM srserve_pool_vtime WHERE pool = %(pool)s), 0) AS v
), heads AS (
    SELECT h.id, h.tenant, h.priority, h.seq, coalesce(h.wait_charge, 0) AS charge,
           greatest(coalesce(f.vtime, 0), pool_clock.v) AS tag, coalesce(w.weight, 1.0) AS weight
    FROM srserve_tenant_live t
    CROSS JOIN pool_clock
    CROSS JOIN LATERAL (
        SELECT j.id, j.tenant, j.priority, j.seq, j.wait_charge FROM srserve_jobs j
        WHERE j.wait_pool = %(pool)s AND j.tenant = t.tenant AND j.lease_expires > {_NOW}
        ORDER BY j.priority DESC, j.seq LIMIT 1 FOR UPDATE SKIP LOCKED
    ) h
    LEFT JOIN srserve_fair_share f ON f.pool = %(pool)s AND f.tenant = t.tenant
    LEFT JOIN unnest(%(names)s::text[], %(weights)s::float8[]) AS w(name, weight) ON w.name = t.tenant
    WHERE (SELECT n FROM used) < (SELECT n FROM cap)
), pick AS (
    SELECT * FROM heads ORDER BY priority DESC, tag, seq LIMIT 1
), granted AS (
    UPDATE srserve_jobs j SET slot_pool = %(pool)s, wait_pool = NULL FROM pick WHERE j.id = pick.id
    RETURNING j.id
), tenant_clock AS (
    INSERT INTO srserve_fair_share (pool, tenant, vtime)
    SELECT %(pool)s, tenant, tag + charge / weight FROM pick
    ON CONFLICT (pool, tenant) DO UPDATE SET vtime = EXCLUDED.vtime
), advanced AS (
    INSERT INTO srserve_pool_vtime (pool, vtime) SELECT %(pool)s, tag FROM pick
    ON CONFLICT (pool) DO UPDATE SET vtime = greatest(srserve_pool_vtime.vtime, EXCLUDED.vtime)
)
SELECT id, pg_notify('{DISPATCH_CHANNEL}', 'granted:' || id) AS notified FROM granted
"""

# A slot freed with nothing else held or waiting on the pool: it goes idle, and its virtual time catches up
# with the tenants' (start-time fair queueing's rule for an idle server), so use before the idle time is not
# held against anyone afterwards.
IDLE_SQL = """
UPDATE srserve_pool_vtime p
SET vtime = greatest(p.vtime, (SELECT max(vtime) FROM srserve_fair_share WHERE pool = %(pool)s))
WHERE p.pool = %(pool)s
  AND NOT EXISTS (SELECT 1 FROM srserve_jobs WHERE slot_pool = %(pool)s)
  AND NOT EXISTS (SELECT 1 FROM srserve_jobs WHERE wait_pool = %(pool)s)
"""


def grant_params(pool: str, weights: Mapping[str, float]) -> dict[str, object]:
    names = list(weights)
    return {"pool": pool, "names": names, "weights": [float(weights[n]) for n in names]}
