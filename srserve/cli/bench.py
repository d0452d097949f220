"""`srserve bench`: load-test a running srserve (or deploy one locally first) and report.

srserve bench --target grpc://127.0.0.1:9000 --arrival poisson:0.5 --requests 40 --slo-scale 3 --out out/bench
srserve bench --deploy deploy/tiny.yaml --target http://127.0.0.1:8000 --arrival closed:4 --requests 24
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="load-test srserve: throughput, latency, queueing, utilisation, SLO goodput")
    p.add_argument("--target", default="grpc://127.0.0.1:9000", help="grpc://HOST:PORT or http://HOST:PORT")
    p.add_argument("--app", default=None, help="Serve application name (gRPC metadata); default from --deploy")
    p.add_argument("--deploy", default=None, help="start a local Ray cluster, deploy this Serve config, then stop")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (with --deploy)")
    p.add_argument("--arrival", default="closed:1", help="poisson:RATE, gamma:RATE:CV, trace:FILE, closed:N[:THINK]")
    p.add_argument("--requests", type=int, default=20, help="stop sending after this many requests")
    p.add_argument("--duration", type=float, default=None, help="stop sending after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", default=None, help="YAML request mix (classes with weights); else one class from flags")
    p.add_argument("--prompt", default="a red fox running through snow")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--switch", default="fixed:5")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT")
    p.add_argument("--frames", type=int, default=None)
    slo = p.add_mutually_exclusive_group()
    slo.add_argument("--slo", type=float, default=None, help="latency SLO in seconds, for every request")
    slo.add_argument("--slo-scale", type=float, default=None, help="SLO = this x the class's unloaded latency")
    p.add_argument("--unloaded-runs", type=int, default=2, help="idle-server runs per class (warm-up, SLO scale)")
    p.add_argument("--gpus", type=float, default=None, help="GPUs behind the target (default: from --deploy)")
    p.add_argument("--poll-interval", type=float, default=0.25)
    p.add_argument("--drain-timeout", type=float, default=600.0)
    p.add_argument("--out", default=None, help="directory for report.json and the PNG plots")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def build_mix(args: argparse.Namespace):
    from srserve.workload.mix import RequestMix

    if args.mix:
        return RequestMix.from_yaml(args.mix)
    width = height = None
    if args.size:
        width, height = (int(v) for v in args.size.lower().split("x"))
    return RequestMix.single(
        prompt=args.prompt,
        num_inference_steps=args.steps,
        switch=args.switch,
        width=width,
        height=height,
        num_frames=args.frames,
    )


def run(args: argparse.Namespace) -> int:
    from srserve.loadgen.clients import connect
    from srserve.loadgen.plots import write_run_plots
    from srserve.loadgen.runner import LoadRunner, unloaded_latency
    from srserve.loadgen.shape import device_count, replicas_per_pool
    from srserve.workload.arrivals import parse_arrival
    from srserve.workload.plan import SloPolicy
    from srserve.workload.report import BenchReport, format_summary

    try:
        arrival = parse_arrival(args.arrival)
        mix = build_mix(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = None
    if args.deploy:
        from srserve.serving.config import DeployFile
        from srserve.serving.launcher import deploy, ensure_ray

        spec = DeployFile.from_yaml(args.deploy)
        ensure_ray(num_cpus=args.num_cpus)
        print(f"deploying {args.deploy} on a local Ray cluster ...", file=sys.stderr, flush=True)
        deploy(spec)
    app = args.app or (spec.serving.app_name if spec else "srserve")
    pools = replicas_per_pool(spec.serving) if spec else None
    gpus = args.gpus if args.gpus is not None else (device_count(spec.serving) if spec else None)
    target = connect(args.target, app)
    try:
        slo = SloPolicy(slo_s=args.slo, scale=args.slo_scale)
        if args.unloaded_runs > 0:
            slo.unloaded_s = unloaded_latency(target, mix, args.unloaded_runs, progress=not args.no_progress)
            print("unloaded latency: " + ", ".join(f"{k} {v:.2f}s" for k, v in slo.unloaded_s.items()), flush=True)
        runner = LoadRunner(
            target,
            arrival,
            mix,
            max_requests=args.requests,
            max_duration_s=args.duration,
            seed=args.seed,
            slo=slo,
            poll_interval_s=args.poll_interval,
            drain_timeout_s=args.drain_timeout,
            progress=not args.no_progress,
        )
        started = time.time()
        records = runner.run()
    finally:
        target.close()
        if spec is not None:
            from srserve.serving.launcher import drain_and_shutdown

            drain_and_shutdown(spec.serving, 30)
    report = BenchReport.build(
        "bench",
        records,
        gpus,
        pools,
        command="srserve " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("srserve") else shlex.join(sys.argv),
        target=args.target,
        api=target.api,
        arrival=arrival.model_dump(),
        mix=mix.model_dump(),
        slo=slo.model_dump(),
        started_at=started,
    )
    print(format_summary(f"{args.arrival} -> {args.target}", report.summary))
    if args.out:
        out = Path(args.out)
        path = report.write(out / "report.json")
        plots = write_run_plots("bench", records, out, pools)
        print(f"wrote {path} and {', '.join(str(p) for p in plots)}")
    return 0 if report.summary.completed else 1
