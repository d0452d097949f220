"""The GPU stage profiler, run on the CPU with its scaled-down preset (same code path as on CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from srserve.planner.profile import Profile
from srserve.planner.simulator import ClusterLayout, PoolSpec, simulate
from srserve.profiling.flops import (
    device_peak_tflops,
    transformer_forward_flops,
    umt5_encoder_flops,
    vace_extra_flops,
)
from srserve.profiling.gpu_stages import build_text_encoder, build_transformer, latent_shape, run_gpu_profile
from srserve.profiling.wan_sizes import TINY, WAN21, WAN21_VACE
from srserve.workload.arrivals import PoissonArrivals
from srserve.workload.mix import RequestMix
from srserve.workload.stats import summarize


@pytest.mark.parametrize("role", ["large", "small"])
def test_analytic_transformer_flops_match_torchs_counter(role: str) -> None:
    config = TINY.large if role == "large" else TINY.small
    model = build_transformer(config, torch.device("cpu"), torch.float32)
    shape = TINY.shapes[1]
    x = torch.randn(latent_shape(shape))
    ctx = torch.randn(1, TINY.text_tokens, config["text_dim"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=ctx, return_dict=False)
    analytic = transformer_forward_flops(config, shape.width, shape.height, shape.num_frames, TINY.text_tokens)
    # The analytic count leaves out the small time-embedding MLPs; it must cover the matmuls.
    assert analytic == pytest.approx(counter.get_total_flops(), rel=0.15)


def test_analytic_umt5_flops_match_torchs_counter() -> None:
    encoder = build_text_encoder(TINY.text_encoder, torch.device("cpu"), torch.float32)
    ids = torch.randint(2, 300, (1, TINY.text_tokens))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(ids, torch.ones_like(ids))
    assert umt5_encoder_flops(TINY.text_encoder, TINY.text_tokens) == pytest.approx(counter.get_total_flops(), rel=0.1)


def test_real_size_configs_and_flops() -> None:
    """Real-size 14B / 1.3B on the meta device: parameter counts, and the analytic FLOPs at 480p
    against torch's counter (no memory, no compute)."""
    from diffusers import WanTransformer3DModel

    s480 = WAN21.shapes[0]
    counted = {}
    for role, params in (("large", 14.0e9), ("small", 1.42e9)):
        config = getattr(WAN21, role)
        with torch.device("meta"):
            model = WanTransformer3DModel(**config)
            x, ctx = torch.randn(latent_shape(s480)), torch.randn(1, 512, 4096)
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.05)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(
                hidden_states=x,
                timestep=torch.tensor([500.0], device="meta"),
                encoder_hidden_states=ctx,
                return_dict=False,
            )
        analytic = transformer_forward_flops(config, s480.width, s480.height, s480.num_frames, 512)
        assert analytic == pytest.approx(counter.get_total_flops(), rel=0.01)
        counted[role] = analytic
    assert 0.15 < counted["small"] / counted["large"] < 0.2  # docs/algorithm.md: a 1.3B step ~0.2 of a 14B step
    assert device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device_peak_tflops("Some CPU") is None


def test_real_size_vace_flops() -> None:
    """Wan2.1-VACE-14B / 1.3B on the meta device: the T2V forward plus the VACE blocks' FLOPs (vace_extra_flops)
    against torch's counter with a VACE context, and the VACE blocks' share of the parameters."""
    from diffusers import WanVACETransformer3DModel

    s480 = WAN21.shapes[0]
    for role, blocks, params in (("large", 8, 17.3e9), ("small", 15, 2.15e9)):
        config = WAN21_VACE[role]
        assert len(config["vace_layers"]) == blocks
        with torch.device("meta"):
            model = WanVACETransformer3DModel(**config)
            x, ctx = torch.randn(latent_shape(s480)), torch.randn(1, 512, 4096)
            vace = torch.randn(1, 96, *latent_shape(s480)[2:])
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.05)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(
                hidden_states=x,
                timestep=torch.tensor([500.0], device="meta"),
                encoder_hidden_states=ctx,
                control_hidden_states=vace,
                return_dict=False,
            )
        shape = (s480.width, s480.height, s480.num_frames, 512)
        analytic = transformer_forward_flops(config, *shape) + vace_extra_flops(config, *shape)
        assert analytic == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_profiler_runs_on_cpu_and_feeds_the_planner() -> None:
    profile = run_gpu_profile(
        TINY, torch.device("cpu"), dtype=torch.float32, warmup=0, iters=1, shapes=["small"], log=lambda _msg: None
    )
    assert profile.source == "measured" and len(profile.kinds) == 1
    kind = next(iter(profile.kinds))
    costs = profile.costs(kind, 32, 32, 5)
    d = costs.detail
    for key in (
        "large_step_cfg_sequential_s",
        "large_step_cfg_batched_s",
        "large_step_no_cfg_s",
        "small_step_cfg_sequential_s",
        "vae_decode_s",
        "export_s",
        "text_encode_s",
        "large_step_cfg_sequential_tflops",
    ):
        assert d[key] > 0, key
    assert costs.large_step_s == d["large_step_cfg_sequential_s"]
    assert costs.encode_s == pytest.approx(2 * d["text_encode_s"])
    assert set(profile.role_memory_gib) == {"large", "small", "vae", "text_encoder"}
    again = Profile.model_validate_json(profile.model_dump_json())
    cluster = ClusterLayout(
        layout="disaggregated", sketch=PoolSpec(kind=kind, replicas=1), render=PoolSpec(kind=kind, replicas=1)
    )
    recs = simulate(
        again, cluster, PoissonArrivals(rate=0.1), RequestMix.single(switch="fixed:2"), again.defaults, max_requests=20
    )
    assert summarize(recs).completed == 20
