"""Planner profiles for the image-to-video pairs on one H200, derived (NOT measured here).

The one published figure: Wan2.1-I2V-14B at 832x480, 81 frames, 40 steps (CFG on) takes 366 s end to
end on one H200 (LightX2V's reported baseline). Everything else is an assumption, stated here and in
each profile's description:
- the H200 has the H100's dense BF16 peak (989 TFLOPS), so text encode and VAE decode cost what the
  derived Wan2.1 profile (profile_wan21_a100_derived.json, H100 kind, equal MFU) says;
- the sketch's image encoding (the VAE encoder over the 81-frame condition video, plus CLIP ViT-H
  once, negligible) costs half a decode: `sketch_overhead_s`;
- so one I2V-14B step = (366 - encode - decode - image encoding) / 40;
- a 36-channel 1.3B (Wan2.1-Fun-1.3B-InP) step is that times the Wan2.1 profile's FLOP-count ratio of
  1.3B to 14B (the 36-channel patch embedding and 257 image tokens in cross-attention change both
  models by a few percent);
- each Wan2.2-I2V-A14B expert is the Wan2.1-14B transformer with 36 input channels and no image
  cross-attention: its step is taken equal to the I2V-14B step. The model's boundary (boundary_ratio
  0.9 with flow_shift 5.0, Wan2.2's I2V-A14B sample shift) gives the high-noise expert the steps with
  t >= 900, recorded as `boundary_switch_step`.
No adaptive-switch figure is published for either, so `adaptive_switch` is empty.

    python benchmarks/derive_i2v_profiles.py --out-dir benchmarks/results
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusers import UniPCMultistepScheduler

from srserve.engine.request import RequestDefaults
from srserve.planner.profile import DeviceKind, Profile, ShapeCosts

WAN21_PROFILE = Path(__file__).resolve().parent / "results" / "profile_wan21_a100_derived.json"
SHAPE = "832x480x81"
STEPS = 40
PUBLISHED_END_TO_END_S = 366.0  # Wan2.1-I2V-14B, 480p, 81 frames, 40 steps, one H200 (LightX2V)
IMAGE_ENCODE_OVER_DECODE = 0.5  # assumption: the VAE encoder over the condition video costs half a decode
CLIP_VIT_H_GIB = 2.36  # 632M parameters in float32, as diffusers' examples load the image encoder
H200 = {"name": "H200", "accelerator_type": "H200", "memory_gib": 141.0, "peak_bf16_tflops": 989.0}
A14B_I2V_BOUNDARY_RATIO = 0.9
A14B_I2V_FLOW_SHIFT = 5.0


def boundary_step(num_steps: int) -> int:
    """Steps WanImageToVideoPipeline gives the high-noise expert: the timesteps t >= boundary_ratio * 1000."""
    sched = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=A14B_I2V_FLOW_SHIFT,
    )
    sched.set_timesteps(num_steps)
    return int((sched.timesteps >= A14B_I2V_BOUNDARY_RATIO * 1000).sum())


def derive(wan21: Profile) -> tuple[Profile, Profile]:
    """(wan2.1-i2v, wan2.2-i2v) profiles from the published H200 figure and the Wan2.1 profile's H100 costs."""
    base = wan21.kinds["H100"].shapes[SHAPE]
    ratio = base.small_step_s / base.large_step_s
    image_encode = IMAGE_ENCODE_OVER_DECODE * base.decode_s
    large_step = (PUBLISHED_END_TO_END_S - base.encode_s - base.decode_s - image_encode) / STEPS
    common = {"encode_s": base.encode_s, "decode_s": base.decode_s, "sketch_overhead_s": image_encode}
    wan21_i2v = ShapeCosts(
        large_step_s=large_step,
        small_step_s=large_step * ratio,
        detail={"step_cost_ratio_small_over_large": ratio, "published_end_to_end_s": PUBLISHED_END_TO_END_S},
        **common,
    )
    k = boundary_step(STEPS)
    wan22_i2v = ShapeCosts(
        large_step_s=large_step,
        small_step_s=large_step,
        detail={"boundary_switch_step": float(k), "steps": float(STEPS)},
        **common,
    )
    memory = dict(wan21.role_memory_gib)
    memory_21 = {**memory, "large": memory["large"] + CLIP_VIT_H_GIB}  # the sketch also holds the CLIP encoder
    memory_22 = {**memory, "small": memory["large"]}  # two 14B experts, no CLIP
    shared = {
        "source": "derived",
        "defaults": RequestDefaults(num_inference_steps=STEPS),
        "delays": wan21.delays,
        "adaptive_switch": {},
        "measured_at": {"source": "derived: published H200 figure (LightX2V) and profile_wan21_a100_derived.json"},
    }
    first = Profile(
        description=(
            f"DERIVED, not measured: Wan2.1-I2V-14B -> a 36-channel 1.3B (Fun-1.3B-InP) on one H200, from the one "
            f"published figure ({PUBLISHED_END_TO_END_S:.0f} s end to end for I2V-14B, 832x480x81, 40 steps); "
            f"encode and decode from the Wan2.1 profile's H100 (same BF16 peak), the image encoding as "
            f"{IMAGE_ENCODE_OVER_DECODE} of a decode (sketch overhead), the 1.3B step by the Wan2.1 FLOP ratio "
            f"{ratio:.3f}. No adaptive-switch figure. See benchmarks/derive_i2v_profiles.py."
        ),
        model_pair="wan2.1-i2v",
        kinds={"H200": DeviceKind(**H200, shapes={SHAPE: wan21_i2v})},
        role_memory_gib=memory_21,
        **shared,
    )
    second = Profile(
        description=(
            "DERIVED, not measured: Wan2.2-I2V-A14B as two expert pools on H200s; each expert step taken equal to "
            "the derived Wan2.1-I2V-14B step (the same 14B transformer with 36 input channels, without image "
            f"cross-attention). Model boundary: {k} of {STEPS} steps on the high-noise expert (boundary_ratio 0.9, "
            f"flow_shift 5.0): plan with --switch fixed:{k}. See benchmarks/derive_i2v_profiles.py."
        ),
        model_pair="wan2.2-i2v",
        kinds={"H200": DeviceKind(**H200, shapes={SHAPE: wan22_i2v})},
        role_memory_gib=memory_22,
        **shared,
    )
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    for profile in derive(Profile.read(WAN21_PROFILE)):
        name = profile.model_pair.replace(".", "").replace("-", "_")
        path = profile.write(args.out_dir / f"profile_{name}_h200_derived.json")
        costs = profile.kinds["H200"].shapes[SHAPE]
        print(f"{profile.model_pair}: large step {costs.large_step_s:.2f}s, small {costs.small_step_s:.2f}s -> {path}")


if __name__ == "__main__":
    main()
