"""A planner profile for a few-step (step- and CFG-distilled) Wan2.1-I2V pair on one H200, derived (NOT measured).

Published figures (LightX2V, one H200, Wan2.1-I2V-14B, 832x480, 81 frames): 366 s end to end at 40 steps
with CFG, 14 s with the distilled 4-step, guidance-1 model. The derivation starts from the derived
I2V profile (profile_wan21_i2v_h200_derived.json, itself from the 366 s figure) and changes only what the
schedule changes:
- 4 steps instead of 40, guidance 1: one transformer forward per step instead of two, so each step costs
  half that profile's CFG step (both models; attention and the MLPs are per forward);
- text encoding, image encoding and VAE decode as in that profile (the schedule does not change them).
That gives about 36 s end to end, well above the published 14 s: LightX2V's distilled run also changes
what this profile cannot split off (its own VAE and attention kernels, quantisation), so the derived
profile is conservative, and the 14 s is recorded beside it (`detail`), not used. The pair's defaults are
the few-step schedule (4 euler steps at [1000, 750, 500, 250], shift 5, guidance 1). No adaptive-switch
figure: at 4 steps `adaptive` is `fixed:2` (docs/engine.md, "Few-step schedules"); plan with fixed:1 or 2.

    python benchmarks/derive_few_step_profile.py --out-dir benchmarks/results
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srserve.engine.request import RequestDefaults
from srserve.planner.profile import Profile, ShapeCosts

I2V_PROFILE = Path(__file__).resolve().parent / "results" / "profile_wan21_i2v_h200_derived.json"
SHAPE = "832x480x81"
STEPS = 4
TIMESTEPS = [1000, 750, 500, 250]
SHIFT = 5.0
PUBLISHED_FEW_STEP_S = 14.0  # Wan2.1-I2V-14B distilled, 4 steps, guidance 1, 480p, 81 frames, one H200 (LightX2V)
PUBLISHED_CFG_40_S = 366.0  # the same model and shape, 40 steps with CFG (LightX2V's baseline)
FORWARDS_PER_CFG_STEP = 2


def derive(base: Profile) -> Profile:
    """The few-step profile: the I2V profile's costs with the steps' CFG removed and its defaults 4 steps."""
    kind = base.kinds["H200"]
    costs = kind.shapes[SHAPE]
    few = ShapeCosts(
        encode_s=costs.encode_s,
        large_step_s=costs.large_step_s / FORWARDS_PER_CFG_STEP,
        small_step_s=costs.small_step_s / FORWARDS_PER_CFG_STEP,
        decode_s=costs.decode_s,
        sketch_overhead_s=costs.sketch_overhead_s,
        detail={
            "published_few_step_end_to_end_s": PUBLISHED_FEW_STEP_S,
            "published_cfg_40_step_end_to_end_s": PUBLISHED_CFG_40_S,
            "steps": float(STEPS),
            "guidance_scale": 1.0,
        },
    )
    derived_total = few.sketch_s(STEPS) + few.render_s(STEPS, STEPS)
    few.detail["derived_large_only_end_to_end_s"] = derived_total
    defaults = RequestDefaults(
        num_inference_steps=STEPS, guidance_scale=1.0, scheduler="euler", timesteps=TIMESTEPS, shift=SHIFT
    )
    return Profile(
        source="derived",
        description=(
            f"DERIVED, not measured: a step- and CFG-distilled Wan2.1-I2V-14B -> 36-channel 1.3B pair on one H200, "
            f"{STEPS} euler steps at {TIMESTEPS}, shift {SHIFT}, guidance 1 (one forward per step). Step costs are "
            f"half the CFG steps of profile_wan21_i2v_h200_derived.json; encode, image encode and decode as there: "
            f"{derived_total:.0f} s large-only end to end, against LightX2V's published {PUBLISHED_FEW_STEP_S:.0f} s "
            f"(its run also changes kernels this profile cannot split off, so the profile is conservative). "
            "No adaptive-switch figure (at 4 steps adaptive is fixed:2). See benchmarks/derive_few_step_profile.py."
        ),
        model_pair="wan2.1-i2v",
        defaults=defaults,
        kinds={"H200": kind.model_copy(update={"shapes": {SHAPE: few}})},
        delays=base.delays,
        role_memory_gib=dict(base.role_memory_gib),
        adaptive_switch={},
        measured_at={
            "source": "derived: published H200 figures (LightX2V) and profile_wan21_i2v_h200_derived.json",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    profile = derive(Profile.read(I2V_PROFILE))
    path = profile.write(args.out_dir / "profile_wan21_i2v_few_step_h200_derived.json")
    costs = profile.kinds["H200"].shapes[SHAPE]
    print(
        f"{profile.model_pair} few-step: large step {costs.large_step_s:.2f}s, small {costs.small_step_s:.2f}s, "
        f"large-only {costs.detail['derived_large_only_end_to_end_s']:.1f}s -> {path}"
    )


if __name__ == "__main__":
    main()
