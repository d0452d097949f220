"""One clock: job times are written and compared on the database server's clock, whatever each machine's says.

Three processes' stores on one real PostgreSQL, as an ingress, a replica and another ingress would hold
them, with local clocks set minutes apart (DatabaseClock's `local`). Deadlines, stall checks, retention,
leases and stage stamps must come out as if they shared one clock; with the machines' own clocks they
would not (the contrast is shown once, so the test proves what it claims).
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from srserve.serving.control.jobs import ErrorCode, JobState
from srserve.serving.control.progress import ProgressUpdate
from srserve.serving.control.store.clock import DatabaseClock, on_this_machine
from srserve.serving.control.store.job_store import JobStore
from tests.store_helpers import LIMITS, REQUEST

MINUTES = 300.0  # how far the machines' clocks are set apart
SAME = 60.0  # two readings of one clock taken moments apart differ by far less (a loaded machine included)


def skewed(offset_s: float) -> DatabaseClock:
    return DatabaseClock(local=lambda: time.time() + offset_s)


async def server_now(dsn: str) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT extract(epoch from clock_timestamp())::double precision")
        return (await cur.fetchone())[0]


async def stores(dsn: str, *offsets: float) -> list[JobStore]:
    out = [JobStore(dsn, clock=skewed(offset)) for offset in offsets]
    for store in out:
        await store.migrate()
    return out


def test_a_store_on_a_skewed_machine_reads_the_servers_clock(store_dsn: str) -> None:
    async def go():
        ahead, behind = await stores(store_dsn, +MINUTES, -MINUTES)
        await ahead.counts(), await behind.counts()  # each read the server's clock on its first call
        server = await server_now(store_dsn)
        readings = (ahead.clock(), behind.clock(), ahead.clock.local(), behind.clock.local())
        for store in (ahead, behind):
            await store.close()
        return server, readings

    server, (ahead, behind, ahead_local, behind_local) = asyncio.run(go())
    assert abs(ahead - server) < SAME and abs(behind - server) < SAME
    assert ahead_local - server > MINUTES - SAME and server - behind_local > MINUTES - SAME  # the machines disagree


def test_deadlines_stalls_and_retention_hold_across_skewed_machines(store_dsn: str) -> None:
    """An ingress 5 min ahead admits with a 120 s deadline; a replica 5 min behind reports progress and
    completes another job; an ingress 5 min behind sweeps for stalls and deadlines and applies retention.
    Nothing is failed or deleted early, and the stamps are the server's."""

    async def go():
        ingress, replica, other = await stores(store_dsn, +MINUTES, -MINUTES, -MINUTES)
        await ingress.create("running", REQUEST, 20, 120.0, "o1", 30.0, LIMITS)
        await ingress.create("done", REQUEST, 20, None, "o1", 30.0, LIMITS)
        attempt = await replica.begin_attempt("running", "sketch", "o1", 3)
        refused = await replica.apply_progress(
            [ProgressUpdate("running", attempt.fence, JobState.SKETCHING, 1, 5, {"sketch_start": replica.clock()})]
        )
        swept = await other.sweep(stall_timeout_s=60)  # a local clock would see progress 5 min old: stalled
        done = await replica.begin_attempt("done", "sketch", "o1", 3)
        await replica.fail("done", ErrorCode.INTERNAL, "ended for the retention check")
        retained = await other.expire(retain_jobs=100, retain_age_s=60)  # completed "5 min ago" by its clock
        job = await other.get("running")
        server = await server_now(store_dsn)
        for store in (ingress, replica, other):
            await store.close()
        return refused, swept, retained, job, server, done

    refused, swept, retained, job, server, done = asyncio.run(go())
    assert done is not None
    assert refused == {}  # the replica 5 min behind is within the job's deadline, as on the server
    assert swept == [] and retained == []
    assert job.state == JobState.SKETCHING
    assert abs(job.deadline - (job.created_at + 120.0)) < 1e-6 and abs(job.created_at - server) < SAME
    assert abs(job.timeline["sketch_start"] - server) < SAME


def test_machine_clocks_would_have_failed_the_job(store_dsn: str) -> None:
    """The contrast: the same steps with each store on its machine's own clock fail a healthy job."""

    async def go():
        ingress = JobStore(store_dsn, clock=lambda: time.time() + MINUTES)
        replica = JobStore(store_dsn, clock=lambda: time.time() - MINUTES)
        await ingress.migrate()
        await ingress.create("running", REQUEST, 20, 120.0, "o1", 30.0, LIMITS)
        attempt = await replica.begin_attempt("running", "sketch", "o1", 3)
        await replica.apply_progress([ProgressUpdate("running", attempt.fence, JobState.SKETCHING, 1, 5)])
        swept = await ingress.sweep(stall_timeout_s=60)
        for store in (ingress, replica):
            await store.close()
        return swept

    assert [job.id for job in asyncio.run(go())] == ["running"]


def test_a_server_on_this_machine_shares_its_clock() -> None:
    """A loopback or Unix-socket server is read with this machine's clock itself (no estimate, none of its
    error: two local processes' stamps of one job stay in order); any other host through a DatabaseClock."""
    for dsn in (
        "postgresql://postgres@127.0.0.1:5432/srserve",
        "postgresql://postgres@localhost/srserve",
        "host=/var/run/postgresql dbname=srserve",
        "postgresql://postgres@[::1]:5432/srserve",
    ):
        assert on_this_machine(dsn), dsn
        assert JobStore(dsn).clock is time.time
    for dsn in ("postgresql://u:p@db.internal:5432/srserve", "host=10.0.0.5,127.0.0.1 dbname=srserve"):
        assert not on_this_machine(dsn), dsn
        assert isinstance(JobStore(dsn).clock, DatabaseClock)
