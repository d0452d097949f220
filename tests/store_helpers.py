"""What the control-plane tests share: a clock they move by hand, a migrated store on a fresh database."""

from __future__ import annotations

from srserve.serving.control.jobs import PoolBacklog
from srserve.serving.control.store import JobStore

REQUEST = {"prompt": "a fox", "num_inference_steps": 20, "switch": {"kind": "fixed", "step": 5}}
LIMITS = (PoolBacklog("sketch", frozenset({"sketch"}), 100), PoolBacklog("render", frozenset({"render"}), 100))


class Clock:
    """Wall-clock time that moves only when a test says so (deadlines, stalls and retention read it)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def migrated_store(dsn: str, clock: Clock | None = None, timeout_s: float = 3.0) -> JobStore:
    store = JobStore(dsn, timeout_s=timeout_s, clock=clock or Clock())
    await store.migrate()
    return store
