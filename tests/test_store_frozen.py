"""A job store server that hangs (SIGSTOP on every one of its processes), not one that is down.

A crashed server resets connections and every call fails at once; a frozen one accepts bytes and never
answers. Each call must still come back, as StoreUnavailable (HTTP 503 / gRPC UNAVAILABLE), within the
store's bounds (pool wait `timeout_s`, transaction `query_timeout_s`), and the store must work again the
moment the server does. The server here is a real embedded PostgreSQL of its own, so freezing it stops
nothing else the session runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest

from srserve.serving.api.errors import grpc_status, http_status
from srserve.serving.control.errors import StoreUnavailable
from srserve.serving.control.jobs import JobState
from srserve.serving.control.store.database import EmbeddedPostgres
from srserve.serving.control.store.job_store import JobStore
from tests.store_helpers import LIMITS, REQUEST, freeze, private_server, thaw

HANG = 60.0  # far past every bound: reaching it means the call hung


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    pg = private_server(tmp_path_factory.mktemp("frozen"))
    pg.ensure_running()
    try:
        yield pg
    finally:
        thaw(pg)
        pg.stop(mode="immediate")


async def refused(call) -> tuple[StoreUnavailable, float]:
    """The StoreUnavailable a call ends with (never a hang), and how long it took."""
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        await asyncio.wait_for(call, HANG)
    return err.value, time.monotonic() - start


def test_a_frozen_server_costs_a_bounded_wait_and_the_store_recovers(server: EmbeddedPostgres) -> None:
    """Frozen with the pool's connections idle: reads, admissions and concurrent calls each get
    StoreUnavailable (503 / UNAVAILABLE); thawed, the next calls succeed on fresh connections and nothing
    written before the freeze is lost."""

    async def go():
        store = JobStore(server.ensure_running("recovers"), pool_size=2, timeout_s=1.0, query_timeout_s=2.0)
        await store.migrate()
        await store.create("before", REQUEST, 20, None, "o1", 30.0, LIMITS)
        freeze(server)
        try:
            err, _ = await refused(store.get("before"))
            await refused(store.create("during", REQUEST, 20, None, "o1", 30.0, LIMITS))
            many = await asyncio.gather(*(refused(store.counts()) for _ in range(6)))
        finally:
            thaw(server)
        job = await store.get("before")
        await store.create("after", REQUEST, 20, None, "o1", 30.0, LIMITS)
        counts = await store.counts()
        await store.close()
        return err, many, job, counts

    err, many, job, counts = asyncio.run(go())
    assert http_status(err) == 503 and grpc_status(err) == "UNAVAILABLE" and "unavailable" in err.message
    assert len(many) == 6
    assert job is not None and job.state == JobState.QUEUED
    assert counts["queued"] == 2  # "before" and "after"; "during" was refused, not half-written


def test_a_transaction_in_flight_when_the_server_freezes_is_cut_at_its_bound(server: EmbeddedPostgres) -> None:
    """The freeze lands while a transaction waits on the server (here a statement known to be running):
    the watchdog severs the connection at `query_timeout_s`, the caller gets StoreUnavailable, and the
    pool replaces the connection once the server answers again."""

    async def go():
        dsn = server.ensure_running("in_flight")
        # A bound long enough that the statement is seen running (and frozen) well before it cuts.
        store = JobStore(dsn, pool_size=2, timeout_s=1.0, query_timeout_s=5.0)
        await store.migrate()

        async def long_statement():
            async with store._tx() as conn:
                await conn.execute("SELECT pg_sleep(30)")

        task = asyncio.ensure_future(long_statement())
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watcher:
            while True:  # until the statement runs on the server (an event, not a sleep)
                cur = await watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
                )
                if (await cur.fetchone())[0]:
                    break
                await asyncio.sleep(0.05)
        freeze(server)
        try:
            err, _ = await refused(task)
        finally:
            thaw(server)
        counts = await store.counts()
        await store.close()
        return err, counts

    err, counts = asyncio.run(go())
    assert "unavailable" in err.message
    assert counts["queued"] == 0
