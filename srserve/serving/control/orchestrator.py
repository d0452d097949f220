"""Drives jobs through the pools from the store's state: stateless, resumable, awaiting, not polling.

Every ingress replica runs one Orchestrator. It drives the jobs it admitted and holds them under
leases it heartbeats in one statement; a job whose lease lapses (its driver was killed, the whole
cluster restarted) is claimed by whichever orchestrator looks next and resumed from its last
durable point: a job with a handoff in artifact storage is rendered again, any other is sketched
again. Each stage attempt gets a fencing token from the store, so a superseded attempt still
running somewhere can no longer write. The stage calls are awaited; nothing here polls a replica.

Before each stage the job waits in the store, not in Ray Serve's router: it is put in line for the
stage's pool and its driving task awaits a slot there, which any orchestrator may grant by the queue's
rules (priority, weighted fair share, arrival: control/queueing/dispatch.py). A grant is heard at once (its own,
or another's NOTIFY); the maintenance tick catches any announcement missed. The slot goes back to the
pool when the stage call returns, however it ended. A retried or resumed job waits again by the same
rules, with its original arrival order.

Each stage answers a StageResult; what the job needs next follows from it. A stopped attempt's
reason decides: a job that ended elsewhere (cancelled, failed, deleted) or was taken over by a newer
attempt is let go; a job past its deadline is failed now (by whoever gets there first: it is
recorded once); anything else leaves the job live under this orchestrator's lease, so the next
attempt waits for a slot at once (within the attempt cap, past which the job fails with the last reason).

The pools are reached through `run_stage(stage, ticket)`, so this module knows nothing of Ray; the
serving layer's metrics and logs through the `on_job_ended` and `bind_job` hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from srserve.serving.control.artifacts import ArtifactStore
from srserve.serving.control.attempts import Outcome, StageResult, StageTicket, StopReason
from srserve.serving.control.jobs import ARTIFACT_KINDS, ErrorCode, Job, artifact_prefix
from srserve.serving.control.queueing.dispatch import DISPATCH_CHANNEL, DispatchPlan
from srserve.serving.control.store.job_store import (
    STOP_CHANNEL,
    AttemptsExhausted,
    JobStore,
    StoreUnavailable,
    parse_stop,
    until_stored,
)

logger = logging.getLogger("ray.serve")

RunStage = Callable[[str, StageTicket], Awaitable[StageResult]]
# A stopped attempt whose job is no longer this orchestrator's to drive: it ended elsewhere, or a newer attempt owns it.
LET_GO = frozenset({StopReason.CANCELLED, StopReason.ENDED, StopReason.UNKNOWN, StopReason.SUPERSEDED})
EXPIRE_EVERY = 10  # retention runs every this many claim intervals


@dataclass
class OrchestratorSettings:
    lease_ttl_s: float = 15.0
    claim_interval_s: float = 1.0
    max_attempts: int = 3
    stall_timeout_s: float = 600.0
    retain_jobs: int = 1000
    retain_age_s: float | None = None


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


class Orchestrator:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        owner: str,
        settings: OrchestratorSettings,
        run_stage: RunStage,
        replica_lost: Callable[[BaseException], bool],
        *,
        on_job_ended: Callable[[Job], Any] = lambda job: None,
        bind_job: Callable[[str], Any] = lambda job_id: None,
        plan: DispatchPlan | None = None,
    ) -> None:
        """`on_job_ended` gets each job this orchestrator ended other than by completing (metrics, the
        summary log line); `bind_job` runs first in each job's driving task (job-scoped logging); `plan` says
        which pool runs each stage and the tenants' weights (the queue's, control/queueing/dispatch.py)."""
        self.store = store
        self.artifacts = artifacts
        self.owner = owner
        self.settings = settings
        self.run_stage = run_stage
        self.replica_lost = replica_lost
        self.on_job_ended = on_job_ended
        self.bind_job = bind_job
        self.plan = plan or DispatchPlan()
        self._tasks: dict[str, asyncio.Task] = {}
        self._loop_task: asyncio.Task | None = None
        self._listeners: list[asyncio.Task] = []
        self._waiters: dict[str, asyncio.Future] = {}  # jobs driven here waiting for a slot
        self._granting: dict[str, asyncio.Task] = {}  # pool -> its granting task
        self._again: set[str] = set()  # pools woken since their granting task last looked

    # -- driving ----------------------------------------------------------------------------
    def drive(self, job_id: str) -> asyncio.Task:
        """Drive a job this orchestrator holds the lease of (admitted here, or claimed); the task doing it."""
        if (task := self._tasks.get(job_id)) is not None:
            return task
        task = asyncio.get_running_loop().create_task(self._drive(job_id))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))
        return task

    @property
    def driving(self) -> int:
        return len(self._tasks)

    async def _drive(self, job_id: str) -> None:
        self.bind_job(job_id)  # this task's log lines carry the job id
        try:
            again, failure = await self._attempt(job_id, None)
            while again:
                again, failure = await self._attempt(job_id, failure)
        except StoreUnavailable as exc:  # for longer than until_stored waits: the lease lapses, another resumes
            logger.warning("job %s: store unreachable (%s); leaving it to be resumed", job_id, exc)
        except Exception as exc:  # anything unforeseen: the job must not stay in a running state
            logger.warning("job %s failed: %s: %s", job_id, type(exc).__name__, exc)
            with contextlib.suppress(StoreUnavailable):
                self._ended(await self.store.fail(job_id, ErrorCode.INTERNAL, short_error(exc)))

    async def _attempt(self, job_id: str, last_failure: str | None) -> tuple[bool, str | None]:
        """One stage attempt (the one the job needs next, decided by the store), once the queue gave the job a
        slot on the stage's pool: whether another follows, and what went wrong in this one (None: nothing did)."""
        stage = await self._await_slot(job_id)
        if stage is None:  # ended while waiting (cancelled, swept), or taken over
            return False, None
        try:
            return await self._run_attempt(job_id, stage, last_failure)
        finally:  # the stage is over, however it ended: its slot goes to the pool's next job
            with contextlib.suppress(StoreUnavailable):  # else the slot goes when the lease does
                if (pool := await until_stored(lambda: self.store.free_slot(job_id, self.owner), 30.0)) is not None:
                    self.wake(pool)

    async def _run_attempt(self, job_id: str, stage: str, last_failure: str | None) -> tuple[bool, str | None]:
        try:
            attempt = await until_stored(
                lambda: self.store.begin_attempt(job_id, stage, self.owner, self.settings.max_attempts, last_failure)
            )
        except AttemptsExhausted as exc:  # failed here, with the reason: this orchestrator ended it
            self._ended(exc.job)
            return False, None
        if attempt is None:  # ended elsewhere (cancelled, swept), or taken over
            return False, None
        ticket = StageTicket(job_id, attempt.fence, attempt.request, attempt.deadline, attempt.handoff_key)
        try:
            result = await self.run_stage(stage, ticket)
        except Exception as exc:
            if self.replica_lost(exc):
                logger.warning("job %s: %s replica lost (%s); trying again", job_id, stage, short_error(exc))
                return True, f"{stage} replica lost: {short_error(exc)}"
            raise
        return await self._settle(job_id, stage, ticket, result)

    # -- the queue (control/queueing/dispatch.py) ----------------------------------------------
    async def _await_slot(self, job_id: str) -> str | None:
        """Put the job in line for its next stage's pool and wait until it holds a slot there: the stage, or
        None when the job ended meanwhile or is no longer this orchestrator's."""
        loop = asyncio.get_running_loop()
        # Each waiter is in place before the store is asked, so no grant can come between unheard.
        waiter = self._waiters[job_id] = loop.create_future()
        try:
            place = await until_stored(lambda: self.store.wait_for_slot(job_id, self.owner, self.plan))
            if place is None:
                return None
            if place.granted:
                return place.stage
            while True:
                self.wake(place.pool)
                await waiter  # a grant, an end, or a reconnect of the announcements: look again
                waiter = self._waiters[job_id] = loop.create_future()
                where = await until_stored(lambda: self.store.slot_state(job_id, self.owner))
                if where == "gone":
                    return None
                if where == "granted":
                    return place.stage
        finally:
            self._waiters.pop(job_id, None)

    def _look_again(self, job_id: str) -> None:
        waiter = self._waiters.get(job_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake(self, pool: str) -> None:
        """`pool` may have a free slot or a new job waiting: grant what the queue allows (one granting task
        per pool; a wake while it runs makes it look once more)."""
        if pool not in self.plan.dispatched:
            return
        self._again.add(pool)
        task = self._granting.get(pool)
        if task is None or task.done():
            self._granting[pool] = asyncio.get_running_loop().create_task(self._grant_all(pool))

    async def _grant_all(self, pool: str) -> None:
        while pool in self._again:
            self._again.discard(pool)
            try:
                while (job_id := await self.store.grant(pool, self.plan.weights)) is not None:
                    self._look_again(job_id)  # ours: its driving task goes on; another's hears the NOTIFY
            except StoreUnavailable as exc:
                logger.warning("orchestrator: cannot grant %s slots now (%s)", pool, exc)
            except Exception:
                logger.exception("orchestrator: granting %s slots failed", pool)

    async def _hear_dispatch(self) -> None:
        """Grants made by other orchestrators for jobs driven here, slots freed and jobs waiting elsewhere."""
        async for payload in self.store.listen(DISPATCH_CHANNEL):
            kind, _, what = payload.partition(":")
            if kind == "granted":
                self._look_again(what)
            elif kind in ("freed", "waiting"):
                self.wake(what)
            else:  # (re)connected: announcements may have been missed
                for job_id in list(self._waiters):
                    self._look_again(job_id)
                for pool in self.plan.dispatched:
                    self.wake(pool)

    async def _hear_stops(self) -> None:
        """A job that ended while waiting (cancelled, failed by a sweep) stops waiting at once."""
        async for payload in self.store.listen(STOP_CHANNEL):
            if payload:
                self._look_again(parse_stop(payload)[0])
            else:
                for job_id in list(self._waiters):
                    self._look_again(job_id)

    async def _settle(
        self, job_id: str, stage: str, ticket: StageTicket, result: StageResult
    ) -> tuple[bool, str | None]:
        """What the job needs after a stage answered `result` (see the module docstring)."""
        if result.outcome == Outcome.HANDED_OFF:
            return True, None
        if result.outcome == Outcome.COMPLETED:  # the render replica recorded it
            return False, None
        if result.outcome == Outcome.HANDOFF_LOST:
            logger.warning("job %s: handoff %s missing from storage; sketching again", job_id, ticket.handoff_key)
            await until_stored(lambda: self.store.drop_handoff(job_id, self.owner))
            return True, None
        reason = result.reason
        if reason in LET_GO:
            return False, None
        if reason == StopReason.DEADLINE:  # end it now rather than at the next sweep
            self._ended(
                await until_stored(lambda: self.store.fail(job_id, ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded"))
            )
            return False, None
        why = f"{stage} stopped: " + (f"the store refused its write ({reason.value})" if reason else "no reason given")
        logger.warning("job %s: %s; trying again", job_id, why)
        return True, why

    def _ended(self, job: Job | None) -> None:
        """Metrics and the summary log line of a job this orchestrator ended (never one that completed)."""
        if job is not None and job.terminal:
            self.on_job_ended(job)

    # -- leases, resumption, sweeping, retention -----------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_event_loop()
        self._loop_task = loop.create_task(self._maintain())
        self._listeners = [loop.create_task(self._hear_dispatch()), loop.create_task(self._hear_stops())]

    async def _maintain(self) -> None:
        tick = 0
        while True:
            try:
                await self.maintain_once(expire=tick % EXPIRE_EVERY == 0)
            except StoreUnavailable as exc:
                logger.warning("orchestrator: store unreachable (%s)", exc)
            except Exception:
                logger.exception("orchestrator maintenance failed")
            tick += 1
            await asyncio.sleep(self.settings.claim_interval_s)

    async def maintain_once(self, expire: bool = True) -> list[str]:
        """Heartbeat our leases, claim orphaned jobs, fail overdue/stalled ones, apply retention."""
        s = self.settings
        await self.store.heartbeat(self.owner, s.lease_ttl_s)
        claimed = await self.store.claim(self.owner, s.lease_ttl_s)
        for job_id in claimed:
            logger.info("job %s: resuming (lease taken over by %s)", job_id, self.owner)
            self.drive(job_id)
        for job in await self.store.sweep(s.stall_timeout_s):
            self._ended(job)
        for job_id in await self.store.granted_to(self.owner):  # a grant whose announcement was missed
            self._look_again(job_id)
        for pool in self.plan.dispatched:  # a slot whose announcement was missed (a replica that expired)
            self.wake(pool)
        if expire:
            await self.expire()
        return claimed

    async def expire(self) -> int:
        """Retention: finished jobs beyond the count or age limit go, their artifacts too (ARTIFACT_KINDS)."""
        gone = await self.store.expire(self.settings.retain_jobs, self.settings.retain_age_s)
        for job in gone:
            await self.delete_artifacts(job.id)
        return len(gone)

    async def delete_artifacts(self, job_id: str) -> None:
        for kind in ARTIFACT_KINDS:
            await asyncio.to_thread(self.artifacts.delete_prefix, artifact_prefix(kind, job_id))

    async def drain(self, timeout_s: float) -> int:
        """Let the jobs driven here finish (up to `timeout_s`), then release the rest's leases at once."""
        pending = list(self._tasks.values())
        still: set[asyncio.Task] = set()
        if pending:
            logger.info("orchestrator draining %d job(s)", len(pending))
            _, still = await asyncio.wait(pending, timeout=timeout_s)
        if self._loop_task is not None:
            self._loop_task.cancel()
        for task in self._listeners:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.store.release(self.owner)
        return len(still)
