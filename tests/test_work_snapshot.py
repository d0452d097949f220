"""The store's work snapshot prices exactly as every live job does, in rows that do not grow with the waiting
jobs; the per-tenant counts from the counters equal a count of the jobs (real PostgreSQL, no Ray)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from typing import Any

import psycopg
import pytest

from srserve.serving.config import PoolConfig, PoolLayout
from srserve.serving.control.jobs import RUNNING_STATES, ErrorCode, Job, JobState, PoolBacklog
from srserve.serving.control.pricing.load_switch import load_snapshot
from srserve.serving.control.pricing.pool_work import POOLS, estimate_pool_work, measure_stage_times
from srserve.serving.control.pricing.request_limits import unit_step_times
from srserve.serving.control.store.job_store import JobStore, ProgressUpdate, migrations
from srserve.serving.control.store.work_snapshot import WorkSnapshot
from srserve.serving.control.tenants import Tenant
from srserve.serving.ops.metrics import tenant_work
from tests.store_helpers import Clock, migrated_store

S = JobState
LIMITS = (PoolBacklog("sketch", frozenset({"sketch"}), 10**6), PoolBacklog("render", frozenset({"render"}), 10**6))
TENANTS = [Tenant("default"), Tenant("a"), Tenant("b")]
SIZED = {"width": 832, "height": 480, "num_frames": 81, "guidance_scale": 5.0}
SMALL = {"width": 480, "height": 480, "num_frames": 17, "guidance_scale": 1.0}
SWITCHES = [
    {"kind": "fixed", "step": 5, "fraction": None, "tau": 0.01, "min_step": None, "max_step": None},
    {"kind": "fixed", "step": None, "fraction": 0.3, "tau": 0.01, "min_step": None, "max_step": None},
    {"kind": "adaptive", "step": None, "fraction": None, "tau": 0.01, "min_step": None, "max_step": None},
    {"kind": "adaptive", "step": None, "fraction": None, "tau": 0.02, "min_step": 3, "max_step": 9},
    {"kind": "load", "step": None, "fraction": None, "tau": 0.01, "min_step": None, "max_step": None},
]
# Where a job is left: waiting (fresh, or back after an attempt, keeping that attempt's stamps), running, ended.
PATHS = (
    "queued",
    "queued_after_sketch",
    "queued_after_handoff",
    "encoding",
    "sketching",
    "handed",
    "handed_reversed",
    "handed_after_render",
    "rendering",
    "decoding",
    "completed",
    "failed",
    "cancelled",
)


def run(coro):
    return asyncio.run(coro)


def request(switch: dict[str, Any], steps: int, size: dict[str, Any] | None) -> dict[str, Any]:
    return {"prompt": "x", "num_inference_steps": steps, "switch": switch, **(size or {})}


class Maker:
    """Drives real jobs through the store's API to a chosen state, with stage stamps on the store's clock."""

    def __init__(self, store: JobStore, clock: Clock, rng: random.Random) -> None:
        self.store, self.clock, self.rng = store, clock, rng

    def t(self) -> float:
        self.clock.advance(self.rng.uniform(0.05, 0.5))
        return self.clock.now

    async def up(self, job_id: str, fence: int, state: JobState, step: int, total: int, **stamps: float) -> None:
        refused = await self.store.apply_progress([ProgressUpdate(job_id, fence, state, step, total, dict(stamps))])
        assert not refused

    async def make(self, job_id: str, path: str, req: dict[str, Any], steps: int, tenant: Tenant) -> None:
        store = self.store
        await store.create(job_id, req, steps, None, "o", 3600, LIMITS, tenant=tenant)
        if path == "queued":
            return
        fence = (await store.begin_attempt(job_id, "sketch", "o", 9)).fence
        await self.up(job_id, fence, S.ENCODING, 0, 1, encode_start=self.t())
        if path == "encoding":
            return
        if path == "failed" and self.rng.random() < 0.5:
            await store.fail(job_id, ErrorCode.INTERNAL, "broke while encoding")
            return
        await self.up(job_id, fence, S.SKETCHING, 1, 5, encode_end=self.t(), sketch_start=self.t())
        if path in ("sketching", "queued_after_sketch"):
            await self.up(job_id, fence, S.SKETCHING, self.rng.randint(1, 4), 5)
            if path == "queued_after_sketch":  # the attempt was lost: back to the queue, its stamps kept
                await store.begin_attempt(job_id, "sketch", "o", 9)
            return
        switch = req["switch"]
        lo, hi = (5, 5) if switch["kind"] == "fixed" else (2, 12)
        switch_step = self.rng.randint(lo, hi)
        end = self.t()
        start = self.clock.now + 1.0 if path == "handed_reversed" else None  # stamps out of order: no sample
        if start is not None:
            await self.up(job_id, fence, S.SKETCHING, 2, 5, sketch_start=start)
        await store.record_handoff(job_id, fence, "k", 10, switch_step, {"sketch_end": end})
        if path in ("handed", "handed_reversed"):
            return
        if path == "queued_after_handoff":  # a new sketch attempt: queued again, its switch step kept
            await store.begin_attempt(job_id, "sketch", "o", 9)
            return
        if path == "cancelled":
            await store.cancel(job_id)
            return
        fence = (await store.begin_attempt(job_id, "render", "o", 9)).fence
        await self.up(job_id, fence, S.RENDERING, switch_step + 1, steps, render_start=self.t())
        if path == "rendering":
            await self.up(job_id, fence, S.RENDERING, self.rng.randint(switch_step + 1, steps), steps)
            return
        await self.up(job_id, fence, S.DECODING, steps, steps, decode_start=self.t())
        if path == "decoding":
            return
        if path == "handed_after_render":  # the render attempt was lost after its decode began
            await store.begin_attempt(job_id, "render", "o", 9)
            return
        if path == "failed":
            await store.fail(job_id, ErrorCode.INTERNAL, "broke while decoding")
            return
        assert path == "completed"
        await store.complete(job_id, fence, "v", 3, {"render_end": self.t()}, None)


async def varied_store(dsn: str, seed: int = 7) -> tuple[JobStore, Clock]:
    """Jobs of every state and switch kind, sized and not, of three tenants; more finished and handed-off
    jobs than the snapshot reads whole (32), and runs of identical queued jobs."""
    clock = Clock(50_000.0)
    store = await migrated_store(dsn, clock)
    rng = random.Random(seed)
    maker = Maker(store, clock, rng)
    weights = {p: 1 for p in PATHS} | {"completed": 6, "handed": 6, "queued": 3, "cancelled": 1}
    paths = rng.choices(list(weights), weights=list(weights.values()), k=220)
    for i, path in enumerate(paths):
        size = rng.choice([SIZED, SMALL, None])
        req = request(rng.choice(SWITCHES), rng.choice([20, 30]), size)
        await maker.make(f"j{i:03d}", path, req, req["num_inference_steps"], rng.choice(TENANTS))
    for i in range(12):  # alike waiting jobs: a few groups
        req = request(SWITCHES[i % 2], 20, SIZED)
        await store.create(f"same{i}", req, 20, None, "o", 3600, LIMITS, tenant=TENANTS[i % 3 // 2])
    return store, clock


def close(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-9 relative (a group of n jobs is added as one product)."""
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(close(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_prices_alike(jobs: list[Job], snapshot: WorkSnapshot, counts: dict[str, dict[str, int]], now: float):
    """Every pricing over the snapshot equals the same over jobs_for_work's jobs."""
    times = measure_stage_times(jobs, now)
    assert measure_stage_times(snapshot, now) == times  # the same samples in the same order: exact
    assert unit_step_times(snapshot, now) == unit_step_times(jobs, now)
    for pool in POOLS:
        for include_encode in (True, False):
            whole = estimate_pool_work(jobs, pool, now, include_encode)
            assert close(estimate_pool_work(snapshot, pool, now, include_encode), whole), (pool, include_encode)
    for pools, text in ((("sketch", "render"), False), (("sketch", "render"), True), (("colocated",) * 2, False)):
        expected = load_snapshot(jobs, now, 2, 3, pools=pools, text_pool=text)
        assert close(load_snapshot(snapshot, now, 2, 3, pools=pools, text_pool=text), expected)
    layouts = (
        PoolLayout.disaggregated(PoolConfig(), PoolConfig(), None),
        PoolLayout.disaggregated(PoolConfig(), PoolConfig(), PoolConfig()),
        PoolLayout.colocated(PoolConfig()),
    )
    for layout in layouts:
        assert close(tenant_work(snapshot, layout, now, times, counts), tenant_work(jobs, layout, now, times, counts))


async def _read(store: JobStore) -> tuple[list[Job], WorkSnapshot, dict[str, dict[str, int]]]:
    return await store.jobs_for_work(), await store.work_snapshot(), await store.tenant_counts()


def test_the_snapshot_prices_as_every_live_job(store_dsn: str) -> None:
    async def go():
        store, clock = await varied_store(store_dsn)
        read = await _read(store)
        await store.close()
        return clock, read

    clock, (jobs, snapshot, counts) = run(go())
    live = [j for j in jobs if not j.terminal]
    # The mix is what it should be: every state, groups of alike jobs, waiting jobs that carry samples.
    assert {j.state for j in live} == {S.QUEUED, S.HANDED_OFF, *RUNNING_STATES}
    assert snapshot.jobs == len(live) and len(snapshot.groups) < len(live)
    assert any(n > 1 for j, n in snapshot.groups if j.state == S.QUEUED)
    assert {j.tenant for j in live} == {"default", "a", "b"}
    assert len([j for j in jobs if j.terminal]) == 32
    carried = [j for j in snapshot.measured if j.state in (S.QUEUED, S.HANDED_OFF)]
    assert carried and any(j.state == S.QUEUED and "encode_end" in j.timeline for j in carried)
    # The waiting jobs' samples matter: without them the measured times differ.
    others = [j for j in jobs if j.state not in (S.QUEUED, S.HANDED_OFF)]
    now = clock.now + 3.0
    assert measure_stage_times(others, now) != measure_stage_times(jobs, now)
    assert_prices_alike(jobs, snapshot, counts, now)
    assert_prices_alike(jobs, snapshot, counts, clock.now + 100.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_snapshot_prices_as_every_live_job_other_mixes(store_dsn: str, seed: int) -> None:
    async def go():
        store, clock = await varied_store(store_dsn, seed)
        read = await _read(store)
        await store.close()
        return clock, read

    clock, (jobs, snapshot, counts) = run(go())
    assert_prices_alike(jobs, snapshot, counts, clock.now + 1.0)


def test_older_samples_behind_many_newer_waiting_jobs_are_read(store_dsn: str) -> None:
    """Each measured quantity's newest samples, however many newer waiting jobs lack it: sized step times and
    adaptive switch fractions behind 40 newer unsized fixed-switch jobs back from a render attempt, and the
    newest running stages' progress, which no other quantity's read holds."""

    async def go():
        clock = Clock(9_000.0)
        store = await migrated_store(store_dsn, clock)
        maker = Maker(store, clock, random.Random(11))
        for i in range(5):  # sized ones, and adaptive ones: each read only by its own quantity's query
            await maker.make(f"sized{i}", "handed_after_render", request(SWITCHES[0], 20, SIZED), 20, TENANTS[0])
            await maker.make(f"adaptive{i}", "handed_after_render", request(SWITCHES[3], 20, None), 20, TENANTS[2])
        for i in range(40):
            await maker.make(f"new{i}", "handed_after_render", request(SWITCHES[0], 20, None), 20, TENANTS[1])
        for i in range(3):  # newest: running stages' progress only (encoded elsewhere, no earlier spans)
            for job_id in (f"sketching{i}", f"rendering{i}"):
                await store.create(job_id, request(SWITCHES[0], 20, None), 20, None, "o", 3600, LIMITS)
                fence = (await store.begin_attempt(job_id, "sketch", "o", 9)).fence
                await maker.up(job_id, fence, S.SKETCHING, 2, 5, sketch_start=maker.t())
            await store.record_handoff(f"rendering{i}", fence, "k", 10, 5, {})
            fence = (await store.begin_attempt(f"rendering{i}", "render", "o", 9)).fence
            await maker.up(f"rendering{i}", fence, S.RENDERING, 8, 20, render_start=maker.t())
        read = await _read(store)
        await store.close()
        return clock, read

    clock, (jobs, snapshot, counts) = run(go())
    now = clock.now + 1.0
    times, units = measure_stage_times(jobs, now), unit_step_times(jobs, now)
    assert times.adaptive_switch_fraction is not None and units.sketch_step_s is not None
    assert units.render_step_s is not None
    assert_prices_alike(jobs, snapshot, counts, now)


def test_rows_read_stay_bounded_with_waiting_jobs(store_dsn: str) -> None:
    """2,000 more alike waiting jobs and 200 alike running ones add at most a row each to the snapshot,
    and price the same."""

    async def go():
        store, clock = await varied_store(store_dsn)
        before = await store.work_snapshot()
        req = request(SWITCHES[2], 30, SMALL)
        for i in range(2000):
            await store.create(f"many{i}", req, 30, None, "o", 3600, LIMITS, tenant=TENANTS[1])
        for i in range(200):
            await store.create(f"busy{i}", req, 30, None, "o", 3600, LIMITS, tenant=TENANTS[1])
            fence = (await store.begin_attempt(f"busy{i}", "sketch", "o", 9)).fence
            await store.apply_progress([ProgressUpdate(f"busy{i}", fence, S.SKETCHING, 3, 9, {})])
        read = await _read(store)
        await store.close()
        return clock, before, read

    clock, before, (jobs, after, counts) = run(go())
    assert after.jobs == before.jobs + 2200
    assert after.rows <= before.rows + 2
    assert after.rows < 1000 < len(jobs)
    second, largest = sorted(n for _, n in after.groups)[-2:]
    assert second >= 200 and largest >= 2000
    assert_prices_alike(jobs, after, counts, clock.now + 1.0)


async def _counted(dsn: str) -> dict[str, dict[str, int]]:
    """Jobs per tenant and state, counted over the jobs themselves."""
    out: dict[str, dict[str, int]] = {}
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT tenant, state, count(*) FROM srserve_jobs GROUP BY tenant, state")
        for tenant, state, n in await cur.fetchall():
            out.setdefault(tenant, {s.value: 0 for s in JobState})[state] = n
    return out


def test_tenant_counts_from_the_counters_equal_the_jobs(store_dsn: str) -> None:
    """Through changes, admissions (which fold the deltas), deletes and retention."""

    async def go():
        store, _ = await varied_store(store_dsn, seed=3)
        seen = [(await store.tenant_counts(), await _counted(store_dsn))]
        await store.forget("j000")
        await store.forget("same0")
        seen.append((await store.tenant_counts(), await _counted(store_dsn)))
        await store.expire(retain_jobs=5, retain_age_s=None)
        seen.append((await store.tenant_counts(), await _counted(store_dsn)))
        await store.create("late", request(SWITCHES[0], 20, None), 20, None, "o", 3600, LIMITS, tenant=TENANTS[2])
        seen.append((await store.tenant_counts(), await _counted(store_dsn)))
        async with await psycopg.AsyncConnection.connect(store_dsn) as conn:
            pending = (await (await conn.execute("SELECT count(*) FROM srserve_count_deltas")).fetchone())[0]
        await store.close()
        return seen, pending

    seen, pending = run(go())
    for from_counters, counted in seen:
        assert from_counters == counted
    assert pending == 0  # the last admission folded every delta: the counts came from the base rows


def test_migration_0006_counts_jobs_stored_before_it(store_dsn: str) -> None:
    """A store at migration 0004 with jobs and unfolded deltas: after 0006 the per-tenant counts are exact."""

    async def go():
        clock = Clock(1_000.0)
        async with await psycopg.AsyncConnection.connect(store_dsn, autocommit=True) as conn:
            await conn.execute(
                "CREATE TABLE srserve_schema (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for number, sql in migrations():
                if number < 6:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO srserve_schema (version) VALUES (%s)", (number,))
        store = JobStore(store_dsn, clock=clock)
        maker = Maker(store, clock, random.Random(5))
        for i, path in enumerate(PATHS * 2):
            await maker.make(f"old{i}", path, request(SWITCHES[i % 5], 20, SIZED), 20, TENANTS[i % 3])
        await store.forget("old1")  # deltas of changes and a delete, not folded yet
        assert await store.migrate() == 6
        seen = [(await store.tenant_counts(), await _counted(store_dsn))]
        await store.create("new", request(SWITCHES[0], 20, None), 20, None, "o", 3600, LIMITS, tenant=TENANTS[1])
        await maker.make("new2", "completed", request(SWITCHES[2], 20, SMALL), 20, TENANTS[0])
        seen.append((await store.tenant_counts(), await _counted(store_dsn)))
        await store.close()
        return seen

    for from_counters, counted in run(go()):
        assert from_counters == counted
