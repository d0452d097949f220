"""Deploy paths: the Serve config file, the text-encoder pool placement, `srserve serve` with Ctrl-C drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from ray.serve.schema import ServeDeploySchema

from srserve.serving.app import app_builder
from srserve.serving.config import DeployFile, PoolConfig, ServingConfig
from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_yaml_is_a_valid_serve_config_and_an_srserve_config() -> None:
    raw = yaml.safe_load((ROOT / "deploy" / "tiny.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.applications[0].import_path == "srserve.serving.app:app_builder"
    spec = DeployFile.from_yaml(ROOT / "deploy" / "tiny.yaml")
    assert (spec.http_port, spec.grpc_port, spec.serving.app_name) == (8000, 9000, "srserve")
    assert spec.serving.sketch_pool.num_replicas == 1 and spec.serving.render_pool.num_replicas == 1
    app = app_builder(raw["applications"][0]["args"])
    assert type(app).__name__ == "Application"


def test_bad_config_is_refused_by_field(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nsketch_pool: {num_replicas: 0}\n")
    with pytest.raises(ValueError, match="num_replicas"):
        DeployFile.from_yaml(bad)
    bad.write_text("model: tiny\ntext_encoder_placement: gpu9\n")
    with pytest.raises(ValueError, match="text_encoder_placement"):
        DeployFile.from_yaml(bad)


@pytest.mark.slow
def test_text_encoder_in_its_own_pool(serving, tiny_config) -> None:
    """A second app on the same cluster with the text encoder placement `pool`; results match."""
    from ray import serve

    from srserve.serving.app import build_app

    config = ServingConfig(
        app_name="textpool",
        model=tiny_config.model_copy(update={"num_threads": 1}),
        text_encoder_placement="pool",
        text_pool=PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 0.25}),
    )
    serve.run(build_app(config), name="textpool", route_prefix="/textpool")
    try:
        body = {
            "prompt": "a koi pond",
            "negative_prompt": "blur",
            "num_inference_steps": 8,
            "switch": "fixed:3",
            "seed": 11,
        }
        base = serving.http + "/textpool/v1/videos"
        job = requests.post(base, json=body, timeout=30).json()
        for _ in range(600):
            done = requests.get(f"{base}/{job['id']}", timeout=30).json()
            if done["status"] in ("completed", "failed"):
                break
            time.sleep(0.1)
        assert done["status"] == "completed", done
        assert "encode" in done["srserve"]["replicas"]  # encoded on the text pool
        reference = requests.post(serving.http + "/v1/videos", json=body, timeout=30).json()
        for _ in range(600):
            ref = requests.get(f"{serving.http}/v1/videos/{reference['id']}", timeout=30).json()
            if ref["status"] in ("completed", "failed"):
                break
            time.sleep(0.1)
        assert done["srserve"]["latents_sha256"] == ref["srserve"]["latents_sha256"]
    finally:
        serve.delete("textpool")


@pytest.mark.slow
def test_srserve_serve_runs_until_ctrl_c_and_drains(tmp_path, tiny_root) -> None:
    http, grpc_port = _free_port(), _free_port()
    raw = yaml.safe_load((ROOT / "deploy" / "tiny.yaml").read_text())
    raw["http_options"]["port"], raw["grpc_options"]["port"] = http, grpc_port
    raw["applications"][0]["args"]["model"] = {
        "sketch_path": str(tiny_root / "sketch"),
        "render_path": str(tiny_root / "render"),
        "name": "tiny-wan2.1",
        "device": "cpu",
        "num_threads": 1,
        "defaults": {"height": 64, "width": 64, "num_frames": 17, "num_inference_steps": 20},
    }
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "srserve.cli.main", "serve", str(config), "--num-cpus", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "srserve is up" in line:
                break
        assert any("srserve is up" in line for line in lines), "".join(lines[-30:])
        base = f"http://127.0.0.1:{http}/v1/videos"
        job = requests.post(
            base, json={"prompt": "drain me", "num_inference_steps": 30, "switch": "fixed:10"}, timeout=30
        ).json()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while the job runs
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out
        assert "draining" in out and "stopped" in out and "still running" not in out
        assert job["id"].startswith("video_")
    finally:
        if proc.poll() is None:
            proc.kill()
