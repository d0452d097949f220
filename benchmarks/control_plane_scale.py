"""The control plane's limits against the job store alone: no Ray, no models, a real embedded PostgreSQL.

With 100, 10,000 and 100,000 live jobs pre-loaded (one bulk INSERT ... generate_series), it measures
admissions per second and the p50/p99 admission time with one and with four concurrent admitting
processes (each its own JobStore, as ingress replicas are), the time of a claim (the resume path's poll,
nothing to take) and of a heartbeat (one orchestrator's 16 leases), and of the load snapshot the
load-aware switch and the autoscaling metric read (store.work_snapshot + load_snapshot when the store has
it, else jobs_for_work + load_snapshot over every live job).

Run it against any checkout's srserve with PYTHONPATH (the code measured is whichever srserve imports):

    PYTHONPATH=. python benchmarks/control_plane_scale.py --label after

The results file keeps one entry per label (before / after), so two runs record a comparison. Each
admission run also records the machine's CPU time per admission and the cores it kept busy: on a small
machine the admitting processes and the server share the cores, and once they are all busy more processes
cannot raise the rate. `--commit-delay-us 2000` models storage whose flush takes 2 ms (this machine's is
far faster), where a lock held through a commit's flush is what limits concurrent admissions. The HTTP
front door (1 and 2 ingress replicas through Ray) is measured separately, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from srserve.serving.control.errors import StoreUnavailable
from srserve.serving.control.jobs import PoolBacklog
from srserve.serving.control.store.database import EmbeddedPostgres
from srserve.serving.control.store.job_store import JobStore
from srserve.serving.control.tenants import Tenant

REQUEST = {"prompt": "a fox", "num_inference_steps": 20, "switch": {"kind": "fixed", "step": 5}}
LIMITS = (
    PoolBacklog("sketch", frozenset({"sketch"}), 10**9),
    PoolBacklog("render", frozenset({"render"}), 10**9),
)
# A tenant with both quotas set (never reached): admission checks them as a multi-tenant deployment does.
TENANT = Tenant("bench", max_live_jobs=10**9, max_queued_gpu_s=1e12)
FINISHED = 64  # finished jobs with stage stamps: they price a step for the snapshot


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def preload(dsn: str, live: int) -> None:
    """`live` unfinished jobs of TENANT over the phases, leased far ahead by another orchestrator, plus
    FINISHED completed jobs with every stage stamp (one statement each: the counters' triggers fire once)."""
    request = json.dumps(REQUEST)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO srserve_jobs (id, request, state, created_at, updated_at, last_progress, num_steps, step, "
            "total, switch_step, timeline, tenant, cost_gpu_s, lease_owner, lease_expires, completed_at) "
            "SELECT 'done-' || i, %s::jsonb, 'completed', 1000 + i, 1000 + i, 1000 + i, 20, 20, 20, 5, "
            "jsonb_build_object('submitted', 1000 + i, 'encode_start', 1001 + i, 'encode_end', 1001.5 + i, "
            "'sketch_start', 1001.5 + i, 'sketch_end', 1006.5 + i, 'render_start', 1006.6 + i, "
            "'decode_start', 1014.1 + i, 'render_end', 1014.6 + i), 'bench', 2.0, NULL, NULL, 1014.6 + i "
            "FROM generate_series(1, %s) AS i",
            (request, FINISHED),
        )
        conn.execute(
            "INSERT INTO srserve_jobs (id, request, state, created_at, updated_at, last_progress, num_steps, step, "
            "total, switch_step, timeline, tenant, cost_gpu_s, lease_owner, lease_expires) "
            "SELECT 'live-' || i, %s::jsonb, (ARRAY['queued', 'queued', 'queued', 'queued', 'queued', 'queued', "
            "'sketching', 'handed_off', 'rendering', 'queued'])[1 + i %% 10], 2000 + i, 2000 + i, 2000 + i, 20, "
            "CASE WHEN i %% 10 = 6 THEN 2 WHEN i %% 10 = 8 THEN 9 WHEN i %% 10 = 7 THEN 5 ELSE 0 END, "
            "CASE WHEN i %% 10 IN (6, 7, 8) THEN 20 ELSE 0 END, CASE WHEN i %% 10 IN (7, 8) THEN 5 END, "
            "jsonb_build_object('submitted', 2000 + i), 'bench', 2.0, 'elsewhere', "
            "extract(epoch from clock_timestamp()) + 86400 FROM generate_series(1, %s) AS i",
            (request, live),
        )
        conn.execute("ANALYZE srserve_jobs")


async def _admit_loop(dsn: str, seconds: float, name: str) -> list[float]:
    store = JobStore(dsn, pool_size=2)
    await store.open()
    await store.create(f"{name}-warm", REQUEST, 20, None, name, 30.0, LIMITS, tenant=TENANT, cost_gpu_s=2.0)
    times: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await store.create(f"{name}-{i}", REQUEST, 20, None, name, 30.0, LIMITS, tenant=TENANT, cost_gpu_s=2.0)
        times.append(time.perf_counter() - t0)
        i += 1
    await store.close()
    return times


def _admitter(dsn: str, seconds: float, start_at: float, out: Any) -> None:
    name = f"adm-{uuid.uuid4().hex[:8]}"
    while time.time() < start_at:  # every process starts admitting at once
        time.sleep(0.005)
    out.put(asyncio.run(_admit_loop(dsn, seconds, name)))


def busy_cpu_s() -> float:
    """CPU-seconds this machine has spent busy (all cores, every process: clients and the server)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def admissions(dsn: str, processes: int, seconds: float) -> dict[str, float]:
    """`processes` concurrent admitting processes for `seconds`: the rate, the admission times, and the
    machine's CPU time per admission (when it is the limit, more processes cannot raise the rate)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # after the spawned interpreters have imported srserve
    workers = [ctx.Process(target=_admitter, args=(dsn, seconds, start_at, out)) for _ in range(processes)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = busy_cpu_s()
    times = [t for _ in workers for t in out.get()]
    cpu_s = busy_cpu_s() - cpu_before
    for w in workers:
        w.join()
    return {
        "processes": processes,
        "admitted": len(times),
        "per_s": round(len(times) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(times), 2),
        "p99_ms": round(1000 * percentile(times, 0.99), 2),
        "cpu_ms_per_admission": round(1000 * cpu_s / len(times), 2),
        "cores_busy": round(cpu_s / seconds, 2),
    }


async def _timed(call, repeats: int) -> dict[str, Any]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            await call()
        except StoreUnavailable as exc:  # past the store's query timeout: recorded, not fatal
            return {"failed": str(exc)[:200], "after_s": round(time.perf_counter() - t0, 2)}
        times.append(time.perf_counter() - t0)
    return {"p50_ms": round(1000 * statistics.median(times), 2), "p99_ms": round(1000 * percentile(times, 0.99), 2)}


async def _snapshot(store: JobStore):
    from srserve.serving.control.pricing.load_switch import load_snapshot

    if hasattr(store, "work_snapshot"):
        return load_snapshot(await store.work_snapshot(), store.clock(), 1, 1)
    return load_snapshot(await store.jobs_for_work(), store.clock(), 1, 1)


async def control_calls(dsn: str, repeats: int, skip_snapshot: bool = False) -> dict[str, Any]:
    """Claim (nothing to take: the steady poll), heartbeat (16 leases), the load snapshot."""
    store = JobStore(dsn, pool_size=2)
    owner = "bench-orchestrator"
    for i in range(16):
        await store.create(f"hb-{i}", REQUEST, 20, None, owner, 30.0, LIMITS, tenant=TENANT, cost_gpu_s=2.0)
    out = {
        "claim": await _timed(lambda: store.claim("claimer", 30.0), repeats),
        "heartbeat": await _timed(lambda: store.heartbeat(owner, 30.0), repeats),
    }
    await store.close()
    # Its own store: one whose read passed the query timeout is left open (closing a pool that is
    # reconnecting would wait for it).
    if skip_snapshot:
        out["snapshot"] = {"skipped": "--snapshot-up-to"}
        return out
    snapshots = JobStore(dsn, pool_size=2)
    out["snapshot"] = await _timed(lambda: _snapshot(snapshots), 3)
    if "failed" not in out["snapshot"]:
        await snapshots.close()
    return out


def slow_flush(dsn: str, commit_delay_us: int) -> None:
    """Make every flushing commit wait `commit_delay_us` first (PostgreSQL's commit_delay, with no sibling
    needed): a model of storage whose flush is that slow (network disks), where this machine's is fast."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET commit_delay = {int(commit_delay_us)}")
        conn.execute("ALTER SYSTEM SET commit_siblings = 0")
        conn.execute("SELECT pg_reload_conf()")


def run_size(pg: EmbeddedPostgres, live: int, seconds: float, repeats: int, snapshot_up_to: int) -> dict[str, Any]:
    dsn = pg.ensure_running(f"bench_{uuid.uuid4().hex[:10]}")

    async def migrate() -> None:
        store = JobStore(dsn)
        await store.migrate()
        await store.close()

    asyncio.run(migrate())
    t0 = time.perf_counter()
    preload(dsn, live)
    loaded_s = time.perf_counter() - t0
    result: dict[str, Any] = {"live_jobs": live, "preload_s": round(loaded_s, 2)}
    result.update(asyncio.run(control_calls(dsn, repeats, live > snapshot_up_to)))
    result["admission"] = [admissions(dsn, n, seconds) for n in (1, 4)]
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after", help="the entry to record (e.g. before / after)")
    parser.add_argument("--sizes", default="100,10000,100000", help="live jobs pre-loaded, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="admitting time per process count")
    parser.add_argument("--repeats", type=int, default=40, help="timed claims and heartbeats per size")
    parser.add_argument(
        "--snapshot-up-to", type=int, default=10**9, help="time the snapshot only up to this many live jobs"
    )
    parser.add_argument(
        "--commit-delay-us", type=int, default=0, help="model storage whose flush takes this long (see slow_flush)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/control_plane_scale.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="srserve-bench-") as root:
        pg = EmbeddedPostgres(Path(root) / "postgres")
        slow_flush(pg.ensure_running(), args.commit_delay_us)
        try:
            runs = [
                run_size(pg, int(n), args.seconds, args.repeats, args.snapshot_up_to) for n in args.sizes.split(",")
            ]
        finally:
            pg.stop(mode="immediate")
    small, large = runs[0]["admission"][0], runs[-1]["admission"][0]
    summary = {
        "p50_ratio_largest_to_smallest": round(large["p50_ms"] / small["p50_ms"], 2),
        "four_to_one_rate": {
            str(r["live_jobs"]): round(r["admission"][1]["per_s"] / r["admission"][0]["per_s"], 2) for r in runs
        },
    }
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    record[args.label] = {
        "runs": runs,
        "summary": summary,
        "cpus": multiprocessing.cpu_count(),
        "commit_delay_us": args.commit_delay_us,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
