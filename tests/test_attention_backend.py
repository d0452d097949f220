"""Attention backends: selected per pair or per pool, applied to both transformers, refused with a
clear reason where they cannot run (CPU here; families whose attention the dispatcher does not drive)."""

from __future__ import annotations

import pytest
import torch

from srserve.engine import GenerationRequest, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.families import family_names, get_family
from srserve.engine.families.base import ModelFamily
from srserve.engine.models.attention import AttentionBackendUnavailable, attention_backend_of, check_attention_backend
from srserve.serving.config import PoolConfig, ServingConfig

WAN = get_family("wan2.1")
CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_native_and_math_kernels_run_and_agree(tiny_config) -> None:
    request = GenerationRequest(prompt="a lantern", num_inference_steps=3, switch="fixed:1", seed=4)
    latents = {}
    for backend in ("native", "_native_math"):
        engine = SRDiffusionEngine(tiny_config.model_copy(update={"attention_backend": backend}))
        assert attention_backend_of(engine.sketch_model) == {backend}
        assert attention_backend_of(engine.render_model) == {backend}
        latents[backend] = engine.generate(request, through_bytes=False).latents
    torch.testing.assert_close(latents["_native_math"], latents["native"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["xformers", "flash", "_native_cudnn"])
def test_cuda_kernels_are_refused_on_cpu_before_loading(tiny_config, backend: str) -> None:
    config = tiny_config.model_copy(update={"attention_backend": backend})
    with pytest.raises(AttentionBackendUnavailable, match=f"'{backend}' needs a CUDA device; this process runs on cpu"):
        SRDiffusionEngine(config, roles={Role.RENDER})
    SRDiffusionEngine(config, roles={Role.TEXT})  # no transformer in this process: nothing to refuse


def test_missing_packages_are_named() -> None:
    # On a CUDA device the check reaches diffusers' requirement check; neither package is installed here.
    for backend, package in (("xformers", "xformers"), ("flash", "flash-attn")):
        try:
            __import__(package.replace("-", "_"))
            continue  # installed (a GPU machine): nothing to refuse
        except ImportError:
            pass
        with pytest.raises(AttentionBackendUnavailable, match=f"not installed here.*{package}"):
            check_attention_backend(backend, WAN.name, WAN.attention_backends, CUDA, torch.bfloat16)


def test_flash_kernels_need_half_precision() -> None:
    with pytest.raises(AttentionBackendUnavailable, match="needs bfloat16 or float16"):
        check_attention_backend("flash", WAN.name, WAN.attention_backends, CUDA, torch.float32)


def test_families_declare_their_backends_and_default_to_native_only() -> None:
    assert ModelFamily.attention_backends == frozenset({"native"})
    assert {"native", "xformers", "flash"} <= WAN.attention_backends
    with pytest.raises(AttentionBackendUnavailable, match="not allowed for model family 'cogvideox'"):
        check_attention_backend("xformers", "cogvideox", ModelFamily.attention_backends, CUDA, torch.bfloat16)
    if "cogvideox" in family_names():  # its processor does joint text+video attention with RoPE
        assert "xformers" not in get_family("cogvideox").attention_backends


def test_a_pool_overrides_the_pairs_backend(tiny_config) -> None:
    config = ServingConfig(
        model=tiny_config.model_copy(update={"attention_backend": "_native_math"}),
        render_pool=PoolConfig(attention_backend="native"),
    )
    pair = config.model_pair(write_tiny=False)
    assert config.sketch_pool.model_for(pair).attention_backend == "_native_math"
    assert config.render_pool.model_for(pair).attention_backend == "native"
    with pytest.raises(ValueError, match="attention_backend"):
        PoolConfig(attention_backend="flash_hub")  # hub kernels download code: not offered
    with pytest.raises(ValueError, match="attention_backend"):
        ModelPairConfig(sketch_path="a", render_path="b", attention_backend="eager")


def test_a_pool_overrides_compile(tiny_config) -> None:
    """compile per pool, next to the attention backend: e.g. compile the sketch pool only."""
    config = ServingConfig(model=tiny_config, sketch_pool=PoolConfig(compile=True))
    pair = config.model_pair(write_tiny=False)
    assert config.sketch_pool.model_for(pair).compile is True
    assert config.render_pool.model_for(pair).compile is False
    assert config.render_pool.model_for(pair) is pair  # no override: the pair itself
