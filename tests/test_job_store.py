"""The job state machine and the PostgreSQL job store, without Ray: a real (embedded) server per session,
a fresh database per test. Transitions, admission, fencing, refusals, leases, cancel, deadline, stall,
retention. Time is a clock the tests move (leases: the database's clock, with lapsed TTLs)."""

from __future__ import annotations

import asyncio

import pytest

from srserve.serving.api.errors import grpc_status, http_status
from srserve.serving.config import PoolConfig, PoolLayout
from srserve.serving.control.attempts import StopReason
from srserve.serving.control.errors import Overloaded
from srserve.serving.control.jobs import TERMINAL_STATES, ErrorCode, Job, JobState
from srserve.serving.control.state_machine import ALLOWED, RESUMABLE_FROM, can_move, next_stage
from srserve.serving.control.store.job_store import (
    STOP_CHANNEL,
    AttemptsExhausted,
    JobStore,
    ProgressUpdate,
    StoreUnavailable,
    migrations,
    parse_stop,
    stop_payload,
)
from tests.store_helpers import LIMITS, REQUEST, Clock, migrated_store

S = JobState
R = StopReason
FORWARD = [S.QUEUED, S.ENCODING, S.SKETCHING, S.HANDED_OFF, S.RENDERING, S.DECODING, S.COMPLETED]


def run(coro):
    return asyncio.run(coro)


# -- the state machine (pure) -------------------------------------------------------------------
@pytest.mark.parametrize("current", list(JobState))
@pytest.mark.parametrize("requested", list(JobState))
def test_every_transition(current: JobState, requested: JobState) -> None:
    """The whole table: the forward path, failed/cancelled from any live state, nothing out of a final state."""
    live = current not in TERMINAL_STATES
    forward = current in FORWARD[:-1] and requested == FORWARD[FORWARD.index(current) + 1]
    expected = (
        (live and requested == current)
        or forward
        or (current == S.QUEUED and requested == S.SKETCHING)  # prompt encoded by the text pool
        or (live and requested in (S.FAILED, S.CANCELLED))
    )
    assert can_move(current, requested) is expected


def test_final_states_are_final_and_resumption_points() -> None:
    for state in TERMINAL_STATES:
        assert ALLOWED[state] == frozenset()
        assert next_stage(state, True) is None
    assert next_stage(S.SKETCHING, False) == "sketch"
    assert next_stage(S.RENDERING, True) == "render"
    assert RESUMABLE_FROM["render"] == {S.HANDED_OFF, S.RENDERING, S.DECODING}


# -- the store ----------------------------------------------------------------------------------
async def _store(dsn: str, clock: Clock | None = None) -> JobStore:
    return await migrated_store(dsn, clock)


async def _new(store: JobStore, job_id: str = "j1", deadline_s: float | None = None, owner: str = "o1") -> None:
    await store.create(job_id, REQUEST, 20, deadline_s, owner, 30.0, LIMITS)


def test_migrations_apply_once_and_are_numbered(store_dsn: str) -> None:
    async def go():
        store = await _store(store_dsn)
        again = await store.migrate()
        await store.close()
        return again

    assert run(go()) == migrations()[-1][0] >= 1


def test_forward_path_with_fencing(store_dsn: str) -> None:
    """A job walks the whole path; a write from a superseded attempt is refused and changes nothing."""

    async def go():
        store = await _store(store_dsn)
        await _new(store)
        first = await store.begin_attempt("j1", "sketch", "o1", 3)
        refused = await store.apply_progress(
            [ProgressUpdate("j1", first.fence, S.ENCODING, 0, 1), ProgressUpdate("j1", first.fence, S.SKETCHING, 2, 5)]
        )
        assert refused == {}
        second = await store.begin_attempt("j1", "sketch", "o1", 3)  # the first attempt's replica died
        assert second.fence == first.fence + 1 and second.state == S.QUEUED and second.attempts == {"sketch": 2}
        stale = await store.apply_progress([ProgressUpdate("j1", first.fence, S.SKETCHING, 4, 5)])
        assert stale == {("j1", first.fence): R.SUPERSEDED}
        assert await store.record_handoff("j1", first.fence, "k-old", 10, 5, {}) == R.SUPERSEDED
        # queued -> handed_off is not a move the machine allows: refused, the job stays live
        assert await store.record_handoff("j1", second.fence, "k", 10, 5, {}) == R.ILLEGAL
        assert await store.apply_progress([ProgressUpdate("j1", second.fence, S.SKETCHING, 5, 5)]) == {}
        handed = await store.record_handoff("j1", second.fence, "k", 10, 5, {"sketch_end": 1.0})
        assert isinstance(handed, Job) and handed.state == S.HANDED_OFF
        job = await store.get("j1")
        assert (job.state, job.handoff_key, job.switch_step, job.step) == (S.HANDED_OFF, "k", 5, 5)
        render = await store.begin_attempt("j1", "render", "o1", 3)
        assert await store.apply_progress([ProgressUpdate("j1", render.fence, S.RENDERING, 6, 20)]) == {}
        illegal = await store.apply_progress([ProgressUpdate("j1", render.fence, S.SKETCHING, 1, 5)])
        assert illegal == {("j1", render.fence): R.ILLEGAL}
        await store.apply_progress([ProgressUpdate("j1", render.fence, S.DECODING, 20, 20)])
        assert await store.complete("j1", render.fence - 1, "v-old", 3, {}, None) == R.SUPERSEDED
        done = await store.complete("j1", render.fence, "v", 3, {"render_end": 2.0}, "abc")
        assert done.state == S.COMPLETED and done.video_key == "v" and done.latents_sha256 == "abc"
        events = await store.events("j1")
        states = [e.state for e in events]
        assert states[0] == "queued" and states[-1] == "completed"
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        ended = await store.apply_progress([ProgressUpdate("j1", render.fence, S.DECODING, 20, 20)])
        assert ended == {("j1", render.fence): R.ENDED}
        assert await store.complete("j1", render.fence, "v", 3, {}, None) == R.ENDED
        assert await store.record_handoff("nope", 1, "k", 1, 1, {}) == R.UNKNOWN
        await store.close()

    run(go())


def test_admission_is_global_per_phase(store_dsn: str) -> None:
    """Limits count the store's live jobs, whichever ingress admitted them."""

    async def go():
        store = await _store(store_dsn)
        limits = PoolLayout.disaggregated(PoolConfig(max_backlog=2), PoolConfig(max_backlog=1)).backlogs()
        await store.create("a", REQUEST, 20, None, "ingress-1", 30, limits)
        await store.create("b", REQUEST, 20, None, "ingress-2", 30, limits)
        with pytest.raises(Overloaded, match="sketch pool is full"):
            await store.create("c", REQUEST, 20, None, "ingress-3", 30, limits)
        await store.create("h", REQUEST, 20, None, "ingress-1", 30, limits, handoff=("k", 10, 5))
        with pytest.raises(Overloaded, match="render pool is full"):
            await store.create("h2", REQUEST, 20, None, "ingress-1", 30, limits, handoff=("k2", 10, 5))
        await store.cancel("a")
        with pytest.raises(Overloaded, match="render pool is full"):  # a prompt needs room in both phases
            await store.create("c", REQUEST, 20, None, "ingress-3", 30, limits)
        await store.cancel("h")
        await store.create("c", REQUEST, 20, None, "ingress-3", 30, limits)  # room again
        await store.close()

    run(go())


def test_admission_counts_a_colocated_pool_once_for_both_phases(store_dsn: str) -> None:
    """One pool runs both phases: its backlog counts jobs in either, uploaded handoffs included."""

    async def go():
        store = await _store(store_dsn)
        limits = PoolLayout.colocated(PoolConfig(max_backlog=2)).backlogs()
        assert [(b.pool, b.phases, b.max_jobs) for b in limits] == [("colocated", {"sketch", "render"}, 2)]
        await store.create("a", REQUEST, 20, None, "ingress-1", 30, limits)
        await store.create("h", REQUEST, 20, None, "ingress-1", 30, limits, handoff=("k", 10, 5))
        for job_id, handoff in (("c", None), ("h2", ("k2", 10, 5))):
            with pytest.raises(Overloaded, match="colocated pool is full \\(2 jobs waiting\\)"):
                await store.create(job_id, REQUEST, 20, None, "ingress-1", 30, limits, handoff=handoff)
        await store.cancel("h")
        await store.create("c", REQUEST, 20, None, "ingress-3", 30, limits)  # room again
        await store.close()

    run(go())


def test_cancel_refuses_writes_and_notifies_the_replicas(store_dsn: str) -> None:
    async def go():
        store = await _store(store_dsn)
        await _new(store)
        attempt = await store.begin_attempt("j1", "sketch", "o1", 3)
        heard: list[str] = []
        listening = asyncio.Event()

        async def listen():
            async for payload in store.listen(STOP_CHANNEL):
                if not payload:  # "" comes once LISTEN is in place
                    listening.set()
                    continue
                heard.append(payload)
                return

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(listening.wait(), 30)
        job = await store.cancel("j1")
        assert job.state == S.CANCELLED and job.error_code == ErrorCode.CANCELLED
        await asyncio.wait_for(listener, 30)
        assert [parse_stop(p) for p in heard] == [("j1", R.CANCELLED)]
        refused = await store.apply_progress([ProgressUpdate("j1", attempt.fence, S.SKETCHING, 1, 5)])
        assert refused == {("j1", attempt.fence): R.CANCELLED}
        assert (await store.cancel("j1")).state == S.CANCELLED  # idempotent
        assert await store.begin_attempt("j1", "sketch", "o1", 3) is None
        assert await store.cancel("nope") is None
        await store.close()

    run(go())


def test_deadline_stops_the_worker_at_the_next_write_and_the_sweep_fails_the_job(store_dsn: str) -> None:
    async def go():
        clock = Clock()
        store = await _store(store_dsn, clock)
        await _new(store, "j1", deadline_s=10)
        await _new(store, "j2", deadline_s=10)
        attempt = await store.begin_attempt("j1", "sketch", "o1", 3)
        assert await store.apply_progress([ProgressUpdate("j1", attempt.fence, S.SKETCHING, 1, 5)]) == {}
        assert await store.sweep(stall_timeout_s=600) == []
        clock.advance(10.5)
        refused = await store.apply_progress([ProgressUpdate("j1", attempt.fence, S.SKETCHING, 2, 5)])
        assert refused == {("j1", attempt.fence): R.DEADLINE}
        assert (await store.get("j1")).state == S.SKETCHING  # refused, not ended: whoever ends it records it
        swept = await store.sweep(stall_timeout_s=600)
        assert sorted(j.id for j in swept) == ["j1", "j2"]  # queued jobs expire too
        for job_id in ("j1", "j2"):
            job = await store.get(job_id)
            assert job.state == S.FAILED and job.error_code == ErrorCode.DEADLINE_EXCEEDED
        assert await store.fail("j1", ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded") is None  # ended once
        refused = await store.apply_progress([ProgressUpdate("j1", attempt.fence, S.SKETCHING, 3, 5)])
        assert refused == {("j1", attempt.fence): R.DEADLINE}  # ended for its deadline
        await store.close()

    run(go())


def test_stall_fails_running_jobs_only(store_dsn: str) -> None:
    async def go():
        clock = Clock()
        store = await _store(store_dsn, clock)
        await _new(store, "running")
        await _new(store, "waiting")
        attempt = await store.begin_attempt("running", "sketch", "o1", 3)
        await store.apply_progress([ProgressUpdate("running", attempt.fence, S.SKETCHING, 1, 5)])
        clock.advance(60)
        assert await store.sweep(stall_timeout_s=600) == []
        await store.apply_progress([ProgressUpdate("running", attempt.fence, S.SKETCHING, 2, 5)])
        clock.advance(599)
        assert await store.sweep(stall_timeout_s=600) == []  # progress 599 s ago: not stalled yet
        clock.advance(2)
        swept = await store.sweep(stall_timeout_s=600)
        assert [j.id for j in swept] == ["running"]
        job = await store.get("running")
        assert job.error_code == ErrorCode.STALLED and "no progress" in job.error
        assert (await store.get("waiting")).state == S.QUEUED  # queued is not stalled
        await store.close()

    run(go())


def test_leases_expire_and_are_claimed_once(store_dsn: str) -> None:
    """A dead driver's jobs go to exactly one orchestrator; a live driver's heartbeat keeps them.

    Leases run on the database's clock: a negative TTL is a lease that has already lapsed."""

    async def go():
        store = await _store(store_dsn)
        await store.create("dead", REQUEST, 20, None, "ingress-dead", -1.0, LIMITS)
        await store.create("alive", REQUEST, 20, None, "ingress-alive", -1.0, LIMITS)
        assert await store.heartbeat("ingress-alive", 30) == 1  # renewed before anyone looked
        first, second = await asyncio.gather(store.claim("ingress-a", 30), store.claim("ingress-b", 30))
        assert sorted(first + second) == ["dead"]
        owner = "ingress-a" if first else "ingress-b"
        assert (await store.get("dead")).lease_owner == owner
        assert (await store.get("alive")).lease_owner == "ingress-alive"
        assert await store.begin_attempt("dead", "sketch", "ingress-dead", 3) is None  # lost its lease
        assert await store.begin_attempt("dead", "sketch", owner, 3) is not None
        assert await store.claim("ingress-c", 30) == []  # held, and heartbeaten: nothing to take
        assert await store.release(owner) == 1
        assert await store.claim("ingress-c", 30) == ["dead"]  # released: taken at once
        await store.close()

    run(go())


def test_attempts_are_bounded(store_dsn: str) -> None:
    async def go():
        store = await _store(store_dsn)
        await _new(store)
        for _ in range(2):
            assert await store.begin_attempt("j1", "sketch", "o1", 2) is not None
        with pytest.raises(AttemptsExhausted) as exhausted:
            await store.begin_attempt("j1", "sketch", "o1", 2, "sketch replica lost: gone")
        assert exhausted.value.job.state == S.FAILED
        assert await store.begin_attempt("j1", "sketch", "o1", 2) is None  # ended now
        job = await store.get("j1")
        assert (
            job.state == S.FAILED and job.error == "sketch failed 2 times; giving up (last: sketch replica lost: gone)"
        )
        await store.close()

    run(go())


def test_lost_handoff_goes_back_to_sketch(store_dsn: str) -> None:
    async def go():
        store = await _store(store_dsn)
        await store.create("h", REQUEST, 20, None, "o1", 30, LIMITS, handoff=("k", 10, 5))
        job = await store.get("h")
        assert (job.state, job.handoff_key, job.switch_step) == (S.HANDED_OFF, "k", 5)
        await store.drop_handoff("h", "o1")
        job = await store.get("h")
        assert (job.state, job.handoff_key) == (S.QUEUED, None)
        assert next_stage(job.state, job.handoff_key is not None) == "sketch"
        await store.close()

    run(go())


def test_retention_by_count_and_age(store_dsn: str) -> None:
    async def go():
        clock = Clock()
        store = await _store(store_dsn, clock)
        for i in range(5):
            await _new(store, f"j{i}")
            await store.cancel(f"j{i}")
            clock.advance(10)  # j4 finished 10 s ago, j0 50 s ago
        await _new(store, "live")
        gone = await store.expire(retain_jobs=3, retain_age_s=None)
        assert sorted(j.id for j in gone) == ["j0", "j1"]  # the oldest finished ones
        gone = await store.expire(retain_jobs=100, retain_age_s=25)
        assert sorted(j.id for j in gone) == ["j2"]
        clock.advance(1000)
        gone = await store.expire(retain_jobs=100, retain_age_s=25)
        assert sorted(j.id for j in gone) == ["j3", "j4"]
        assert (await store.get("live")).state == S.QUEUED  # live jobs are never expired
        assert await store.events("j0") == []  # their events went with them
        await store.close()

    run(go())


def test_list_pagination_and_forget(store_dsn: str) -> None:
    async def go():
        store = await _store(store_dsn)
        for i in range(5):
            await _new(store, f"j{i}")
        page, more = await store.list_jobs(limit=2)
        assert [j.id for j in page] == ["j4", "j3"] and more
        page, more = await store.list_jobs(limit=2, after="j3")
        assert [j.id for j in page] == ["j2", "j1"] and more
        page, more = await store.list_jobs(limit=10, after="j1", order="desc")
        assert [j.id for j in page] == ["j0"] and not more
        page, _ = await store.list_jobs(limit=2, order="asc")
        assert [j.id for j in page] == ["j0", "j1"]
        forgotten = await store.forget("j2")
        assert forgotten.state == S.CANCELLED and await store.get("j2") is None
        assert await store.forget("j2") is None
        counts = await store.counts()
        assert counts["queued"] == 4 and counts["completed"] == 0
        await store.close()

    run(go())


def test_unreachable_store_is_a_clear_503() -> None:
    """No server on the port: StoreUnavailable (HTTP 503 / UNAVAILABLE) within the timeout, not a hang."""

    async def go():
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        store = JobStore(f"postgresql://postgres@127.0.0.1:{port}/srserve", timeout_s=1.0)
        with pytest.raises(StoreUnavailable) as err:  # the pool's timeout ends the wait, not a TCP hang
            await store.get("x")
        await store.close()
        return err.value

    err = run(go())
    assert http_status(err) == 503 and grpc_status(err) == "UNAVAILABLE" and "unavailable" in err.message


def test_a_batch_applies_what_it_can_and_refuses_per_attempt(store_dsn: str) -> None:
    """In one batch: a stale attempt's update is refused while the newer attempt's are applied; a job's
    updates before a refused one stay applied (their events were sent); typed details land on the job."""

    async def go():
        store = await _store(store_dsn)
        await _new(store, "a")
        await _new(store, "b")
        old = await store.begin_attempt("a", "sketch", "o1", 3)
        new = await store.begin_attempt("a", "sketch", "o1", 3)
        b = await store.begin_attempt("b", "sketch", "o1", 3)
        refused = await store.apply_progress(
            [
                ProgressUpdate("a", old.fence, S.SKETCHING, 3, 5),
                ProgressUpdate("a", new.fence, S.SKETCHING, 1, 5, {"sketch_start": 7.0}, ("sketch", "r1")),
                ProgressUpdate("b", b.fence, S.SKETCHING, 5, 5, handoff_bytes=123, switch_step=5),
                ProgressUpdate("b", b.fence, S.RENDERING, 6, 20),  # sketching -> rendering: illegal
                ProgressUpdate("b", b.fence, S.SKETCHING, 5, 5, latents_sha256="skipped"),  # after its refusal
                ProgressUpdate("a", new.fence, S.SKETCHING, 2, 5, latents_sha256="d"),
            ]
        )
        assert refused == {("a", old.fence): R.SUPERSEDED, ("b", b.fence): R.ILLEGAL}
        a_job, b_job = await store.get("a"), await store.get("b")
        assert (a_job.state, a_job.step, a_job.latents_sha256) == (S.SKETCHING, 2, "d")
        assert a_job.timeline["sketch_start"] == 7.0 and a_job.replicas == {"sketch": "r1"}
        assert (b_job.state, b_job.step, b_job.handoff_bytes, b_job.switch_step) == (S.SKETCHING, 5, 123, 5)
        assert b_job.latents_sha256 is None
        assert [e.step for e in await store.events("b") if e.state == "sketching"] == [5]
        await store.close()

    run(go())


def test_stop_notifications_say_why() -> None:
    for reason in StopReason:
        assert parse_stop(stop_payload("video_1", reason)) == ("video_1", reason)
    assert parse_stop("video_1") == ("video_1", R.ENDED)  # a bare job id: it ended
    assert parse_stop("bogus:video_1") == ("bogus:video_1", R.ENDED)


def test_progress_updates_merge_newest_first_with_every_stamp() -> None:
    older = ProgressUpdate("j", 2, S.SKETCHING, 3, 5, {"sketch_start": 1.0}, ("sketch", "r1"), handoff_bytes=9)
    newer = ProgressUpdate("j", 2, None, 4, None, {"sketch_end": 2.0}, switch_step=4)
    merged = older.merged(newer)
    assert merged == ProgressUpdate(
        "j", 2, S.SKETCHING, 4, 5, {"sketch_start": 1.0, "sketch_end": 2.0}, ("sketch", "r1"), 4, 9, None
    )
