"""Progress streams driven by the store's notifications (LISTEN srserve_events), not by polling.

One listening connection per ingress replica; each stream registers for its job and is woken when
the store announces a change of it (or after a reconnect, when notifications may have been missed),
then reads the new events from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

from srserve.serving.control.jobs import Job, JobEvent
from srserve.serving.control.store.job_store import EVENTS_CHANNEL, JobStore


class EventHub:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task | None = None
        self.listening = asyncio.Event()  # set once LISTEN srserve_events is in place (again after each reconnect)

    def start(self) -> EventHub:
        self._task = asyncio.get_event_loop().create_task(self._listen())
        return self

    async def _listen(self) -> None:
        async for job_id in self.store.listen(EVENTS_CHANNEL):
            if not job_id:
                self.listening.set()
            targets = self._waiters.get(job_id, ()) if job_id else [e for s in self._waiters.values() for e in s]
            for event in list(targets):
                event.set()

    async def wait(
        self, job_id: str, after_seq: int, timeout_s: float, tenant: str | None = None
    ) -> tuple[list[JobEvent], Job] | None:
        """Events of the job newer than `after_seq`, waiting up to `timeout_s` for one; None: no such job, or
        (`tenant` given) another tenant's, answered at once as for a missing one, without waiting."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        wake = asyncio.Event()
        self._waiters[job_id].add(wake)  # before reading: a change between read and wait still wakes us
        try:
            while True:
                wake.clear()
                events, job = await self.store.events_and_job(job_id, after_seq)
                if job is None or (tenant is not None and job.tenant != tenant):
                    return None
                remaining = end - loop.time()
                if events or job.terminal or remaining <= 0:
                    return events, job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), remaining)
        finally:
            self._waiters[job_id].discard(wake)
            if not self._waiters[job_id]:
                self._waiters.pop(job_id, None)
