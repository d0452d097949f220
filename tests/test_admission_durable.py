"""An acknowledged admission survives the job store's crash, and a store call after a restart recovers.

Admission commits asynchronously (so its lock is not held through a WAL flush) and then flushes in the same
round trip before it returns (see srserve.serving.control.store.admission.admit). Here the server's WAL writer is
slowed to once a minute, so a commit that was not flushed would still sit in PostgreSQL's shared memory
when the server is stopped in `immediate` mode (its processes quit at once, nothing is written): every job
`create` returned must be there after the restart. The server is a real embedded PostgreSQL of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest

from srserve.serving.control.errors import StoreUnavailable
from srserve.serving.control.store import connection as store_connection
from srserve.serving.control.store.database import EmbeddedPostgres
from srserve.serving.control.store.job_store import JobStore
from tests.store_helpers import LIMITS, REQUEST, private_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    pg = private_server(tmp_path_factory.mktemp("durable"))
    with psycopg.connect(pg.ensure_running(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        conn.execute("ALTER SYSTEM SET wal_writer_flush_after = '64MB'")
    pg.stop()
    try:
        yield pg
    finally:
        pg.stop(mode="immediate")


def test_every_acknowledged_admission_survives_an_immediate_stop(server: EmbeddedPostgres) -> None:
    dsn = server.ensure_running("crash")

    async def admit_all() -> list[str]:
        store = JobStore(dsn, pool_size=2)
        await store.migrate()
        done = await asyncio.gather(
            *(store.create(f"job-{i}", REQUEST, 20, None, "ingress", 30.0, LIMITS) for i in range(80))
        )
        await store.close()
        return [job.id for job in done]

    acknowledged = asyncio.run(admit_all())
    server.stop(mode="immediate")  # no checkpoint, no WAL written that was not already
    server.ensure_running("crash")
    with psycopg.connect(dsn) as conn:
        kept = {row[0] for row in conn.execute("SELECT id FROM srserve_jobs")}
        events = conn.execute("SELECT count(*) FROM srserve_job_events").fetchone()[0]
    assert set(acknowledged) <= kept and len(acknowledged) == 80
    assert events == 80  # each job's first event was written with it


def test_a_connection_that_answered_just_now_is_not_checked_and_a_lost_server_costs_one_call(
    server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection back in the pool within FRESH_S is handed out without the check's round trip (made
    long here so the restart falls inside it): the first call after the server's restart fails with
    StoreUnavailable, as a call during the restart would; the pool drops that connection and the next call
    succeeds on a new one."""
    monkeypatch.setattr(store_connection, "FRESH_S", 3600.0)
    dsn = server.ensure_running("fresh")

    async def go() -> None:
        store = JobStore(dsn, pool_size=1, timeout_s=2.0, query_timeout_s=5.0)
        await store.migrate()
        await store.create("before", REQUEST, 20, None, "ingress", 30.0, LIMITS)
        await asyncio.to_thread(server.stop, "immediate")
        await asyncio.to_thread(server.ensure_running, "fresh")
        with pytest.raises(StoreUnavailable):
            await store.get("before")
        job = await store.get("before")
        assert job is not None and job.id == "before"
        await store.close()

    asyncio.run(go())
