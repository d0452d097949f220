"""Served single-request latency against the in-process engine, same request and thread count.

Served: POST /v1/videos, follow the job's Server-Sent Events until `done`, GET the mp4 (the whole
request as a client sees it), with 1 sketch + 1 render replica of the tiny pair at 1 torch thread
each and the embedded job store. Engine: SRDiffusionEngine.generate in this process at 1 thread.
The two alternate, one request at a time, so both see the same machine load; medians are compared.

The compute gets a core of its own (as a GPU is the replica's own): the replicas' processes, and this
process while the engine runs, are pinned to the last core; every other process this user may move
(Ray, the ingress, the proxy, PostgreSQL, the client, anything else running) to the others. Without
that, on a CPU-only machine the control plane's processes and unrelated load take turns on the cores
the tiny models compute on, and the ratio measures the machine's load more than srserve (`--no-pin`
shows it). The breakdown says where a served request's time goes, stage by stage, beside the
engine's own timings.

    python benchmarks/serving_overhead.py --out benchmarks/results/serving_overhead_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import psutil
import requests
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.serving.config import DeployFile, PoolConfig, ServingConfig
from srserve.serving.launcher import deploy, embedded_database, ensure_ray

# Where a served request's time goes: client-side edges (wall clock, as the stamps) and the job's
# stamps, in order; each part is the time from the previous edge to this one.
SERVED_PARTS = (
    ("post", "client_posted"),  # the POST answered: the job is in the store
    ("to_replica", "encode_start"),  # the orchestrator's attempt and the call reaching the sketch replica
    ("encode", "encode_end"),
    ("sketch", "sketch_end"),  # the large model's steps, the handoff serialized
    ("handoff", "render_start"),  # the handoff stored, recorded, the render attempt begun and called
    ("render", "decode_start"),
    ("decode", "render_end"),  # decode and mp4 export
    ("complete", "finished"),  # the mp4 stored, the job completed in the store
    ("done_event", "client_done"),  # NOTIFY -> event hub -> SSE `done` read by the client
    ("download", "client_downloaded"),  # GET the mp4
)
ENGINE_PARTS = ("encode", "sketch", "handoff_serialize", "handoff_deserialize", "render", "decode", "export")


def served_once(base: str, body: dict) -> tuple[float, bytes, dict, dict[str, float]]:
    start, wall = time.perf_counter(), time.time()
    job = requests.post(f"{base}/v1/videos", json=body, timeout=30).json()
    edges = {"client_posted": time.time()}
    done = None
    with requests.get(f"{base}/v1/videos/{job['id']}/events", stream=True, timeout=120) as stream:
        event = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "done":
                done = json.loads(line[6:])
                break
    edges["client_done"] = time.time()
    video = requests.get(f"{base}/v1/videos/{job['id']}/content", timeout=30).content
    edges["client_downloaded"] = time.time()
    elapsed = time.perf_counter() - start
    if done is None or done["status"] != "completed":
        raise RuntimeError(f"{job['id']}: {done}")
    marks = {**done["srserve"]["timeline"], **edges}
    parts, last = {}, wall
    for name, edge in SERVED_PARTS:
        parts[name] = marks[edge] - last
        last = marks[edge]
    return elapsed, video, done, parts


def pin(pids: set[int], core: int) -> int:
    """Every thread of `pids` onto `core`, every other process's threads we may move off it; threads
    moved. New threads inherit their creator's affinity, so a replica's compute thread stays there."""
    others = set(range(os.cpu_count() or 1)) - {core}
    moved = 0
    for proc in psutil.process_iter():
        target = {core} if proc.pid in pids else others
        try:
            threads = [t.id for t in proc.threads()]
        except (psutil.Error, OSError):
            continue
        for tid in threads:
            try:
                os.sched_setaffinity(tid, target)
                moved += 1
            except OSError:  # another user's, or gone
                pass
    return moved


def replica_pids(app: str) -> set[int]:
    """The processes of the app's worker replicas (one each here: a handle call reaches it)."""
    from ray import serve

    names = ("SketchWorker", "RenderWorker")
    return {serve.get_deployment_handle(n, app_name=app).stats.remote().result(timeout_s=60)["pid"] for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--switch", default="fixed:5")
    parser.add_argument("--port", type=int, default=8131)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-pin", action="store_true", help="leave every process on every core")
    args = parser.parse_args()

    torch.set_num_threads(1)
    pair = ModelPairConfig.tiny(num_threads=1)
    body = {"prompt": "a red fox running through snow", "num_inference_steps": args.steps, "switch": args.switch}
    engine = SRDiffusionEngine(pair)
    pool = PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 1})
    config = ServingConfig(app_name="overhead", model=pair, sketch_pool=pool, render_pool=pool)
    database = embedded_database(config)
    started_db = database is not None and not database.running()  # ours to stop at the end
    ensure_ray(num_cpus=8)
    deploy(DeployFile(http_port=args.port, grpc_port=args.port + 1, serving=config))
    base = f"http://127.0.0.1:{args.port}"

    core = (os.cpu_count() or 1) - 1
    all_cores = set(range(os.cpu_count() or 1))
    others = all_cores - {core} or all_cores
    pinned = not args.no_pin and len(all_cores) > 1
    if pinned:
        replicas = replica_pids("overhead")
        print(f"compute on core {core}: replicas {sorted(replicas)}; {pin(replicas, core)} threads placed")

    def compute_core(on: bool) -> None:
        """This thread onto the compute core while the engine runs, off it while it is a client."""
        if pinned:
            os.sched_setaffinity(0, {core} if on else others)

    served_once(base, {**body, "seed": 0})  # warm-up both
    compute_core(True)
    engine.generate(GenerationRequest(**body, seed=0))
    compute_core(False)
    served, local = [], []
    served_parts: dict[str, list[float]] = {name: [] for name, _ in SERVED_PARTS}
    engine_parts: dict[str, list[float]] = {name: [] for name in ENGINE_PARTS}
    same_video = True
    for i in range(args.repeats):
        seconds, video, _, parts = served_once(base, {**body, "seed": i})
        served.append(seconds)
        for name, value in parts.items():
            served_parts[name].append(value)
        compute_core(True)
        start = time.perf_counter()
        result = engine.generate(GenerationRequest(**body, seed=i))
        local.append(time.perf_counter() - start)
        compute_core(False)
        for name in ENGINE_PARTS:
            engine_parts[name].append(result.timings[name])
        same_video &= result.video == video
    med_served, med_local = statistics.median(served), statistics.median(local)
    ratio = med_served / med_local
    print(f"served median {med_served:.3f}s  engine median {med_local:.3f}s  ratio {ratio:.3f}  same mp4 {same_video}")
    breakdown = {
        "served": {k: statistics.median(v) for k, v in served_parts.items()},
        "engine": {k: statistics.median(v) for k, v in engine_parts.items()},
    }
    for side, parts in breakdown.items():
        print(f"{side:>7}: " + "  ".join(f"{k} {v * 1000:.0f}ms" for k, v in parts.items()))
    report = {
        "command": f"python benchmarks/serving_overhead.py --repeats {args.repeats} --steps {args.steps} "
        f"--switch {args.switch}" + (" --no-pin" if args.no_pin else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1 (engine and each replica)",
        "note": "served = POST -> SSE until done -> GET mp4; engine = SRDiffusionEngine.generate in-process; "
        "alternating, one request at a time; ratio of medians; "
        + (
            f"compute pinned to core {core} (the replicas, and the engine while it runs), all else off it"
            if pinned
            else "no pinning"
        ),
        "served_s": served,
        "engine_s": local,
        "served_median_s": med_served,
        "engine_median_s": med_local,
        "ratio": ratio,
        "identical_mp4": same_video,
        "breakdown_median_s": breakdown,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    from ray import serve

    serve.delete("overhead")
    if started_db:
        database.stop()


if __name__ == "__main__":
    main()
