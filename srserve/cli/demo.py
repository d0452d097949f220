"""`srserve demo`: the main job on the tiny pair.

Starts a local Ray cluster, deploys one sketch and one render replica, sends a batch of
concurrent requests over gRPC and over the OpenAI HTTP API, writes and checks the mp4s, and
prints each request's stage timeline and the pipeline efficiency (how busy the bottleneck pool was kept).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="local cluster, both pools, concurrent gRPC + HTTP requests, real mp4s")
    p.add_argument("--config", default="deploy/tiny.yaml")
    p.add_argument("--grpc-requests", type=int, default=4)
    p.add_argument("--http-requests", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--switch", default="fixed:5")
    p.add_argument("--out", default="out/demo")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import openai
    import ray

    from srserve.analysis.timeline import gantt, job_timeline, pipeline_report
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import make_request, video_path
    from srserve.engine.video import read_mp4
    from srserve.loadgen.shape import replicas_per_pool
    from srserve.serving.config import DeployFile
    from srserve.serving.launcher import deploy, drain_and_shutdown, embedded_database, ensure_ray

    spec = DeployFile.from_yaml(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"starting a local Ray cluster and deploying {args.config} ...", flush=True)
    database = embedded_database(spec.serving)
    started_db = database is not None and not database.running()  # ours to stop at the end
    ensure_ray(num_cpus=max(4, os.cpu_count() or 1))
    deploy(spec)
    grpc_target = f"{spec.http_host}:{spec.grpc_port}"
    http_base = f"http://{spec.http_host}:{spec.http_port}/v1"
    print(f"up: gRPC {grpc_target}, HTTP {http_base}", flush=True)

    prompts = [
        "a red fox in snow",
        "a koi pond at noon",
        "a lighthouse at dusk",
        "paper boats on a river",
        "a windmill in a storm",
        "a city of glass",
        "a hummingbird",
        "waves on black sand",
    ]
    fields = {"num_inference_steps": args.steps, "switch": args.switch}

    def via_grpc(i: int) -> tuple[str, str, bytes]:
        with SrserveClient(grpc_target, spec.serving.app_name) as client:
            video = client.generate(make_request(prompts[i % len(prompts)], seed=i, **fields))
        return "grpc", video.job.id, video.mp4

    client = openai.OpenAI(base_url=http_base, api_key="unused", max_retries=0)

    def via_http(i: int) -> tuple[str, str, bytes]:
        video = client.videos.create_and_poll(
            prompt=prompts[i % len(prompts)], poll_interval_ms=100, extra_body={"seed": 100 + i, **fields}
        )
        if video.status != "completed":
            raise RuntimeError(f"{video.id} ended {video.status}: {video.error}")
        return "http", video.id, client.videos.download_content(video.id).read()

    start = time.time()
    with ThreadPoolExecutor(args.grpc_requests + args.http_requests) as pool:
        futures = [pool.submit(via_grpc, i) for i in range(args.grpc_requests)]
        futures += [pool.submit(via_http, i) for i in range(args.http_requests)]
        results = [f.result() for f in futures]
    elapsed = time.time() - start

    jobs = []
    for api, job_id, mp4 in results:
        path = video_path(out, job_id, prefix=f"{api}-")
        path.write_bytes(mp4)
        frames = read_mp4(path)
        job = client.videos.retrieve(job_id).model_extra["srserve"] | {"id": job_id}
        jobs.append(job_timeline(job))
        print(
            f"{api:>4} {job_id}  {path}  frames={frames.shape[0]} size={frames.shape[2]}x{frames.shape[1]}"
            f"  switch={job['switch_step']}/{job['num_steps']}"
        )
    report = pipeline_report(jobs, replicas_per_pool(spec.serving))
    print("\nstage timeline (s = sketch replica busy, r = render replica busy):")
    print(gantt(jobs))
    print(
        f"\n{len(results)} requests in {elapsed:.1f}s; busy per request: sketch {report.t_sketch_s:.2f}s, "
        f"render {report.t_render_s:.2f}s; {report.overlapped_pairs} of {len(jobs) - 1} consecutive requests "
        f"overlapped"
    )
    print(
        f"pipeline efficiency {report.bottleneck_busy_fraction:.2f}: the bottleneck ({report.bottleneck} pool, "
        f"{report.replicas} replica(s)) was busy {report.busy_s:.1f}s of {report.replicas} x {report.window_s:.1f}s "
        f"(its active window), serving {report.throughput_rps:.2f} req/s of the {report.capacity_rps:.2f} req/s "
        f"it could at that busy time per request"
    )
    drain_and_shutdown(spec.serving, 30)
    ray.shutdown()
    if started_db:
        database.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace()))
