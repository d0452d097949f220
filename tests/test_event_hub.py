"""The ingress's EventHub against a real job store, without Ray: a progress stream's wait is woken by the
store's NOTIFY (or, after a reconnect, by the hub itself), never by a timer running out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg

from srserve.serving.control.events import EventHub
from srserve.serving.control.jobs import JobState
from srserve.serving.control.store.job_store import JobStore, ProgressUpdate
from tests.store_helpers import LIMITS, REQUEST, migrated_store

FOREVER = 3600.0  # a wait that returns did so because it was woken


class Reads:
    """Counts the hub's reads of each job (store.events_and_job) and tells a test when one is done."""

    def __init__(self, store: JobStore) -> None:
        self.count: dict[str, int] = {}
        self.done: dict[str, asyncio.Queue[int]] = {}
        real = store.events_and_job

        async def counted(job_id: str, after_seq: int = 0):
            out = await real(job_id, after_seq)
            self.count[job_id] = self.count.get(job_id, 0) + 1
            self.queue(job_id).put_nowait(self.count[job_id])
            return out

        store.events_and_job = counted  # type: ignore[method-assign]

    def queue(self, job_id: str) -> asyncio.Queue[int]:
        return self.done.setdefault(job_id, asyncio.Queue())

    async def wait_read(self, job_id: str) -> int:
        return await asyncio.wait_for(self.queue(job_id).get(), 60)


@contextlib.asynccontextmanager
async def hub_on(store: JobStore) -> AsyncIterator[EventHub]:
    hub = EventHub(store).start()
    try:
        await asyncio.wait_for(hub.listening.wait(), 30)
        yield hub
    finally:
        assert hub._task is not None
        hub._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hub._task
        await store.close()


async def _last_seq(store: JobStore, job_id: str) -> int:
    return (await store.events(job_id))[-1].seq


def _run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


def test_a_wait_wakes_on_its_jobs_notification(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn)
        for job_id in ("a", "b"):
            await store.create(job_id, REQUEST, 20, None, "o", 30, LIMITS)
        reads = Reads(store)
        async with hub_on(store) as hub:
            seen_a, seen_b = await _last_seq(store, "a"), await _last_seq(store, "b")
            wait_a = asyncio.create_task(hub.wait("a", seen_a, FOREVER))
            wait_b = asyncio.create_task(hub.wait("b", seen_b, FOREVER))
            assert await reads.wait_read("a") == 1 and await reads.wait_read("b") == 1  # both parked
            attempt = await store.begin_attempt("a", "sketch", "o", 3)
            await store.apply_progress([ProgressUpdate("a", attempt.fence, JobState.SKETCHING, 2, 5)])
            events, job = await asyncio.wait_for(wait_a, 60)
            assert [(e.state, e.step) for e in events] == [("sketching", 2)] and job.step == 2
            assert reads.count["a"] == 2  # one read to park, one when its notification came
            assert not wait_b.done()
            await store.cancel("b")
            events, job = await asyncio.wait_for(wait_b, 60)
            assert [e.state for e in events] == ["cancelled"] and job.terminal
            assert reads.count["b"] == 2  # a's notification did not wake b

    _run(go())


def test_a_wait_returns_at_once_for_news_a_finished_job_or_no_job(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn)
        await store.create("j", REQUEST, 20, None, "o", 30, LIMITS)
        async with hub_on(store) as hub:
            events, job = await hub.wait("j", 0, FOREVER)  # events newer than 0: the admission
            assert [e.state for e in events] == ["queued"] and not job.terminal
            events, job = await hub.wait("j", await _last_seq(store, "j"), 0.0)  # no news, no time: as it is
            assert events == [] and job.state == JobState.QUEUED
            await store.cancel("j")
            events, job = await hub.wait("j", await _last_seq(store, "j"), FOREVER)  # finished: nothing to wait for
            assert events == [] and job.terminal
            assert await hub.wait("nope", 0, FOREVER) is None

    _run(go())


def test_after_a_reconnect_every_wait_reads_again(store_dsn: str) -> None:
    """A change announced while the hub was not listening is not lost: once it listens again, it wakes
    every waiter to read what it may have missed."""

    async def go():
        store = await migrated_store(store_dsn)
        await store.create("j", REQUEST, 20, None, "o", 30, LIMITS)
        reads = Reads(store)
        base, _, database = store_dsn.rpartition("/")
        async with hub_on(store) as hub:
            waiting = asyncio.create_task(hub.wait("j", await _last_seq(store, "j"), FOREVER))
            assert await reads.wait_read("j") == 1
            hub.listening.clear()
            async with await psycopg.AsyncConnection.connect(f"{base}/postgres", autocommit=True) as admin:
                # the hub loses its connection and cannot open another; the store keeps its open one
                await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
                await admin.execute(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                    "WHERE datname = %s AND query LIKE %s",
                    (database, "LISTEN %"),
                )
                await store.cancel("j")  # announced to nobody
                await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
            events, job = await asyncio.wait_for(waiting, 60)
            assert hub.listening.is_set()
            assert [e.state for e in events] == ["cancelled"] and job.terminal

    _run(go())
