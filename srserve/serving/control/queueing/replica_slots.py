"""A pool replica's place in the queue's capacity: its row in `srserve_pool_replicas`, kept fresh while it lives.

The queue (control/queueing/dispatch.py) hands a pool as many jobs at once as its live replicas take: each takes
one running and one waiting inside it (`slots`, at most its max_ongoing_requests), so a replica's GPU
never waits for the store between jobs and nothing else waits in Ray Serve's router. The row lasts
`ttl_s` past each refresh: a replica that dies or is stopped stops counting within that, with no
goodbye needed (a call the queue sends meanwhile waits in Serve's router for a live replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from srserve.serving.control.errors import StoreUnavailable
from srserve.serving.control.store.job_store import JobStore

logger = logging.getLogger("ray.serve")

SLOTS_PER_REPLICA = 2  # one job running, the next one waiting inside the replica
REFRESH_S = 3.0
TTL_S = 10.0


def replica_slots(max_ongoing_requests: int | None) -> int:
    """The jobs one replica is handed at once: one running and one waiting, within its max_ongoing_requests."""
    if max_ongoing_requests is None:
        return SLOTS_PER_REPLICA
    return max(1, min(SLOTS_PER_REPLICA, max_ongoing_requests))


class ReplicaSlots:
    """Call `start()` on the replica's event loop (a Serve replica's `__init__` runs with it set)."""

    def __init__(
        self, store: JobStore, replica: str, pool: str, slots: int, refresh_s: float = REFRESH_S, ttl_s: float = TTL_S
    ) -> None:
        self.store = store
        self.replica = replica
        self.pool = pool
        self.slots = slots
        self.refresh_s = refresh_s
        self.ttl_s = ttl_s
        self._task: asyncio.Task | None = None

    def start(self) -> ReplicaSlots:
        self._task = asyncio.get_event_loop().create_task(self._refresh())
        return self

    async def _refresh(self) -> None:
        while True:
            try:
                await self.store.register_replica(self.replica, self.pool, self.slots, self.ttl_s)
            except StoreUnavailable as exc:  # the row lapses meanwhile; the next refresh puts it back
                logger.warning("%s replica %s: cannot refresh its slots (%s)", self.pool, self.replica, exc)
            except Exception:
                logger.exception("%s replica %s: refreshing its slots failed", self.pool, self.replica)
            await asyncio.sleep(self.refresh_s)

    async def close(self) -> None:
        """Stop counting now (a replica shutting down; tests)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(StoreUnavailable):
            await self.store.unregister_replica(self.replica)
