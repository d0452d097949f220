"""What the control-plane tests share: a clock they move by hand, a migrated store on a fresh database, a
PostgreSQL server of a test's own, and a way to freeze a real PostgreSQL server (every process stopped,
sockets open: a hang, not an outage)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psutil

from srserve.serving.control.jobs import PoolBacklog
from srserve.serving.control.store.database import EmbeddedPostgres
from srserve.serving.control.store.job_store import JobStore

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


def private_server(parent: Path) -> EmbeddedPostgres:
    """An embedded PostgreSQL of its own under `parent` (not started): a test that stops or freezes it stops
    nothing else the session runs."""
    root = parent / "pg"
    root.mkdir()
    os.chmod(parent, 0o777)  # the server may run as its own user
    os.chmod(root, 0o777)
    return EmbeddedPostgres(root)


def processes(pg: EmbeddedPostgres) -> list[psutil.Process]:
    """The postmaster and every backend it runs (each backend is its own process group)."""
    postmaster = psutil.Process(int((pg.data / "postmaster.pid").read_text().split()[0]))
    return [postmaster, *postmaster.children(recursive=True)]


def freeze(pg: EmbeddedPostgres) -> None:
    """SIGSTOP the server: it keeps its sockets and answers nothing until `thaw`. The postmaster first, so
    that it starts no backend meanwhile; a backend that exits before its signal needs none."""
    postmaster, *children = processes(pg)
    postmaster.send_signal(signal.SIGSTOP)
    for process in [*children, *postmaster.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGSTOP)


def thaw(pg: EmbeddedPostgres) -> None:
    for process in processes(pg):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGCONT)
