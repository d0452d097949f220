"""Admission as one SQL statement: check the tenant's quota and each pool's backlog, and insert the job
and its first event only when both allow it.

The counts come from counters the database keeps (migration 0004: per state, and per tenant its unfinished
jobs and their predicted GPU-seconds), read by `srserve_admission_counts` under the admission lock. So an
admission costs the same with 100 live jobs or 100,000, and the lock is held only while the server runs
this one statement and commits it, never across a round trip to a client: several ingress replicas admit
in turn, each in well under a millisecond of lock time.

The admitting transaction commits asynchronously (`synchronous_commit = off`), so neither the admission
lock nor PostgreSQL's own lock that serialises every NOTIFY-ing commit is held through a WAL flush; a
second transaction in the same round trip then writes one WAL record and commits synchronously, which
flushes the WAL up to and past the admission's commit record. So a job is durable before it is
acknowledged, exactly as with a synchronous commit, while concurrent admissions share their flushes
instead of taking turns at them (see `admit`).

The backlog limit and the quotas are exact among admissions (each sees every admission committed before
it). As before, a job moving between phases in a transaction not yet committed (a sketch handing off) is
counted in its old phase until it commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from srserve.serving.control.errors import Overloaded, QuotaExceeded
from srserve.serving.control.jobs import PHASE_STATES, PoolBacklog
from srserve.serving.control.store.clock import NOW_SQL as _NOW
from srserve.serving.control.tenants import Tenant


def admission_sql(
    limits: Sequence[PoolBacklog], handoff: bool, tenant: Tenant, cost_gpu_s: float | None
) -> tuple[str, dict[str, Any]]:
    """The admitting statement and its check parameters. It returns one row: `refused` (None when the job
    was inserted; else "max_queued_gpu_s", "max_live_jobs" or "pool:<index in limits>", checked in that
    order, as admission always has) and `counts`, what it counted."""
    whens = ["WHEN false THEN NULL::text"]
    params: dict[str, Any] = {}
    if tenant.max_queued_gpu_s is not None and cost_gpu_s is not None:
        whens.append(
            "WHEN (counts->>'gpu_s')::numeric + %(cost)s::numeric > %(max_gpu_s)s::numeric THEN 'max_queued_gpu_s'"
        )
        params["max_gpu_s"] = tenant.max_queued_gpu_s
    if tenant.max_live_jobs is not None:
        whens.append("WHEN (counts->>'live')::bigint >= %(max_live)s THEN 'max_live_jobs'")
        params["max_live"] = tenant.max_live_jobs
    for i, backlog in enumerate(limits):
        if not (backlog.phases - {"sketch"} if handoff else backlog.phases):
            continue  # an uploaded handoff needs no room in a sketch-only pool
        states = sorted(s.value for phase in backlog.phases for s in PHASE_STATES[phase])
        waiting = " + ".join(f"coalesce((counts->'states'->>'{s}')::bigint, 0)" for s in states)
        whens.append(f"WHEN {waiting} >= %(max_{i})s THEN 'pool:{i}'")
        params[f"max_{i}"] = backlog.max_jobs
    sql = (
        "WITH c AS (SELECT srserve_admission_counts(%(tenant)s::text) AS counts), "
        f"verdict AS (SELECT counts, CASE {' '.join(whens)} ELSE NULL END AS refused FROM c), "
        "job AS (INSERT INTO srserve_jobs (id, request, state, created_at, updated_at, last_progress, deadline, "
        "num_steps, switch_step, handoff_key, handoff_bytes, timeline, switch_cap, switch_reason, tenant, priority, "
        "cost_gpu_s, lease_owner, lease_expires) "
        "SELECT %(id)s::text, %(request)s::jsonb, %(state)s::text, %(created)s::float8, %(created)s::float8, "
        "%(created)s::float8, %(deadline)s::float8, %(num_steps)s::integer, %(switch_step)s::integer, "
        "%(handoff_key)s::text, %(handoff_bytes)s::bigint, %(timeline)s::jsonb, %(switch_cap)s::integer, "
        "%(switch_reason)s::text, %(tenant)s::text, %(priority)s::integer, %(cost)s::float8, %(owner)s::text, "
        f"{_NOW} + %(ttl)s::float8 FROM verdict WHERE refused IS NULL "
        "RETURNING id, state), "
        "event AS (INSERT INTO srserve_job_events (job_id, state, step, total, progress, time, message) "
        "SELECT id, state, 0, 0, %(progress)s::integer, %(created)s::float8, %(message)s::text FROM job "
        "RETURNING job_id) "
        "SELECT refused, counts, (SELECT pg_notify(%(channel)s::text, job_id) FROM event) AS notified FROM verdict"
    )
    return sql, params


def refusal(
    refused: str, counts: dict[str, Any], limits: Sequence[PoolBacklog], tenant: Tenant, cost_gpu_s: float | None
) -> Overloaded | QuotaExceeded:
    """The error for what `admission_sql` refused, worded as admission always has."""
    if refused == "max_queued_gpu_s":
        assert tenant.max_queued_gpu_s is not None and cost_gpu_s is not None
        return QuotaExceeded(
            "max_queued_gpu_s",
            f"max_queued_gpu_s: tenant {tenant.name}'s unfinished jobs are predicted to cost "
            f"{float(counts['gpu_s']):.1f} GPU-seconds; this one's {cost_gpu_s:.1f} more would pass its limit of "
            f"{tenant.max_queued_gpu_s:g}; retry when one finishes, or ask for less",
        )
    if refused == "max_live_jobs":
        return QuotaExceeded(
            "max_live_jobs",
            f"max_live_jobs: tenant {tenant.name} has {int(counts['live'])} unfinished jobs, its limit of "
            f"{tenant.max_live_jobs}; retry when one finishes",
        )
    backlog = limits[int(refused.removeprefix("pool:"))]
    states = counts["states"]
    waiting = sum(int(states.get(s.value, 0)) for phase in backlog.phases for s in PHASE_STATES[phase])
    return Overloaded(f"{backlog.pool} pool is full ({waiting} jobs waiting); retry later")


async def admit(conn: psycopg.AsyncConnection, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run `admission_sql`'s statement on `conn` (autocommit) in one round trip; its row once durable.

    Pipelined: the admission in its own transaction, committed asynchronously, then a transaction that
    writes a WAL record (a transactional logical message: no table, no row to contend on), so its
    synchronous commit waits for the WAL to be flushed up to it, past the admission's commit record. (A
    transaction that wrote no WAL commits without a flush, whatever synchronous_commit says.) Should the
    server fail in between, the caller gets an error, never an acknowledgement of a job that could be lost."""
    async with conn.pipeline():
        await conn.execute("BEGIN")
        await conn.execute("SET LOCAL synchronous_commit = off")
        cur = await conn.execute(sql, params)
        await conn.execute("COMMIT")
        await conn.execute("SELECT pg_logical_emit_message(true, 'srserve', 'admitted')")
    row = await cur.fetchone()
    assert row is not None  # the statement always returns its verdict row
    return row
