"""The store is the queue (control/queueing/dispatch.py) on a real PostgreSQL server, without Ray: which job a pool's
free slot goes to (priority, then weighted fair share, then arrival), the pool's capacity from its live
replicas, exactness when several orchestrators grant at once, and a resumed job keeping its place."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from srserve.serving.control.artifacts import ArtifactStore, ArtifactStoreConfig
from srserve.serving.control.jobs import Job, JobState
from srserve.serving.control.queueing.dispatch import DispatchPlan, stage_charge
from srserve.serving.control.store.job_store import JobStore
from srserve.serving.control.tenants import Tenant
from tests.store_helpers import LIMITS, REQUEST, migrated_store
from tests.test_orchestrator import Bench

PLAN = DispatchPlan()
SIZED = {**REQUEST, "width": 64, "height": 64, "num_frames": 9, "guidance_scale": 5.0}


def run(store_dsn: str, go: Callable[[JobStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await migrated_store(store_dsn)
        try:
            await go(store)
        finally:
            await store.close()

    asyncio.run(main())


async def enqueue(
    store: JobStore, job_id: str, tenant: str = "default", priority: int = 0, owner: str = "o", request=None
) -> None:
    """Admit a job driven by `owner` and put it in line for the sketch pool."""
    await store.create(
        job_id,
        request or REQUEST,
        20,
        None,
        owner,
        60,
        LIMITS,
        tenant=Tenant(tenant, max_priority=9),
        priority=priority,
    )
    place = await store.wait_for_slot(job_id, owner, PLAN)
    assert place is not None and (place.stage, place.pool, place.granted) == ("sketch", "sketch", False)


async def drain(store: JobStore, pool: str = "sketch", weights=None) -> list[str]:
    """Grant the pool's slots one at a time, each freed at once (a pool of one slot that never idles)."""
    order = []
    while (granted := await store.grant(pool, weights or {})) is not None:
        order.append(granted)
        assert await store.free_slot(granted, "o") == pool
    return order


def test_higher_priority_first_then_arrival(store_dsn: str) -> None:
    async def go(store: JobStore) -> None:
        for job_id, tenant, priority in [
            ("a1", "a", 0),
            ("b1", "b", 0),
            ("a2", "a", 3),
            ("b2", "b", 3),
            ("a3", "a", 0),
        ]:
            await enqueue(store, job_id, tenant, priority)
        order = await drain(store)
        assert order[:2] == ["a2", "b2"]  # priority 3 first, in arrival order (a fair tie: both tenants at 0)
        assert sorted(order[2:]) == ["a1", "a3", "b1"] and order.index("a1") < order.index("a3")
        assert await store.grant("sketch", {}) is None  # nothing waits

    run(store_dsn, go)


def test_weighted_fair_share_of_a_pool(store_dsn: str) -> None:
    """Equal jobs, weights 3:1, both tenants always waiting: the pool's grants split 3:1."""

    async def go(store: JobStore) -> None:
        for i in range(40):
            await enqueue(store, f"a{i}", "a")
            await enqueue(store, f"b{i}", "b")
        order = await drain(store, weights={"a": 3.0, "b": 1.0})
        first = Counter(job_id[0] for job_id in order[:40])
        assert abs(first["a"] - 30) <= 1 and abs(first["b"] - 10) <= 1, first
        assert len(order) == 80  # and then the rest, nothing lost

    run(store_dsn, go)


def test_the_share_is_of_gpu_seconds_not_of_jobs(store_dsn: str) -> None:
    """Tenant a's jobs are 4x the work of b's (4x the pixels): equal weights give b about 4 jobs per a's one."""

    async def go(store: JobStore) -> None:
        big = {**SIZED, "width": 128, "height": 128}
        for i in range(20):
            await enqueue(store, f"a{i}", "a", request=big)
            await enqueue(store, f"b{i}", "b", request=SIZED)
        order = await drain(store)
        first = Counter(job_id[0] for job_id in order[:20])
        assert abs(first["b"] - 16) <= 1 and abs(first["a"] - 4) <= 1, first

    run(store_dsn, go)


def test_an_idle_tenant_earns_no_credit(store_dsn: str) -> None:
    """Tenant a used the pool alone for a while; b arriving then gets its share from now on, not the past."""

    async def go(store: JobStore) -> None:
        for i in range(30):
            await enqueue(store, f"a{i:02}", "a")
        assert len(await drain_n(store, 20)) == 20  # a alone
        for i in range(10):
            await enqueue(store, f"b{i:02}", "b")
        next_ten = Counter(job_id[0] for job_id in await drain_n(store, 10))
        assert next_ten == {"a": 5, "b": 5}, next_ten

    run(store_dsn, go)


def test_use_before_the_pool_went_idle_is_not_held_against_anyone(store_dsn: str) -> None:
    """b used the pool alone, then it went idle; a and b arriving together share it from the start."""

    async def go(store: JobStore) -> None:
        for i in range(6):
            await enqueue(store, f"b{i:02}", "b")
        assert len(await drain(store)) == 6  # b alone, then nothing held or waiting: idle
        for i in range(10):
            await enqueue(store, f"a{i:02}", "a")
            await enqueue(store, f"b{i + 6:02}", "b")
        first_ten = Counter(job_id[0] for job_id in await drain_n(store, 10))
        assert first_ten == {"a": 5, "b": 5}, first_ten

    run(store_dsn, go)


async def drain_n(store: JobStore, n: int) -> list[str]:
    order = []
    for _ in range(n):
        granted = await store.grant("sketch", {})
        assert granted is not None
        order.append(granted)
        await store.free_slot(granted, "o")
    return order


def test_capacity_is_the_live_replicas_slots(store_dsn: str) -> None:
    async def go(store: JobStore) -> None:
        for i in range(8):
            await enqueue(store, f"j{i}")
        # No replica registered yet (starting, or scaled to zero): one job at a time, to wake the autoscaler.
        assert await store.grant("sketch", {}) is not None
        assert await store.grant("sketch", {}) is None
        assert await store.register_replica("r1", "sketch", 2, 60) is True
        assert await store.register_replica("r1", "sketch", 2, 60) is False  # a refresh
        assert await store.register_replica("r2", "sketch", 2, 60) is True
        assert await store.pool_capacity("sketch") == 4
        granted = [await store.grant("sketch", {}) for _ in range(4)]
        assert [g is not None for g in granted] == [True, True, True, False]  # 1 held before + 3 = 4 slots
        assert await store.grant("render", {}) is None  # another pool's slots are its own
        assert await store.free_slot(granted[0], "a-former-driver") is None  # not its slot to free
        await store.free_slot(granted[0], "o")
        assert await store.grant("sketch", {}) is not None
        await store.unregister_replica("r2")
        assert await store.pool_capacity("sketch") == 2
        assert await store.grant("sketch", {}) is None  # 4 held, 2 slots: none until two are freed

    run(store_dsn, go)


def test_orchestrators_granting_at_once_never_pass_the_capacity(store_dsn: str) -> None:
    """Three stores (three ingress replicas) grant concurrently, many times each: exactly the capacity."""

    async def go(store: JobStore) -> None:
        for i in range(30):
            await enqueue(store, f"j{i:02}", "a" if i % 2 else "b")
        await store.register_replica("r1", "sketch", 3, 60)
        others = [await migrated_store(store_dsn) for _ in range(2)]
        try:
            results = await asyncio.gather(*(s.grant("sketch", {}) for s in [store, *others] for _ in range(8)))
        finally:
            for s in others:
                await s.close()
        granted = [g for g in results if g is not None]
        assert len(granted) == 3 and len(set(granted)) == 3

    run(store_dsn, go)


def test_a_resumed_job_keeps_its_place(store_dsn: str) -> None:
    """A job whose driver died is taken over and waits again: after higher priorities, before later arrivals."""

    async def go(store: JobStore) -> None:
        await enqueue(store, "early", owner="dead")
        await store.create(
            "urgent", REQUEST, 20, None, "o", 60, LIMITS, tenant=Tenant("default", max_priority=9), priority=5
        )
        await store.create("late", REQUEST, 20, None, "o", 60, LIMITS)
        async with store._tx() as conn:  # the dead driver's lease lapses
            await conn.execute("UPDATE srserve_jobs SET lease_expires = 0 WHERE id = 'early'")
        assert await store.grant("sketch", {}) is None  # a job of a dead driver is never granted
        assert await store.claim("o", 60) == ["early"]
        for job_id in ("late", "urgent", "early"):  # put in line in the opposite order of their rank
            assert await store.wait_for_slot(job_id, "o", PLAN) is not None
        assert await drain(store) == ["urgent", "early", "late"]

    run(store_dsn, go)


def test_an_ended_job_frees_its_slot_and_leaves_the_line(store_dsn: str) -> None:
    async def go(store: JobStore) -> None:
        await enqueue(store, "held")
        await enqueue(store, "waiting")
        assert await store.grant("sketch", {}) == "held"
        await store.cancel("held")  # ended while holding the slot
        assert await store.slot_state("held", "o") == "gone"
        await store.cancel("waiting")  # ended while waiting
        assert await store.slot_state("waiting", "o") == "gone"
        await enqueue(store, "next")
        assert await store.grant("sketch", {}) == "next"
        assert await store.slot_state("next", "o") == "granted"  # held for its driver

    run(store_dsn, go)


def test_a_stage_is_charged_its_steps_times_its_work_units() -> None:
    job = Job(id="j", request={**SIZED, "num_inference_steps": 20}, created_at=0, num_steps=20, state=JobState.QUEUED)
    units = 64 * 64 * 9 * 2 / 1e6
    assert abs(stage_charge(job, "sketch") - 5 * units) < 1e-12  # fixed switch at step 5
    assert abs(stage_charge(job, "sketch", whole_job=True) - 20 * units) < 1e-12
    job.switch_step = 5
    assert abs(stage_charge(job, "render") - 15 * units) < 1e-12


def test_the_orchestrator_runs_waiting_jobs_by_priority(store_dsn: str, tmp_path: Path) -> None:
    """Through the orchestrator: while the one sketch slot is busy, three jobs wait; the most urgent runs next."""

    async def main() -> None:
        store = await migrated_store(store_dsn)
        artifacts = ArtifactStore.from_config(ArtifactStoreConfig(path=str(tmp_path / "artifacts")))
        b = Bench(store, artifacts, None)  # type: ignore[arg-type]
        b.pools.channel.start()
        release = asyncio.Event()

        async def hold(_reporter, _attempt):
            if _reporter.ticket.job_id == "first":
                await release.wait()
            return None

        b.pools.hooks["sketch"] = hold
        try:
            tasks = []
            for job_id, priority in [("first", 0), ("low", 0), ("high", 5), ("low2", 0)]:
                await store.create(
                    job_id,
                    REQUEST,
                    4,
                    None,
                    "o",
                    60,
                    LIMITS,
                    tenant=Tenant("default", max_priority=9),
                    priority=priority,
                )
                tasks.append(b.orchestrator.drive(job_id))
                while await store.slot_state(job_id, "o") == "gone":  # in line before the next one arrives
                    await asyncio.sleep(0.01)
            release.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            sketched = [t.job_id for stage, t in b.pools.calls if stage == "sketch"]
            assert sketched == ["first", "high", "low", "low2"]
            for job_id in sketched:
                assert (await store.get(job_id)).state == JobState.COMPLETED
        finally:
            await b.pools.channel.close()
            await store.close()

    asyncio.run(main())
