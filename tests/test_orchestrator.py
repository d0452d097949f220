"""The orchestrator against a real job store and artifact storage, without Ray: every stage outcome and
every reason an attempt stops. The pools are played by `Pools.run_stage`, which writes its progress
and its durable results through the same AttemptReporter and ProgressChannel the pool replicas use."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from srserve.serving.control.artifacts import ArtifactNotFound, ArtifactStore, ArtifactStoreConfig
from srserve.serving.control.attempts import Outcome, StageResult, StageTicket, StopReason
from srserve.serving.control.jobs import ErrorCode, Job, JobState, handoff_key, video_key
from srserve.serving.control.orchestrator import Orchestrator, OrchestratorSettings
from srserve.serving.control.progress import AttemptReporter, ProgressChannel
from srserve.serving.control.store.job_store import JobStore
from tests.store_helpers import LIMITS, REQUEST, Clock, migrated_store

S = JobState
R = StopReason
STEPS, SWITCH = 4, 2
# A point in a stage where a test steps in: it gets the attempt's reporter and the stage's attempt
# number (1, 2, ...), and may act (cancel, move the clock), raise, or answer for the stage.
Hook = Callable[[AttemptReporter, int], Awaitable[StageResult | None]]


class ReplicaGone(RuntimeError):
    """What a lost replica looks like to this orchestrator (its `replica_lost` says so)."""


class Pools:
    """The sketch and render pools without models: a few reported steps, then the durable write."""

    def __init__(self, store: JobStore, artifacts: ArtifactStore) -> None:
        self.store = store
        self.artifacts = artifacts
        self.channel = ProgressChannel(store)
        self.hooks: dict[str, Hook] = {}
        self.calls: list[tuple[str, StageTicket]] = []
        self.results: list[StageResult] = []

    def stages(self) -> list[str]:
        return [stage for stage, _ in self.calls]

    async def run_stage(self, stage: str, ticket: StageTicket) -> StageResult:
        self.calls.append((stage, ticket))
        attempt = sum(1 for s, t in self.calls if s == stage and t.job_id == ticket.job_id)
        reporter = AttemptReporter(self.channel, ticket, stage, "replica-1")
        body = self._sketch if stage == "sketch" else self._render
        result = await body(reporter, attempt)
        self.results.append(result)
        return result

    async def _hook(self, point: str, reporter: AttemptReporter, attempt: int) -> StageResult | None:
        hook = self.hooks.get(point)
        return None if hook is None else await hook(reporter, attempt)

    async def _step(self, reporter: AttemptReporter, state: JobState, step: int, total: int, **details) -> bool:
        """Report a step and wait until it is written (so a refusal is flagged); False: stop here."""
        reporter.report(state, step, total, **details)
        await self.channel.flush()
        return not reporter.cancelled()

    async def _sketch(self, reporter: AttemptReporter, attempt: int) -> StageResult:
        if reporter.cancelled():
            return reporter.stopped()
        if (answer := await self._hook("sketch_start", reporter, attempt)) is not None:
            return answer
        if not await self._step(reporter, S.SKETCHING, 1, SWITCH, stamps={"sketch_start": 1.0}):
            return reporter.stopped()
        if (answer := await self._hook("sketch", reporter, attempt)) is not None:
            return answer
        if not await self._step(reporter, S.SKETCHING, SWITCH, SWITCH, handoff_bytes=7):
            return reporter.stopped()
        if (answer := await self._hook("hand_off", reporter, attempt)) is not None:
            return answer
        return await reporter.hand_off(self.artifacts, b"handoff", SWITCH, {"sketch_end": 2.0})

    async def _render(self, reporter: AttemptReporter, attempt: int) -> StageResult:
        key = reporter.ticket.handoff_key
        try:
            assert key is not None
            assert await self.artifacts.get_async(key) == b"handoff"
        except ArtifactNotFound:
            return StageResult.handoff_lost()
        if reporter.cancelled():
            return reporter.stopped()
        if not await self._step(reporter, S.RENDERING, SWITCH + 1, STEPS, stamps={"render_start": 3.0}):
            return reporter.stopped()
        if (answer := await self._hook("render", reporter, attempt)) is not None:
            return answer
        if not await self._step(reporter, S.DECODING, STEPS, STEPS, latents_sha256="abc"):
            return reporter.stopped()
        if (answer := await self._hook("complete", reporter, attempt)) is not None:
            return answer
        result, _job = await reporter.complete(self.artifacts, b"mp4", "abc", {"render_end": 4.0})
        return result


class Bench:
    """A store, artifact storage, the pools and one orchestrator ("o") on one event loop."""

    def __init__(self, store: JobStore, artifacts: ArtifactStore, clock: Clock, max_attempts: int = 3) -> None:
        self.store = store
        self.artifacts = artifacts
        self.clock = clock
        self.pools = Pools(store, artifacts)
        self.ended: list[Job] = []
        self.bound: list[str] = []
        self.orchestrator = Orchestrator(
            store,
            artifacts,
            "o",
            OrchestratorSettings(max_attempts=max_attempts),
            self.pools.run_stage,
            lambda exc: isinstance(exc, ReplicaGone),
            on_job_ended=self.ended.append,
            bind_job=self.bound.append,
        )

    async def submit(self, job_id: str = "j", deadline_s: float | None = None, handoff: bytes | None = None) -> None:
        stored = None
        if handoff is not None:
            key = handoff_key(job_id, 0)
            await self.artifacts.put_async(key, handoff)
            stored = (key, len(handoff), SWITCH)
        await self.store.create(job_id, REQUEST, STEPS, deadline_s, "o", 30, LIMITS, stored)

    async def drive(self, job_id: str = "j") -> Job:
        """Drive the job until the orchestrator lets it go; the job as the store has it then."""
        await asyncio.wait_for(self.orchestrator.drive(job_id), 60)
        job = await self.store.get(job_id)
        assert job is not None
        return job


@pytest.fixture
def bench(store_dsn: str, tmp_path: Path):
    """Runs a test's coroutine `go(bench)` on a fresh loop with everything open, then closes it all."""

    def run(go: Callable[[Bench], Awaitable[None]], max_attempts: int = 3) -> None:
        async def main() -> None:
            clock = Clock()
            store = await migrated_store(store_dsn, clock)
            artifacts = ArtifactStore.from_config(ArtifactStoreConfig(path=str(tmp_path / "artifacts")))
            b = Bench(store, artifacts, clock, max_attempts)
            b.pools.channel.start()
            try:
                await go(b)
            finally:
                await b.pools.channel.close()
                await store.close()

        asyncio.run(main())

    return run


def _completed(job: Job, b: Bench) -> None:
    assert job.state == S.COMPLETED and job.error is None
    assert (job.switch_step, job.handoff_bytes, job.latents_sha256) == (SWITCH, 7, "abc")
    assert job.video_key is not None and b.artifacts.get(job.video_key) == b"mp4"
    assert job.handoff_key is not None
    with pytest.raises(ArtifactNotFound):  # served its purpose
        b.artifacts.get(job.handoff_key)
    assert b.ended == []  # a completed job is recorded by the replica that completed it


# -- stage outcomes -------------------------------------------------------------------------
def test_a_prompt_is_sketched_handed_off_and_rendered(bench) -> None:
    async def go(b: Bench) -> None:
        await b.submit()
        job = await b.drive()
        _completed(job, b)
        assert b.pools.stages() == ["sketch", "render"]
        assert [r.outcome for r in b.pools.results] == [Outcome.HANDED_OFF, Outcome.COMPLETED]
        assert b.pools.results[0] == StageResult.handed_off(handoff_key("j", 1), SWITCH)
        assert b.pools.results[1] == StageResult.completed(3, SWITCH)
        render = b.pools.calls[1][1]
        assert (render.fence, render.handoff_key, render.request) == (2, handoff_key("j", 1), REQUEST)
        assert job.attempts == {"sketch": 1, "render": 1} and b.bound == ["j"]

    bench(go)


def test_an_uploaded_handoff_goes_straight_to_render(bench) -> None:
    async def go(b: Bench) -> None:
        await b.submit(handoff=b"handoff")
        job = await b.drive()
        _completed(job, b)
        assert b.pools.stages() == ["render"]
        assert b.pools.calls[0][1].handoff_key == handoff_key("j", 0)
        assert job.attempts == {"render": 1}

    bench(go)


def test_a_lost_handoff_is_sketched_again(bench) -> None:
    async def go(b: Bench) -> None:
        await b.submit(handoff=b"handoff")
        b.artifacts.delete(handoff_key("j", 0))  # gone from storage before the render reads it
        job = await b.drive()
        _completed(job, b)
        assert b.pools.stages() == ["render", "sketch", "render"]
        assert b.pools.results[0] == StageResult.handoff_lost()
        assert job.attempts == {"render": 2, "sketch": 1}

    bench(go)


def test_a_lost_replica_runs_the_stage_again(bench) -> None:
    async def go(b: Bench) -> None:
        async def die_once(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            if attempt == 1:
                raise ReplicaGone("actor died")
            return None

        b.pools.hooks["render"] = die_once
        await b.submit()
        job = await b.drive()
        _completed(job, b)
        assert b.pools.stages() == ["sketch", "render", "render"]  # from the stored handoff: no new sketch
        assert job.attempts == {"sketch": 1, "render": 2}

    bench(go)


def test_used_up_attempts_fail_the_job_with_the_last_reason(bench) -> None:
    async def go(b: Bench) -> None:
        async def die(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            raise ReplicaGone("actor died")

        b.pools.hooks["sketch"] = die
        await b.submit()
        job = await b.drive()
        assert job.state == S.FAILED and job.error_code == ErrorCode.INTERNAL
        assert job.error == "sketch failed 3 times; giving up (last: sketch replica lost: actor died)"
        assert b.pools.stages() == ["sketch"] * 3
        assert [j.id for j in b.ended] == ["j"] and b.ended[0].state == S.FAILED  # recorded once, here

    bench(go)


def test_a_stage_raising_fails_the_job(bench) -> None:
    async def go(b: Bench) -> None:
        async def bad(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            raise ValueError("the handoff does not fit this pair\nshape mismatch")

        b.pools.hooks["render"] = bad
        await b.submit()
        job = await b.drive()
        assert (job.state, job.error_code, job.error) == (S.FAILED, ErrorCode.INTERNAL, "shape mismatch")
        assert [j.id for j in b.ended] == ["j"]

    bench(go)


# -- why a stopped attempt stopped ------------------------------------------------------------
def test_a_refused_write_that_leaves_the_job_live_runs_the_attempt_again(bench) -> None:
    """The latent bug: a refusal that does not end the job (an illegal move) stopped the worker, and the
    orchestrator let the job go, live and leased by its heartbeat until the stall sweep (never, while
    queued). Now the next attempt starts at once, and its new fencing token is not caught by the flag."""

    async def go(b: Bench) -> None:
        async def illegal_once(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            if attempt == 1:  # a report the state machine refuses: sketching -> rendering
                assert await b.pools._step(reporter, S.RENDERING, 3, STEPS) is False
                assert reporter.reason == R.ILLEGAL
                return reporter.stopped()
            return None

        b.pools.hooks["sketch"] = illegal_once
        await b.submit()
        job = await b.drive()
        assert b.pools.results[0] == StageResult.stopped(R.ILLEGAL)
        _completed(job, b)
        assert b.pools.stages() == ["sketch", "sketch", "render"]
        assert job.attempts == {"sketch": 2, "render": 1}

    bench(go)


def test_a_write_refused_every_time_fails_the_job_after_the_attempt_cap(bench) -> None:
    async def go(b: Bench) -> None:
        async def hand_off_from_queued(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            # the sketch records its handoff before reporting anything: queued -> handed_off is refused
            return await reporter.hand_off(b.artifacts, b"handoff", SWITCH, {})

        b.pools.hooks["sketch_start"] = hand_off_from_queued
        await b.submit()
        job = await b.drive()
        assert b.pools.results == [StageResult.stopped(R.ILLEGAL)] * 3
        for fence in (1, 2, 3):  # the refused attempts' handoffs were removed again
            with pytest.raises(ArtifactNotFound):
                b.artifacts.get(handoff_key("j", fence))
        assert job.state == S.FAILED and job.error_code == ErrorCode.INTERNAL
        assert job.error == (
            "sketch failed 3 times; giving up (last: sketch stopped: the store refused its write (illegal))"
        )
        assert [j.id for j in b.ended] == ["j"]

    bench(go)


def test_a_stop_without_a_reason_runs_the_attempt_again(bench) -> None:
    async def go(b: Bench) -> None:
        async def unexplained(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            return StageResult.stopped(None) if attempt == 1 else None

        b.pools.hooks["sketch"] = unexplained
        await b.submit()
        job = await b.drive()
        _completed(job, b)
        assert job.attempts == {"sketch": 2, "render": 1}

    bench(go)


def test_cancel_during_a_stage_lets_the_job_go(bench) -> None:
    async def go(b: Bench) -> None:
        async def cancel(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            await b.store.cancel("j")  # the client, through the API
            return None

        b.pools.hooks["sketch"] = cancel
        await b.submit()
        job = await b.drive()
        assert b.pools.results == [StageResult.stopped(R.CANCELLED)]
        assert job.state == S.CANCELLED and b.pools.stages() == ["sketch"]
        assert b.ended == []  # the cancel is recorded where it was made

    bench(go)


def test_a_cancel_just_before_the_video_is_stored_leaves_no_video(bench) -> None:
    async def go(b: Bench) -> None:
        async def cancel(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            await b.store.cancel("j")
            reporter.reason = None  # the worker did not look again before its durable write
            return None

        b.pools.hooks["complete"] = cancel
        await b.submit()
        job = await b.drive()
        assert b.pools.results[-1] == StageResult.stopped(R.CANCELLED)  # complete() was refused
        assert job.state == S.CANCELLED and job.video_key is None
        with pytest.raises(ArtifactNotFound):
            b.artifacts.get(video_key("j", 2))

    bench(go)


def test_a_job_ended_elsewhere_is_let_go(bench) -> None:
    async def go(b: Bench) -> None:
        async def fail(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            await b.store.fail("j", ErrorCode.INTERNAL, "failed by another orchestrator")
            return None

        b.pools.hooks["render"] = fail
        await b.submit()
        job = await b.drive()
        assert b.pools.results[-1] == StageResult.stopped(R.ENDED)
        assert job.state == S.FAILED and job.error == "failed by another orchestrator"
        assert b.ended == []  # whoever failed it records it

    bench(go)


def test_a_deleted_job_is_let_go(bench) -> None:
    async def go(b: Bench) -> None:
        async def forget(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            await b.store.forget("j")  # DELETE /v1/videos/{id}: cancelled, then gone
            return None

        b.pools.hooks["sketch"] = forget
        await b.submit()
        await asyncio.wait_for(b.orchestrator.drive("j"), 60)
        assert await b.store.get("j") is None
        # the replica hears the cancel (srserve_stop) or finds the job gone; either way it is let go
        assert b.pools.results[-1].reason in (R.CANCELLED, R.UNKNOWN)
        assert b.pools.stages() == ["sketch"] and b.ended == []

    bench(go)


def test_a_superseded_attempt_is_let_go(bench) -> None:
    async def go(b: Bench) -> None:
        async def taken_over(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            # this orchestrator's lease lapsed meanwhile: another claimed the job and started an attempt
            await b.store.release("o")
            assert await b.store.claim("o2", 30) == ["j"]
            assert await b.store.begin_attempt("j", None, "o2", 3) is not None
            return None

        b.pools.hooks["sketch"] = taken_over
        await b.submit()
        job = await b.drive()
        assert b.pools.results == [StageResult.stopped(R.SUPERSEDED)]
        assert (job.state, job.lease_owner, job.fence, job.attempts) == (S.QUEUED, "o2", 2, {"sketch": 2})
        assert b.ended == []

    bench(go)


def test_a_job_past_its_deadline_is_failed_at_once(bench) -> None:
    async def go(b: Bench) -> None:
        async def late(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            b.clock.advance(61)
            return None

        b.pools.hooks["sketch"] = late
        await b.submit(deadline_s=60)
        job = await b.drive()  # no sweep ran
        assert b.pools.results == [StageResult.stopped(R.DEADLINE)]
        assert (job.state, job.error_code, job.error) == (S.FAILED, ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded")
        assert [j.id for j in b.ended] == ["j"]

    bench(go)


def test_a_deadline_the_sweep_got_to_first_is_recorded_once(bench) -> None:
    async def go(b: Bench) -> None:
        async def swept(reporter: AttemptReporter, attempt: int) -> StageResult | None:
            b.clock.advance(61)
            await b.orchestrator.maintain_once()  # the sweep fails it and records it
            assert [j.id for j in b.ended] == ["j"]
            return None

        b.pools.hooks["render"] = swept
        await b.submit(deadline_s=60)
        job = await b.drive()
        assert b.pools.results[-1] == StageResult.stopped(R.DEADLINE)
        assert (job.state, job.error_code) == (S.FAILED, ErrorCode.DEADLINE_EXCEEDED)
        assert [j.id for j in b.ended] == ["j"]  # not recorded a second time by the stage's end

    bench(go)
