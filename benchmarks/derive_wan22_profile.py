"""A planner profile for Wan2.2-T2V-A14B as two expert pools, derived (NOT measured here).

Each A14B expert (high noise: the sketch, low noise: the render) has exactly the Wan2.1-T2V-14B
transformer config (40 layers, 40 heads x 128, ffn 13824, text_dim 4096), and the pair uses the
Wan2.1 VAE and the umT5-XXL encoder. So every stage costs what it costs in the derived Wan2.1
profile (profile_wan21_a100_derived.json, itself from published A100 end-to-end times): a step of
either expert is that profile's 14B step (this script checks the FLOP counts are equal), encode and
decode are unchanged. Two equal-size pools: small_step_s = large_step_s, and each pool holds one
14B expert (memory: the 14B role's weights + allowance), so both experts with umT5 and the VAE need
more than one 80 GB GPU while one expert per GPU fits.

Wan2.2's defaults are 40 steps; the model's own switch (boundary_ratio 0.875, the UniPC flow_shift
3.0 schedule of the Diffusers checkpoint) gives the high-noise expert the steps with t >= 875: 13
of 40 (16 of 50), recorded per shape as `boundary_switch_step` (use `--switch fixed:13`). There is
no published adaptive-switch figure for Wan2.2, so `adaptive_switch` is left empty.

    python benchmarks/derive_wan22_profile.py --out benchmarks/results/profile_wan22_a100_derived.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusers import UniPCMultistepScheduler

from srserve.engine.request import RequestDefaults
from srserve.planner.profile import DeviceKind, Profile
from srserve.profiling.flops import transformer_forward_flops
from srserve.profiling.wan_sizes import WAN21

WAN21_PROFILE = Path(__file__).resolve().parent / "results" / "profile_wan21_a100_derived.json"
STEPS = 40  # Wan2.2-T2V-A14B's sample_steps
BOUNDARY_RATIO = 0.875  # its model_index.json
FLOW_SHIFT = 3.0  # its Diffusers scheduler config
# Both A14B experts' transformer config, as the diffusers conversion of Wan2.2-T2V-A14B writes it.
A14B_EXPERT = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}


def boundary_step(num_steps: int) -> int:
    """Steps WanPipeline gives the high-noise expert: the timesteps t >= boundary_ratio * 1000."""
    sched = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=FLOW_SHIFT
    )
    sched.set_timesteps(num_steps)
    return int((sched.timesteps >= BOUNDARY_RATIO * 1000).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    wan21 = Profile.read(WAN21_PROFILE)
    assert WAN21.large == A14B_EXPERT, "the A14B expert is no longer the Wan2.1-14B transformer"
    for shape in WAN21.shapes:
        expert = transformer_forward_flops(A14B_EXPERT, shape.width, shape.height, shape.num_frames, 512)
        wan21_14b = transformer_forward_flops(WAN21.large, shape.width, shape.height, shape.num_frames, 512)
        assert expert == wan21_14b, (shape.name, expert, wan21_14b)
    k = boundary_step(STEPS)
    kinds = {}
    for name, kind in wan21.kinds.items():
        shapes = {}
        for key, costs in kind.shapes.items():
            shapes[key] = costs.model_copy(
                update={
                    "small_step_s": costs.large_step_s,  # the low-noise expert is as large as the high-noise one
                    "detail": {"boundary_switch_step": float(k), "steps": float(STEPS)},
                }
            )
        kinds[name] = DeviceKind(
            name=kind.name,
            accelerator_type=kind.accelerator_type,
            memory_gib=kind.memory_gib,
            peak_bf16_tflops=kind.peak_bf16_tflops,
            shapes=shapes,
        )
    memory = dict(wan21.role_memory_gib)
    memory["small"] = memory["large"]
    profile = Profile(
        source="derived",
        description=(
            "DERIVED, not measured: Wan2.2-T2V-A14B as two expert pools. Each expert has the Wan2.1-T2V-14B "
            "transformer config (equal FLOPs, checked), so every stage cost is profile_wan21_a100_derived.json's "
            "(from published A100 end-to-end times) with the render (low-noise) step = the 14B step and the "
            f"render memory = the 14B role's. Model boundary: {k} of {STEPS} steps on the high-noise expert "
            "(boundary_ratio 0.875, flow_shift 3.0): plan with --switch fixed:13. No adaptive-switch figure. "
            "See benchmarks/derive_wan22_profile.py."
        ),
        model_pair="wan2.2",
        defaults=RequestDefaults(num_inference_steps=STEPS),
        kinds=kinds,
        delays=wan21.delays,
        role_memory_gib=memory,
        adaptive_switch={},
        measured_at={"source": "derived from profile_wan21_a100_derived.json (published A100 figures)"},
    )
    path = profile.write(args.out)
    a100 = kinds["A100"].shapes["832x480x81"]
    print(f"expert step {a100.large_step_s:.2f}s on A100 at 480p; boundary {k} of {STEPS}; memory {memory}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
