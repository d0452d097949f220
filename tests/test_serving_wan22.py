"""The Wan2.2 cross pair served end to end through the sketch and render pools, unchanged serving code:
the tiny A14B high-noise expert sketches, the tiny Wan2.1 small model renders; a handoff that does not
fit the render model is refused at request time, naming the misfit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from srserve.engine import GenerationRequest, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.tiny import write_tiny_wan22_pair
from srserve.engine.video import read_mp4
from tests.serving_helpers import get, post, wait_state


@pytest.fixture(scope="module")
def cross_pair(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> ModelPairConfig:
    root: Path = tmp_path_factory.mktemp("tiny-wan22-serving")
    write_tiny_wan22_pair(root)  # the A14B-shaped folder; its umT5 and VAE are the tiny Wan2.1 pair's
    return ModelPairConfig.tiny_wan22(
        root, name="tiny-wan2.2-wan2.1", render_path=str(tiny_root / "render"), guidance_scale_2=3.0, num_threads=1
    )


@pytest.mark.slow
def test_wan22_cross_pair_served_through_the_pools(serving, cross_pair: ModelPairConfig, tmp_path: Path) -> None:
    """A second app on the session's cluster serving the cross pair; the video equals the in-process engine's."""
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import PoolConfig, ServingConfig

    pool = PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    config = ServingConfig(app_name="wan22", model=cross_pair, sketch_pool=pool, render_pool=pool)
    serve.run(build_app(config), name="wan22", route_prefix="/wan22")
    try:
        base = serving.http + "/wan22"
        body = {
            "prompt": "a koi pond",
            "negative_prompt": "blur",
            "num_inference_steps": 8,
            "guidance_scale": 4.0,
            "switch": "fixed:3",  # the model's boundary for 8 steps
            "seed": 11,
        }
        jobs = [post(base, "/v1/videos", json={**body, "seed": seed}).json() for seed in (11, 12)]
        done = [wait_state(base, job["id"]) for job in jobs]
        assert [d["status"] for d in done] == ["completed", "completed"], done
        assert done[0]["srserve"]["switch_step"] == 3 and done[0]["srserve"]["handoff_bytes"] > 0
        unset = {k: v for k, v in body.items() if k != "switch"}
        default = wait_state(base, post(base, "/v1/videos", json=unset).json()["id"])
        assert default["srserve"]["switch_step"] == 3  # no switch given: the model's own boundary
        assert default["srserve"]["latents_sha256"] == done[0]["srserve"]["latents_sha256"]
        served_mp4 = get(base, f"/v1/videos/{jobs[0]['id']}/content").content
        (tmp_path / "koi.mp4").write_bytes(served_mp4)
        assert read_mp4(tmp_path / "koi.mp4").shape == (17, 64, 64, 3)

        torch.set_num_threads(1)
        local = SRDiffusionEngine(cross_pair).generate(GenerationRequest(**body))
        digest = hashlib.sha256(local.latents.float().contiguous().numpy().tobytes()).hexdigest()
        assert done[0]["srserve"]["latents_sha256"] == digest
        assert done[1]["srserve"]["latents_sha256"] != digest
        assert served_mp4 == local.video

        # Request time: an uploaded handoff with a TI2V-5B-shaped latent (48 channels) does not fit.
        sketcher = SRDiffusionEngine(cross_pair, roles={Role.TEXT, Role.SKETCH})
        request = sketcher.resolve(GenerationRequest(**body))
        state = sketcher.sketch(request, sketcher.encode(request))
        state.latents = torch.randn(1, 48, 5, 4, 4)
        blob = state.to_bytes()
        upload = post(base, "/v1/handoffs", data=blob, headers={"content-type": "application/octet-stream"})
        assert upload.status_code == 400, upload.text  # refused before it queues, naming the misfit
        error = upload.json()["error"]
        assert error["param"] == "handoff" and "handoff does not fit this render model" in error["message"], error
        assert "this render model takes [1, 16, 5, 8, 8]" in error["message"], error
    finally:
        serve.delete("wan22")


def test_incompatible_pair_is_refused_at_config_load(cross_pair: ModelPairConfig, tmp_path_factory) -> None:
    """Building the app with a TI2V-5B-shaped render model (48 latent channels) fails, naming what differs."""
    from srserve.engine.families.base import IncompatiblePairError
    from srserve.engine.tiny import write_tiny_wan22_ti2v
    from srserve.serving.app import build_app
    from srserve.serving.config import ServingConfig

    ti2v = write_tiny_wan22_ti2v(tmp_path_factory.mktemp("tiny-ti2v-serving"))
    bad = cross_pair.model_copy(update={"render_path": str(ti2v)})
    with pytest.raises(IncompatiblePairError, match="latent"):
        build_app(ServingConfig(app_name="wan22_bad", model=bad))
