"""What pricing queued work reads from the job store, in rows that do not grow with the unfinished jobs.

Each pool's queue of work (srserve.serving.control.pricing.pool_work), the load-aware switch, a request's predicted
cost and the per-tenant work gauges price every unfinished job and measure step times on the newest ones.
Reading every live job made each of those reads cost O(live jobs) in rows and Python. The snapshot reads,
in one REPEATABLE READ transaction (one consistent view):

- unfinished jobs, counted in SQL: one row per group of jobs alike in everything their pricing reads
  (state, step, step count, switch step, switch policy, whether encoded, when a decode began, tenant);
  the group's job carries only those fields. Waiting jobs fall into a few groups, running ones into a few
  per step (decoding ones each alone: its own decode start; they are few);
- the newest `recent` finished jobs, whole: their stamps price a step;
- the newest `recent` unfinished jobs that carry each measured quantity (a running stage's progress, or the
  stamps of an earlier stage: a handed-off job's encode and sketch), whole, through partial indexes
  (migration 0006). With them the measured step times equal those over every job: each quantity's newest
  samples are among them.

The database still visits every unfinished row to group them (one scan, no rows sent). Pricing the
snapshot gives what pricing every live job plus the newest finished ones gives (exactly in counts, to
float rounding in seconds: a group's n jobs are added as one product).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from srserve.serving.control.jobs import Job, JobState

LIVE = "state NOT IN ('completed', 'failed', 'cancelled')"

# What pricing an unfinished job reads (pool_work.estimate_pool_work): of its request, only the switch (its
# size prices nothing queued: step times per unit of size are measured on whole rows); of its stamps, whether
# it is encoded and when a decode began.
_DECODE_START = "CASE WHEN state = 'decoding' THEN timeline->'decode_start' END"
_GROUP_BY = f"state, step, num_steps, switch_step, tenant, request->'switch', timeline ? 'encode_end', {_DECODE_START}"
GROUPS_SQL = (
    "SELECT state, step, num_steps, switch_step, tenant, request->'switch' AS switch, timeline ? 'encode_end' AS "
    f"encoded, max((timeline->>'encode_end')::double precision) AS encode_end, {_DECODE_START} AS decode_start, "
    f"min(id) AS id, min(seq) AS seq, min(created_at) AS created_at, count(*) AS n "
    f"FROM srserve_jobs WHERE {LIVE} GROUP BY {_GROUP_BY}"
)
# The planner has no statistics on the JSON keys, expects a group per row and would sort every live job:
# the groups are few, hashing them is the cheap plan.
_HASH_GROUPS = "SET LOCAL enable_sort = off; SET LOCAL enable_incremental_sort = off"
FINISHED_SQL = f"SELECT * FROM srserve_jobs WHERE NOT ({LIVE}) ORDER BY seq DESC LIMIT %(recent)s"


def _span(start: str, end: str) -> str:
    """SQL: the timeline has both stamps, in order (Timeline.between is not None)."""
    return f"(timeline->>'{end}')::double precision >= (timeline->>'{start}')::double precision"


# job_units (request_limits) is not None: the four sizes are numbers.
_SIZED = " AND ".join(
    f"jsonb_typeof(request->'{k}') = 'number'" for k in ("width", "height", "num_frames", "guidance_scale")
)

# Per measured quantity (pool_work.measure_stage_times): the partial index's predicate over live jobs
# (migration 0006, the same text) and what makes a job it holds a sample. A quantity's samples may come
# from two kinds (a finished stage's span, a running stage's progress): its newest are among both's newest.
SAMPLE_KINDS: dict[str, tuple[str, str]] = {
    "encode": ("timeline ?& ARRAY['encode_start', 'encode_end']", _span("encode_start", "encode_end")),
    "sketch": (
        "switch_step <> 0 AND timeline ?& ARRAY['sketch_start', 'sketch_end']",
        _span("sketch_start", "sketch_end"),
    ),
    "sketching": ("state = 'sketching' AND step > 0 AND timeline ? 'sketch_start'", "coalesce(switch_step, 0) = 0"),
    "render": (
        "num_steps > switch_step AND timeline ?& ARRAY['render_start', 'decode_start']",
        _span("render_start", "decode_start"),
    ),
    "rendering": (
        "state = 'rendering' AND step > switch_step AND timeline ? 'render_start'",
        "num_steps > switch_step",
    ),
    "decode": ("timeline ?& ARRAY['decode_start', 'render_end']", _span("decode_start", "render_end")),
    "switch": ("switch_step IS NOT NULL AND num_steps <> 0 AND request->'switch'->>'kind' = 'adaptive'", "TRUE"),
}
# Each read: the newest `recent` live jobs with one sample. Step samples divided by the job's size
# (request_limits.unit_step_times) leave unsized jobs out: those kinds read again among the sized ones.
_SAMPLE_READS = [
    *SAMPLE_KINDS.values(),
    *(
        (SAMPLE_KINDS[k][0], f"{SAMPLE_KINDS[k][1]} AND {_SIZED}")
        for k in ("sketch", "sketching", "render", "rendering")
    ),
]
SAMPLES_SQL = " UNION ALL ".join(
    f"(SELECT * FROM srserve_jobs WHERE {LIVE} AND {index} AND {exact} ORDER BY seq DESC LIMIT %(recent)s)"
    for index, exact in _SAMPLE_READS
)


@dataclass(frozen=True)
class WorkSnapshot:
    """The store's work (see the module docstring): unfinished jobs as (job, how many alike), and
    `measured`, the jobs whose stamps price a step, oldest first. `rows`: the rows read for it."""

    groups: tuple[tuple[Job, int], ...]
    measured: tuple[Job, ...]
    rows: int = 0

    @classmethod
    def of(cls, jobs: Iterable[Job] | WorkSnapshot) -> WorkSnapshot:
        """`jobs` as a snapshot: a list of jobs in creation order (jobs_for_work's), each its own group."""
        if isinstance(jobs, WorkSnapshot):
            return jobs
        jobs = tuple(jobs)
        return cls(tuple((j, 1) for j in jobs if not j.terminal), jobs, len(jobs))

    @property
    def jobs(self) -> int:
        """How many unfinished jobs the snapshot holds."""
        return sum(n for _, n in self.groups)

    def tenants(self) -> list[str]:
        """Every tenant with a job in the snapshot (finished ones' included), first seen first."""
        return list(dict.fromkeys([j.tenant for j, _ in self.groups] + [j.tenant for j in self.measured]))

    def of_tenant(self, tenant: str) -> WorkSnapshot:
        """The tenant's share of the work (its measured jobs too, though its pricing uses everyone's times)."""
        return WorkSnapshot(
            tuple((j, n) for j, n in self.groups if j.tenant == tenant),
            tuple(j for j in self.measured if j.tenant == tenant),
        )


def _group_job(row: dict[str, Any]) -> Job:
    """The job that stands for one group of alike unfinished jobs: the fields their pricing reads."""
    request = {"switch": row["switch"]} if row["switch"] is not None else {}
    timeline = {"encode_end": row["encode_end"]} if row["encoded"] else {}
    if row["decode_start"] is not None:
        timeline["decode_start"] = row["decode_start"]
    return Job(
        id=row["id"],
        request=request,
        created_at=row["created_at"],
        state=JobState(row["state"]),
        step=row["step"],
        num_steps=row["num_steps"],
        switch_step=row["switch_step"],
        timeline=timeline,
        tenant=row["tenant"],
    )


async def read_work_snapshot(
    conn: psycopg.AsyncConnection, recent: int, job_of: Callable[[dict[str, Any]], Job]
) -> WorkSnapshot:
    """Read the snapshot on `conn`, inside a transaction not yet used (`job_of`: a whole row as a Job)."""
    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    await conn.execute(_HASH_GROUPS)
    args = {"recent": recent}
    groups = await (await conn.execute(GROUPS_SQL)).fetchall()
    finished = await (await conn.execute(FINISHED_SQL, args)).fetchall()
    samples = await (await conn.execute(SAMPLES_SQL, args)).fetchall()
    whole = {r["id"]: r for r in (*finished, *samples)}  # a job may carry several samples
    return WorkSnapshot(
        groups=tuple((_group_job(r), int(r["n"])) for r in sorted(groups, key=lambda r: r["seq"])),
        measured=tuple(job_of(r) for r in sorted(whole.values(), key=lambda r: r["seq"])),
        rows=len(groups) + len(finished) + len(samples),
    )
