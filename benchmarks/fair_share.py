"""Priorities and weighted fair share, served: two tenants share the tiny pair's one sketch replica.

Deploys the tiny pair on a local Ray cluster (1 sketch + 1 render replica, the embedded job store) with two
tenants, `studio` (weight 3, max_priority 5) and `hobby` (weight 1), and measures over HTTP:

1. **Fair share.** Each tenant posts the same N jobs at once (a sketch-heavy switch, so the sketch pool is
   the bottleneck and both tenants always have jobs waiting). While both wait (from the first sketch start
   until the first tenant's last sketch start), the sketch replica's busy time (encode + sketch spans,
   stamped inside the replica) splits between them; the queue's target is their weights, 3 : 1.
2. **Priority.** `hobby` posts M jobs, then `studio` posts one with priority 5: its wait for the sketch
   replica (submitted -> encode start) against the hobby jobs', and its rank among them by start.

    python benchmarks/fair_share.py --out benchmarks/results/fair_share_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from srserve.engine import ModelPairConfig
from srserve.serving.config import DeployFile, IngressConfig, PoolConfig, ServingConfig
from srserve.serving.launcher import deploy, embedded_database, ensure_ray
from srserve.workload.timeline import Timeline

TOKENS = {
    "SRSERVE_BENCH_STUDIO": "studio-token-0123456789abcdef",
    "SRSERVE_BENCH_HOBBY": "hobby-token-0123456789abcdef",
}
STUDIO, HOBBY = TOKENS["SRSERVE_BENCH_STUDIO"], TOKENS["SRSERVE_BENCH_HOBBY"]
TERMINAL = ("completed", "failed", "cancelled")


def _headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _post_all(base: str, token: str, bodies: list[dict]) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: requests.post(base, json=b, headers=_headers(token), timeout=60), bodies))
    for r in answers:
        r.raise_for_status()
    return [r.json()["id"] for r in answers]


def _finished(base: str, token: str, job_id: str) -> dict:
    while True:
        job = requests.get(f"{base}/{job_id}", headers=_headers(token), timeout=30).json()
        if job["srserve"]["state"] in TERMINAL:
            if job["status"] != "completed":
                raise RuntimeError(f"{job_id}: {job}")
            return job["srserve"]
        time.sleep(0.2)


def _busy(timeline: dict) -> tuple[float, float]:
    """The sketch replica's busy interval for a job: encode start (or sketch start) to sketch end."""
    t = Timeline.of(timeline)
    start = t.marks.get("encode_start", t.marks["sketch_start"])
    return start, t.marks["sketch_end"]


def fair_share(base: str, n: int, body: dict) -> dict:
    ids = {
        "studio": _post_all(base, STUDIO, [{**body, "seed": i} for i in range(n)]),
        "hobby": _post_all(base, HOBBY, [{**body, "seed": 1000 + i} for i in range(n)]),
    }
    tokens = {"studio": STUDIO, "hobby": HOBBY}
    busy = {t: [_busy(_finished(base, tokens[t], j)["timeline"]) for j in js] for t, js in ids.items()}
    window_start = min(s for spans in busy.values() for s, _ in spans)
    window_end = min(max(s for s, _ in spans) for spans in busy.values())  # the first tenant's last start
    share = {t: sum(max(0.0, min(e, window_end) - max(s, window_start)) for s, e in spans) for t, spans in busy.items()}
    jobs_in = {t: sum(1 for s, _ in spans if s < window_end) for t, spans in busy.items()}
    ratio = share["studio"] / share["hobby"] if share["hobby"] else float("inf")
    print(f"fair share: contended window {window_end - window_start:.1f}s, busy s {share}, jobs started {jobs_in}")
    print(f"  studio : hobby = {ratio:.2f} (weights 3 : 1)")
    return {
        "jobs_per_tenant": n,
        "contended_window_s": window_end - window_start,
        "sketch_busy_s": share,
        "jobs_started_in_window": jobs_in,
        "studio_to_hobby": ratio,
        "weights": {"studio": 3, "hobby": 1},
    }


def priority(base: str, m: int, body: dict) -> dict:
    hobby = _post_all(base, HOBBY, [{**body, "seed": 2000 + i} for i in range(m)])
    urgent = _post_all(base, STUDIO, [{**body, "seed": 3000, "priority": 5}])[0]
    waits, starts = {}, {}
    for job_id, token in [*((j, HOBBY) for j in hobby), (urgent, STUDIO)]:
        t = _finished(base, token, job_id)["timeline"]
        starts[job_id] = _busy(t)[0]
        waits[job_id] = starts[job_id] - t["submitted"]
    rank = sorted(starts, key=starts.__getitem__).index(urgent) + 1
    hobby_waits = [waits[j] for j in hobby]
    print(
        f"priority: the priority-5 job posted after {m} waiting jobs started {rank} of {m + 1}; waited "
        f"{waits[urgent]:.2f}s against the others' median {statistics.median(hobby_waits):.2f}s"
    )
    return {
        "waiting_before_it": m,
        "its_start_rank": rank,
        "its_wait_s": waits[urgent],
        "others_wait_s_median": statistics.median(hobby_waits),
        "others_wait_s_max": max(hobby_waits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16, help="jobs per tenant in the fair-share run")
    parser.add_argument("--waiting", type=int, default=8, help="jobs waiting before the priority job")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--switch", default="fixed:8")
    parser.add_argument("--port", type=int, default=8131)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from ray import serve

    database = embedded_database(ServingConfig(app_name="fairshare"))
    started_db = database is not None and not database.running()
    ensure_ray(num_cpus=8)
    pool = {"num_replicas": 1, "max_backlog": 4 * args.jobs, "ray_actor_options": {"num_cpus": 1}}
    config = ServingConfig(
        app_name="fairshare",
        model=ModelPairConfig.tiny(num_threads=1),
        sketch_pool=PoolConfig(**pool),
        render_pool=PoolConfig(**pool),
        ingress=IngressConfig(ray_actor_options={"num_cpus": 0.5, "runtime_env": {"env_vars": TOKENS}}),
        tenants={
            "studio": {"token_env": "SRSERVE_BENCH_STUDIO", "weight": 3, "max_priority": 5},
            "hobby": {"token_env": "SRSERVE_BENCH_HOBBY", "weight": 1},
        },
    )
    deploy(DeployFile(http_port=args.port, grpc_port=args.port + 1, serving=config))
    base = f"http://127.0.0.1:{args.port}/v1/videos"
    body = {"prompt": "a red fox running through snow", "num_inference_steps": args.steps, "switch": args.switch}
    try:
        _finished(base, HOBBY, _post_all(base, HOBBY, [body])[0])  # warm-up
        share = fair_share(base, args.jobs, body)
        urgent = priority(base, args.waiting, body)
    finally:
        serve.delete("fairshare")
        if started_db:
            database.stop()
    report = {
        "command": f"python benchmarks/fair_share.py --jobs {args.jobs} --waiting {args.waiting} --steps {args.steps} "
        f"--switch {args.switch}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1 per replica",
        "note": "sketch_busy_s: the sketch replica's encode+sketch time per tenant while both had jobs waiting "
        "(stamped inside the replica); the queue's target ratio is the weights'",
        "fair_share": share,
        "priority": urgent,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
