"""The job state machine and the PostgreSQL job store, without Ray: a real (embedded) server per session,
a fresh database per test. Transitions, admission, fencing, leases, cancel, deadline, stall, retention."""

from __future__ import annotations

import asyncio

import pytest

from srserve.serving.api.errors import grpc_status, http_status
from srserve.serving.control.errors import Overloaded
from srserve.serving.control.jobs import TERMINAL_STATES, ErrorCode, JobState
from srserve.serving.control.state_machine import ALLOWED, RESUMABLE_FROM, can_move, check_move, next_stage
from srserve.serving.control.store import (
    STOP_CHANNEL,
    AttemptsExhausted,
    JobStore,
    ProgressUpdate,
    StoreUnavailable,
    migrations,
)

S = JobState
REQUEST = {"prompt": "a fox", "num_inference_steps": 20, "switch": {"kind": "fixed", "step": 5}}
LIMITS = {"sketch": 100, "render": 100}
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
    if not expected:
        with pytest.raises(ValueError, match="not allowed"):
            check_move("j", current, requested)


def test_final_states_are_final_and_resumption_points() -> None:
    for state in TERMINAL_STATES:
        assert ALLOWED[state] == frozenset()
        assert next_stage(state, True) is None
    assert next_stage(S.SKETCHING, False) == "sketch"
    assert next_stage(S.RENDERING, True) == "render"
    assert RESUMABLE_FROM["render"] == {S.HANDED_OFF, S.RENDERING, S.DECODING}


# -- the store ----------------------------------------------------------------------------------
async def _store(dsn: str) -> JobStore:
    store = JobStore(dsn, timeout_s=3.0)
    await store.migrate()
    return store


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
        assert stale == {"j1": "superseded"}
        assert not await store.record_handoff("j1", first.fence, "k-old", 10, 5, {})
        assert not await store.record_handoff("j1", second.fence, "k", 10, 5, {})  # queued -> handed_off: illegal
        assert await store.apply_progress([ProgressUpdate("j1", second.fence, S.SKETCHING, 5, 5)]) == {}
        assert await store.record_handoff("j1", second.fence, "k", 10, 5, {"sketch_end": 1.0})
        job = await store.get("j1")
        assert (job.state, job.handoff_key, job.switch_step, job.step) == (S.HANDED_OFF, "k", 5, 5)
        render = await store.begin_attempt("j1", "render", "o1", 3)
        assert await store.apply_progress([ProgressUpdate("j1", render.fence, S.RENDERING, 6, 20)]) == {}
        illegal = await store.apply_progress([ProgressUpdate("j1", render.fence, S.SKETCHING, 1, 5)])
        assert illegal == {"j1": "illegal"}
        await store.apply_progress([ProgressUpdate("j1", render.fence, S.DECODING, 20, 20)])
        assert await store.complete("j1", render.fence - 1, "v-old", 3, {}, None) is None
        done = await store.complete("j1", render.fence, "v", 3, {"render_end": 2.0}, "abc")
        assert done.state == S.COMPLETED and done.video_key == "v" and done.latents_sha256 == "abc"
        events = await store.events("j1")
        states = [e.state for e in events]
        assert states[0] == "queued" and states[-1] == "completed"
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        assert await store.apply_progress([ProgressUpdate("j1", render.fence, S.DECODING, 20, 20)]) == {"j1": "ended"}
        await store.close()

    run(go())


def test_admission_is_global_per_phase(store_dsn: str) -> None:
    """Limits count the store's live jobs, whichever ingress admitted them."""

    async def go():
        store = await _store(store_dsn)
        limits = {"sketch": 2, "render": 1}
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


def test_cancel_refuses_writes_and_notifies_the_replicas(store_dsn: str) -> None:
    async def go():
        store = await _store(store_dsn)
        await _new(store)
        attempt = await store.begin_attempt("j1", "sketch", "o1", 3)
        heard: list[str] = []

        async def listen():
            async for payload in store.listen(STOP_CHANNEL):
                if payload:
                    heard.append(payload)
                    return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.3)  # LISTEN is in place
        job = await store.cancel("j1")
        assert job.state == S.CANCELLED and job.error_code == ErrorCode.CANCELLED
        await asyncio.wait_for(listener, 10)
        assert heard == ["j1"]
        assert await store.apply_progress([ProgressUpdate("j1", attempt.fence, S.SKETCHING, 1, 5)]) == {
            "j1": "cancelled"
        }
        assert (await store.cancel("j1")).state == S.CANCELLED  # idempotent
        assert await store.begin_attempt("j1", "sketch", "o1", 3) is None
        assert await store.cancel("nope") is None
        await store.close()

    run(go())


def test_deadline_stops_the_worker_at_the_next_write_and_the_sweep_fails_the_job(store_dsn: str) -> None:
    async def go():
        store = await _store(store_dsn)
        await _new(store, "j1", deadline_s=0.05)
        await _new(store, "j2", deadline_s=0.05)
        attempt = await store.begin_attempt("j1", "sketch", "o1", 3)
        await asyncio.sleep(0.1)
        assert await store.apply_progress([ProgressUpdate("j1", attempt.fence, S.SKETCHING, 1, 5)]) == {
            "j1": "deadline"
        }
        assert (await store.get("j1")).state == S.QUEUED  # refused, not ended: the sweep ends it, once
        swept = await store.sweep(stall_timeout_s=600)
        assert sorted(j.id for j in swept) == ["j1", "j2"]  # queued jobs expire too
        for job_id in ("j1", "j2"):
            job = await store.get(job_id)
            assert job.state == S.FAILED and job.error_code == ErrorCode.DEADLINE_EXCEEDED
        await store.close()

    run(go())


def test_stall_fails_running_jobs_only(store_dsn: str) -> None:
    async def go():
        store = await _store(store_dsn)
        await _new(store, "running")
        await _new(store, "waiting")
        attempt = await store.begin_attempt("running", "sketch", "o1", 3)
        await store.apply_progress([ProgressUpdate("running", attempt.fence, S.SKETCHING, 1, 5)])
        await asyncio.sleep(0.3)
        swept = await store.sweep(stall_timeout_s=0.2)
        assert [j.id for j in swept] == ["running"]
        job = await store.get("running")
        assert job.error_code == ErrorCode.STALLED and "no progress" in job.error
        assert (await store.get("waiting")).state == S.QUEUED  # queued is not stalled
        await store.close()

    run(go())


def test_leases_expire_and_are_claimed_once(store_dsn: str) -> None:
    """A dead driver's jobs go to exactly one orchestrator; a live driver's heartbeat keeps them."""

    async def go():
        store = await _store(store_dsn)
        await store.create("dead", REQUEST, 20, None, "ingress-dead", 0.2, LIMITS)
        await store.create("alive", REQUEST, 20, None, "ingress-alive", 0.2, LIMITS)
        await asyncio.sleep(0.1)
        assert await store.heartbeat("ingress-alive", 30) == 1
        await asyncio.sleep(0.25)
        first, second = await asyncio.gather(store.claim("ingress-a", 30), store.claim("ingress-b", 30))
        assert sorted(first + second) == ["dead"]
        owner = "ingress-a" if first else "ingress-b"
        assert (await store.get("dead")).lease_owner == owner
        assert await store.begin_attempt("dead", "sketch", "ingress-dead", 3) is None  # lost its lease
        assert await store.begin_attempt("dead", "sketch", owner, 3) is not None
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
        with pytest.raises(AttemptsExhausted):
            await store.begin_attempt("j1", "sketch", "o1", 2)
        assert await store.begin_attempt("j1", "sketch", "o1", 2) is None  # ended now
        job = await store.get("j1")
        assert job.state == S.FAILED and "sketch failed 2 times" in job.error
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
        store = await _store(store_dsn)
        for i in range(5):
            await _new(store, f"j{i}")
            await store.cancel(f"j{i}")
        await _new(store, "live")
        gone = await store.expire(retain_jobs=3, retain_age_s=None)
        assert sorted(j.id for j in gone) == ["j0", "j1"]  # the oldest finished ones
        await asyncio.sleep(0.05)
        gone = await store.expire(retain_jobs=100, retain_age_s=0.01)
        assert sorted(j.id for j in gone) == ["j2", "j3", "j4"]
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
    assert http_status(err.value) == 503 and grpc_status(err.value) == "UNAVAILABLE" and "unavailable" in err.message
