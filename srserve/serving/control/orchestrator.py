"""Drives jobs through the pools from the store's state: stateless, resumable, awaiting, not polling.

Every ingress replica runs one Orchestrator. It drives the jobs it admitted and holds them under
leases it heartbeats in one statement; a job whose lease lapses (its driver was killed, the whole
cluster restarted) is claimed by whichever orchestrator looks next and resumed from its last
durable point: a job with a handoff in artifact storage is rendered again, any other is sketched
again. Each stage attempt gets a fencing token from the store, so a superseded attempt still
running somewhere can no longer write. The stage calls are awaited; nothing here polls a replica.

The pools are reached through `run_stage(stage, ticket)`, so this module knows nothing of Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from srserve.serving.control.artifacts import ArtifactStore
from srserve.serving.control.jobs import ErrorCode, Job, JobState, artifact_prefix
from srserve.serving.control.store import AttemptsExhausted, JobStore, StoreUnavailable, until_stored
from srserve.serving.ops.job_logging import bind_job, log_job_finished
from srserve.serving.ops.metrics import record_job_finished

logger = logging.getLogger("ray.serve")

RunStage = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
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
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.owner = owner
        self.settings = settings
        self.run_stage = run_stage
        self.replica_lost = replica_lost
        self._tasks: dict[str, asyncio.Task] = {}
        self._loop_task: asyncio.Task | None = None

    # -- driving ----------------------------------------------------------------------------
    def drive(self, job_id: str) -> None:
        """Drive a job this orchestrator holds the lease of (admitted here, or claimed)."""
        if job_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._drive(job_id))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))

    @property
    def driving(self) -> int:
        return len(self._tasks)

    async def _drive(self, job_id: str) -> None:
        bind_job(job_id)  # this task's log lines carry the job id
        try:
            while await self._attempt(job_id):
                pass
        except StoreUnavailable as exc:  # for longer than until_stored waits: the lease lapses, another resumes
            logger.warning("job %s: store unreachable (%s); leaving it to be resumed", job_id, exc)
        except Exception as exc:  # anything unforeseen: the job must not stay in a running state
            logger.warning("job %s failed: %s: %s", job_id, type(exc).__name__, exc)
            with contextlib.suppress(StoreUnavailable):
                before = await self.store.get(job_id)
                if before is not None and not before.terminal:
                    await self.store.fail(job_id, ErrorCode.INTERNAL, short_error(exc))
                    self._finished(await self.store.get(job_id))

    async def _attempt(self, job_id: str) -> bool:
        """One stage attempt (the one the job needs next, decided by the store); True while the job goes on."""
        try:
            attempt = await until_stored(
                lambda: self.store.begin_attempt(job_id, None, self.owner, self.settings.max_attempts)
            )
        except AttemptsExhausted as exc:  # failed here, with the reason: this orchestrator ended it
            self._finished(exc.job)
            return False
        if attempt is None:  # ended elsewhere (cancelled, swept), or taken over
            return False
        stage = "render" if attempt.state == JobState.HANDED_OFF else "sketch"
        ticket = {
            "job_id": job_id,
            "fence": attempt.fence,
            "request": attempt.request,
            "deadline": attempt.deadline,
            "handoff_key": attempt.handoff_key,
        }
        try:
            out = await self.run_stage(stage, ticket)
        except Exception as exc:
            if self.replica_lost(exc):
                logger.warning("job %s: %s replica lost (%s); trying again", job_id, stage, short_error(exc))
                return True
            raise
        outcome = out.get("outcome")
        if outcome == "handoff_lost":
            logger.warning("job %s: handoff %s missing from storage; sketching again", job_id, ticket["handoff_key"])
            await until_stored(lambda: self.store.drop_handoff(job_id, self.owner))
            return True
        if outcome == "stopped":  # whoever ended the job (cancel, the sweep) recorded it
            return False
        return outcome == "handed_off"

    def _finished(self, job: Job | None) -> None:
        """Metrics and the summary log line of a job that ended other than by completing."""
        if job is not None and job.terminal and job.error_code is not None:
            record_job_finished(job)
            log_job_finished(job)

    # -- leases, resumption, sweeping, retention -----------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_event_loop().create_task(self._maintain())

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
            self._finished(job)
        if expire:
            await self.expire()
        return claimed

    async def expire(self) -> int:
        """Retention: finished jobs beyond the count or age limit go, their videos and handoffs too."""
        gone = await self.store.expire(self.settings.retain_jobs, self.settings.retain_age_s)
        for job in gone:
            await self.delete_artifacts(job.id)
        return len(gone)

    async def delete_artifacts(self, job_id: str) -> None:
        for kind in ("videos", "handoffs"):
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
        with contextlib.suppress(Exception):
            await self.store.release(self.owner)
        return len(still)
