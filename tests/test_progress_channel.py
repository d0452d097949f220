"""A worker replica's ProgressChannel against a real job store, without Ray: reports are batched into
few transactions, refusals and stop notifications become flags with the right reason and scope, and
a store outage loses nothing (the newest state is written once the store is back)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
import pytest

from srserve.serving.control.attempts import StageTicket, StopReason
from srserve.serving.control.errors import StoreUnavailable
from srserve.serving.control.jobs import ErrorCode, JobState
from srserve.serving.control.progress import AttemptReporter, ProgressChannel, compact
from srserve.serving.control.store.job_store import JobStore, ProgressUpdate
from tests.store_helpers import LIMITS, REQUEST, Clock, migrated_store

S = JobState
R = StopReason


class Transactions:
    """Counts the store's apply_progress calls (one transaction each) around the real method."""

    def __init__(self, store: JobStore) -> None:
        self.batches: list[int] = []
        self.outages = 0
        self.outage = asyncio.Event()
        real = store.apply_progress

        async def counted(updates: list[ProgressUpdate]):
            try:
                out = await real(updates)
            except StoreUnavailable:
                self.outages += 1
                self.outage.set()
                raise
            self.batches.append(len(updates))
            return out

        store.apply_progress = counted  # type: ignore[method-assign]


async def _job(store: JobStore, job_id: str, deadline_s: float | None = None) -> int:
    """A job with a sketch attempt begun; its fencing token."""
    await store.create(job_id, REQUEST, 20, deadline_s, "o", 30, LIMITS)
    attempt = await store.begin_attempt(job_id, "sketch", "o", 3)
    assert attempt is not None
    return attempt.fence


@contextlib.asynccontextmanager
async def channel_on(store: JobStore, **options) -> AsyncIterator[ProgressChannel]:
    channel = ProgressChannel(store, **options).start()
    try:
        await asyncio.wait_for(channel.listening.wait(), 30)
        yield channel
    finally:
        await channel.close()
        await store.close()


def _run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


def test_many_reports_are_written_in_few_transactions(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn)
        fence = await _job(store, "j")
        tx = Transactions(store)
        # a long batching pause: nothing but a flush ends it, so what is batched does not depend on speed
        async with channel_on(store, flush_interval_s=3600) as channel:
            reporter = AttemptReporter(channel, StageTicket("j", fence, REQUEST), "sketch", "r1")
            for step in range(1, 51):  # all before the writer task runs
                reporter.report(S.SKETCHING, step, 50)
            await channel.flush()
            assert tx.batches == [50]
            job = await store.get("j")
            assert (job.state, job.step, job.replicas) == (S.SKETCHING, 50, {"sketch": "r1"})

            def compute_thread() -> None:  # the worker's compute thread reports while the writer pauses
                for step in range(51, 81):
                    reporter.report(S.SKETCHING, step, 80)

            await asyncio.to_thread(compute_thread)
            await channel.flush()
            assert tx.batches == [50, 30]
            assert (await store.get("j")).step == 80
            await channel.flush()  # nothing pending: returns at once, writes nothing
            assert tx.batches == [50, 30]

    _run(go())


def test_refusals_flag_the_attempts_they_concern(store_dsn: str) -> None:
    """One batch, six refusals: each flag has the store's reason and covers every attempt of the job,
    or (superseded, illegal) only the refused attempt and older ones, so a new attempt runs."""

    async def go():
        clock = Clock()
        store = await migrated_store(store_dsn, clock)
        fences = {job_id: await _job(store, job_id) for job_id in ("cancelled", "failed", "superseded", "illegal")}
        fences["late"] = await _job(store, "late", deadline_s=60)
        await store.cancel("cancelled")
        await store.fail("failed", ErrorCode.INTERNAL, "boom")
        newer = await store.begin_attempt("superseded", "sketch", "o", 3)
        clock.advance(61)
        async with channel_on(store) as channel:
            for job_id in ("cancelled", "failed", "superseded", "late"):
                channel.report(ProgressUpdate(job_id, fences[job_id], S.SKETCHING, 1, 5))
            channel.report(ProgressUpdate("illegal", fences["illegal"], S.RENDERING, 6, 20))
            channel.report(ProgressUpdate("gone", 1, S.SKETCHING, 1, 5))
            await channel.flush()

            def flag(job_id: str, fence: int) -> StopReason | None:
                return channel.stop_reason(job_id, fence, None)

            assert flag("cancelled", fences["cancelled"]) == flag("cancelled", 99) == R.CANCELLED
            assert flag("failed", fences["failed"]) == flag("failed", 99) == R.ENDED
            assert flag("late", fences["late"]) == flag("late", 99) == R.DEADLINE
            assert flag("gone", 1) == flag("gone", 99) == R.UNKNOWN
            assert flag("superseded", fences["superseded"]) == R.SUPERSEDED
            assert flag("superseded", newer.fence) is None  # the attempt that owns the job runs on
            assert flag("illegal", fences["illegal"]) == R.ILLEGAL
            assert flag("illegal", fences["illegal"] + 1) is None  # the next attempt starts clean
            assert (await store.get("illegal")).state == S.QUEUED  # refused: nothing applied

    _run(go())


def test_flags_and_the_ticket_deadline(store_dsn: str) -> None:
    async def go():
        clock = Clock()
        store = await migrated_store(store_dsn, clock)
        async with channel_on(store) as channel:
            deadline = clock() + 10
            assert channel.stop_reason("j", 3, deadline) is None
            clock.advance(11)
            assert channel.stop_reason("j", 3, deadline) == R.DEADLINE  # checked here, no store involved
            channel.stop("j", R.CANCELLED)
            channel.stop("j", R.SUPERSEDED, 2)  # narrower than the flag already there: it stays
            assert channel.stop_reason("j", 9, None) == R.CANCELLED
            channel.stop("k", R.ILLEGAL, 2)
            channel.stop("k", R.SUPERSEDED, 4)  # wider: replaces it
            assert channel.stop_reason("k", 4, None) == R.SUPERSEDED and channel.stop_reason("k", 5, None) is None

    _run(go())


def test_a_stop_notification_flags_every_attempt(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn)
        fence = await _job(store, "j")
        async with channel_on(store) as channel:  # LISTEN srserve_stop is in place
            flagged = asyncio.Event()
            stop = channel.stop

            def stop_and_tell(job_id: str, reason: StopReason, upto_fence: int | None = None) -> None:
                stop(job_id, reason, upto_fence)
                flagged.set()

            channel.stop = stop_and_tell  # type: ignore[method-assign]
            await store.cancel("j")  # no write of the attempt is refused: the notification alone stops it
            await asyncio.wait_for(flagged.wait(), 30)
            assert channel.stop_reason("j", fence, None) == channel.stop_reason("j", fence + 1, None) == R.CANCELLED

    _run(go())


async def _allow_connections(dsn: str, allowed: bool) -> None:
    """Open or close the test's database to new connections; closing also ends the open ones (an outage)."""
    base, _, database = dsn.rpartition("/")
    async with await psycopg.AsyncConnection.connect(f"{base}/postgres", autocommit=True) as admin:
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {'true' if allowed else 'false'}")
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )


def test_a_store_outage_keeps_the_updates_and_writes_them_once_back(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn, timeout_s=1.0)
        fence = await _job(store, "j")
        tx = Transactions(store)
        async with channel_on(store, retry_s=0.05) as channel:
            reporter = AttemptReporter(channel, StageTicket("j", fence, REQUEST), "sketch", "r1")
            await _allow_connections(store_dsn, False)
            try:
                reporter.report(S.SKETCHING, 0, 5, stamps={"sketch_start": 1.0})
                for step in range(1, 6):
                    reporter.report(S.SKETCHING, step, 5)
                reporter.report(stamps={"sketch_end": 2.0}, handoff_bytes=99)
                await asyncio.wait_for(tx.outage.wait(), 60)
                assert tx.batches == []  # nothing written, nothing dropped
            finally:
                await _allow_connections(store_dsn, True)
            await channel.flush()
            assert tx.batches == [7]  # all of it, in order, in one transaction
            job = await store.get("j")
            assert (job.state, job.step, job.handoff_bytes) == (S.SKETCHING, 5, 99)
            assert job.timeline["sketch_start"] == 1.0 and job.timeline["sketch_end"] == 2.0
            steps = [e.step for e in await store.events("j") if e.state == "sketching"]
            assert steps == [0, 1, 2, 3, 4, 5]

    _run(go())


def test_past_the_pending_limit_an_outage_keeps_the_newest_state_of_each_attempt(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn, timeout_s=1.0)
        fence = await _job(store, "j")
        tx = Transactions(store)
        async with channel_on(store, retry_s=0.05, max_pending=4) as channel:
            reporter = AttemptReporter(channel, StageTicket("j", fence, REQUEST), "sketch", "r1")
            await _allow_connections(store_dsn, False)
            try:
                reporter.report(S.ENCODING, 0, 1, stamps={"encode_start": 1.0})
                reporter.report(stamps={"encode_end": 2.0})
                for step in range(0, 9):
                    reporter.report(S.SKETCHING, step, 8, stamps={"sketch_start": 3.0} if step == 0 else None)
                await asyncio.wait_for(tx.outage.wait(), 60)
            finally:
                await _allow_connections(store_dsn, True)
            await channel.flush()
            assert tx.batches == [2]  # merged: each state's newest report, with every stamp
            job = await store.get("j")
            assert (job.state, job.step) == (S.SKETCHING, 8)
            assert job.timeline == {
                "submitted": job.created_at,
                "encode_start": 1.0,
                "encode_end": 2.0,
                "sketch_start": 3.0,
            }
            states = [e.state for e in await store.events("j")]
            assert "encoding" in states and states[-1] == "sketching"  # every transition was kept, in order

    _run(go())


def test_compaction_keeps_every_state_change_and_every_stamp() -> None:
    u = ProgressUpdate
    updates = [
        u("a", 1, S.ENCODING, 0, 1, {"encode_start": 1.0}),
        u("a", 1, None, None, None, {"encode_end": 2.0}),
        u("b", 1, S.SKETCHING, 1, 5),
        u("a", 1, S.SKETCHING, 1, 5, {"sketch_start": 3.0}),
        u("a", 1, S.SKETCHING, 2, 5, switch_step=2),
        u("a", 2, S.SKETCHING, 1, 5),  # another attempt: never merged with the first
        u("b", 1, S.SKETCHING, 4, 5, latents_sha256="x"),
    ]
    assert compact(updates) == [
        u("a", 1, S.ENCODING, 0, 1, {"encode_start": 1.0, "encode_end": 2.0}),
        u("b", 1, S.SKETCHING, 4, 5, latents_sha256="x"),
        u("a", 1, S.SKETCHING, 2, 5, {"sketch_start": 3.0}, switch_step=2),
        u("a", 2, S.SKETCHING, 1, 5),
    ]


@pytest.mark.parametrize("reason", list(StopReason))
def test_only_superseded_and_illegal_concern_a_single_attempt(reason: StopReason) -> None:
    assert reason.attempt_scoped is (reason in (R.SUPERSEDED, R.ILLEGAL))
