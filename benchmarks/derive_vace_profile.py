"""A planner profile for the Wan2.1 VACE pair (VACE-14B sketches, VACE-1.3B renders), derived (NOT measured).

No end-to-end time of either VACE model is published that this project could check, so every cost here
comes from the derived Wan2.1 text-to-video profile (profile_wan21_a100_derived.json, itself derived from
published A100 figures) and stated assumptions:
- a VACE model is its T2V transformer plus VACE blocks (diffusers' WanVACETransformer3DModel): the 14B
  has 8 (layers 0, 5, ..., 35), the 1.3B 15 (layers 0, 2, ..., 28), each a full transformer block over the
  video's tokens plus a d x d projection, and a patch embedding of the 96-channel context
  (srserve.profiling.flops.vace_extra_flops). Each step costs the T2V profile's step times the FLOP
  ratio (VACE forward / T2V forward) of its model at that shape: equal MFU, as the T2V profile assumes
  across models;
- the sketch side encodes the conditioning video once per request with the VAE encoder, twice over
  (WanVACEPipeline.prepare_video_latents encodes the kept part `video * (1 - mask)` and the regenerated
  part `video * mask`); as derive_i2v_profiles.py assumes for the I2V condition video, one encoder pass
  over a video costs half a decode: `sketch_overhead_s` = 2 x 0.5 x decode. A request without a video
  pays it too (the pipeline encodes black frames);
- text encoding and decode as in the T2V profile; reference images (one latent frame each, a few percent
  more tokens per step) are not in the shapes: the costs are for a video (or first frame) and mask only;
- memory per role: the T2V profile's plus the VACE blocks' bfloat16 weights (parameter counts of the
  real-size configs on the meta device).
No adaptive-switch figure exists for VACE, so `adaptive_switch` is empty: plan with a fixed switch.

    python benchmarks/derive_vace_profile.py --out benchmarks/results/profile_wan21_vace_derived.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from srserve.planner.profile import Profile, ShapeCosts
from srserve.profiling.flops import transformer_forward_flops, vace_extra_flops
from srserve.profiling.wan_sizes import WAN21, WAN21_VACE

RESULTS = Path(__file__).resolve().parent / "results"
WAN21_PROFILE = RESULTS / "profile_wan21_a100_derived.json"
OUT_NAME = "profile_wan21_vace_derived.json"
VAE_ENCODES = 2  # the kept and the regenerated part of the conditioning video
ENCODE_OVER_DECODE = 0.5  # assumption (as derive_i2v_profiles.py): one VAE encoder pass costs half a decode


def shape_of(key: str) -> tuple[int, int, int]:
    """(width, height, num_frames) of a profile's shape key `WxHxF`."""
    width, height, frames = (int(x) for x in key.split("x"))
    return width, height, frames


def step_ratio(role: str, key: str) -> float:
    """A VACE model's forward FLOPs over its T2V model's at one shape (512 text tokens, as served)."""
    shape = (*shape_of(key), WAN21.text_tokens)
    base = transformer_forward_flops(getattr(WAN21, role), *shape)
    return (base + vace_extra_flops(WAN21_VACE[role], *shape)) / base


def vace_weights_gib() -> dict[str, float]:
    """The VACE blocks' and context embedding's bfloat16 weights per role (real-size configs, meta device)."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    def params(cls: type, config: dict) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in cls(**config).parameters())

    return {
        role: (
            params(WanVACETransformer3DModel, WAN21_VACE[role]) - params(WanTransformer3DModel, getattr(WAN21, role))
        )
        * 2
        / (1 << 30)
        for role in ("large", "small")
    }


def vace_costs(costs: ShapeCosts, key: str) -> ShapeCosts:
    large, small = step_ratio("large", key), step_ratio("small", key)
    return ShapeCosts(
        encode_s=costs.encode_s,
        large_step_s=costs.large_step_s * large,
        small_step_s=costs.small_step_s * small,
        decode_s=costs.decode_s,
        sketch_overhead_s=VAE_ENCODES * ENCODE_OVER_DECODE * costs.decode_s,
        detail={"step_flop_ratio_large_vace_over_t2v": large, "step_flop_ratio_small_vace_over_t2v": small},
    )


def derive(base: Profile, extra_gib: dict[str, float]) -> Profile:
    """The VACE pair's profile from the T2V one: every kind and shape, steps by FLOP ratio, the VAE encoding
    as sketch overhead, the VACE weights added to the models' memory."""
    kinds = {
        name: kind.model_copy(update={"shapes": {key: vace_costs(c, key) for key, c in kind.shapes.items()}})
        for name, kind in base.kinds.items()
    }
    memory = dict(base.role_memory_gib)
    for role, gib in extra_gib.items():
        memory[role] = round(memory[role] + gib, 2)
    first = kinds["A100"].shapes["832x480x81"]
    return Profile(
        source="derived",
        description=(
            "DERIVED, not measured: Wan2.1-VACE-14B -> Wan2.1-VACE-1.3B, from the derived Wan2.1 T2V profile "
            f"(profile_wan21_a100_derived.json): each step times its model's FLOP ratio with the VACE blocks (8 in "
            f"the 14B, 15 in the 1.3B; at 832x480x81 x{first.detail['step_flop_ratio_large_vace_over_t2v']:.3f} "
            f"and x{first.detail['step_flop_ratio_small_vace_over_t2v']:.3f}), the conditioning video's two VAE "
            f"encodes as sketch overhead ({ENCODE_OVER_DECODE} of a decode each), encode and decode as T2V, "
            "memory plus the VACE weights. No reference images in the shapes; no adaptive-switch figure. "
            "See benchmarks/derive_vace_profile.py."
        ),
        model_pair="wan2.1-vace",
        defaults=base.defaults,
        kinds=kinds,
        delays=base.delays,
        role_memory_gib=memory,
        adaptive_switch={},
        measured_at={"source": "derived: profile_wan21_a100_derived.json and the VACE blocks' FLOPs"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / OUT_NAME)
    args = parser.parse_args()
    extra = vace_weights_gib()
    profile = derive(Profile.read(WAN21_PROFILE), extra)
    path = profile.write(args.out)
    for kind in profile.kinds.values():
        for key, c in kind.shapes.items():
            print(
                f"{kind.name} {key}: 14B VACE step {c.large_step_s:.2f}s, 1.3B VACE step {c.small_step_s:.2f}s, "
                f"VAE encode (sketch overhead) {c.sketch_overhead_s:.1f}s"
            )
    print(f"VACE weights GiB: {', '.join(f'{r} +{g:.2f}' for r, g in extra.items())} -> {path}")


if __name__ == "__main__":
    main()
