"""Side-by-side: large-only, small-only, SRDiffusion colocated and SRDiffusion disaggregated, on the
same tiny pair, the same machine and the same load, in one run.

Every variant gets the same device budget (replicas; one torch thread each). Large-only and
small-only run colocated replicas (a plain single-model deployment, the switch at N or 0);
SRDiffusion colocated runs both models in each replica (WanPipeline with transformer_2);
SRDiffusion disaggregated splits the budget into sketch and render pools. All variants are
deployed side by side and every phase runs round-robin over them, so noise on a shared machine
hits them alike. Per variant: the unloaded latency (requests one at a time), saturation
throughput (closed loop) and latency under a common open-loop Poisson load. One absolute SLO for
all (a multiple of a reference variant's unloaded latency) gives comparable goodput. Ratios are
against large-only.
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from srserve.engine import ModelPairConfig
from srserve.loadgen.clients import connect
from srserve.loadgen.local_deploy import deployed
from srserve.loadgen.runner import LoadRunner, unloaded_latency
from srserve.loadgen.shape import replicas_per_pool
from srserve.serving.config import PoolConfig, ServingConfig
from srserve.workload.arrivals import ClosedLoop, PoissonArrivals
from srserve.workload.mix import RequestMix
from srserve.workload.stats import Distribution, summarize


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    layout: Literal["colocated", "disaggregated"]
    switch: str
    colocated_replicas: int = 0
    sketch_replicas: int = 0
    render_replicas: int = 0

    @property
    def devices(self) -> int:
        return self.colocated_replicas if self.layout == "colocated" else self.sketch_replicas + self.render_replicas

    def serving_config(self, model: ModelPairConfig, backlog: int) -> ServingConfig:
        def pool(n: int) -> PoolConfig:
            return PoolConfig(num_replicas=max(n, 1), max_backlog=backlog, ray_actor_options={"num_cpus": 1})

        return ServingConfig(
            app_name=f"cmp-{self.name}",
            model=model,
            layout=self.layout,
            colocated_pool=pool(self.colocated_replicas),
            sketch_pool=pool(self.sketch_replicas),
            render_pool=pool(self.render_replicas),
        )


def default_variants(budget: int, steps: int, switch: str, sketch_replicas: int | None = None) -> list[Variant]:
    s = sketch_replicas if sketch_replicas is not None else max(1, budget // 2)
    return [
        Variant(name="large-only", layout="colocated", switch=f"fixed:{steps}", colocated_replicas=budget),
        Variant(name="small-only", layout="colocated", switch="fixed:0", colocated_replicas=budget),
        Variant(name="srdiffusion-colocated", layout="colocated", switch=switch, colocated_replicas=budget),
        Variant(
            name="srdiffusion-disaggregated",
            layout="disaggregated",
            switch=switch,
            sketch_replicas=s,
            render_replicas=budget - s,
        ),
    ]


class CompareSettings(BaseModel):
    steps: int = 20
    size: tuple[int, int] = (64, 64)  # width, height
    frames: int = 17
    unloaded_runs: int = 3
    saturation_concurrency: int = 4
    saturation_requests: int = 16
    rate: float = Field(0.5, gt=0)
    requests: int = 24
    seed: int = 0
    slo_scale: float = 2.0
    rounds: int = 2
    slo_reference: str = "srdiffusion-colocated"
    http_port: int = 8311
    grpc_port: int = 9311
    api: Literal["grpc", "http"] = "grpc"


def _mix(settings: CompareSettings, switch: str) -> RequestMix:
    return RequestMix.single(
        num_inference_steps=settings.steps,
        switch=switch,
        width=settings.size[0],
        height=settings.size[1],
        num_frames=settings.frames,
    )


def run_all(
    variants: list[Variant], settings: CompareSettings, model: ModelPairConfig, progress: bool
) -> list[dict[str, Any]]:
    """Deploy every variant side by side (idle replicas cost next to nothing), then run each phase
    round-robin over the variants, `settings.rounds` times, so machine noise hits them alike.

    Phases: unloaded (one request at a time), saturation (closed loop), Poisson load. Records are
    returned for post-hoc SLO scoring.
    """
    backlog = max(64, settings.requests + settings.saturation_requests)
    configs = [v.serving_config(model, backlog) for v in variants]
    mixes = [_mix(settings, v.switch) for v in variants]
    out = [
        {"variant": v, "pools": replicas_per_pool(c), "unloaded": [], "saturated": [], "loaded": []}
        for v, c in zip(variants, configs, strict=True)
    ]
    with contextlib.ExitStack() as stack:
        targets = []
        for config in configs:
            prefix = f"/{config.app_name}"
            spec = stack.enter_context(deployed(config, settings.http_port, settings.grpc_port, prefix))
            url = (
                f"http://127.0.0.1:{spec.http_port}{prefix}"
                if settings.api == "http"
                else f"grpc://127.0.0.1:{spec.grpc_port}"
            )
            target = connect(url, config.app_name)
            stack.callback(target.close)
            targets.append(target)
        for target, mix in zip(targets, mixes, strict=True):  # warm every replica's path
            unloaded_latency(target, mix, runs=2)
        for rnd in range(settings.rounds):
            for row, target, mix in zip(out, targets, mixes, strict=True):
                row["unloaded"] += [
                    unloaded_latency(target, mix, runs=settings.unloaded_runs, seed=20_000 + rnd)["default"]
                ]
            for row, target, mix in zip(out, targets, mixes, strict=True):
                row["saturated"].append(
                    LoadRunner(
                        target,
                        ClosedLoop(concurrency=settings.saturation_concurrency),
                        mix,
                        max_requests=settings.saturation_requests,
                        seed=settings.seed + rnd,
                        progress=progress,
                        label=f"{row['variant'].name} saturation #{rnd}",
                    ).run()
                )
            for row, target, mix in zip(out, targets, mixes, strict=True):
                row["loaded"].append(
                    LoadRunner(
                        target,
                        PoissonArrivals(rate=settings.rate),
                        mix,
                        max_requests=settings.requests,
                        seed=settings.seed + rnd,
                        progress=progress,
                        label=f"{row['variant'].name} poisson #{rnd}",
                    ).run()
                )
    return out


def score(results: list[dict[str, Any]], settings: CompareSettings) -> dict[str, Any]:
    """Summaries with one absolute SLO, and ratios against large-only.

    Unloaded latency: median over rounds; saturation throughput: median over rounds; latency under
    load: percentiles over all rounds' requests; goodput: mean over rounds.
    """
    reference = next(r for r in results if r["variant"].name == settings.slo_reference)
    slo_s = settings.slo_scale * statistics.median(reference["unloaded"])
    rows = []
    for r in results:
        v: Variant = r["variant"]
        for run in r["loaded"]:
            for rec in run:
                rec.slo_s = slo_s
        sat = [summarize(run, v.devices, r["pools"]) for run in r["saturated"]]
        loaded = [summarize(run, v.devices, r["pools"]) for run in r["loaded"]]
        pooled = [rec for run in r["loaded"] for rec in run]
        lat = Distribution.of(rec.latency for rec in pooled if rec.latency is not None)
        queues: dict[str, list[float]] = {}
        for rec in pooled:
            for pool, wait in rec.queue_waits().items():
                queues.setdefault(pool, []).append(wait)
        met = sum(1 for rec in pooled if rec.met_slo)
        rows.append(
            {
                "variant": v.name,
                "layout": v.layout,
                "switch": v.switch,
                "pools": r["pools"],
                "devices": v.devices,
                "unloaded_latency_s": statistics.median(r["unloaded"]),
                "unloaded_latency_per_round_s": r["unloaded"],
                "saturation_throughput_rps": statistics.median(s.throughput_rps for s in sat),
                "saturation_throughput_per_round_rps": [s.throughput_rps for s in sat],
                "saturation_utilisation": sat[-1].utilisation,
                "loaded_throughput_rps": statistics.mean(s.throughput_rps for s in loaded),
                "loaded_latency_s": lat.model_dump(),
                "loaded_queue_s": {k: Distribution.of(q).model_dump() for k, q in sorted(queues.items())},
                "loaded_utilisation": loaded[-1].utilisation,
                "slo_attainment": met / len(pooled) if pooled else None,
                "goodput_rps": statistics.mean(s.goodput_rps or 0.0 for s in loaded),
                "goodput_per_device": statistics.mean(s.goodput_per_gpu or 0.0 for s in loaded),
                "failed": sum(s.failed for s in sat + loaded),
            }
        )
    base = rows[0]
    for row in rows:
        row["speedup_vs_large"] = base["unloaded_latency_s"] / row["unloaded_latency_s"]
        row["throughput_vs_large"] = row["saturation_throughput_rps"] / base["saturation_throughput_rps"]
        row["p99_vs_large"] = row["loaded_latency_s"]["p99"] / base["loaded_latency_s"]["p99"]
        row["goodput_vs_large"] = (row["goodput_rps"] / base["goodput_rps"]) if base["goodput_rps"] else None
    return {"slo_s": slo_s, "slo_reference": settings.slo_reference, "rows": rows}


def format_table(scored: dict[str, Any]) -> str:
    head = (
        f"{'variant':<27}{'pools':<18}{'unloaded s':>11}{'speedup':>9}{'sat rps':>9}{'x large':>9}"
        f"{'p50 s':>8}{'p99 s':>8}{'p99/large':>10}{'SLO %':>7}{'goodput':>9}"
    )
    lines = [head]
    for r in scored["rows"]:
        pools = "+".join(f"{n}{k[0]}" for k, n in r["pools"].items())
        lat = r["loaded_latency_s"]
        lines.append(
            f"{r['variant']:<27}{pools:<18}{r['unloaded_latency_s']:>11.2f}{r['speedup_vs_large']:>9.2f}"
            f"{r['saturation_throughput_rps']:>9.3f}{r['throughput_vs_large']:>9.2f}{lat['p50']:>8.2f}"
            f"{lat['p99']:>8.2f}{r['p99_vs_large']:>10.2f}{100 * (r['slo_attainment'] or 0):>7.0f}"
            f"{r['goodput_rps'] or 0:>9.3f}"
        )
    lines.append(f"SLO {scored['slo_s']:.2f}s = scale x unloaded latency of {scored['slo_reference']}")
    return "\n".join(lines)
