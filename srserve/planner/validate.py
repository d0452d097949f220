"""Planner predictions next to measured runs: the same cluster layout, the same request sequence
(same arrival spec, mix and seed), simulated from a profile here and measured on a local deployment
by srserve.loadgen.calibrate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from srserve.engine.request import RequestDefaults
from srserve.planner.profile import Profile
from srserve.planner.simulator import ClusterLayout, simulate
from srserve.workload.arrivals import ClosedLoop, GammaArrivals, PoissonArrivals
from srserve.workload.mix import RequestMix
from srserve.workload.records import RequestRecord
from srserve.workload.stats import percentile, summarize


class ValidationCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    cluster: ClusterLayout
    arrival: PoissonArrivals | GammaArrivals | ClosedLoop
    mix: RequestMix
    requests: int
    seed: int = 0


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


def pooled(case: ValidationCase, runs: list[list[RequestRecord]]) -> dict[str, Any]:
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
