"""A planner profile for Wan2.1 derived from published figures (NOT measured here).

Source (docs/algorithm.md): a third-party reproduction on 1x A100, 832x480, 81 frames, 50 steps:
14B alone 948 s, 1.3B alone 192 s, SRDiffusion 344 s. With the per-step cost ratio of the two
transformers taken from their FLOP counts (srserve.profiling.flops, ~0.169 at 480p):
    50 L + O = 948,   50 r L + O = 192   ->   L (14B step), S = r L (1.3B step), O (fixed cost)
and SRDiffusion's 344 s implies the adaptive switch lands at k = (344 - 192) / (L - S) ~ 10.
O (everything that is not a denoising step) is split into text encode (umT5 FLOPs at 40% of
the A100 peak) and decode + export + the rest (the remainder, charged to the render side).
720p scales each step by its FLOP ratio and decode by the pixel ratio. Other GPU kinds scale
every compute time by the A100/kind dense-BF16 peak ratio (equal-MFU assumption). Memory per
role: parameter bytes (exact, from the configs) plus an activation allowance (an estimate).

    python benchmarks/derive_wan21_profile.py --out benchmarks/results/profile_wan21_a100_derived.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from srserve.engine.request import RequestDefaults
from srserve.planner.profile import Delays, DeviceKind, Profile, ShapeCosts, shape_key
from srserve.profiling.flops import PEAK_BF16_TFLOPS, transformer_forward_flops, umt5_encoder_flops
from srserve.profiling.wan_sizes import WAN21

PUBLISHED = {"large_only_s": 948.0, "small_only_s": 192.0, "srdiffusion_s": 344.0, "steps": 50}
# kind -> (memory GiB, Ray accelerator type)
KINDS = {"A100": (80.0, "A100"), "H100": (80.0, "H100"), "L40S": (48.0, "L40S"), "A10G": (24.0, "A10G")}
ACTIVATION_ALLOWANCE_GIB = {"large": 10.0, "small": 6.0, "text_encoder": 1.0, "vae": 10.0}


def param_gib(build) -> float:
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters()) * 2 / (1 << 30)  # bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    n = PUBLISHED["steps"]
    s480, s720 = WAN21.shapes
    flops = {
        (role, s.name): transformer_forward_flops(getattr(WAN21, role), s.width, s.height, s.num_frames, 512)
        for role in ("large", "small")
        for s in (s480, s720)
    }
    r = flops[("small", "480p")] / flops[("large", "480p")]
    large = (PUBLISHED["large_only_s"] - PUBLISHED["small_only_s"]) / (n * (1 - r))
    small = r * large
    fixed = PUBLISHED["large_only_s"] - n * large
    k_implied = (PUBLISHED["srdiffusion_s"] - PUBLISHED["small_only_s"]) / (large - small)
    encode = 2 * umt5_encoder_flops(WAN21.text_encoder, 512) / (0.4 * PEAK_BF16_TFLOPS["A100"] * 1e12)
    decode = fixed - encode
    pixels = (s720.width * s720.height) / (s480.width * s480.height)
    a100 = {
        shape_key(s480.width, s480.height, s480.num_frames): ShapeCosts(
            encode_s=encode,
            large_step_s=large,
            small_step_s=small,
            decode_s=decode,
            detail={"step_cost_ratio_small_over_large": r, "implied_switch_step": k_implied},
        ),
        shape_key(s720.width, s720.height, s720.num_frames): ShapeCosts(
            encode_s=encode,
            large_step_s=large * flops[("large", "720p")] / flops[("large", "480p")],
            small_step_s=small * flops[("small", "720p")] / flops[("small", "480p")],
            decode_s=decode * pixels,
        ),
    }
    kinds = {}
    for kind, (mem, accel) in KINDS.items():
        scale = PEAK_BF16_TFLOPS["A100"] / PEAK_BF16_TFLOPS[kind]
        shapes = {
            key: c.model_copy(
                update={
                    "encode_s": c.encode_s * scale,
                    "large_step_s": c.large_step_s * scale,
                    "small_step_s": c.small_step_s * scale,
                    "decode_s": c.decode_s * scale,
                }
            )
            for key, c in a100.items()
        }
        kinds[kind] = DeviceKind(
            name=kind, accelerator_type=accel, memory_gib=mem, peak_bf16_tflops=PEAK_BF16_TFLOPS[kind], shapes=shapes
        )
    weights = {
        "large": param_gib(lambda: WanTransformer3DModel(**WAN21.large)),
        "small": param_gib(lambda: WanTransformer3DModel(**WAN21.small)),
        "text_encoder": param_gib(lambda: UMT5EncoderModel(UMT5Config(**WAN21.text_encoder))),
        "vae": param_gib(lambda: AutoencoderKLWan(**WAN21.vae)) * 2,  # the VAE runs in float32
    }
    k_lo = int(k_implied)
    frac = k_implied - k_lo
    profile = Profile(
        source="derived",
        description=(
            "DERIVED, not measured: Wan2.1 T2V on 1x A100 from published end-to-end times (14B 948 s, 1.3B 192 s, "
            f"SRDiffusion 344 s at 832x480x81, 50 steps) with the FLOP-count step ratio {r:.3f}; other kinds "
            "scaled by dense-BF16 peak (equal MFU); 720p by FLOPs/pixels; memory = weights + an activation "
            "allowance. See benchmarks/derive_wan21_profile.py."
        ),
        model_pair="wan2.1",
        defaults=RequestDefaults(),
        kinds=kinds,
        delays=Delays(dispatch_s=0.05, handoff_s=0.2, completion_s=0.05),
        role_memory_gib={k: round(v + ACTIVATION_ALLOWANCE_GIB[k], 2) for k, v in weights.items()},
        adaptive_switch={n: {k_lo: round(1 - frac, 3), k_lo + 1: round(frac, 3)}},
        measured_at={"source": "docs/algorithm.md published figures (third-party reproduction, 1x A100)"},
    )
    path = profile.write(args.out)
    print(
        f"14B step {large:.2f}s, 1.3B step {small:.2f}s (ratio {r:.3f}), fixed {fixed:.1f}s "
        f"(encode {encode:.2f}s), implied switch k {k_implied:.2f}; weights GiB {weights}"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
