"""An adapter-routing burst on the tiny deployment, with more LoRA adapters than the render pool's LRUs hold:
routed by adapter (Serve's model multiplexing, as srserve routes) against routed without it, one run.

It writes the tiny Wan2.1 pair and --adapters render-only adapters (distinct seeded files, scales spread
over 0.3-1.0) under a fresh SRSERVE_HOME, starts a local Ray cluster that exports Prometheus metrics, and
for each render-pool adapter cache size C of --cache-sizes deploys a fresh app per routing, back to back:

  multiplexed  srserve's routing: the ingress calls the render pool with the job's adapter as Serve's
               multiplexed model id, so Serve prefers a replica that holds it;
  none         the same app with `ingress.adapter_routing: none`: Serve balances by queue length alone
               (power of two choices, blind to adapters) and the replica loads the adapter if it lacks it.

Each app is warmed with --warmup jobs without an adapter (its adapter counters stay at zero), then gets the
burst: --jobs jobs (4 steps, 64x64, 17 frames, fixed:1) sent --gap-s apart (0: all at once) through srserve's
load generator, each naming an adapter drawn uniformly with --seed: the same sequence for every app. The
routing order alternates between cache sizes, so neither routing always runs first.

With the defaults (6 adapters, 3 render replicas) C=2 gives N = R*C: multiplexing can keep every adapter on
some replica and, after each one's first load, hit; C=1 gives N > R*C, where no routing holds them all.
Expected held fractions after warm-up: multiplexed about min(1, R*C/N), plain load balancing about C/N.

Per app: the render replicas' engine counters from each replica's stats() (loads, hits, evictions; a stage
after its adapter's load counts a hit too, so hit rate = hits / (hits + loads) is 50% when every job
misses, and loads per job is the miss rate), the routed-held fraction from
`ray_srserve_adapter_routed_total{held}` (stages routed to a replica that already held their adapter),
jobs/s (first submission to last completion), latency, the mean handoff wait (sketch end to render start:
routing and any adapter load) and the render replicas' job counts.

    flock /tmp/srserve-heavy.lock python benchmarks/adapter_routing_burst.py \\
        --out benchmarks/results/adapter_routing_burst_tiny.json
    python benchmarks/adapter_routing_burst.py --jobs 4 --warmup 1 --cache-sizes 1   # smoke
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Measured replicas at normal priority, so other users of this shared machine do not starve them.
os.environ.setdefault("RAY_worker_niceness", "0")

from prometheus_client.parser import text_string_to_metric_families

from srserve.engine import ModelPairConfig
from srserve.engine.tiny.lora import RENDER_LORA, write_tiny_loras
from srserve.loadgen.clients import connect
from srserve.loadgen.local_deploy import deployed
from srserve.loadgen.runner import LoadRunner
from srserve.serving.config import AdapterRouting, IngressConfig, PoolConfig, ServingConfig
from srserve.serving.launcher import ensure_ray
from srserve.workload.arrivals import ClosedLoop, TraceArrivals
from srserve.workload.mix import RequestMix
from srserve.workload.records import RequestRecord
from srserve.workload.report import finite_json
from srserve.workload.stats import summarize
from srserve.workload.timeline import Timeline

RENDER = "RenderWorker"
ROUTED = "ray_srserve_adapter_routed_total"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def adapter_pair(home: Path, count: int) -> ModelPairConfig:
    """The tiny Wan2.1 pair with `count` render-only adapters, each its own seeded file (distinct weights)."""
    base = ModelPairConfig.tiny(home / "tiny-wan", num_threads=1)
    adapters = {}
    for i in range(count):
        files = write_tiny_loras(home / "loras" / f"style{i}", base.sketch_path, base.render_path, seed=2 * i)
        scale = round(0.3 + 0.7 * i / max(count - 1, 1), 2)
        adapters[f"style{i}"] = {"render": str(files[RENDER_LORA]), "scale": scale}
    return ModelPairConfig.model_validate({**base.model_dump(), "adapters": adapters})


def serving_config(
    pair: ModelPairConfig, routing: AdapterRouting, cache_size: int, args: argparse.Namespace
) -> ServingConfig:
    """One app: a sketch pool, a render pool keeping `cache_size` adapters per replica, the ingress routing
    stages by `routing`; room for the whole burst (no admission refusals)."""
    room = max(64, args.jobs + args.warmup)

    def pool(replicas: int, **extra: Any) -> PoolConfig:
        return PoolConfig(
            num_replicas=replicas,
            max_backlog=room,
            max_queued_requests=room,
            ray_actor_options={"num_cpus": args.replica_cpus},
            **extra,
        )

    return ServingConfig(
        app_name=f"lora-burst-c{cache_size}-{routing}",
        model=pair,
        sketch_pool=pool(args.sketch_replicas),
        render_pool=pool(args.render_replicas, adapter_cache_size=cache_size),
        ingress=IngressConfig(adapter_routing=routing),
    )


def burst_trace(path: Path, names: list[str], jobs: int, gap_s: float, seed: int) -> list[str]:
    """A trace of `jobs` arrivals `gap_s` apart, each naming an adapter drawn uniformly (seeded)."""
    rng = random.Random(seed)
    sequence = [rng.choice(names) for _ in range(jobs)]
    lines = [json.dumps({"t": round(i * gap_s, 6), "fields": {"lora": name}}) for i, name in enumerate(sequence)]
    path.write_text("\n".join(lines) + "\n")
    return sequence


def replica_stats(app: str, replicas: int, tries: int = 100) -> dict[str, dict[str, Any]]:
    """Each render replica's stats(), by replica id: calls go where Serve's router sends them, so call until
    every replica has answered (or `tries` calls)."""
    from ray import serve

    handle = serve.get_deployment_handle(RENDER, app_name=app)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        stats = handle.stats.remote().result(timeout_s=60)
        seen[stats["replica"]] = stats
        if len(seen) >= replicas:
            break
    return seen


def routed(port: int, app: str, expected: int, timeout_s: float) -> dict[str, float]:
    """The render pool's stages by whether they were routed to a replica holding their adapter, as Ray's
    metrics agent exports them (every few seconds: wait until `expected` stages are counted)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = {"true": 0.0, "false": 0.0}
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = s.labels
                if s.name == ROUTED and labels.get("application") == app and labels.get("pool") == "render":
                    counts[labels["held"]] = counts.get(labels["held"], 0.0) + s.value
        if counts["true"] + counts["false"] >= expected or time.monotonic() > deadline:
            return counts
        time.sleep(1.0)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def measure(
    config: ServingConfig,
    trace: Path,
    sequence: list[str],
    mix: RequestMix,
    args: argparse.Namespace,
    ports: tuple[int, int, int],
) -> dict[str, Any]:
    """Deploy `config`, warm it, send the burst, read its counters; the app is deleted afterwards."""
    http_port, grpc_port, metrics_port = ports
    app = config.app_name
    prefix = f"/{app}"
    with deployed(config, http_port, grpc_port, prefix) as spec:
        url = (
            f"http://127.0.0.1:{spec.http_port}{prefix}" if args.api == "http" else f"grpc://127.0.0.1:{spec.grpc_port}"
        )
        target = connect(url, app)
        try:
            if args.warmup:
                LoadRunner(
                    target,
                    ClosedLoop(concurrency=args.render_replicas),
                    mix,
                    max_requests=args.warmup,
                    seed=args.seed + 1000,
                    progress=not args.no_progress,
                    label=f"{app} warm-up",
                ).run()
            records = LoadRunner(
                target,
                TraceArrivals(path=str(trace)),
                mix,
                max_requests=args.jobs,
                seed=args.seed,
                progress=not args.no_progress,
                label=app,
            ).run()
        finally:
            target.close()
        done = [r for r in records if r.completed]
        stats = replica_stats(app, args.render_replicas)
        held = routed(metrics_port, app, len(done), args.metrics_timeout_s)
    return summary_of(config, records, sequence, stats, held)


def summary_of(
    config: ServingConfig,
    records: list[RequestRecord],
    sequence: list[str],
    stats: dict[str, dict[str, Any]],
    held: dict[str, float],
) -> dict[str, Any]:
    counters = {
        k: sum((s.get("adapters") or {}).get(k, 0) for s in stats.values()) for k in ("loads", "hits", "evictions")
    }
    loads, hits = counters["loads"], counters["hits"]
    run = summarize(records)
    done = [r for r in records if r.completed]
    routed_total = held["true"] + held["false"]
    spans = [Timeline(r.timeline) for r in done]
    return {
        "app": config.app_name,
        "routing": config.ingress.adapter_routing,
        "adapter_cache_size": config.render_pool.adapter_cache_size,
        "jobs": len(records),
        "completed": run.completed,
        "failed": run.failed,
        "rejected": run.rejected,
        "unfinished": run.unfinished,
        "adapter_counts": counters,
        "engine_hit_rate": hits / (hits + loads) if hits + loads else None,
        "loads_per_job": loads / len(done) if done else None,
        "routed": held,
        "routed_held_fraction": held["true"] / routed_total if routed_total else None,
        "routed_counted_all": routed_total >= len(done),
        "throughput_jobs_s": run.throughput_rps,
        "window_s": run.window_s,
        "latency_mean_s": run.latency_s.mean,
        "latency_p50_s": run.latency_s.p50,
        "latency_p99_s": run.latency_s.p99,
        "handoff_wait_mean_s": _mean([s for t in spans if (s := t.span("handoff")) is not None]),
        "render_mean_s": _mean([s for t in spans if (s := t.span("render")) is not None]),
        "render_jobs_per_replica": sorted(collections.Counter(r.replicas.get("render", "?") for r in done).values()),
        "adapter_requests": dict(sorted(collections.Counter(sequence).items())),
        "replicas_seen": len(stats),
        "replicas": {
            rid: {"jobs_done": s["jobs_done"], "busy_s": round(s["busy_s"], 3), "adapters": s.get("adapters")}
            for rid, s in sorted(stats.items())
        },
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(runs: list[dict[str, Any]], adapters: int, replicas: int) -> str:
    rows = [
        f"{adapters} adapters, {replicas} render replicas; held = routed to a replica holding the adapter",
        f"{'C':>2} {'N>R*C':>5}  {'routing':<12} {'held':>5} {'hit':>5} {'loads/job':>9} {'evict':>5} "
        f"{'jobs/s':>7} {'mean s':>7} {'p99 s':>7} {'handoff s':>9}",
    ]
    for r in runs:
        c = r["adapter_cache_size"]
        rows.append(
            f"{c:>2} {'yes' if adapters > replicas * c else 'no':>5}  {r['routing']:<12} "
            f"{_pct(r['routed_held_fraction']):>5} {_pct(r['engine_hit_rate']):>5} "
            f"{_num(r['loads_per_job'], '.2f'):>9} {r['adapter_counts']['evictions']:>5} "
            f"{_num(r['throughput_jobs_s'], '.3f'):>7} {_num(r['latency_mean_s'], '.2f'):>7} "
            f"{_num(r['latency_p99_s'], '.2f'):>7} {_num(r['handoff_wait_mean_s'], '.2f'):>9}"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=6, help="render-only adapters the requests spread over (N)")
    parser.add_argument("--render-replicas", type=int, default=3, help="R")
    parser.add_argument("--sketch-replicas", type=int, default=1)
    parser.add_argument("--cache-sizes", default="2,1", help="render-pool adapter_cache_size values (C), one app each")
    parser.add_argument("--routings", default="multiplexed,none", help="of: multiplexed, none")
    parser.add_argument("--jobs", type=int, default=36, help="burst size per app")
    parser.add_argument("--warmup", type=int, default=None, help="jobs without an adapter first (default 2 x R)")
    parser.add_argument("--gap-s", type=float, default=0.0, help="seconds between the burst's submissions")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--switch", default="fixed:1", help="a short sketch: most steps run on the render pool, where the adapters are"
    )
    parser.add_argument("--size", type=int, default=64, help="width and height")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--replica-cpus", type=float, default=0.5)
    parser.add_argument("--metrics-timeout-s", type=float, default=90.0, help="wait for the routed counts' export")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary SRSERVE_HOME (logs, jobs)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = 2 * args.render_replicas
    cache_sizes = [int(c) for c in args.cache_sizes.split(",")]
    routings: list[AdapterRouting] = []
    for name in args.routings.split(","):
        if name not in ("multiplexed", "none"):
            parser.error(f"--routings: {name!r} is not multiplexed or none")
        routings.append(name)  # type: ignore[arg-type]

    import ray
    from ray import serve

    from srserve.serving.control.store.database import EmbeddedPostgres

    # A fresh home (embedded job store, artifacts, tiny pair, adapters), set before Ray starts so replicas get it.
    home = Path(tempfile.mkdtemp(prefix="srserve-adapter-burst-"))
    os.environ["SRSERVE_HOME"] = str(home)
    os.environ.pop("RAY_ADDRESS", None)
    runs: list[dict[str, Any]] = []
    try:
        pair = adapter_pair(home, args.adapters)
        names = sorted(pair.adapters)
        trace = home / "burst.jsonl"
        sequence = burst_trace(trace, names, args.jobs, args.gap_s, args.seed)
        mix = RequestMix.single(
            num_inference_steps=args.steps,
            switch=args.switch,
            width=args.size,
            height=args.size,
            num_frames=args.frames,
        )
        ports = (_free_port(), _free_port(), _free_port())
        ensure_ray(num_cpus=args.num_cpus, metrics_export_port=ports[2])
        for i, cache_size in enumerate(cache_sizes):
            order = routings if i % 2 == 0 else routings[::-1]
            for routing in order:
                print(f"== C={cache_size} routing={routing}", flush=True)
                runs.append(measure(serving_config(pair, routing, cache_size, args), trace, sequence, mix, args, ports))
    finally:
        if ray.is_initialized():  # (serve.shutdown would start a cluster to shut down)
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
        EmbeddedPostgres(home / "postgres").stop(mode="fast")
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    runs.sort(key=lambda r: (-r["adapter_cache_size"], r["routing"] != "multiplexed"))
    table = format_table(runs, args.adapters, args.render_replicas)
    print(table)
    if args.out:
        report = {
            "benchmark": "adapter_routing_burst",
            "command": "python " + shlex.join(sys.argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only, torch threads 1 per replica",
            "settings": {
                "adapters": {name: pair.adapters[name].scale for name in names},
                "render_replicas": args.render_replicas,
                "sketch_replicas": args.sketch_replicas,
                "cache_sizes": cache_sizes,
                "routings": routings,
                "jobs": args.jobs,
                "warmup_jobs": args.warmup,
                "gap_s": args.gap_s,
                "request": mix.classes[0].fields(seed=args.seed),
                "seed": args.seed,
                "api": args.api,
                "replica_cpus": args.replica_cpus,
            },
            "note": (
                "held = routed_held_fraction (ray_srserve_adapter_routed_total: stages routed to a replica that "
                "already held their adapter); hit = engine hits / (hits + loads) summed over the render replicas' "
                "stats() (a stage after its adapter's load counts a hit too: 50% when every job misses); "
                "loads/job = the miss rate; jobs/s from the first submission to the last completion; handoff = "
                "sketch end to render start (routing and any adapter load); routing 'none' is "
                "ingress.adapter_routing: none (Serve's power-of-two-choices load balancing, blind to adapters)"
            ),
            "runs": runs,
            "table": table.splitlines(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(finite_json(report), indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
