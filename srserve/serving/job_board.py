"""The job board: one small Serve deployment that holds every job's state, events and video.

Workers report each step here and learn, in the reply, whether to stop (cancel, deadline);
the ingress reads it to answer status, list, progress streams and downloads. Keeping this
outside the GPU replicas is what lets a job outlive the replica that was running it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

from ray import serve

from srserve.serving.control.jobs import RUNNING_STATES, ErrorCode, Job, JobState, Verdict, now
from srserve.serving.ops.job_logging import log_job_finished
from srserve.serving.ops.metrics import export_board_gauges, record_job_finished
from srserve.serving.ops.pool_work import estimate_pool_work

SWEEP_INTERVAL_S = 0.25


class JobBoardCore:
    """The board's logic, independent of Ray (so it is unit-testable)."""

    def __init__(self, retain_jobs: int = 1000, stall_timeout_s: float = 600.0) -> None:
        self.retain_jobs = retain_jobs
        self.stall_timeout_s = stall_timeout_s
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.videos: dict[str, bytes] = {}
        self._seq = 0
        self._changed = asyncio.Condition()

    def _emit(self, job: Job, message: str = "") -> None:
        self._seq += 1
        job.events.append(job.event(self._seq, message))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _evict(self) -> None:
        finished = [j.id for j in self.jobs.values() if j.terminal]
        for job_id in finished[: max(0, len(finished) - self.retain_jobs)]:
            self.jobs.pop(job_id, None)
            self.videos.pop(job_id, None)

    async def create(self, job_id: str, request: dict[str, Any], num_steps: int, deadline_s: float | None) -> dict:
        created = now()
        job = Job(
            id=job_id,
            request=request,
            created_at=created,
            num_steps=num_steps,
            deadline=created + deadline_s if deadline_s else None,
        )
        job.timeline["submitted"] = created
        self.jobs[job_id] = job
        self._emit(job, "queued")
        self._evict()
        await self._notify()
        return job.summary()

    def _finish(self, job: Job, state: JobState, code: ErrorCode | None = None, message: str = "") -> None:
        job.state = state
        job.completed_at = now()
        job.timeline.setdefault("finished", job.completed_at)
        if code is not None:
            job.error_code, job.error = code.value, message
        self._emit(job, message or state.value)
        record_job_finished(job)  # stage latencies, switch step, handoff, final state
        log_job_finished(job)

    def _overdue(self, job: Job) -> bool:
        return job.deadline is not None and not job.terminal and now() > job.deadline

    async def report(
        self,
        job_id: str,
        state: str | None = None,
        step: int | None = None,
        total: int | None = None,
        stamps: dict[str, float] | None = None,
        replica: tuple[str, str] | None = None,
        info: dict[str, Any] | None = None,
    ) -> str:
        """Record progress; the reply tells the worker whether to go on."""
        job = self.jobs.get(job_id)
        if job is None:
            return Verdict.UNKNOWN.value
        if self._overdue(job):
            self._finish(job, JobState.FAILED, ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded")
            await self._notify()
        if job.state == JobState.CANCELLED:
            return Verdict.CANCELLED.value
        if job.terminal:
            return Verdict.DEADLINE.value if job.error_code == ErrorCode.DEADLINE_EXCEEDED else Verdict.CANCELLED.value
        job.last_report = now()
        if stamps:
            job.timeline.update(stamps)
        if replica:
            job.replicas[replica[0]] = replica[1]
        for key, value in (info or {}).items():
            setattr(job, key, value)
        if state is not None:
            changed = state != job.state.value or step != job.step
            job.state = JobState(state)
            job.step = step if step is not None else job.step
            job.total = total if total is not None else job.total
            if changed:
                self._emit(job)
                await self._notify()
        return Verdict.CONTINUE.value

    async def complete(self, job_id: str, video: bytes, stamps: dict[str, float] | None = None) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.terminal:
            return False
        if stamps:
            job.timeline.update(stamps)
        self.videos[job_id] = video
        job.video_bytes = len(video)
        self._finish(job, JobState.COMPLETED)
        await self._notify()
        return True

    async def fail(self, job_id: str, code: str, message: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and not job.terminal:
            self._finish(job, JobState.FAILED, ErrorCode(code), message)
            await self._notify()

    async def cancel(self, job_id: str) -> dict | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if not job.terminal:
            self._finish(job, JobState.CANCELLED, ErrorCode.CANCELLED, "cancelled by client")
            await self._notify()
        return job.summary()

    async def forget(self, job_id: str) -> bool:
        """Cancel if running, then drop the job and its video."""
        if await self.cancel(job_id) is None:
            return False
        self.jobs.pop(job_id, None)
        self.videos.pop(job_id, None)
        return True

    async def get(self, job_id: str) -> dict | None:
        job = self.jobs.get(job_id)
        return None if job is None else job.summary()

    async def list_jobs(self, limit: int = 20, after: str | None = None, order: str = "desc") -> dict:
        ids = list(self.jobs)
        if order == "desc":
            ids.reverse()
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = ids[:limit]
        return {"data": [self.jobs[i].summary() for i in page], "has_more": len(ids) > len(page)}

    async def events(self, job_id: str, after_seq: int = 0, timeout_s: float = 10.0) -> dict | None:
        """Long-poll: events newer than `after_seq`, waiting up to `timeout_s` for one."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            new = [asdict(e) for e in job.events if e.seq > after_seq]
            remaining = deadline - time.monotonic()
            if new or job.terminal or remaining <= 0:
                return {"events": new, "job": job.summary()}
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def content(self, job_id: str) -> bytes | None:
        return self.videos.get(job_id)

    async def pool_work(self, pool: str, include_encode: bool = True) -> dict[str, float]:
        """The pool's queue of work in GPU-seconds; its replicas report it to the autoscaler."""
        return estimate_pool_work(self.jobs.values(), pool, now(), include_encode).as_metrics()

    async def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in JobState}
        for job in self.jobs.values():
            out[job.state.value] += 1
        return out

    async def sweep(self) -> None:
        """Fail jobs past their deadline (even while queued) and running jobs that stopped reporting."""
        changed = False
        current = now()
        for job in self.jobs.values():
            if self._overdue(job):
                self._finish(job, JobState.FAILED, ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded")
                changed = True
            elif job.state in RUNNING_STATES and current - job.last_report > self.stall_timeout_s:
                self._finish(
                    job,
                    JobState.FAILED,
                    ErrorCode.STALLED,
                    f"no progress for {self.stall_timeout_s:.0f}s in state {job.state.value}",
                )
                changed = True
        if changed:
            await self._notify()


@serve.deployment(max_ongoing_requests=10000, ray_actor_options={"num_cpus": 0.1})
class JobBoard(JobBoardCore):
    def __init__(self, retain_jobs: int = 1000, stall_timeout_s: float = 600.0) -> None:
        super().__init__(retain_jobs, stall_timeout_s)
        self._sweeper = asyncio.get_event_loop().create_task(self._sweep_forever())
        self._gauges = asyncio.get_event_loop().create_task(export_board_gauges(self.jobs))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            await self.sweep()
