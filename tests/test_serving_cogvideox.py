"""The tiny CogVideoX pair served end to end through the sketch and render pools, unchanged serving code."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.engine.tiny import write_tiny_cogvideox_pair
from srserve.engine.video import read_mp4
from tests.serving_helpers import get, post, wait_state


@pytest.fixture(scope="module")
def cogvideox_pair(tmp_path_factory: pytest.TempPathFactory) -> ModelPairConfig:
    root: Path = tmp_path_factory.mktemp("tiny-cogvideox-serving")
    write_tiny_cogvideox_pair(root)  # the default tiny pair: DPM-Solver++, stochastic
    return ModelPairConfig.tiny_cogvideox(root, num_threads=1)


@pytest.mark.slow
def test_cogvideox_pair_served_through_the_pools(serving, cogvideox_pair: ModelPairConfig, tmp_path: Path) -> None:
    """A second app on the session's cluster serving CogVideoX; the video equals the in-process engine's."""
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import PoolConfig, ServingConfig

    pool = PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    config = ServingConfig(app_name="cogvideox", model=cogvideox_pair, sketch_pool=pool, render_pool=pool)
    serve.run(build_app(config), name="cogvideox", route_prefix="/cogvideox")
    try:
        base = serving.http + "/cogvideox"
        body = {
            "prompt": "a koi pond",
            "negative_prompt": "blur",
            "num_inference_steps": 8,
            "switch": "fixed:3",
            "seed": 11,
        }
        jobs = [post(base, "/v1/videos", json={**body, "seed": seed}).json() for seed in (11, 12)]
        done = [wait_state(base, job["id"]) for job in jobs]
        assert [d["status"] for d in done] == ["completed", "completed"], done
        assert done[0]["srserve"]["switch_step"] == 3 and done[0]["srserve"]["handoff_bytes"] > 0
        served_mp4 = get(base, f"/v1/videos/{jobs[0]['id']}/content").content
        (tmp_path / "koi.mp4").write_bytes(served_mp4)
        assert read_mp4(tmp_path / "koi.mp4").shape == (9, 64, 64, 3)

        torch.set_num_threads(1)
        local = SRDiffusionEngine(cogvideox_pair).generate(GenerationRequest(**body))
        digest = hashlib.sha256(local.latents.float().contiguous().numpy().tobytes()).hexdigest()
        assert done[0]["srserve"]["latents_sha256"] == digest
        assert done[1]["srserve"]["latents_sha256"] != digest
        assert served_mp4 == local.video
    finally:
        serve.delete("cogvideox")
