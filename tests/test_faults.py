"""Fault tests on a real local cluster, jobs in flight each time: nothing accepted is ever lost.

- first, with nothing killed: the text pool and the S3 artifact store give the inline engine's bytes;
- kill one replica of every deployment (ingress, text encoder, sketch, render), one at a time;
- stop the PostgreSQL server for ~5 s under load (clear 503 / UNAVAILABLE meanwhile);
- SIGKILL `srserve serve` together with its Ray cluster, start it again on the same store; Ctrl-C drains.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
import ray
import requests
import yaml

from srserve.engine.video import read_mp4
from tests.serving_helpers import TERMINAL, get, post, wait_done, wait_state
from tests.store_helpers import freeze, thaw

pytestmark = pytest.mark.slow
APP = "faults"
BODY = {"prompt": "a lighthouse in a storm", "num_inference_steps": 8, "switch": "fixed:3"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_ENV = {"SRSERVE_TEST_S3_KEY": "test", "SRSERVE_TEST_S3_SECRET": "test"}


@pytest.fixture(scope="module")
def faults_app(serving, tiny_config):
    """A second app with every kind of deployment (text pool too), short leases so takeovers are quick, and
    its handoffs and videos in an S3-compatible server (moto's, on a local port): the faults below hit a
    deployment whose artifacts live in a bucket, as in production. Yields (base URL, artifact config)."""
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import IngressConfig, PoolConfig, ServingConfig
    from srserve.serving.control.artifacts import ArtifactStoreConfig
    from tests.s3_server import create_bucket, s3_server

    options = {"num_cpus": 0.25, "runtime_env": {"env_vars": S3_ENV}}
    with s3_server() as endpoint:
        create_bucket(endpoint, "srserve-test")
        artifacts = ArtifactStoreConfig(
            kind="s3",
            bucket="srserve-test",
            prefix="served",
            endpoint_url=endpoint,
            allow_http=True,
            access_key_id_env="SRSERVE_TEST_S3_KEY",
            secret_access_key_env="SRSERVE_TEST_S3_SECRET",
        )
        pool = PoolConfig(num_replicas=1, max_backlog=16, ray_actor_options=options)
        config = ServingConfig(
            app_name=APP,
            model=tiny_config.model_copy(update={"num_threads": 1}),
            text_encoder_placement="pool",
            sketch_pool=pool,
            render_pool=pool,
            text_pool=pool,
            ingress=IngressConfig(
                ray_actor_options=options,
                lease_ttl_s=3.0,
                claim_interval_s=0.5,
                default_deadline_s=900,
                graceful_shutdown_timeout_s=5,
            ),
            artifacts=artifacts,
        )
        serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")
        try:
            yield serving.http + f"/{APP}", artifacts
        finally:
            serve.delete(APP)


@pytest.fixture
def faults(faults_app) -> str:
    return faults_app[0]


def _exists(store, key: str) -> bool:
    from srserve.serving.control.artifacts import ArtifactNotFound

    try:
        store.size(key)
    except ArtifactNotFound:
        return False
    return True


def test_text_encoder_pool_and_s3_artifacts_serve_the_inline_engine_bytes(
    serving, faults_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before any fault: a job encodes on the text pool and gives the latents the main app (text encoder
    inline, local artifacts) gives; its mp4 downloads (ranged too) from the bucket; deleting the job deletes
    the object."""
    from srserve.serving.control.artifacts import ArtifactStore

    base, artifacts = faults_app
    body = {"prompt": "a koi pond", "negative_prompt": "blur", "num_inference_steps": 8, "switch": "fixed:3"}
    job = post(base, "/v1/videos", json={**body, "seed": 11}).json()
    reference = post(serving.http, "/v1/videos", json={**body, "seed": 11}).json()
    done, ref = wait_done(base, job["id"]), wait_done(serving.http, reference["id"])
    assert done["status"] == "completed" and ref["status"] == "completed", (done, ref)
    assert "encode" in done["srserve"]["replicas"]  # encoded on the text pool
    assert done["srserve"]["latents_sha256"] == ref["srserve"]["latents_sha256"]

    whole = get(base, f"/v1/videos/{job['id']}/content")
    assert whole.status_code == 200 and whole.content[4:8] == b"ftyp"
    part = get(base, f"/v1/videos/{job['id']}/content", headers={"Range": "bytes=0-7"})
    assert part.status_code == 206 and part.content == whole.content[:8]
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = ArtifactStore.from_config(artifacts)
    keys = [f"videos/{job['id']}/{n}.mp4" for n in range(1, 4)]
    stored = [k for k in keys if _exists(bucket, k)]
    assert len(stored) == 1 and bucket.get(stored[0]) == whole.content
    assert requests.delete(base + f"/v1/videos/{job['id']}", timeout=30).status_code == 200
    assert not _exists(bucket, stored[0])


def _replica_actors(deployment: str) -> list[tuple[str, str]]:
    out = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if name.startswith("SERVE_REPLICA::") and f"{APP}#{deployment}#" in name:
            out.append((name, actor["namespace"]))
    return out


def _kill_one(deployment: str) -> None:
    actors = _replica_actors(deployment)
    assert actors, f"no replica of {deployment}"
    name, namespace = actors[0]
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)


def _submit_until_accepted(base: str, body: dict, timeout_s: float = 120) -> dict:
    """POST until accepted: a 503 (store or ingress restarting) or 429 (full) is an answer, not a loss."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            r = post(base, "/v1/videos", json=body)
        except requests.ConnectionError:
            time.sleep(0.5)
            continue
        if r.status_code == 200:
            return r.json()
        assert r.status_code in (429, 503), (r.status_code, r.text)
        time.sleep(0.5)
    raise TimeoutError("not accepted")


def _check_video(base: str, job_id: str, tmp_path: Path) -> None:
    r = get(base, f"/v1/videos/{job_id}/content")
    assert r.status_code == 200, r.text
    path = tmp_path / f"{job_id}.mp4"
    path.write_bytes(r.content)
    assert read_mp4(path).shape == (17, 64, 64, 3)


@pytest.mark.parametrize("deployment", ["Ingress", "TextEncoderWorker", "SketchWorker", "RenderWorker"])
def test_kill_a_replica_of_each_deployment(faults: str, deployment: str, tmp_path: Path) -> None:
    # Three jobs: one in the killed replica's hands, one waiting inside it, one queued behind.
    jobs = [_submit_until_accepted(faults, {**BODY, "seed": i}) for i in range(3)]
    stage = {"TextEncoderWorker": "encoding", "SketchWorker": "sketching", "RenderWorker": "rendering"}
    if deployment in stage:  # kill it while it works on a job
        wait_state(faults, jobs[0]["id"], until=lambda j: j["srserve"]["state"] in (stage[deployment], *TERMINAL))
    else:
        wait_state(faults, jobs[0]["id"], until=lambda j: j["srserve"]["state"] != "queued")
    _kill_one(deployment)
    for job in jobs:
        done = wait_done(faults, job["id"])
        assert done["status"] == "completed", (done["error"], done["srserve"])
        _check_video(faults, job["id"], tmp_path)


def test_database_outage_under_load(serving, faults: str, embedded_db, tmp_path: Path) -> None:
    """The store stops for ~5 s, then hangs (frozen): new requests get 503 / UNAVAILABLE meanwhile, within
    the store's bounds; every accepted job completes."""
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import GenerationFailed, make_request

    jobs = [_submit_until_accepted(faults, {**BODY, "seed": 100 + i}) for i in range(4)]
    wait_state(faults, jobs[0]["id"], until=lambda j: j["srserve"]["state"] not in ("queued", "encoding"))
    embedded_db.stop()
    try:
        time.sleep(0.5)
        r = post(faults, "/v1/videos", json=BODY)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable" and r.headers["retry-after"] == "1"
        with SrserveClient(serving.grpc, application=APP) as client, pytest.raises(GenerationFailed) as err:
            client.submit(make_request("during the outage", num_inference_steps=4))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "unavailable" in err.value.details
        time.sleep(4.5)
    finally:
        embedded_db.ensure_running()
    # A hang, not an outage: the server frozen with its sockets open. Each call still comes back (as a 503
    # / UNAVAILABLE, within the store's bounds; `post` would time out at 30 s), and the jobs go on after.
    wait_state(faults, jobs[-1]["id"], until=lambda j: j["srserve"]["state"] not in ("queued", "encoding"))
    freeze(embedded_db)
    try:
        r = post(faults, "/v1/videos", json=BODY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        with SrserveClient(serving.grpc, application=APP) as client, pytest.raises(GenerationFailed) as err:
            client.submit(make_request("while the store hangs", num_inference_steps=4))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "unavailable" in err.value.details
    finally:
        thaw(embedded_db)
    for job in jobs:
        done = wait_done(faults, job["id"])
        assert done["status"] == "completed", done
        _check_video(faults, job["id"], tmp_path)


# -- hard kill of the whole service ---------------------------------------------------------------
def _serve_config(path: Path, http_port: int, grpc_port: int) -> None:
    spec = {
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "grpc_options": {"port": grpc_port},
        "applications": [
            {
                "name": "srserve",
                "route_prefix": "/",
                "import_path": "srserve.serving.app:app_builder",
                "args": {
                    "model": "tiny",
                    "sketch_pool": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}},
                    "render_pool": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}},
                    "ingress": {"lease_ttl_s": 3.0, "claim_interval_s": 0.5, "default_deadline_s": 900},
                },
            }
        ],
    }
    path.write_text(yaml.safe_dump(spec))


def _start_serve(config: Path, home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "SRSERVE_HOME": str(home), "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    return subprocess.Popen(
        [sys.executable, "-m", "srserve.cli.main", "serve", str(config), "--num-cpus", "4"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes Ray's processes with it
    )


def _session_members(sid: int) -> list[int]:
    """Every process of a session: Ray gives each worker (replicas, proxy) its own process group,
    so a process-group kill misses them and a surviving proxy keeps its SO_REUSEPORT port."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL `srserve serve` and everything it started, and wait until all of it is gone."""
    while members := _session_members(proc.pid):
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    proc.wait(30)


def _wait_up(base: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(base + "/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(log.read_text()[-3000:])


def test_hard_kill_of_srserve_serve_and_its_cluster_then_ctrl_c_drains(tmp_path: Path) -> None:
    """SIGKILL the server's whole process group mid-work, start again: old videos download, jobs finish.
    Then Ctrl-C with a job running: `srserve serve` drains it and exits 0 (one cluster start serves both
    checks; each start costs a minute on a loaded machine)."""
    from srserve.serving.control.store.database import EmbeddedPostgres

    home = Path(tempfile.mkdtemp(prefix="srserve-hardkill-"))
    http_port, grpc_port = _free_port(), _free_port()
    config, log = tmp_path / "serve.yaml", tmp_path / "serve.log"
    _serve_config(config, http_port, grpc_port)
    base = f"http://127.0.0.1:{http_port}"
    proc = _start_serve(config, home, log)
    try:
        _wait_up(base, proc, log)
        finished = _submit_until_accepted(base, {**BODY, "seed": 1})
        assert wait_done(base, finished["id"])["status"] == "completed"
        running = [_submit_until_accepted(base, {**BODY, "seed": 2 + i}) for i in range(3)]
        wait_state(base, running[0]["id"], until=lambda j: j["srserve"]["state"] != "queued")
        _kill_session(proc)
        proc = _start_serve(config, home, log)
        _wait_up(base, proc, log)
        _check_video(base, finished["id"], tmp_path)
        for job in running:
            done = wait_done(base, job["id"])
            assert done["status"] == "completed", done
            _check_video(base, job["id"], tmp_path)
        draining = _submit_until_accepted(base, {**BODY, "seed": 9, "num_inference_steps": 30, "switch": "fixed:10"})
        wait_state(base, draining["id"], until=lambda j: j["srserve"]["state"] != "queued")
        restarted_at = log.stat().st_size
        proc.send_signal(signal.SIGINT)  # Ctrl-C while the job runs
        assert proc.wait(240) == 0, log.read_text()[-3000:]
        out = log.read_bytes()[restarted_at:].decode(errors="replace")
        assert "draining" in out and "stopped" in out and "still running" not in out, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                _kill_session(proc)
        EmbeddedPostgres(home / "postgres").stop(mode="immediate")
        subprocess.run(["rm", "-rf", str(home)], check=False)
