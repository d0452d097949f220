"""`srserve plan`: pick the sketch:render split (or a colocated pool) of a GPU budget for a load and SLO.

    srserve plan --profile benchmarks/results/profile_wan21_a100_derived.json --budget H100=32 \
        --arrival poisson:0.2 --switch adaptive --switch-steps 8:0.25,9:0.5,10:0.25 --slo-scale 2 \
        --emit-config planned.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="simulate the pools and search sketch:render ratios for a GPU budget")
    p.add_argument("--profile", required=True, help="profile JSON (srserve profile ..., or a derived one)")
    p.add_argument("--budget", default=None, help="GPUs per kind: KIND=N[,KIND=N] (kinds from the profile)")
    p.add_argument("--gpus", type=int, default=None, help="a budget of N GPUs of the profile's (first) kind")
    p.add_argument("--arrival", default="poisson:0.1", help="poisson:RATE, gamma:RATE:CV or trace:FILE")
    p.add_argument("--requests", type=int, default=2000, help="simulated requests per candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", default=None, help="YAML request mix; else one class from the flags below")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--switch", default="fixed:0.2")
    p.add_argument("--switch-steps", default=None, help="adaptive switch distribution K:P[,K:P] (e.g. 8:0.3,9:0.7)")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT")
    p.add_argument("--frames", type=int, default=None)
    slo = p.add_mutually_exclusive_group()
    slo.add_argument("--slo", type=float, default=None, help="latency SLO in seconds")
    slo.add_argument("--slo-scale", type=float, default=None, help="SLO = x times the unloaded latency")
    p.add_argument("--slo-kind", default=None, help="device kind whose unloaded latency --slo-scale multiplies")
    p.add_argument("--layouts", default="disaggregated,colocated")
    p.add_argument("--objective", choices=["goodput", "goodput_per_gpu"], default="goodput")
    p.add_argument("--max-simulated", type=int, default=24, help="candidates simulated after analytic pruning")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--max-rate", action="store_true", help="also find each top config's max rate at --attainment")
    p.add_argument("--attainment", type=float, default=0.9)
    p.add_argument("--emit-config", default=None, help="write the winner as a Serve config YAML here")
    p.add_argument("--sketch-model", default=None, help="sketch checkpoint folder for the emitted config")
    p.add_argument("--render-model", default=None, help="render checkpoint folder for the emitted config")
    p.add_argument("--json", default=None, help="write the ranked results as JSON here")
    p.add_argument(
        "--cache-speedup",
        default=None,
        help="step caches' speed factors per pool: POOL=F[,POOL=F] (sketch, render, colocated; e.g. sketch=1.6)",
    )
    p.add_argument(
        "--load-floor", type=float, default=None, help="a `load` switch's quality floor (share of the steps)"
    )
    p.add_argument(
        "--sketch-parallel",
        default="1",
        help="parallel degrees to try for sketch replicas, e.g. 1,u2,u2xc2 (step times from the profile's `parallel`)",
    )
    p.add_argument("--render-parallel", default="1", help="parallel degrees to try for render replicas, e.g. 1,c2")
    p.set_defaults(func=run)


# Where the emitted config expects the checkpoints unless --sketch-model/--render-model say otherwise.
PLACEHOLDER_PATHS = {
    "wan2.1": ("/models/Wan2.1-T2V-14B-Diffusers", "/models/Wan2.1-T2V-1.3B-Diffusers"),
    "wan2.2": ("/models/Wan2.2-T2V-A14B-Diffusers", "/models/Wan2.2-T2V-A14B-Diffusers/transformer_2"),
    "wan2.1-i2v": ("/models/Wan2.1-I2V-14B-480P-Diffusers", "/models/Wan2.1-Fun-1.3B-InP-Diffusers"),
    "wan2.2-i2v": ("/models/Wan2.2-I2V-A14B-Diffusers", "/models/Wan2.2-I2V-A14B-Diffusers/transformer_2"),
}


def parse_budget(text: str | None, gpus: int | None, profile) -> dict[str, int]:
    if text:
        out = {}
        for part in text.split(","):
            kind, _, n = part.partition("=")
            out[kind.strip()] = int(n)
        return out
    if gpus is None:
        raise ValueError("give --budget KIND=N[,...] or --gpus N")
    return {next(iter(profile.kinds)): gpus}


def parse_speedups(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (text or "").split(",")):
        pool, _, value = item.partition("=")
        try:
            out[pool.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--cache-speedup: expected POOL=FACTOR, got {item!r}") from None
    return out


def parse_degrees(text: str) -> tuple[str, ...]:
    """`1,u2,u2xc2` -> the degrees' canonical labels (ValueError names a bad one)."""
    from srserve.engine.parallel.config import ParallelSpec

    return tuple(ParallelSpec.parse(item).label() for item in text.split(",") if item.strip())


def build_mix(args: argparse.Namespace):
    from srserve.workload.mix import RequestClass, RequestMix

    if args.mix:
        return RequestMix.from_yaml(args.mix)
    width = height = None
    if args.size:
        width, height = (int(v) for v in args.size.lower().split("x"))
    dist = None
    if args.switch_steps:
        dist = {int(k): float(p) for k, p in (item.split(":") for item in args.switch_steps.split(","))}
    fields = {
        "num_inference_steps": args.steps,
        "switch": args.switch,
        "width": width,
        "height": height,
        "num_frames": args.frames,
        "switch_steps": dist,
    }
    return RequestMix(classes=[RequestClass(**{k: v for k, v in fields.items() if v is not None})])


def run(args: argparse.Namespace) -> int:
    from srserve.planner.profile import Profile
    from srserve.planner.search import PlanSpec, format_plan, max_rate, plan
    from srserve.planner.serve_config import serve_config_yaml
    from srserve.workload.arrivals import ClosedLoop, parse_arrival
    from srserve.workload.plan import SloPolicy
    from srserve.workload.report import finite_json

    try:
        profile = Profile.read(args.profile)
        arrival = parse_arrival(args.arrival)
        if isinstance(arrival, ClosedLoop):
            raise ValueError("the planner takes an open-loop arrival (poisson, gamma or trace)")
        spec = PlanSpec(
            budget=parse_budget(args.budget, args.gpus, profile),
            arrival=arrival,
            mix=build_mix(args),
            requests=args.requests,
            seed=args.seed,
            slo=SloPolicy(slo_s=args.slo, scale=args.slo_scale),
            slo_reference_kind=args.slo_kind,
            layouts=tuple(args.layouts.split(",")),
            max_simulated=args.max_simulated,
            objective=args.objective,
            cache_speedup=parse_speedups(args.cache_speedup),
            parallel={"sketch": parse_degrees(args.sketch_parallel), "render": parse_degrees(args.render_parallel)},
            **({} if args.load_floor is None else {"load_switch": {"floor_fraction": args.load_floor}}),
        )
        results, slo = plan(profile, spec, profile.defaults)
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"profile: {profile.source} - {profile.description}")
    print(
        f"budget {spec.budget}, arrival {args.arrival}, {len(results)} candidates simulated x {spec.requests} "
        f"requests\n"
    )
    print(format_plan(results, args.top, slo))
    rows = [e.row() for e in results]
    if args.max_rate:
        print(f"\nmax Poisson rate at >= {100 * args.attainment:.0f}% SLO attainment:")
        for e, row in zip(results[: args.top], rows, strict=False):
            row["max_rate_rps"] = max_rate(profile, spec, e.cluster, profile.defaults, slo, args.attainment)
            print(
                f"  {e.cluster.label():<44} {row['max_rate_rps']:.4f} req/s "
                f"({row['max_rate_rps'] / e.cluster.gpus:.5f} per GPU)"
            )
    if args.emit_config and results:
        model: object = "tiny"
        if not profile.model_pair.startswith("tiny") or args.sketch_model or args.render_model:
            family = profile.model_pair
            if family not in PLACEHOLDER_PATHS:  # a profile named after a variant of a family's pair
                family = "wan2.2" if family.startswith("wan2.2") else "wan2.1"
            sketch, render = PLACEHOLDER_PATHS[family]
            model = {
                "family": family,
                "sketch_path": args.sketch_model or sketch,
                "render_path": args.render_model or render,
            }
        best = results[0]
        header = (
            f"Planned by: srserve plan --profile {args.profile} (profile source: {profile.source})\n"
            f"for {args.arrival}; predicted goodput {best.summary.goodput_rps}, p99 {best.summary.latency_s.p99:.2f}s"
        )
        Path(args.emit_config).write_text(serve_config_yaml(best.cluster, profile, header=header, model=model))
        print(f"\nwrote the winner ({best.cluster.label()}) to {args.emit_config}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                finite_json({"spec": spec.model_dump(mode="json"), "slo": slo.model_dump(), "results": rows}), indent=2
            )
            + "\n"
        )
    return 0
