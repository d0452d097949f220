"""The job store on PostgreSQL (psycopg 3, async): the only place a job's truth lives.

Every replica (ingress or worker) opens its own small connection pool; none holds the only copy of
anything. Writes go through the state machine (srserve.serving.control.state_machine): an attempt's
write carries its fencing token and is refused when a newer attempt owns the job. Changes are
announced with NOTIFY: `srserve_events` (payload: job id) wakes progress streams, `srserve_stop`
(payload: `reason:job id`) reaches the replicas running a job that was cancelled or failed.

A write the store refuses comes back as a StopReason (srserve.serving.control.attempts), never as an
exception: the worker stops, the orchestrator decides what the job needs next.

Every time the store writes or compares (creation, deadlines, progress, completion, retention, leases) is
on the database server's clock: leases in SQL, the rest through `clock`, a DatabaseClock that follows the
server's from any machine (tests drive a clock by hand instead).

When the server cannot be reached, calls raise StoreUnavailable (HTTP 503, gRPC UNAVAILABLE)
within `timeout_s`, so clients get a clear answer and nothing is half-accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from srserve.serving.control.attempts import StopReason
from srserve.serving.control.errors import StoreUnavailable
from srserve.serving.control.jobs import (
    TERMINAL,
    ErrorCode,
    Job,
    JobEvent,
    JobState,
    PoolBacklog,
)
from srserve.serving.control.queueing.dispatch import (
    DISPATCH_CHANNEL,
    DISPATCH_LOCK,
    GRANT_SQL,
    IDLE_SQL,
    DispatchPlan,
    grant_params,
    stage_charge,
)
from srserve.serving.control.state_machine import RESUMABLE_FROM, RESUME_STATE, can_move, next_stage
from srserve.serving.control.store.admission import admission_sql, admit, refusal
from srserve.serving.control.store.clock import NOW_SQL as _NOW
from srserve.serving.control.store.clock import DatabaseClock, on_this_machine
from srserve.serving.control.store.connection import ConnectionCheck, bounded, connection_kwargs
from srserve.serving.control.store.work_snapshot import WorkSnapshot, read_work_snapshot
from srserve.serving.control.tenants import DEFAULT, DEFAULT_TENANT, Tenant

logger = logging.getLogger("ray.serve")

EVENTS_CHANNEL = "srserve_events"
STOP_CHANNEL = "srserve_stop"
_MIGRATION_LOCK = 7_265_301  # pg_advisory_lock key of schema migrations (admission's: migration 0004)
_JSON_FIELDS = ("request", "attempts", "timeline", "replicas")
MIGRATION_BOUND_S = 600.0  # a schema migration may rewrite a large table; API calls never wait on one
_LIVE = "state NOT IN ('completed', 'failed', 'cancelled')"
_OUT_OF_QUEUE = {"wait_pool": None, "wait_charge": None, "slot_pool": None}  # neither waiting nor holding a slot
_UNQUEUE = "wait_pool = NULL, wait_charge = NULL, slot_pool = NULL"


@dataclass(frozen=True)
class QueuePlace:
    """A job in line: the stage it waits to run, the pool that runs it, whether it holds the slot already."""

    stage: str
    pool: str
    granted: bool


class AttemptsExhausted(RuntimeError):
    """begin_attempt failed the job: its stage used up its attempts (the caller records the end)."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.error)
        self.job = job


def stop_payload(job_id: str, reason: StopReason) -> str:
    return f"{reason.value}:{job_id}"


def parse_stop(payload: str) -> tuple[str, StopReason]:
    """(job id, reason) of a `srserve_stop` payload (a bare job id, as older servers sent: ended)."""
    reason, sep, job_id = payload.partition(":")
    try:
        return (job_id, StopReason(reason)) if sep else (payload, StopReason.ENDED)
    except ValueError:
        return payload, StopReason.ENDED


def ended_reason(job: Job) -> StopReason:
    """Why a finished job's attempts must stop."""
    if job.state == JobState.CANCELLED:
        return StopReason.CANCELLED
    if job.error_code == ErrorCode.DEADLINE_EXCEEDED:
        return StopReason.DEADLINE
    return StopReason.ENDED


_LATEST = ("state", "step", "total", "replica", "switch_step", "handoff_bytes", "latents_sha256")


@dataclass(frozen=True)
class ProgressUpdate:
    """One attempt's report: a state and step, stage stamps, the replica, and what the stage learnt
    about the job (its switch step, handoff size, final latents' digest). Batched by workers."""

    job_id: str
    fence: int
    state: JobState | None = None
    step: int | None = None
    total: int | None = None
    stamps: dict[str, float] = field(default_factory=dict)
    replica: tuple[str, str] | None = None
    switch_step: int | None = None
    handoff_bytes: int | None = None
    latents_sha256: str | None = None

    def merged(self, newer: ProgressUpdate) -> ProgressUpdate:
        """This update and a newer one of the same attempt and state as one (the newer wins, stamps add up)."""
        assert (newer.job_id, newer.fence) == (self.job_id, self.fence)

        newest = {k: getattr(newer, k) for k in _LATEST if getattr(newer, k) is not None}
        return replace(self, stamps={**self.stamps, **newer.stamps}, **newest)


def _job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        request=row["request"],
        created_at=row["created_at"],
        deadline=row["deadline"],
        state=JobState(row["state"]),
        step=row["step"],
        total=row["total"],
        switch_step=row["switch_step"],
        num_steps=row["num_steps"],
        error_code=row["error_code"],
        error=row["error"],
        completed_at=row["completed_at"],
        video_bytes=row["video_bytes"],
        handoff_bytes=row["handoff_bytes"],
        latents_sha256=row["latents_sha256"],
        attempts=row["attempts"],
        last_report=row["last_progress"],
        timeline=row["timeline"],
        replicas=row["replicas"],
        video_key=row["video_key"],
        handoff_key=row["handoff_key"],
        fence=row["fence"],
        lease_owner=row["lease_owner"],
        switch_cap=row.get("switch_cap"),
        switch_reason=row.get("switch_reason"),
        tenant=row.get("tenant", DEFAULT_TENANT),
        priority=row.get("priority", 0),
        cost_gpu_s=row.get("cost_gpu_s"),
    )


def _event(row: dict[str, Any]) -> JobEvent:
    return JobEvent(
        row["seq"], row["job_id"], row["state"], row["step"], row["total"], row["progress"], row["time"], row["message"]
    )


def migrations() -> list[tuple[int, str]]:
    """The schema's migrations in order: (version, SQL), from the package's migrations/ folder."""
    folder = resources.files("srserve.serving.control.store") / "migrations"
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(out)


class JobStore:
    """Async access to the srserve tables; open lazily inside the event loop that uses it."""

    def __init__(
        self,
        dsn: str,
        pool_size: int = 4,
        timeout_s: float = 3.0,
        clock: Callable[[], float] | None = None,
        query_timeout_s: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.timeout_s = timeout_s
        self.query_timeout_s = query_timeout_s
        # The database server's clock (this machine's when the server runs here) unless a test drives one
        # by hand (see store.clock).
        if clock is None:
            clock = time.time if on_this_machine(dsn) else DatabaseClock()
        self.clock: Callable[[], float] = clock
        self._connection = connection_kwargs(timeout_s, query_timeout_s)
        check = ConnectionCheck(timeout_s)
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "row_factory": dict_row, **self._connection},
            check=check,
            reset=check.returned,
            reconnect_timeout=3600,
        )
        self._opened = False
        self._open_lock: asyncio.Lock | None = None

    async def open(self) -> JobStore:
        if self._opened:
            return self
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True
        return self

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False

    @contextlib.asynccontextmanager
    async def _tx(
        self, bound_s: float | None = None, transaction: bool = True
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection in a transaction (`transaction=False`: each statement its own); connection trouble
        becomes StoreUnavailable. The wait for a connection is bounded by `timeout_s`, the transaction by
        `bound_s` (default `query_timeout_s`), also when the server hangs (connection.bounded)."""
        await self.open()
        try:
            async with (
                self._pool.connection() as conn,
                bounded(conn, bound_s or self.query_timeout_s, "a transaction"),
            ):
                if isinstance(self.clock, DatabaseClock) and self.clock.stale():
                    await self.clock.sync(conn)
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"job store unavailable: {str(exc).strip().splitlines()[0][:200]}") from None

    # -- schema ---------------------------------------------------------------------------
    async def migrate(self) -> int:
        """Apply the migrations not applied yet (one process at a time); returns the schema version."""
        async with self._tx(MIGRATION_BOUND_S) as conn:
            # The connections' server-side limits are for API calls; a migration gets its own bound.
            await conn.execute("SET LOCAL statement_timeout = 0")
            await conn.execute("SET LOCAL lock_timeout = 0")
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS srserve_schema (version integer PRIMARY KEY, applied_at timestamptz "
                "NOT NULL DEFAULT now())"
            )
            rows = await (await conn.execute("SELECT version FROM srserve_schema")).fetchall()
            done = {r["version"] for r in rows}
            version = max(done, default=0)
            for number, sql in migrations():
                if number in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO srserve_schema (version) VALUES (%s)", (number,))
                version = number
                logger.info("job store: applied migration %04d", number)
            return version

    # -- helpers --------------------------------------------------------------------------
    async def _lock_row(self, conn: psycopg.AsyncConnection, job_id: str) -> Job | None:
        cur = await conn.execute("SELECT * FROM srserve_jobs WHERE id = %s FOR UPDATE", (job_id,))
        row = await cur.fetchone()
        return None if row is None else _job(row)

    async def _save(self, conn: psycopg.AsyncConnection, job: Job, **extra: Any) -> None:
        """Write a locked job's mutable fields back (plus columns only the store keeps)."""
        cols = {
            "state": job.state.value,
            "step": job.step,
            "total": job.total,
            "switch_step": job.switch_step,
            "error_code": job.error_code,
            "error": job.error,
            "completed_at": job.completed_at,
            "video_key": job.video_key,
            "video_bytes": job.video_bytes,
            "handoff_key": job.handoff_key,
            "handoff_bytes": job.handoff_bytes,
            "latents_sha256": job.latents_sha256,
            "attempts": json.dumps(job.attempts),
            "timeline": json.dumps(job.timeline),
            "replicas": json.dumps(job.replicas),
            "fence": job.fence,
            "updated_at": self.clock(),
            **extra,
        }
        sets = ", ".join(f"{k} = %({k})s" for k in cols)
        await conn.execute(f"UPDATE srserve_jobs SET {sets} WHERE id = %(id)s", {**cols, "id": job.id})

    async def _emit(self, conn: psycopg.AsyncConnection, job: Job, message: str = "") -> None:
        await conn.execute(
            "INSERT INTO srserve_job_events (job_id, state, step, total, progress, time, message) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (job.id, job.state.value, job.step, job.total, job.overall_progress(), self.clock(), message),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, job.id))

    async def _finish(
        self, conn: psycopg.AsyncConnection, job: Job, state: JobState, code: ErrorCode | None, message: str
    ) -> None:
        job.state = state
        job.completed_at = self.clock()
        job.timeline.setdefault("finished", job.completed_at)
        if code is not None:
            job.error_code, job.error = code.value, message
        await self._save(conn, job, lease_owner=None, lease_expires=None, **_OUT_OF_QUEUE)
        await self._emit(conn, job, message or state.value)
        if state != JobState.COMPLETED:
            await conn.execute("SELECT pg_notify(%s, %s)", (STOP_CHANNEL, stop_payload(job.id, ended_reason(job))))

    # -- admission ------------------------------------------------------------------------
    async def create(
        self,
        job_id: str,
        request: dict[str, Any],
        num_steps: int,
        deadline_s: float | None,
        owner: str,
        lease_ttl_s: float,
        limits: Sequence[PoolBacklog],
        handoff: tuple[str, int, int] | None = None,
        switch_choice: tuple[int, str] | None = None,
        *,
        tenant: Tenant = DEFAULT,
        priority: int = 0,
        cost_gpu_s: float | None = None,
    ) -> Job:
        """Admit a job for `tenant` under its quota and the global per-pool limits (both counted here, across
        every ingress replica).

        `handoff` (key, bytes, switch step) admits an uploaded handoff straight to `handed_off`;
        `switch_choice` (cap, reason) is the load-aware switch's decision for it; `priority` (within the
        tenant's bound, checked by the caller) and `cost_gpu_s` (its predicted GPU-seconds) are stored with it.
        """
        state = JobState.QUEUED if handoff is None else JobState.HANDED_OFF
        async with self._tx(transaction=False) as conn:
            created = self.clock()  # after the connection has synced the clock
            job = Job(
                id=job_id,
                request=request,
                created_at=created,
                num_steps=num_steps,
                deadline=created + deadline_s if deadline_s else None,
                state=state,
            )
            job.timeline["submitted"] = created
            if handoff is not None:
                job.handoff_key, job.handoff_bytes, job.switch_step = handoff
            if switch_choice is not None:
                job.switch_cap, job.switch_reason = switch_choice
            job.tenant, job.priority, job.cost_gpu_s = tenant.name, priority, cost_gpu_s
            # One round trip; the admission lock is held only while the server runs the admitting statement,
            # and the job is durable before this returns (see admit).
            sql, checks = admission_sql(limits, handoff is not None, tenant, cost_gpu_s)
            row = await admit(
                conn,
                sql,
                {
                    **checks,
                    "id": job_id,
                    "request": json.dumps(request),
                    "state": state.value,
                    "created": created,
                    "deadline": job.deadline,
                    "num_steps": num_steps,
                    "switch_step": job.switch_step,
                    "handoff_key": job.handoff_key,
                    "handoff_bytes": job.handoff_bytes,
                    "timeline": json.dumps(job.timeline),
                    "switch_cap": job.switch_cap,
                    "switch_reason": job.switch_reason,
                    "tenant": tenant.name,
                    "priority": priority,
                    "cost": cost_gpu_s,
                    "owner": owner,
                    "ttl": lease_ttl_s,
                    "progress": job.overall_progress(),
                    "message": state.value,
                    "channel": EVENTS_CHANNEL,
                },
            )
        refused = row["refused"]
        if refused is not None:
            raise refusal(refused, row["counts"], limits, tenant, cost_gpu_s)
        job.lease_owner = owner
        return job

    # -- reads ----------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job | None:
        async with self._tx() as conn:
            row = await (await conn.execute("SELECT * FROM srserve_jobs WHERE id = %s", (job_id,))).fetchone()
            return None if row is None else _job(row)

    async def list_jobs(
        self, limit: int = 20, after: str | None = None, order: str = "desc", tenant: str | None = None
    ) -> tuple[list[Job], bool]:
        """A page of jobs by creation order, `tenant`'s only (None: every tenant's). `after` is a job of the
        same tenant: another tenant's id is as unknown as a missing one (an empty page), never a cursor."""
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        mine = "TRUE" if tenant is None else "tenant = %(tenant)s"
        args = {"after": after, "limit": limit + 1, "tenant": tenant}
        async with self._tx() as conn:
            if after is not None:
                cur = await conn.execute(
                    f"SELECT * FROM srserve_jobs WHERE {mine} AND seq {op} "
                    f"(SELECT seq FROM srserve_jobs WHERE id = %(after)s AND {mine}) "
                    f"ORDER BY seq {direction} LIMIT %(limit)s",
                    args,
                )
            else:
                cur = await conn.execute(
                    f"SELECT * FROM srserve_jobs WHERE {mine} ORDER BY seq {direction} LIMIT %(limit)s", args
                )
            rows = await cur.fetchall()
        return [_job(r) for r in rows[:limit]], len(rows) > limit

    @staticmethod
    async def _events(conn: psycopg.AsyncConnection, job_id: str, after_seq: int, limit: int) -> list[JobEvent]:
        cur = await conn.execute(
            "SELECT * FROM srserve_job_events WHERE job_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (job_id, after_seq, limit),
        )
        return [_event(r) for r in await cur.fetchall()]

    async def events(self, job_id: str, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        async with self._tx() as conn:
            return await self._events(conn, job_id, after_seq, limit)

    async def events_and_job(self, job_id: str, after_seq: int = 0) -> tuple[list[JobEvent], Job | None]:
        """New events and the job as of them, on one connection (what a progress stream reads per wake)."""
        async with self._tx() as conn:
            events = await self._events(conn, job_id, after_seq, 1000)
            row = await (await conn.execute("SELECT * FROM srserve_jobs WHERE id = %s", (job_id,))).fetchone()
            return events, None if row is None else _job(row)

    async def counts(self) -> dict[str, int]:
        """Jobs per state, from the counters (migration 0004): the same at any number of jobs."""
        out = {s.value: 0 for s in JobState}
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT c.state, c.n + coalesce(d.n, 0) AS n FROM srserve_state_counts c LEFT JOIN "
                "(SELECT state, sum(n) AS n FROM srserve_count_deltas GROUP BY state) d USING (state)"
            )
            for row in await cur.fetchall():
                out[row["state"]] = int(row["n"])
        return out

    async def tenant_usage(self) -> dict[str, tuple[int, float]]:
        """Each tenant's unfinished jobs and their predicted GPU-seconds, from the counters (its quotas' use)."""
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT tenant, sum(live) AS live, sum(gpu_s) AS gpu_s FROM (SELECT tenant, live, gpu_s FROM "
                "srserve_tenant_live UNION ALL SELECT tenant, live, gpu_s FROM srserve_count_deltas) u GROUP BY tenant"
            )
            return {r["tenant"]: (int(r["live"]), float(r["gpu_s"])) for r in await cur.fetchall()}

    async def tenant_counts(self) -> dict[str, dict[str, int]]:
        """Jobs per state of each tenant that has any (the per-tenant gauges), from the counters (migration 0006)."""
        out: dict[str, dict[str, int]] = {}
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT tenant, state, sum(n) AS n FROM (SELECT tenant, state, n FROM srserve_tenant_state_counts "
                "UNION ALL SELECT tenant, state, n FROM srserve_count_deltas) u "
                "GROUP BY tenant, state HAVING sum(n) <> 0"
            )
            for row in await cur.fetchall():
                out.setdefault(row["tenant"], {s.value: 0 for s in JobState})[row["state"]] = int(row["n"])
        return out

    async def jobs_for_work(self, recent: int = 32) -> list[Job]:
        """Live jobs plus the newest finished ones (their stamps price a step), oldest first."""
        async with self._tx() as conn:
            cur = await conn.execute(
                f"(SELECT * FROM srserve_jobs WHERE {_LIVE}) UNION ALL (SELECT * FROM srserve_jobs "
                f"WHERE NOT ({_LIVE}) ORDER BY seq DESC LIMIT %s) ORDER BY seq",
                (recent,),
            )
            return [_job(r) for r in await cur.fetchall()]

    async def work_snapshot(self, recent: int = 32) -> WorkSnapshot:
        """What pricing queued work reads, in rows that do not grow with the waiting jobs: waiting jobs
        grouped, running jobs, the newest `recent` finished ones (control/store/work_snapshot.py)."""
        async with self._tx() as conn:
            return await read_work_snapshot(conn, recent, _job)

    # -- attempts (the orchestrator) ------------------------------------------------------
    async def begin_attempt(
        self, job_id: str, stage: str | None, owner: str, max_attempts: int, last_failure: str | None = None
    ) -> Job | None:
        """Start the next attempt of `stage` (None: the one the job needs next, from its last durable
        point): a new fencing token, the state reset to the stage's start.

        None when the job ended, or another orchestrator holds it. A job whose stage has used up its
        attempts fails here with the reason (and `last_failure`, what ended the last attempt), and
        AttemptsExhausted is raised.
        """
        async with self._tx() as conn:
            job = await self._lock_row(conn, job_id)
            if job is None or job.state.value in TERMINAL or job.lease_owner != owner:
                return None
            stage = stage or next_stage(job.state, job.handoff_key is not None)
            assert stage is not None
            if job.state not in RESUMABLE_FROM[stage]:
                raise ValueError(f"job {job_id}: a {stage} attempt cannot start from {job.state.value}")
            used = job.attempts.get(stage, 0)
            if used >= max_attempts:
                why = f"{stage} failed {used} times; giving up" + (f" (last: {last_failure})" if last_failure else "")
                await self._finish(conn, job, JobState.FAILED, ErrorCode.INTERNAL, why)
                exhausted = job
            else:
                exhausted = None
                job = await self._next_attempt(conn, job, stage, used)
        if exhausted is not None:  # raised after the commit, so the failure is stored
            raise AttemptsExhausted(exhausted)
        return job

    async def _next_attempt(self, conn: psycopg.AsyncConnection, job: Job, stage: str, used: int) -> Job:
        """Bump the fencing token and reset the state to where the stage starts."""
        job.attempts[stage] = used + 1
        job.fence += 1
        restarted = job.state != RESUME_STATE[stage]
        job.state = RESUME_STATE[stage]
        if stage == "sketch":
            job.step, job.total = 0, 0
        else:
            job.step, job.total = job.switch_step or 0, job.num_steps
        await self._save(conn, job, last_progress=self.clock())
        if restarted:
            await self._emit(conn, job, f"{stage} attempt {used + 1}")
        return job

    async def drop_handoff(self, job_id: str, owner: str) -> None:
        """The handoff artifact is gone: forget it so the next attempt sketches again."""
        async with self._tx() as conn:
            job = await self._lock_row(conn, job_id)
            if job is None or job.state.value in TERMINAL or job.lease_owner != owner:
                return
            job.handoff_key, job.handoff_bytes, job.switch_step = None, 0, None
            job.state, job.step, job.total = JobState.QUEUED, 0, 0
            await self._save(conn, job)
            await self._emit(conn, job, "handoff lost; sketching again")

    async def claim(self, owner: str, lease_ttl_s: float, limit: int = 16) -> list[str]:
        """Take over live jobs nobody holds (lease expired or released): the resume path."""
        # Two index scans (unleased by seq; expired by lease_expires), never a pass over every live job. The
        # time is read once (an InitPlan): clock_timestamp() is volatile, and a volatile bound is not an index
        # condition, so the expired scan would filter every live job's index entry.
        async with self._tx() as conn:
            cur = await conn.execute(
                f"UPDATE srserve_jobs SET lease_owner = %(owner)s, lease_expires = {_NOW} + %(ttl)s, {_UNQUEUE} "
                "WHERE id IN ("
                "SELECT id FROM srserve_jobs WHERE id IN ("
                f"(SELECT id FROM srserve_jobs WHERE {_LIVE} AND lease_owner IS NULL ORDER BY seq LIMIT %(n)s) "
                f"UNION ALL (SELECT id FROM srserve_jobs WHERE {_LIVE} AND lease_expires < (SELECT {_NOW}) "
                "ORDER BY lease_expires LIMIT %(n)s)) "
                f"AND {_LIVE} AND (lease_owner IS NULL OR lease_expires < {_NOW}) "
                "ORDER BY seq LIMIT %(n)s FOR UPDATE SKIP LOCKED) RETURNING id",
                {"owner": owner, "ttl": lease_ttl_s, "n": limit},
            )
            return [r["id"] for r in await cur.fetchall()]

    async def heartbeat(self, owner: str, lease_ttl_s: float) -> int:
        """Extend every lease `owner` holds, in one statement."""
        async with self._tx() as conn:
            cur = await conn.execute(
                f"UPDATE srserve_jobs SET lease_expires = {_NOW} + %s WHERE lease_owner = %s AND {_LIVE}",
                (lease_ttl_s, owner),
            )
            return cur.rowcount

    async def release(self, owner: str, job_ids: Iterable[str] | None = None) -> int:
        """Give leases up (a draining orchestrator), so another takes the jobs over at once."""
        async with self._tx() as conn:
            if job_ids is None:
                cur = await conn.execute(
                    f"UPDATE srserve_jobs SET lease_owner = NULL, lease_expires = NULL, {_UNQUEUE} "
                    "WHERE lease_owner = %s",
                    (owner,),
                )
            else:
                cur = await conn.execute(
                    f"UPDATE srserve_jobs SET lease_owner = NULL, lease_expires = NULL, {_UNQUEUE} "
                    "WHERE lease_owner = %s AND id = ANY(%s)",
                    (owner, list(job_ids)),
                )
            return cur.rowcount

    # -- the queue (srserve.serving.control.queueing.dispatch) ----------------------------
    async def wait_for_slot(self, job_id: str, owner: str, plan: DispatchPlan) -> QueuePlace | None:
        """Put a job `owner` drives in line for the pool its next stage runs on (a job that already holds
        that pool's slot keeps it). None when the job ended or another orchestrator holds it."""
        async with self._tx() as conn:
            cur = await conn.execute("SELECT * FROM srserve_jobs WHERE id = %s FOR UPDATE", (job_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            job = _job(row)
            stage = next_stage(job.state, job.handoff_key is not None)
            if stage is None or job.lease_owner != owner:
                return None
            pool = plan.pools[stage]
            if row["slot_pool"] == pool:
                return QueuePlace(stage, pool, granted=True)
            charge = stage_charge(job, stage, stage in plan.whole_job)
            await conn.execute(
                "UPDATE srserve_jobs SET wait_pool = %s, wait_charge = %s, slot_pool = NULL WHERE id = %s",
                (pool, charge, job_id),
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (DISPATCH_CHANNEL, f"waiting:{pool}"))
            return QueuePlace(stage, pool, granted=False)

    async def grant(self, pool: str, weights: Mapping[str, float]) -> str | None:
        """Give `pool`'s next free slot to the job the queue's rules choose (dispatch.GRANT_SQL): its id, or
        None when the pool has no free slot or nothing waits for it. Its driver hears of it (NOTIFY)."""
        async with self._tx() as conn:
            # One granter per pool at a time, so the count of held slots it reads stays true until it commits.
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (DISPATCH_LOCK, pool))
            row = await (await conn.execute(GRANT_SQL, grant_params(pool, weights))).fetchone()
            return None if row is None else row["id"]

    async def slot_state(self, job_id: str, owner: str) -> str:
        """Where a job `owner` put in line stands: "granted", "waiting", or "gone" (ended, or not its own)."""
        async with self._tx(transaction=False) as conn:
            row = await (
                await conn.execute(
                    "SELECT state, lease_owner, wait_pool, slot_pool FROM srserve_jobs WHERE id = %s", (job_id,)
                )
            ).fetchone()
        if row is None or row["state"] in TERMINAL or row["lease_owner"] != owner:
            return "gone"
        if row["slot_pool"] is not None:
            return "granted"
        return "waiting" if row["wait_pool"] is not None else "gone"

    async def free_slot(self, job_id: str, owner: str) -> str | None:
        """The job's stage is over: the slot it holds for `owner` goes back to the pool (returned, and
        announced). A job taken over meanwhile keeps the slot its new driver got."""
        async with self._tx() as conn:
            row = await (
                await conn.execute(
                    "WITH held AS (SELECT id, slot_pool FROM srserve_jobs WHERE id = %s AND slot_pool IS NOT NULL "
                    "AND lease_owner = %s FOR UPDATE) UPDATE srserve_jobs j SET slot_pool = NULL FROM held "
                    "WHERE j.id = held.id RETURNING held.slot_pool AS pool",
                    (job_id, owner),
                )
            ).fetchone()
            if row is None:
                return None
            await conn.execute(IDLE_SQL, {"pool": row["pool"]})
            await conn.execute("SELECT pg_notify(%s, %s)", (DISPATCH_CHANNEL, f"freed:{row['pool']}"))
            return row["pool"]

    async def granted_to(self, owner: str) -> list[str]:
        """The jobs `owner` drives that hold a slot (a grant whose announcement it may have missed)."""
        async with self._tx(transaction=False) as conn:
            cur = await conn.execute(
                "SELECT id FROM srserve_jobs WHERE slot_pool IS NOT NULL AND lease_owner = %s", (owner,)
            )
            return [r["id"] for r in await cur.fetchall()]

    async def register_replica(self, replica: str, pool: str, slots: int, ttl_s: float) -> bool:
        """A pool replica is alive for `ttl_s` more and takes `slots` jobs at once; True when it is new (its
        pool's dispatchers are woken: there is room now)."""
        async with self._tx() as conn:
            row = await (
                await conn.execute(
                    "INSERT INTO srserve_pool_replicas (replica, pool, slots, expires) "
                    f"VALUES (%s, %s, %s, {_NOW} + %s) ON CONFLICT (replica) DO UPDATE SET pool = EXCLUDED.pool, "
                    "slots = EXCLUDED.slots, expires = EXCLUDED.expires RETURNING (xmax = 0) AS inserted",
                    (replica, pool, slots, ttl_s),
                )
            ).fetchone()
            inserted = bool(row and row["inserted"])
            if inserted:
                await conn.execute("SELECT pg_notify(%s, %s)", (DISPATCH_CHANNEL, f"freed:{pool}"))
            # Rows of replicas gone without a word (killed) go once well past their time.
            await conn.execute(f"DELETE FROM srserve_pool_replicas WHERE expires < {_NOW} - 3600")
            return inserted

    async def unregister_replica(self, replica: str) -> None:
        async with self._tx() as conn:
            await conn.execute("DELETE FROM srserve_pool_replicas WHERE replica = %s", (replica,))

    async def pool_capacity(self, pool: str) -> int:
        """The slots `pool`'s live replicas take (0: none registered)."""
        async with self._tx(transaction=False) as conn:
            row = await (
                await conn.execute(
                    "SELECT coalesce(sum(slots), 0) AS n FROM srserve_pool_replicas "
                    f"WHERE pool = %s AND expires > {_NOW}",
                    (pool,),
                )
            ).fetchone()
            return int(row["n"]) if row else 0

    # -- attempts' writes (the workers) ---------------------------------------------------
    async def apply_progress(self, updates: list[ProgressUpdate]) -> dict[tuple[str, int], StopReason]:
        """Apply a batch of reports in one transaction, in order; returns why each refused attempt
        ((job id, fencing token)) was refused. Its later updates in the batch are skipped too.

        Refused: the job ended (or is past its deadline: the worker stops now, whoever ends the job
        records it once), the attempt is stale, or the state change is not allowed.
        """
        refused: dict[tuple[str, int], StopReason] = {}
        if not updates:
            return refused
        async with self._tx() as conn:
            jobs: dict[str, Job | None] = {}
            changed: set[str] = set()
            for u in updates:
                if (u.job_id, u.fence) in refused:
                    continue
                if u.job_id not in jobs:
                    jobs[u.job_id] = await self._lock_row(conn, u.job_id)
                job = jobs[u.job_id]
                why = self._refusal(job, u.fence, u.state)
                if why is None and job is not None and job.deadline is not None and self.clock() > job.deadline:
                    why = StopReason.DEADLINE
                if why is not None:
                    refused[(u.job_id, u.fence)] = why
                    continue
                assert job is not None
                self._apply(job, u)
                if u.state is not None:
                    moved = u.state != job.state or (u.step is not None and u.step != job.step)
                    job.state = u.state
                    job.step = u.step if u.step is not None else job.step
                    job.total = u.total if u.total is not None else job.total
                    if moved:
                        await self._emit(conn, job)
                changed.add(u.job_id)
            for job_id in changed:  # what was applied (a job's refused updates changed nothing)
                job = jobs[job_id]
                assert job is not None
                await self._save(conn, job, last_progress=self.clock())
        return refused

    @staticmethod
    def _apply(job: Job, u: ProgressUpdate) -> None:
        job.timeline.update(u.stamps)
        if u.replica:
            job.replicas[u.replica[0]] = u.replica[1]
        if u.switch_step is not None:
            job.switch_step = u.switch_step
        if u.handoff_bytes is not None:
            job.handoff_bytes = u.handoff_bytes
        if u.latents_sha256 is not None:
            job.latents_sha256 = u.latents_sha256

    @staticmethod
    def _refusal(job: Job | None, fence: int, state: JobState | None) -> StopReason | None:
        if job is None:
            return StopReason.UNKNOWN
        if job.state.value in TERMINAL:
            return ended_reason(job)
        if fence != job.fence:
            return StopReason.SUPERSEDED
        if state is not None and not can_move(job.state, state):
            return StopReason.ILLEGAL
        return None

    async def record_handoff(
        self, job_id: str, fence: int, key: str, nbytes: int, switch_step: int, stamps: dict[str, float]
    ) -> Job | StopReason:
        """The sketch's durable point: its handoff is in artifact storage. The job, or why it was refused."""
        async with self._tx() as conn:
            job = await self._lock_row(conn, job_id)
            if (why := self._refusal(job, fence, JobState.HANDED_OFF)) is not None:
                return why
            assert job is not None
            job.timeline.update(stamps)
            job.handoff_key, job.handoff_bytes, job.switch_step = key, nbytes, switch_step
            job.state, job.step, job.total = JobState.HANDED_OFF, switch_step, job.num_steps
            await self._save(conn, job, last_progress=self.clock())
            await self._emit(conn, job)
            return job

    async def complete(
        self, job_id: str, fence: int, key: str, nbytes: int, stamps: dict[str, float], latents_sha256: str | None
    ) -> Job | StopReason:
        """The render's durable point: the video is in artifact storage. The job, or why it was refused."""
        async with self._tx() as conn:
            job = await self._lock_row(conn, job_id)
            if (why := self._refusal(job, fence, JobState.COMPLETED)) is not None:
                return why
            assert job is not None
            job.timeline.update(stamps)
            job.video_key, job.video_bytes = key, nbytes
            if latents_sha256 is not None:
                job.latents_sha256 = latents_sha256
            job.step = job.total = job.num_steps
            await self._finish(conn, job, JobState.COMPLETED, None, "")
            return job

    # -- ends -----------------------------------------------------------------------------
    async def fail(self, job_id: str, code: ErrorCode, message: str) -> Job | None:
        """Fail a live job: the failed job when this call ended it, None when it had ended (or is unknown),
        so that whoever ended it records the end, once."""
        async with self._tx() as conn:
            job = await self._lock_row(conn, job_id)
            if job is None or job.state.value in TERMINAL:
                return None
            await self._finish(conn, job, JobState.FAILED, code, message)
            return job

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a live job (NOTIFY stops its replica at the next step); a finished job is returned as is."""
        async with self._tx() as conn:
            job = await self._lock_row(conn, job_id)
            if job is None:
                return None
            if job.state.value not in TERMINAL:
                await self._finish(conn, job, JobState.CANCELLED, ErrorCode.CANCELLED, "cancelled by client")
            return job

    async def forget(self, job_id: str) -> Job | None:
        """Cancel if live, then delete the job (events go with it); returns it so its artifacts can go too."""
        job = await self.cancel(job_id)
        if job is None:
            return None
        async with self._tx() as conn:
            await conn.execute("DELETE FROM srserve_jobs WHERE id = %s", (job_id,))
        return job

    async def sweep(self, stall_timeout_s: float) -> list[Job]:
        """Fail live jobs past their deadline, and running ones with no progress for `stall_timeout_s`."""
        ended = []
        async with self._tx() as conn:
            now = self.clock()  # read in the transaction: its connection has synced the clock
            cur = await conn.execute(
                f"SELECT * FROM srserve_jobs WHERE {_LIVE} AND ((deadline IS NOT NULL AND deadline < %s) OR "
                "(state IN ('encoding', 'sketching', 'rendering', 'decoding') AND last_progress < %s)) "
                "FOR UPDATE SKIP LOCKED",
                (now, now - stall_timeout_s),
            )
            for row in await cur.fetchall():
                job = _job(row)
                if job.deadline is not None and job.deadline < now:
                    await self._finish(conn, job, JobState.FAILED, ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded")
                else:
                    message = f"no progress for {stall_timeout_s:.0f}s in state {job.state.value}"
                    await self._finish(conn, job, JobState.FAILED, ErrorCode.STALLED, message)
                ended.append(job)
        return ended

    async def expire(self, retain_jobs: int, retain_age_s: float | None) -> list[Job]:
        """Retention: delete finished jobs beyond the newest `retain_jobs` or older than `retain_age_s`.

        Returns the deleted jobs, whose artifacts (video, handoff) the caller deletes.
        """
        async with self._tx() as conn:
            cutoff = self.clock() - retain_age_s if retain_age_s is not None else None
            cur = await conn.execute(
                "DELETE FROM srserve_jobs WHERE id IN (SELECT id FROM (SELECT id, completed_at, row_number() OVER "
                f"(ORDER BY seq DESC) AS rank FROM srserve_jobs WHERE NOT ({_LIVE})) f WHERE rank > %s OR "
                "(%s::double precision IS NOT NULL AND completed_at < %s)) RETURNING *",
                (retain_jobs, cutoff, cutoff),
            )
            return [_job(r) for r in await cur.fetchall()]

    # -- notifications --------------------------------------------------------------------
    async def listen(self, channel: str) -> AsyncIterator[str]:
        """Payloads NOTIFYed on `channel`, on a dedicated connection; reconnects after an outage.

        Yields "" after each (re)connect: a listener may have missed notifications and should re-read.
        """
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, **self._connection)
            except psycopg.OperationalError:
                await asyncio.sleep(0.5)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {channel}")
                    yield ""
                    async for note in conn.notifies():
                        yield note.payload
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await asyncio.sleep(0.5)


async def until_stored(write, give_up_s: float = 300.0):
    """Run a durable write, retrying while the store is unreachable (an outage, a restart).

    Past `give_up_s` the error propagates; the job is then resumed by whoever next holds its lease.
    """
    end = time.monotonic() + give_up_s
    delay = 0.1
    while True:
        try:
            return await write()
        except StoreUnavailable:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
