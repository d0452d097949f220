"""Admission on counters (migration 0004), on a real embedded PostgreSQL, without Ray: after any sequence of
the store's operations the counters equal a recount of the jobs, and admissions racing on separate
connections for the last backlog slot or the last unit of a tenant's quota admit exactly up to the limit."""

from __future__ import annotations

import asyncio
import random

import psycopg

from srserve.serving.control.errors import Overloaded, QuotaExceeded
from srserve.serving.control.jobs import TERMINAL, ErrorCode, JobState, PoolBacklog
from srserve.serving.control.store.job_store import JobStore, ProgressUpdate
from srserve.serving.control.tenants import Tenant
from tests.store_helpers import LIMITS, REQUEST, Clock, migrated_store

TENANTS = (Tenant("a"), Tenant("b", max_live_jobs=10**6, max_queued_gpu_s=10**6))


def run(coro):
    return asyncio.run(coro)


def recount(dsn: str) -> tuple[dict[str, int], dict[str, tuple[int, float]]]:
    """Jobs per state, and each tenant's unfinished jobs and predicted GPU-seconds, counted from the rows."""
    with psycopg.connect(dsn) as conn:
        states = {s.value: 0 for s in JobState}
        for state, n in conn.execute("SELECT state, count(*) FROM srserve_jobs GROUP BY state"):
            states[state] = n
        tenants = {
            tenant: (live, float(gpu_s))
            for tenant, live, gpu_s in conn.execute(
                "SELECT tenant, count(*), coalesce(sum(cost_gpu_s::numeric), 0) FROM srserve_jobs "
                f"WHERE state NOT IN {TERMINAL} GROUP BY tenant"
            )
        }
    return states, tenants


async def _counters(store: JobStore) -> tuple[dict[str, int], dict[str, tuple[int, float]]]:
    usage = {t: u for t, u in (await store.tenant_usage()).items() if u != (0, 0.0)}
    return await store.counts(), usage


async def _random_step(store: JobStore, rng: random.Random, clock: Clock, made: list[str], i: int) -> None:
    """One operation of the store, on a random job: every path that adds, moves, ends or deletes one."""
    op = rng.choice(["create", "create", "handoff", "advance", "advance", "fail", "cancel", "forget", "expire",
                     "resume", "sweep", "drop"])  # fmt: skip
    job_id = rng.choice(made) if made else None
    if op in ("create", "handoff") or job_id is None:
        new = f"j{i}"
        handoff = (f"handoffs/{new}/0.srh", 10, 5) if op == "handoff" else None
        cost = rng.choice([None, 1.5, 2.25, 0.1])
        await store.create(new, REQUEST, 20, rng.choice([None, 50.0]), "o", 30.0, LIMITS, handoff,
                           tenant=rng.choice(TENANTS), cost_gpu_s=cost)  # fmt: skip
        made.append(new)
    elif op == "advance":
        job = await store.get(job_id)
        if job is None or job.terminal:
            return
        if job.state in (JobState.QUEUED, JobState.ENCODING, JobState.SKETCHING):
            job = await store.begin_attempt(job_id, "sketch", "o", 10)
            if job is not None:
                await store.apply_progress([ProgressUpdate(job_id, job.fence, JobState.SKETCHING, 2, 5)])
                if rng.random() < 0.6:
                    await store.record_handoff(job_id, job.fence, f"handoffs/{job_id}/x", 10, 5, {})
        else:
            job = await store.begin_attempt(job_id, "render", "o", 10)
            if job is not None:
                await store.apply_progress([ProgressUpdate(job_id, job.fence, JobState.RENDERING, 7, 20)])
                if rng.random() < 0.6:
                    await store.complete(job_id, job.fence, f"videos/{job_id}/x", 100, {}, None)
    elif op == "fail":
        await store.fail(job_id, rng.choice(list(ErrorCode)), "x")
    elif op == "cancel":
        await store.cancel(job_id)
    elif op == "forget":
        await store.forget(job_id)
        made.remove(job_id)
    elif op == "expire":
        gone = await store.expire(rng.randint(0, 5), rng.choice([None, 10.0]))
        for job in gone:
            made.remove(job.id)
    elif op == "resume":
        await store.release("o")
        clock.advance(1)
        await store.claim("o", 30.0, limit=rng.randint(1, 20))
    elif op == "sweep":
        clock.advance(rng.choice([1.0, 60.0]))
        await store.sweep(stall_timeout_s=30.0)
    else:
        await store.drop_handoff(job_id, "o")


def test_counters_equal_a_recount_after_random_operations(store_dsn: str) -> None:
    async def go() -> None:
        clock = Clock()
        store = await migrated_store(store_dsn, clock)
        rng = random.Random(22)
        made: list[str] = []
        for i in range(300):
            await _random_step(store, rng, clock, made, i)
            if i % 50 == 49:  # with deltas not folded yet, and right after an admission folded them
                assert await _counters(store) == recount(store_dsn), i
        assert await _counters(store) == recount(store_dsn)
        await store.close()

    run(go())


def test_the_last_backlog_slot_goes_to_exactly_one_of_racing_admissions(store_dsn: str) -> None:
    """Eight admissions on eight connections race for the last two slots: exactly two are admitted."""
    limits = (PoolBacklog("colocated", frozenset({"sketch", "render"}), 6),)

    async def go() -> tuple[int, list[BaseException | None]]:
        first = await migrated_store(store_dsn)
        for i in range(4):
            await first.create(f"pre{i}", REQUEST, 20, None, "o", 30.0, limits)
        stores = [JobStore(store_dsn, clock=Clock()) for _ in range(8)]
        for s in stores:
            await s.open()
            await s.get("warm")  # every connection open before the race
        outcomes = await asyncio.gather(
            *(s.create(f"race{i}", REQUEST, 20, None, "o", 30.0, limits) for i, s in enumerate(stores)),
            return_exceptions=True,
        )
        live = (await first.counts())["queued"]
        for s in (first, *stores):
            await s.close()
        return live, outcomes

    live, outcomes = run(go())
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert live == 6 and len(outcomes) - len(refused) == 2
    assert all(isinstance(o, Overloaded) and "colocated pool is full (6 jobs waiting)" in str(o) for o in refused)


def test_a_tenants_quota_holds_under_racing_admissions(store_dsn: str) -> None:
    """Racing admissions of one tenant stop exactly at max_queued_gpu_s."""
    tenant = Tenant("racer", max_queued_gpu_s=10.0)

    async def go() -> list[BaseException | object]:
        stores = [await migrated_store(store_dsn) for _ in range(6)]
        outcomes = await asyncio.gather(
            *(
                s.create(f"q{i}", REQUEST, 20, None, "o", 30.0, LIMITS, tenant=tenant, cost_gpu_s=2.5)
                for i, s in enumerate(stores)
            ),
            return_exceptions=True,
        )
        for s in stores:
            await s.close()
        return outcomes

    outcomes = run(go())
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 2 and all(isinstance(o, QuotaExceeded) and o.quota == "max_queued_gpu_s" for o in refused)
