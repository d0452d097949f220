"""srserve across Ray nodes, and losing one: a head and two worker nodes started with `ray start` as separate
processes on this machine (tests/multi_node_cluster.py), the sketch pool pinned to one worker node
(`sketch_node`), the render pool to the other (`render_node`), the ingress and the Serve proxy to the head.
Artifacts live in an S3-compatible server (moto), the job store is reached by DSN (the session's embedded
PostgreSQL, named through an environment variable as a cluster names its database): nothing is shared
through a node's disk or loopback-only defaults.

Shown: jobs complete with the in-process engine's bytes, their handoff written on the sketch node and read
on the render node; SIGKILL of every process of the render node (then of the sketch node) with jobs in
flight, a replacement node started, and every accepted job completes with identical bytes; the head's Serve
proxy killed alone: requests fail cleanly meanwhile (no answer or 503), nothing accepted is lost.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from srserve.engine import GenerationRequest
from tests.multi_node_cluster import LocalRayCluster, free_port
from tests.serving_helpers import TERMINAL, get, post, wait_done, wait_state

pytestmark = pytest.mark.slow

APP = "multinode"
BODY = {"prompt": "a fox crossing nodes", "num_inference_steps": 6, "switch": "fixed:3"}
DSN_ENV = "SRSERVE_MULTINODE_DATABASE_URL"
S3_ENV = {"SRSERVE_TEST_S3_KEY": "multinode", "SRSERVE_TEST_S3_SECRET": "multinode-secret"}

DEPLOY = """
import sys, ray
from ray import serve
from srserve.serving.app import build_app
from srserve.serving.config import ServingConfig
ray.init(address=sys.argv[1])
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2])}, proxy_location="HeadOnly")
serve.run(build_app(ServingConfig.model_validate_json(sys.argv[3])), name=sys.argv[4], route_prefix="/")
"""

# Which node each pool's replica runs on (the replicas' own report, `stats`), and each node's custom resource.
PLACEMENT = """
import json, sys, ray
from ray import serve
ray.init(address=sys.argv[1])
nodes = {n["NodeID"]: [k for k in n["Resources"] if k.endswith("_node")] for n in ray.nodes() if n["Alive"]}
placed = {}
for name in ("SketchWorker", "RenderWorker"):
    stats = serve.get_deployment_handle(name, app_name=sys.argv[2]).stats.remote().result(timeout_s=120)
    placed[name] = {"replica": stats["replica"], "node": nodes.get(stats["node_id"], [])}
print(json.dumps(placed))
"""


@pytest.fixture(scope="module")
def multinode(embedded_db, tiny_config):
    """(cluster, base URL) of srserve deployed across a head and two worker nodes."""
    from srserve.serving.config import IngressConfig, PoolConfig, ServingConfig
    from srserve.serving.control.artifacts import ArtifactStoreConfig
    from srserve.serving.control.store.database import JobStoreConfig
    from tests.s3_server import create_bucket, s3_server

    with s3_server() as endpoint:
        create_bucket(endpoint, "srserve-multinode")
        env = {DSN_ENV: embedded_db.ensure_running("multinode"), **S3_ENV}
        # Ray's socket paths must stay short: a temp dir of its own directly under /tmp.
        cluster = LocalRayCluster(Path(tempfile.mkdtemp(prefix="srmn", dir="/tmp")), env)

        def pinned(resource: str, cpus: float) -> dict:
            return {"num_cpus": cpus, "resources": {resource: 0.01}}

        config = ServingConfig(
            app_name=APP,
            model=tiny_config.model_copy(update={"num_threads": 1}),
            sketch_pool=PoolConfig(num_replicas=1, ray_actor_options=pinned("sketch_node", 0.5)),
            render_pool=PoolConfig(num_replicas=1, ray_actor_options=pinned("render_node", 0.5)),
            ingress=IngressConfig(
                ray_actor_options=pinned("head_node", 0.25),
                lease_ttl_s=3.0,
                claim_interval_s=0.5,
                default_deadline_s=900,
            ),
            job_store=JobStoreConfig(dsn_env=DSN_ENV),
            artifacts=ArtifactStoreConfig(
                kind="s3",
                bucket="srserve-multinode",
                endpoint_url=endpoint,
                allow_http=True,
                access_key_id_env="SRSERVE_TEST_S3_KEY",
                secret_access_key_env="SRSERVE_TEST_S3_SECRET",
            ),
        )
        try:
            cluster.start_head("head_node", num_cpus=2)
            cluster.add_node("sketch_node", num_cpus=1)
            cluster.add_node("render_node", num_cpus=1)
            http = free_port()
            cluster.run_driver(DEPLOY, str(http), config.model_dump_json(), APP)
            yield cluster, f"http://127.0.0.1:{http}"
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def expected(engine) -> dict[int, bytes]:
    """The in-process engine's mp4 for each seed the tests use."""
    return {seed: engine.generate(GenerationRequest(**BODY, seed=seed)).video for seed in range(6)}


def _submit(base: str, seed: int, timeout_s: float = 180) -> str:
    """POST until accepted: while a node or the proxy restarts, no answer or a 503 is an answer, not a loss."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            r = post(base, "/v1/videos", json={**BODY, "seed": seed})
        except requests.ConnectionError:
            time.sleep(0.5)
            continue
        if r.status_code == 200:
            return r.json()["id"]
        assert r.status_code == 503, (r.status_code, r.text)
        time.sleep(0.5)
    raise TimeoutError("not accepted")


def _check(base: str, job_id: str, video: bytes) -> dict:
    done = wait_done(base, job_id, timeout_s=900)
    assert done["status"] == "completed", (done["error"], done["srserve"])
    assert get(base, f"/v1/videos/{job_id}/content").content == video
    return done


def test_jobs_cross_from_the_sketch_node_to_the_render_node(multinode, expected) -> None:
    cluster, base = multinode
    jobs = [_submit(base, seed) for seed in (0, 1)]
    done = [_check(base, job_id, expected[seed]) for seed, job_id in zip((0, 1), jobs, strict=True)]
    placed = json.loads(cluster.run_driver(PLACEMENT, APP).strip().splitlines()[-1])
    assert placed["SketchWorker"]["node"] == ["sketch_node"] and placed["RenderWorker"]["node"] == ["render_node"]
    for job in done:  # sketched on one node, rendered on the other: the handoff went through S3
        replicas = job["srserve"]["replicas"]
        assert replicas["sketch"] == placed["SketchWorker"]["replica"]
        assert replicas["render"] == placed["RenderWorker"]["replica"]
        assert job["srserve"]["handoff_bytes"] > 0


@pytest.mark.parametrize(("resource", "stage"), [("render_node", "rendering"), ("sketch_node", "sketching")])
def test_losing_a_node_mid_job_loses_no_job(multinode, expected, resource: str, stage: str) -> None:
    """Every process of the node dies (raylet and replicas) while a job is at its stage; a replacement node
    joins; every accepted job completes with the bytes of an undisturbed run."""
    cluster, base = multinode
    seeds = (2, 3, 4)
    jobs = {seed: _submit(base, seed) for seed in seeds}
    wait_state(base, jobs[2], until=lambda j: j["srserve"]["state"] in (stage, *TERMINAL), timeout_s=600)
    assert cluster.kill_node(resource) > 0
    assert cluster.node_processes(resource) == []
    cluster.add_node(resource, num_cpus=1)
    for seed, job_id in jobs.items():
        _check(base, job_id, expected[seed])
    placed = json.loads(cluster.run_driver(PLACEMENT, APP).strip().splitlines()[-1])
    assert placed["RenderWorker"]["node"] == ["render_node"] and placed["SketchWorker"]["node"] == ["sketch_node"]


def test_killing_the_head_proxy_fails_requests_cleanly_and_loses_nothing(multinode, expected) -> None:
    cluster, base = multinode
    job = _submit(base, 5)
    proxies = [p for p in cluster.processes() if "ProxyActor" in " ".join(p.cmdline() or [p.name()])]
    assert proxies, "no Serve proxy found on the cluster"
    for proxy in proxies:
        proxy.kill()
    psutil.wait_procs(proxies, timeout=30)
    accepted = [job]
    try:  # meanwhile: no connection, or an answer that says to retry (a restarted proxy may accept)
        r = post(base, "/v1/videos", json={**BODY, "seed": 5})
        assert r.status_code in (200, 503), r.text
        if r.status_code == 200:
            accepted.append(r.json()["id"])
    except requests.ConnectionError:
        pass
    accepted.append(_submit(base, 5))  # Serve restarts the proxy; the service answers again
    for job_id in accepted:
        _check(base, job_id, expected[5])
