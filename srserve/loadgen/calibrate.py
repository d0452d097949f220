"""The planner against a live deployment: measure a stage profile on a tiny deployment, and run
validation cases (deploy a cluster layout, profile it, send its load) to compare with predictions.

Deployment profile: one sketch + one render replica, then one colocated replica, each sent requests
one at a time with switch steps spread over 0..N; srserve.planner.measure fits the stage costs from
their timelines. Needs a Ray cluster (srserve.serving.launcher.ensure_ray).
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from srserve.engine import ModelPairConfig
from srserve.loadgen.clients import Target, connect
from srserve.loadgen.cpu_accounting import idle_background
from srserve.loadgen.cpu_accounting import snapshot as cpu_snapshot
from srserve.loadgen.cpu_accounting import used as cpu_used
from srserve.loadgen.local_deploy import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, deployed
from srserve.loadgen.runner import LoadRunner, unloaded_latency
from srserve.planner.measure import CpuUse, cpu_model, fit_profile, switch_points
from srserve.planner.profile import Profile
from srserve.planner.simulator import ClusterLayout, PoolSpec
from srserve.planner.validate import ValidationCase, compare_row, pooled, predict_case
from srserve.serving.config import PoolConfig, ServingConfig
from srserve.workload.arrivals import ClosedLoop
from srserve.workload.mix import RequestClass, RequestMix
from srserve.workload.records import RequestRecord


def _sequential(target: Target, classes: list[RequestClass], reps: int, seed: int) -> list[RequestRecord]:
    out: list[RequestRecord] = []
    for rep in range(reps):
        for i, cls in enumerate(classes):
            runner = LoadRunner(
                target,
                ClosedLoop(concurrency=1),
                RequestMix(classes=[cls]),
                max_requests=1,
                seed=seed + 100 * rep + i,
                progress=False,
                poll_interval_s=0.25,
            )
            recs = runner.run()
            if not recs[0].completed:
                raise RuntimeError(f"profiling request failed: {recs[0].status} {recs[0].error}")
            out.extend(recs)
    return out


def measure_sequential(
    target: Target, width: int, height: int, num_frames: int, steps: int, ks: list[int], reps: int, warm: int = 2
) -> tuple[list[RequestRecord], CpuUse]:
    """Requests one at a time on a running local deployment (either layout), at each switch step in
    `ks`, with the CPU time the cluster's processes used meanwhile."""
    base = {"num_inference_steps": steps, "width": width, "height": height, "num_frames": num_frames}
    classes = [RequestClass(name=f"k{k}", switch=f"fixed:{k}", **base) for k in ks]
    if warm:
        _sequential(target, [RequestClass(name="warm", switch=f"fixed:{ks[len(ks) // 2]}", **base)], warm, seed=900)
    idle = idle_background()
    before = cpu_snapshot()
    records = _sequential(target, classes, reps, seed=0)
    replica, other, wall = cpu_used(before, cpu_snapshot())
    return records, CpuUse(replica, other, wall, idle)


def profile_deployment(
    model: ModelPairConfig,
    width: int,
    height: int,
    num_frames: int,
    steps: int,
    reps: int = 3,
    http_port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    host_cores: float | None = None,
) -> Profile:
    """A profile of this machine's deployment of `model` (both layouts, one replica per pool)."""
    ks = switch_points(steps)
    pool = PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 1})
    records: list[RequestRecord] = []
    cpu: list[dict[str, float]] = []
    for layout in ("disaggregated", "colocated"):
        config = ServingConfig(
            app_name=f"profile-{layout}",
            model=model,
            layout=layout,
            sketch_pool=pool,
            render_pool=pool,
            colocated_pool=pool,
        )
        with deployed(config, http_port, grpc_port) as spec:
            target = connect(f"grpc://127.0.0.1:{spec.grpc_port}", config.app_name)
            try:
                recs, use = measure_sequential(target, width, height, num_frames, steps, ks, reps)
                records += recs
                cpu.append(cpu_model(recs, use))
            finally:
                target.close()
    description = (
        f"tiny pair deployment on this machine ({os.cpu_count()} cores, 1 torch thread per replica), "
        f"requests one at a time, switch steps {ks}, {reps} repetitions; per-step costs fitted over k"
    )
    averaged = {k: statistics.mean(c[k] for c in cpu) for k in cpu[0]}
    return fit_profile(records, averaged, width, height, num_frames, steps, host_cores, description, model.name)


def serving_config_for(cluster: ClusterLayout, model: ModelPairConfig, app_name: str, backlog: int) -> ServingConfig:
    """CPU replicas (one logical CPU each) with the cluster's replica counts."""

    def pool(spec: PoolSpec | None) -> PoolConfig:
        return PoolConfig(
            num_replicas=spec.replicas if spec else 1,
            max_ongoing_requests=spec.max_ongoing if spec else 4,
            max_backlog=backlog,
            ray_actor_options={"num_cpus": 1},
        )

    return ServingConfig(
        app_name=app_name,
        model=model,
        layout=cluster.layout,
        sketch_pool=pool(cluster.sketch),
        render_pool=pool(cluster.render),
        colocated_pool=pool(cluster.colocated),
    )


def measure_case(
    case: ValidationCase,
    model: ModelPairConfig,
    http_port: int,
    grpc_port: int,
    progress: bool = True,
    profile_reps: int = 2,
    repeats: int = 1,
) -> tuple[list[list[RequestRecord]], Profile]:
    """Deploy the case's cluster, profile it with requests one at a time (just before the load, so
    both see the same machine), then send the load `repeats` times (seeds seed, seed+1, ...).
    Returns each repeat's records and the profile."""
    config = serving_config_for(case.cluster, model, f"val-{case.name}", backlog=case.requests + 16)
    cls = case.mix.classes[0]
    d = model.defaults
    width, height = cls.width or d.width, cls.height or d.height
    frames, steps = cls.num_frames or d.num_frames, cls.num_inference_steps or d.num_inference_steps
    runs: list[list[RequestRecord]] = []
    with deployed(config, http_port, grpc_port) as spec:
        target = connect(f"grpc://127.0.0.1:{spec.grpc_port}", config.app_name)
        try:
            unloaded_latency(target, case.mix, runs=case.cluster.gpus)  # warm every replica's path
            ks = sorted({0, steps // 2, steps})
            sequential, use = measure_sequential(target, width, height, frames, steps, ks, profile_reps, warm=0)
            profile = fit_profile(
                sequential,
                cpu_model(sequential, use),
                width,
                height,
                frames,
                steps,
                None,
                f"case {case.name}: {len(sequential)} requests one at a time just before its load, k in {ks}",
                model.name,
            )
            for i in range(repeats):
                runner = LoadRunner(
                    target,
                    case.arrival,
                    case.mix,
                    max_requests=case.requests,
                    seed=case.seed + i,
                    progress=progress,
                    label=f"{case.name} #{i}",
                )
                runs.append(runner.run())
        finally:
            target.close()
    return runs, profile


def run_case(
    case: ValidationCase,
    model: ModelPairConfig,
    http_port: int,
    grpc_port: int,
    progress: bool = True,
    upfront: Profile | None = None,
    repeats: int = 1,
) -> tuple[dict[str, Any], list[list[RequestRecord]], list[list[RequestRecord]]]:
    """Measured vs predicted from the case's own profile (and, if given, from an up-front profile)."""
    measured_runs, profile = measure_case(case, model, http_port, grpc_port, progress, repeats=repeats)
    seeds = [case.seed + i for i in range(repeats)]
    predicted_runs = [predict_case(case, profile, profile.defaults, seed) for seed in seeds]
    measured = pooled(case, measured_runs)
    row = compare_row(case, measured, pooled(case, predicted_runs))
    row["profile"] = profile.model_dump(mode="json")
    if upfront is not None:
        other = [predict_case(case, upfront, profile.defaults, seed) for seed in seeds]
        upfront_row = compare_row(case, measured, pooled(case, other))
        row["upfront_profile_prediction"] = {
            k: v for k, v in upfront_row.items() if k.startswith("predicted") or k.endswith("error")
        }
    return row, measured_runs, predicted_runs
