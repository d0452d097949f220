"""A worker replica's line to the store: progress out (batched, fire-and-forget), stop flags in, and
each attempt's fenced durable end.

The compute thread never waits on the control plane. `report` queues an update and returns; a
task on the replica's event loop writes the queue in one transaction at a time. Whatever the store
refuses (a StopReason) and whatever arrives on the `srserve_stop` channel becomes a flag that the
thread checks at each step boundary, alongside the job's deadline, which the ticket carries. When
the store is down, updates wait and are written once it is back; nothing on the compute path
blocks on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from srserve.serving.control.artifacts import ArtifactStore
from srserve.serving.control.attempts import StageResult, StageTicket, StopReason
from srserve.serving.control.jobs import Job, JobState, handoff_key, video_key
from srserve.serving.control.store.job_store import (
    STOP_CHANNEL,
    JobStore,
    ProgressUpdate,
    StoreUnavailable,
    parse_stop,
    until_stored,
)

logger = logging.getLogger("ray.serve")

FLUSH_INTERVAL_S = 0.1  # at most ~10 progress transactions a second per replica
RETRY_S = 0.5  # while the store is unreachable, a write is tried again this often
MAX_PENDING = 10_000  # updates kept while the store is unreachable (then: merged per attempt and state)


def compact(updates: list[ProgressUpdate]) -> list[ProgressUpdate]:
    """Fewer updates, same end result: consecutive reports of one attempt in one state become one
    (the newest step, every stamp); each state change is kept, so every transition stays legal."""
    out: list[ProgressUpdate] = []
    last: dict[tuple[str, int], int] = {}  # attempt -> index in `out` of its latest update
    for u in updates:
        key = (u.job_id, u.fence)
        i = last.get(key)
        if i is not None and (u.state is None or u.state == out[i].state):
            out[i] = out[i].merged(u)
        else:
            last[key] = len(out)
            out.append(u)
    return out


class ProgressChannel:
    """One per replica: call `start()` from the replica's event loop, `report` from any thread."""

    def __init__(
        self,
        store: JobStore,
        max_pending: int = MAX_PENDING,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self.store = store
        self.max_pending = max_pending
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self._pending: list[ProgressUpdate] = []
        self._writing = False
        self._lock = threading.Lock()
        # job id -> (why, fencing token it applies up to; None: every attempt)
        self._stops: dict[str, tuple[StopReason, int | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # nothing pending, nothing being written
        self._urgent = asyncio.Event()  # a flush is waiting: skip the batching pause
        self.listening = asyncio.Event()  # set once LISTEN srserve_stop is in place (again after each reconnect)
        self._tasks: list[asyncio.Task] = []

    def start(self) -> ProgressChannel:
        self._loop = asyncio.get_event_loop()  # a Serve replica's __init__ runs with its loop set
        self._tasks = [self._loop.create_task(self._writer()), self._loop.create_task(self._listener())]
        return self

    # -- from the compute thread ----------------------------------------------------------
    def report(self, update: ProgressUpdate) -> None:
        with self._lock:
            self._pending.append(update)
            if len(self._pending) > self.max_pending:
                self._pending = compact(self._pending)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop_reason(self, job_id: str, fence: int, deadline: float | None) -> StopReason | None:
        """Why the job's attempt `fence` must stop at this step, if it must: a flag, or its deadline."""
        if (flag := self._stops.get(job_id)) is not None:
            reason, upto = flag
            if upto is None or fence <= upto:
                return reason
        if deadline is not None and self.store.clock() > deadline:
            return StopReason.DEADLINE
        return None

    def stop(self, job_id: str, reason: StopReason, upto_fence: int | None = None) -> None:
        """Flag the job's attempts up to `upto_fence` (None: all of them) to stop; a flag already
        covering those attempts stays."""
        old = self._stops.get(job_id)
        if old is not None and (old[1] is None or (upto_fence is not None and upto_fence <= old[1])):
            return
        if len(self._stops) > self.max_pending:  # flags of jobs that never ran here
            self._stops.clear()
        self._stops[job_id] = (reason, upto_fence)

    # -- on the event loop ----------------------------------------------------------------
    async def flush(self) -> None:
        """Wait until everything reported so far is written (before a stage's durable write)."""
        while True:
            with self._lock:
                idle = not self._pending and not self._writing
            if idle:
                return
            self._settled.clear()
            self._urgent.set()
            self._wake.set()
            await self._settled.wait()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._urgent.clear()  # this batch serves the flushes waiting now
            with self._lock:
                batch, self._pending = self._pending, []
                self._writing = bool(batch)
            if batch and not await self._write(batch):
                await asyncio.sleep(self.retry_s)  # the store is unreachable: the batch waits in front
                self._wake.set()
                continue
            with self._lock:
                if not self._pending:
                    self._settled.set()
            if batch:  # batch what arrives meanwhile, unless a flush waits
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.flush_interval_s)

    async def _write(self, batch: list[ProgressUpdate]) -> bool:
        """Write a batch and flag what the store refused; False (the batch kept) when it is unreachable."""
        try:
            refused = await self.store.apply_progress(batch)
        except StoreUnavailable:
            with self._lock:
                self._pending = batch + self._pending
                if len(self._pending) > self.max_pending:
                    self._pending = compact(self._pending)
                self._writing = False
            return False
        except Exception:
            logger.exception("progress write failed; dropping %d update(s)", len(batch))
            refused = {}
        with self._lock:
            self._writing = False
        for (job_id, fence), reason in refused.items():
            self.stop(job_id, reason, fence if reason.attempt_scoped else None)
        return True

    async def _listener(self) -> None:
        async for payload in self.store.listen(STOP_CHANNEL):
            if payload:
                self.stop(*parse_stop(payload))
            else:
                self.listening.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class AttemptReporter:
    """One stage attempt on a worker: its reports, its stop check, and its fenced durable end."""

    def __init__(self, channel: ProgressChannel, ticket: StageTicket, stage: str, replica_id: str) -> None:
        self.channel = channel
        self.ticket = ticket
        self.job_id = ticket.job_id
        self.fence = ticket.fence
        self.replica = (stage, replica_id)
        self.reason: StopReason | None = None

    def now(self) -> float:
        """The time of a stage stamp: the job store's clock (the database server's), the one every
        process's stamps are compared on."""
        return self.channel.store.clock()

    def report(
        self,
        state: JobState | None = None,
        step: int | None = None,
        total: int | None = None,
        stamps: dict[str, float] | None = None,
        *,
        switch_step: int | None = None,
        handoff_bytes: int | None = None,
        latents_sha256: str | None = None,
    ) -> None:
        self.channel.report(
            ProgressUpdate(
                self.job_id,
                self.fence,
                state,
                step,
                total,
                stamps or {},
                self.replica,
                switch_step=switch_step,
                handoff_bytes=handoff_bytes,
                latents_sha256=latents_sha256,
            )
        )

    def on_step(self, state: JobState):
        def callback(_stage: str, done: int, total: int) -> None:
            self.report(state, done, total)

        return callback

    def cancelled(self) -> bool:
        """Polled by the engine at every step boundary; `reason` says why it must stop."""
        self.reason = self.channel.stop_reason(self.job_id, self.fence, self.ticket.deadline)
        return self.reason is not None

    def stopped(self) -> StageResult:
        """The stage's answer when its job stopped at a step boundary."""
        return StageResult.stopped(self.reason)

    async def hand_off(
        self, artifacts: ArtifactStore, blob: bytes, switch_step: int, stamps: dict[str, float]
    ) -> StageResult:
        """The sketch's durable point: the handoff to artifact storage, then the store (fenced)."""
        store = self.channel.store
        key = handoff_key(self.job_id, self.fence)
        await asyncio.gather(artifacts.put_async(key, blob), self.channel.flush())
        out = await until_stored(
            lambda: store.record_handoff(self.job_id, self.fence, key, len(blob), switch_step, stamps)
        )
        if isinstance(out, StopReason):
            await artifacts.delete_async(key)
            self.reason = out
            return self.stopped()
        return StageResult.handed_off(key, switch_step)

    async def complete(
        self, artifacts: ArtifactStore, video: bytes, digest: str | None, stamps: dict[str, float]
    ) -> tuple[StageResult, Job | None]:
        """The render's durable point: the mp4 to artifact storage, then the store (fenced). The
        completed job comes back too (None when refused): its end is recorded where it ended."""
        store = self.channel.store
        key = video_key(self.job_id, self.fence)
        await asyncio.gather(artifacts.put_async(key, video), self.channel.flush())
        out = await until_stored(lambda: store.complete(self.job_id, self.fence, key, len(video), stamps, digest))
        if isinstance(out, StopReason):
            await artifacts.delete_async(key)
            self.reason = out
            return self.stopped(), None
        if out.handoff_key:  # the handoff has served its purpose
            await artifacts.delete_async(out.handoff_key)
        return StageResult.completed(len(video), out.switch_step), out
