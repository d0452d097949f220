"""Planner predictions next to measured runs: the same cluster layout, the same request sequence
(same arrival spec, mix and seed), measured on a local deployment and simulated from a profile."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from srserve.engine import ModelPairConfig
from srserve.engine.request import RequestDefaults
from srserve.loadgen.arrivals import ClosedLoop, GammaArrivals, PoissonArrivals
from srserve.loadgen.clients import connect
from srserve.loadgen.local_deploy import deployed
from srserve.loadgen.mix import RequestMix
from srserve.loadgen.records import RequestRecord
from srserve.loadgen.runner import LoadRunner, unloaded_latency
from srserve.loadgen.stats import percentile, summarize
from srserve.planner.measure import cpu_model, fit_profile, measure_sequential
from srserve.planner.profile import Profile
from srserve.planner.simulator import ClusterLayout, simulate
from srserve.serving.config import PoolConfig, ServingConfig


class ValidationCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    cluster: ClusterLayout
    arrival: PoissonArrivals | GammaArrivals | ClosedLoop
    mix: RequestMix
    requests: int
    seed: int = 0


def serving_config_for(cluster: ClusterLayout, model: ModelPairConfig, app_name: str, backlog: int) -> ServingConfig:
    """CPU replicas (one logical CPU each) with the cluster's replica counts."""

    def pool(spec) -> PoolConfig:
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


def predict_case(
    case: ValidationCase, profile: Profile, defaults: RequestDefaults, seed: int | None = None
) -> list[RequestRecord]:
    return simulate(
        profile,
        case.cluster,
        case.arrival,
        case.mix,
        defaults,
        max_requests=case.requests,
        seed=case.seed if seed is None else seed,
    )


def _pooled(case: ValidationCase, runs: list[list[RequestRecord]]) -> dict[str, Any]:
    """Mean throughput over the runs; latency percentiles over all their requests pooled."""
    pools, gpus = case.cluster.replicas_per_pool(), case.cluster.gpus
    summaries = [summarize(r, gpus, pools) for r in runs]
    latencies = [r.latency for run in runs for r in run if r.latency is not None]
    util: dict[str, float] = {}
    for s in summaries:
        for k, v in s.utilisation.items():
            util[k] = util.get(k, 0.0) + v / len(summaries)
    return {
        "throughput_rps": sum(s.throughput_rps for s in summaries) / len(summaries),
        "throughput_per_run": [s.throughput_rps for s in summaries],
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "p99_per_run": [s.latency_s.p99 for s in summaries],
        "completed": sum(s.completed for s in summaries),
        "requests": sum(s.requests for s in summaries),
        "utilisation": util,
        "latencies_s": sorted(latencies),
    }


def compare_row(case: ValidationCase, measured: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any]:
    def err(key: str) -> float:
        return (predicted[key] - measured[key]) / measured[key]

    return {
        "case": case.name,
        "cluster": case.cluster.label(),
        "arrival": case.arrival.model_dump(),
        "switch": [c.switch for c in case.mix.classes],
        "requests_per_run": case.requests,
        "measured_throughput_rps": measured["throughput_rps"],
        "predicted_throughput_rps": predicted["throughput_rps"],
        "throughput_error": err("throughput_rps"),
        "measured_p99_s": measured["p99_s"],
        "predicted_p99_s": predicted["p99_s"],
        "p99_error": err("p99_s"),
        "measured_p90_s": measured["p90_s"],
        "predicted_p90_s": predicted["p90_s"],
        "p90_error": err("p90_s"),
        "measured_p50_s": measured["p50_s"],
        "predicted_p50_s": predicted["p50_s"],
        "measured": measured,
        "predicted": predicted,
    }


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
    measured = _pooled(case, measured_runs)
    row = compare_row(case, measured, _pooled(case, predicted_runs))
    row["profile"] = profile.model_dump(mode="json")
    if upfront is not None:
        other = [predict_case(case, upfront, profile.defaults, seed) for seed in seeds]
        upfront_row = compare_row(case, measured, _pooled(case, other))
        row["upfront_profile_prediction"] = {
            k: v for k, v in upfront_row.items() if k.startswith("predicted") or k.endswith("error")
        }
    return row, measured_runs, predicted_runs
