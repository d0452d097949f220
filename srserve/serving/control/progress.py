"""A worker replica's line to the store: progress out (batched, fire-and-forget), stop flags in.

The compute thread never waits on the control plane. `report` queues an update and returns; a
task on the replica's event loop writes the queue in one transaction at a time. Whatever the store
refuses (cancelled, past the deadline, superseded by a newer attempt) and whatever arrives on the
`srserve_stop` channel becomes a flag that the thread checks at each step boundary, alongside the
job's deadline, which the ticket carries. When the store is down, updates wait and the newest
state of each job is written once it is back; nothing on the compute path blocks on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from srserve.serving.control.jobs import JobState, Verdict
from srserve.serving.control.store import STOP_CHANNEL, JobStore, ProgressUpdate, StoreUnavailable

logger = logging.getLogger("ray.serve")

FLUSH_INTERVAL_S = 0.1  # at most ~10 progress transactions a second per replica
MAX_PENDING = 10_000  # updates kept while the store is unreachable (then: newest per job only)
_REFUSAL = {"cancelled": Verdict.CANCELLED, "deadline": Verdict.DEADLINE, "superseded": Verdict.SUPERSEDED}


class ProgressChannel:
    """One per replica: call `start()` from the replica's event loop, `report` from any thread."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._pending: list[ProgressUpdate] = []
        self._lock = threading.Lock()
        # job id -> (why, fencing token it applies up to; None: every attempt)
        self._stops: dict[str, tuple[Verdict, int | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._urgent: asyncio.Event | None = None  # a flush is waiting: skip the batching pause
        self._tasks: list[asyncio.Task] = []

    def start(self) -> ProgressChannel:
        self._loop = asyncio.get_event_loop()  # a Serve replica's __init__ runs with its loop set
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._urgent = asyncio.Event()
        self._tasks = [self._loop.create_task(self._writer()), self._loop.create_task(self._listener())]
        return self

    # -- from the compute thread ----------------------------------------------------------
    def report(self, update: ProgressUpdate) -> None:
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                newest = {u.job_id: u for u in self._pending}
                self._pending = list(newest.values())
            self._pending.append(update)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop_reason(self, job_id: str, fence: int, deadline: float | None) -> Verdict | None:
        """Why the job's attempt `fence` must stop at this step, if it must: a flag, or its deadline."""
        if (flag := self._stops.get(job_id)) is not None:
            verdict, upto = flag
            if upto is None or fence <= upto:
                return verdict
        if deadline is not None and time.time() > deadline:
            return Verdict.DEADLINE
        return None

    def stop(self, job_id: str, verdict: Verdict, upto_fence: int | None = None) -> None:
        if len(self._stops) > MAX_PENDING:  # flags of jobs that never ran here
            self._stops.clear()
        self._stops[job_id] = (verdict, upto_fence)

    def forget(self, job_id: str) -> None:
        """The job's attempt ended here: drop its flag (a later attempt of it starts clean)."""
        self._stops.pop(job_id, None)

    # -- on the event loop ----------------------------------------------------------------
    async def flush(self) -> None:
        """Wait until everything reported so far is written (before a stage's durable write)."""
        while True:
            with self._lock:
                empty = not self._pending
            if empty and self._idle is not None and self._idle.is_set():
                return
            if self._wake is not None and self._urgent is not None:
                self._urgent.set()
                self._wake.set()
            await asyncio.sleep(0.002)

    async def _writer(self) -> None:
        assert self._wake is not None and self._idle is not None and self._urgent is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                continue
            self._idle.clear()
            try:
                refused = await self.store.apply_progress(batch)
            except StoreUnavailable:
                with self._lock:  # keep them, in order, for when the store is back
                    self._pending = batch + self._pending
                await asyncio.sleep(0.5)
                self._wake.set()
                continue
            except Exception:
                logger.exception("progress write failed; dropping %d update(s)", len(batch))
                refused = {}
            finally:
                self._idle.set()
            fences = {u.job_id: u.fence for u in batch}
            for job_id, why in refused.items():
                verdict = _REFUSAL.get(why, Verdict.CANCELLED)
                self.stop(job_id, verdict, fences[job_id] if verdict == Verdict.SUPERSEDED else None)
            with contextlib.suppress(TimeoutError):  # batch what arrives meanwhile, unless a flush waits
                await asyncio.wait_for(self._urgent.wait(), FLUSH_INTERVAL_S)
            self._urgent.clear()

    async def _listener(self) -> None:
        async for payload in self.store.listen(STOP_CHANNEL):
            if payload:
                self.stop(payload, Verdict.CANCELLED)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class AttemptReporter:
    """One stage attempt's reports, bound to its job, fencing token and replica."""

    def __init__(self, channel: ProgressChannel, ticket: dict, stage: str, replica_id: str) -> None:
        self.channel = channel
        self.job_id: str = ticket["job_id"]
        self.fence: int = ticket["fence"]
        self.deadline: float | None = ticket.get("deadline")
        self.replica = (stage, replica_id)
        self.verdict: Verdict | None = None

    def report(
        self,
        state: JobState | None = None,
        step: int | None = None,
        total: int | None = None,
        stamps: dict[str, float] | None = None,
        info: dict | None = None,
    ) -> None:
        self.channel.report(
            ProgressUpdate(self.job_id, self.fence, state, step, total, stamps or {}, self.replica, info or {})
        )

    def on_step(self, state: JobState):
        def callback(_stage: str, done: int, total: int) -> None:
            self.report(state, done, total)

        return callback

    def cancelled(self) -> bool:
        """Polled by the engine at every step boundary."""
        self.verdict = self.channel.stop_reason(self.job_id, self.fence, self.deadline)
        return self.verdict is not None
