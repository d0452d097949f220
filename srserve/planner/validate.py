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
from srserve.loadgen.stats import Summary, summarize
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
) -> tuple[list[RequestRecord], Profile]:
    """Deploy the case's cluster, profile it with requests one at a time (just before the load, so
    both see the same machine), then send the load. Returns the load's records and the profile."""
    config = serving_config_for(case.cluster, model, f"val-{case.name}", backlog=case.requests + 16)
    cls = case.mix.classes[0]
    d = model.defaults
    width, height = cls.width or d.width, cls.height or d.height
    frames, steps = cls.num_frames or d.num_frames, cls.num_inference_steps or d.num_inference_steps
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
            records = LoadRunner(
                target,
                case.arrival,
                case.mix,
                max_requests=case.requests,
                seed=case.seed,
                progress=progress,
                label=case.name,
            ).run()
        finally:
            target.close()
    return records, profile


def predict_case(case: ValidationCase, profile: Profile, defaults: RequestDefaults) -> list[RequestRecord]:
    return simulate(profile, case.cluster, case.arrival, case.mix, defaults, max_requests=case.requests, seed=case.seed)


def compare_row(case: ValidationCase, measured: Summary, predicted: Summary) -> dict[str, Any]:
    def err(p: float, m: float) -> float:
        return (p - m) / m

    return {
        "case": case.name,
        "cluster": case.cluster.label(),
        "arrival": case.arrival.model_dump(),
        "switch": [c.switch for c in case.mix.classes],
        "requests": case.requests,
        "measured_throughput_rps": measured.throughput_rps,
        "predicted_throughput_rps": predicted.throughput_rps,
        "throughput_error": err(predicted.throughput_rps, measured.throughput_rps),
        "measured_p99_s": measured.latency_s.p99,
        "predicted_p99_s": predicted.latency_s.p99,
        "p99_error": err(predicted.latency_s.p99, measured.latency_s.p99),
        "measured_p50_s": measured.latency_s.p50,
        "predicted_p50_s": predicted.latency_s.p50,
        "measured_utilisation": measured.utilisation,
        "predicted_utilisation": predicted.utilisation,
        "measured_completed": measured.completed,
    }


def run_case(
    case: ValidationCase,
    model: ModelPairConfig,
    http_port: int,
    grpc_port: int,
    progress: bool = True,
    upfront: Profile | None = None,
) -> tuple[dict[str, Any], list[RequestRecord], list[RequestRecord]]:
    """Measured vs predicted from the case's own profile (and, if given, from an up-front profile)."""
    measured, profile = measure_case(case, model, http_port, grpc_port, progress)
    predicted = predict_case(case, profile, profile.defaults)
    pools, gpus = case.cluster.replicas_per_pool(), case.cluster.gpus
    measured_summary = summarize(measured, gpus, pools)
    row = compare_row(case, measured_summary, summarize(predicted, gpus, pools))
    row["profile"] = profile.model_dump(mode="json")
    if upfront is not None:
        other = summarize(predict_case(case, upfront, profile.defaults), gpus, pools)
        row["upfront_profile_prediction"] = compare_row(case, measured_summary, other)
    return row, measured, predicted
