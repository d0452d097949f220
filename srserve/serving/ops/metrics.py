"""srserve's Prometheus metrics, recorded through Ray Serve's metrics API.

Ray exports every metric on each node's metrics export port (`ray start --metrics-export-port`,
`ray.init(_metrics_export_port=...)`; KubeRay uses 8080) at `/metrics`, prefixed `ray_`: the
histogram `srserve_stage_seconds` is scraped as `ray_srserve_stage_seconds_bucket{stage=...}`.
Inside a replica, `ray.serve.metrics` adds `deployment`, `replica` and `application` tags.

Where each metric is recorded:
- ingress, at admission: the load-aware switch's cap and reason per job, refusals by tenant and quota;
- where a job ends (the render replica that completes it, the ingress that fails or cancels it):
  stage latencies, step times, switch step, handoff bytes and latency, jobs by final state;
- ingress (from the job store): jobs per state, each pool's queue depth and queued GPU-seconds, the
  admission backlog per pool, each tenant's jobs per state and queued GPU-seconds per pool (every
  ingress replica exports the same store-wide figures);
- workers: handoff serialize/deserialize time, GPU telemetry (srserve.serving.ops.gpu_telemetry), LoRA
  adapter loads, hits and evictions, and whether an adapter's stage was routed to a replica holding it.
Without Ray (unit tests) the metric objects accept records and export nothing.

Gauges are set by loops, not once: Ray's metrics agent drops a gauge series that was not set again
within two export intervals (verified on Ray 2.60: a gauge set once vanished after ~25 s).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ray.serve.metrics import Counter, Gauge, Histogram

from srserve.serving.control.jobs import PHASE_STATES, Job, JobState, PoolBacklog
from srserve.serving.control.pricing.pool_work import PoolWork, StageTimes, estimate_pool_work, measure_stage_times
from srserve.serving.control.store.work_snapshot import WorkSnapshot
from srserve.workload.timeline import Timeline

if TYPE_CHECKING:
    from srserve.serving.config import PoolLayout
    from srserve.serving.ops.gpu_telemetry import GpuSample

T = TypeVar("T")
logger = logging.getLogger("ray.serve")

SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]
STEP_SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100]
# Ray 2.60 exports a histogram's `_sum` from bucket midpoints, not the observed values; edges at
# half-integers put each integer switch step at its bucket's midpoint, so the sum stays exact to 30.
SWITCH_STEP_BUCKETS = [k + 0.5 for k in range(31)] + [40.5, 50.5, 75.5, 100.5, 200.5]
FRACTION_BUCKETS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
BYTES_BUCKETS = [float(1 << k) for k in range(12, 35, 2)]  # 4 KiB .. 16 GiB


@functools.cache
def _metrics() -> dict[str, Any]:
    """Created on first use in each process (Serve tags come from the replica context then)."""
    return {
        "stage": Histogram(
            "srserve_stage_seconds",
            description="Time a job spent in each stage: queue, encode, sketch, handoff, render, decode.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("stage",),
        ),
        "job": Histogram(
            "srserve_job_seconds",
            description="Submission to final state, by final state.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("state",),
        ),
        "switch_cap": Histogram(
            "srserve_load_switch_cap_fraction",
            description="The load-aware switch's cap on a job's sketch steps (share of its steps), by reason.",
            boundaries=FRACTION_BUCKETS,
            tag_keys=("reason",),
        ),
        "switch_choices": Counter(
            "srserve_load_switch_choices_total",
            description="Jobs admitted with the load-aware switch, by the reason of their cap.",
            tag_keys=("reason",),
        ),
        "step": Histogram(
            "srserve_step_seconds",
            description="Time of one denoising step, by pool (sketch: large model, render: small model).",
            boundaries=STEP_SECONDS_BUCKETS,
            tag_keys=("pool",),
        ),
        "switch_step": Histogram(
            "srserve_switch_step",
            description="Denoising step at which the job switched from the sketch to the render model.",
            boundaries=SWITCH_STEP_BUCKETS,
        ),
        "switch_fraction": Histogram(
            "srserve_switch_fraction",
            description="Switch step as a fraction of the job's steps.",
            boundaries=FRACTION_BUCKETS,
        ),
        "handoff_bytes": Histogram(
            "srserve_handoff_bytes",
            description="Size of the handoff state (wire format) passed from sketch to render.",
            boundaries=BYTES_BUCKETS,
        ),
        "handoff_seconds": Histogram(
            "srserve_handoff_seconds",
            description="Sketch end to render start: object-store transfer, wait for a render slot, parsing.",
            boundaries=SECONDS_BUCKETS,
        ),
        "handoff_codec": Histogram(
            "srserve_handoff_codec_seconds",
            description="Serializing (sketch replica) or parsing (render replica) the handoff state.",
            boundaries=STEP_SECONDS_BUCKETS,
            tag_keys=("op",),
        ),
        "jobs_total": Counter(
            "srserve_jobs_total",
            description="Jobs that reached a final state, by state and error code.",
            tag_keys=("state", "error_code"),
        ),
        "jobs": Gauge("srserve_jobs", description="Jobs currently in the job store, by state.", tag_keys=("state",)),
        "pool_jobs": Gauge(
            "srserve_pool_queue_jobs",
            description="Queue depth: jobs waiting for or running in the pool.",
            tag_keys=("pool",),
        ),
        "pool_work": Gauge(
            "srserve_pool_queue_gpu_seconds",
            description="The pool's queued work in expected GPU-seconds (what its autoscaler scales on).",
            tag_keys=("pool",),
        ),
        "pool_step": Gauge(
            "srserve_pool_step_seconds",
            description="Measured time of one step of the pool's stage (median of recent jobs).",
            tag_keys=("pool",),
        ),
        "backlog": Gauge(
            "srserve_ingress_backlog_jobs",
            description="Jobs admitted to each pool's phase and not yet past it, store-wide (admission control).",
            tag_keys=("pool",),
        ),
        "tenant_jobs": Gauge(
            "srserve_tenant_jobs",
            description="Jobs currently in the job store, by tenant and state.",
            tag_keys=("tenant", "state"),
        ),
        "tenant_work": Gauge(
            "srserve_tenant_queue_gpu_seconds",
            description="A tenant's queued work in each pool, in expected GPU-seconds (as the pool's own gauge).",
            tag_keys=("tenant", "pool"),
        ),
        "quota_refusals": Counter(
            "srserve_quota_refusals_total",
            description="Requests refused by a tenant limit (max_live_jobs, max_priority), by tenant and quota.",
            tag_keys=("tenant", "quota"),
        ),
        **{
            f"adapter_{event}": Counter(
                f"srserve_adapter_{event}_total",
                description=f"LoRA adapter {what} in the pool's replicas.",
                tag_keys=("pool",),
            )
            for event, what in (
                ("loads", "loads (a file loaded into a transformer)"),
                ("hits", "hits (a stage found its adapter loaded)"),
                ("evictions", "evictions (dropped by the replica's LRU or Serve's)"),
            )
        },
        "adapter_routing": Counter(
            "srserve_adapter_routed_total",
            description="Stages of jobs with a per-job adapter, by whether the replica they were routed to "
            "already held it (held=true) or loaded it (held=false).",
            tag_keys=("pool", "held"),
        ),
        "gpu_available": Gauge(
            "srserve_gpu_telemetry_available",
            description="1 when the replica samples its GPU through NVML, 0 when NVML or a GPU is absent.",
            tag_keys=("pool",),
        ),
        **{
            key: Gauge(name, description=desc, tag_keys=("pool", "gpu", "gpu_uuid", "gpu_name"))
            for key, name, desc in (
                ("utilization_pct", "srserve_gpu_utilization_percent", "GPU busy time over the last sample period."),
                (
                    "memory_utilization_pct",
                    "srserve_gpu_memory_utilization_percent",
                    "GPU memory-controller busy time over the last sample period.",
                ),
                ("memory_used_bytes", "srserve_gpu_memory_used_bytes", "GPU memory in use."),
                ("memory_total_bytes", "srserve_gpu_memory_total_bytes", "GPU memory installed."),
                ("power_w", "srserve_gpu_power_watts", "GPU power draw."),
                ("temperature_c", "srserve_gpu_temperature_celsius", "GPU core temperature."),
                ("sm_clock_mhz", "srserve_gpu_sm_clock_mhz", "Current SM clock."),
                ("memory_clock_mhz", "srserve_gpu_memory_clock_mhz", "Current memory clock."),
            )
        },
    }


GPU_FIELDS = (
    "utilization_pct",
    "memory_utilization_pct",
    "memory_used_bytes",
    "memory_total_bytes",
    "power_w",
    "temperature_c",
    "sm_clock_mhz",
    "memory_clock_mhz",
)


def record_job_finished(job: Job) -> None:
    """Everything a finished job tells: its stage times, switch, handoff and final state."""
    m = _metrics()
    t = Timeline.of(job.timeline)
    for stage, d in t.spans().items():  # srserve.workload.timeline.STAGES
        m["stage"].observe(d, tags={"stage": stage})
    if (d := t.total) is not None:
        m["job"].observe(d, tags={"state": job.state.value})
    m["jobs_total"].inc(1, tags={"state": job.state.value, "error_code": job.error_code or ""})
    if job.switch_step is None:
        return
    m["switch_step"].observe(max(job.switch_step, 0))
    if job.num_steps:
        m["switch_fraction"].observe(job.switch_step / job.num_steps)
    if job.switch_step and (d := t.span("sketch")) is not None:
        m["step"].observe(d / job.switch_step, tags={"pool": "sketch"})
    render_steps = job.num_steps - job.switch_step
    if render_steps > 0 and (d := t.span("render")) is not None:
        m["step"].observe(d / render_steps, tags={"pool": "render"})
    if job.handoff_bytes:
        m["handoff_bytes"].observe(job.handoff_bytes)
    if (d := t.span("handoff")) is not None:
        m["handoff_seconds"].observe(d)


def record_switch_choice(job: Job) -> None:
    """The load-aware switch's decision for an admitted job (where it was made: the ingress)."""
    if job.switch_reason is None or job.switch_cap is None:
        return
    m = _metrics()
    m["switch_choices"].inc(1, tags={"reason": job.switch_reason})
    if job.num_steps:
        m["switch_cap"].observe(job.switch_cap / job.num_steps, tags={"reason": job.switch_reason})


def record_board(counts: Mapping[str, int], pools: Iterable[PoolWork], backlogs: Iterable[PoolBacklog]) -> None:
    """Gauges of the store's current contents: jobs per state, each pool's queue, the admission backlog."""
    m = _metrics()
    for state in JobState:
        m["jobs"].set(counts.get(state.value, 0), tags={"state": state.value})
    for backlog in backlogs:
        waiting = sum(counts.get(s.value, 0) for phase in backlog.phases for s in PHASE_STATES[phase])
        m["backlog"].set(waiting, tags={"pool": backlog.pool})
    for work in pools:
        m["pool_jobs"].set(work.jobs, tags={"pool": work.pool})
        m["pool_work"].set(work.work_s, tags={"pool": work.pool})
        m["pool_step"].set(work.step_s, tags={"pool": work.pool})


def record_quota_refusal(tenant: str, quota: str) -> None:
    """A request `tenant` sent was refused by its `quota` (where refused: the ingress)."""
    _metrics()["quota_refusals"].inc(1, tags={"tenant": tenant, "quota": quota})


def record_tenants(counts: Mapping[str, Mapping[str, int]], work: Mapping[str, Iterable[PoolWork]]) -> None:
    """Gauges of each tenant's share of the store: its jobs per state, its queued work per pool."""
    m = _metrics()
    for tenant, states in counts.items():
        for state in JobState:
            m["tenant_jobs"].set(states.get(state.value, 0), tags={"tenant": tenant, "state": state.value})
    for tenant, pools in work.items():
        for pool in pools:
            m["tenant_work"].set(pool.work_s, tags={"tenant": tenant, "pool": pool.pool})


def tenant_work(
    jobs: Iterable[Job] | WorkSnapshot, layout: PoolLayout, now: float, times: StageTimes, tenants: Iterable[str]
) -> dict[str, list[PoolWork]]:
    """Each tenant's queued work in each pool of `layout`, priced as the pools' own (the same step times)."""
    snapshot = WorkSnapshot.of(jobs)
    text = layout.encoder is not None
    return {
        tenant: [
            estimate_pool_work(snapshot.of_tenant(tenant), pool, now, include_encode=not text, times=times)
            for pool in layout.pools
        ]
        for tenant in dict.fromkeys([*tenants, *snapshot.tenants()])
    }


BOARD_GAUGE_INTERVAL_S = 2.0


async def export_store_gauges(store: Any, layout: PoolLayout, interval_s: float = BOARD_GAUGE_INTERVAL_S) -> None:
    """The ingress's gauge loop, from the job store: jobs per state, each pool of `layout`'s queue and
    admission backlog, each tenant's jobs and queued work, every `interval_s`."""
    while True:
        try:
            current = await store.work_snapshot()
            counts = await store.counts()
            now = store.clock()  # the stamps' clock (the database server's)
            times = measure_stage_times(current, now)
            text = layout.encoder is not None
            pools = [
                estimate_pool_work(current, pool, now, include_encode=not text, times=times) for pool in layout.pools
            ]
            record_board(counts, pools, layout.backlogs())
            by_tenant = await store.tenant_counts()
            record_tenants(by_tenant, tenant_work(current, layout, now, times, by_tenant))
        except Exception as exc:  # metrics must never stop the ingress; say why they are missing
            logger.warning("srserve store gauges skipped: %s", exc)
        await asyncio.sleep(interval_s)


def timed_handoff(op: str, fn: Callable[[], T]) -> T:
    """Run the handoff's serialize/parse `fn`, recording how long it took under `op`."""
    start = time.perf_counter()
    out = fn()
    _metrics()["handoff_codec"].observe(time.perf_counter() - start, tags={"op": op})
    return out


def record_adapter_counts(pool: str, loads: int, hits: int, evictions: int) -> None:
    """A replica's adapter loads, hits and evictions since its last report (srserve.engine.adapters.loading)."""
    m = _metrics()
    for event, n in (("loads", loads), ("hits", hits), ("evictions", evictions)):
        if n > 0:
            m[f"adapter_{event}"].inc(n, tags={"pool": pool})


def record_adapter_routing(pool: str, held: bool) -> None:
    """One stage of a job with a per-job adapter: whether the replica it was routed to already held it."""
    _metrics()["adapter_routing"].inc(1, tags={"pool": pool, "held": "true" if held else "false"})


def record_gpu_available(pool: str, available: bool) -> None:
    _metrics()["gpu_available"].set(1.0 if available else 0.0, tags={"pool": pool})


def record_gpu_samples(pool: str, samples: Iterable[GpuSample]) -> None:
    m = _metrics()
    for sample in samples:
        tags = {"pool": pool, "gpu": str(sample.index), "gpu_uuid": sample.uuid, "gpu_name": sample.name}
        for field in GPU_FIELDS:
            value = getattr(sample, field)
            if value is not None:
                m[field].set(float(value), tags=tags)
