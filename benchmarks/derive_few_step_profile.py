"""Planner profiles for few-step (step- and CFG-distilled) pairs, derived (NOT measured).

A distilled checkpoint (or a distill LoRA fused into the base weights) runs 4 steps at guidance 1: one
transformer forward per step instead of two. Each profile here starts from a pair's derived base profile
and changes only what the schedule changes:
- 4 steps instead of the base's 40-50, guidance 1: each step costs half that profile's CFG step (both
  models; attention and the MLPs are per forward);
- text encoding, image encoding (I2V) and VAE decode as in the base (the schedule does not change them);
- the defaults become the few-step schedule: 4 euler steps at [1000, 750, 500, 250], shift 5, guidance 1.

Pairs (base profile -> few-step profile):
- wan2.1-i2v, H200: profile_wan21_i2v_h200_derived.json -> profile_wan21_i2v_few_step_h200_derived.json.
  Published (LightX2V, one H200, Wan2.1-I2V-14B, 832x480, 81 frames): 366 s at 40 steps with CFG, 14 s
  distilled at 4 steps. The derivation gives about 36 s: LightX2V's distilled run also changes what this
  profile cannot split off (its own VAE and attention kernels, quantisation), so the derived profile is
  conservative; the 14 s is recorded beside it (`detail`), not used.
- wan2.1 (T2V), every GPU kind of profile_wan21_a100_derived.json -> profile_wan21_few_step_derived.json.
- wan2.2 (T2V A14B experts), every kind of profile_wan22_a100_derived.json ->
  profile_wan22_few_step_derived.json. Shift 5 moves the 4 timesteps to [1000, 937.5, 833.3, 625], so
  the experts' boundary (t = 875) falls after step 2: plan with --switch fixed:2 (`boundary_switch_step`).
No published few-step T2V end-to-end figure is used for the T2V pairs: their step costs are the base
profiles' (themselves derived from published figures) halved. No adaptive-switch figures: at 4 steps
`adaptive` is `fixed:2` (docs/engine.md, "Few-step schedules"); plan with fixed:1 or 2. Quality needs real
weights: nothing here says how a distilled pair's video looks.

    python benchmarks/derive_few_step_profile.py --out-dir benchmarks/results
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srserve.engine.request import RequestDefaults
from srserve.planner.profile import Profile, ShapeCosts

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 4
TIMESTEPS = [1000, 750, 500, 250]
SHIFT = 5.0
FORWARDS_PER_CFG_STEP = 2
# (base profile, few-step profile, published figures kept beside the derived costs, or none)
PAIRS = {
    "wan2.1-i2v": (
        "profile_wan21_i2v_h200_derived.json",
        "profile_wan21_i2v_few_step_h200_derived.json",
        # Wan2.1-I2V-14B, 832x480x81, one H200 (LightX2V): distilled 4 steps guidance 1; 40 steps with CFG
        {"published_few_step_end_to_end_s": 14.0, "published_cfg_40_step_end_to_end_s": 366.0},
    ),
    "wan2.1": ("profile_wan21_a100_derived.json", "profile_wan21_few_step_derived.json", {}),
    # shifted timesteps [1000, 937.5, 833.3, 625]: two of them at or above the boundary t = 875
    "wan2.2": ("profile_wan22_a100_derived.json", "profile_wan22_few_step_derived.json", {"boundary_switch_step": 2.0}),
}


def few_step_costs(costs: ShapeCosts, published: dict[str, float]) -> ShapeCosts:
    """One shape's costs with the steps' CFG removed; the large-only end to end at 4 steps in `detail`."""
    few = ShapeCosts(
        encode_s=costs.encode_s,
        large_step_s=costs.large_step_s / FORWARDS_PER_CFG_STEP,
        small_step_s=costs.small_step_s / FORWARDS_PER_CFG_STEP,
        decode_s=costs.decode_s,
        sketch_overhead_s=costs.sketch_overhead_s,
        detail={**published, "steps": float(STEPS), "guidance_scale": 1.0},
    )
    few.detail["derived_large_only_end_to_end_s"] = few.sketch_s(STEPS) + few.render_s(STEPS, STEPS)
    return few


def derive(base: Profile, published: dict[str, float], base_name: str) -> Profile:
    """The few-step profile of `base`: every kind and shape, CFG removed from the steps, 4-step defaults.
    `published` holds figures kept beside the derived costs (and, for wan2.2, the boundary switch step)."""
    kinds = {
        name: kind.model_copy(
            update={"shapes": {shape: few_step_costs(c, published) for shape, c in kind.shapes.items()}}
        )
        for name, kind in base.kinds.items()
    }
    defaults = base.defaults.model_copy(
        update={
            "num_inference_steps": STEPS,
            "guidance_scale": 1.0,
            "scheduler": "euler",
            "timesteps": TIMESTEPS,
            "shift": SHIFT,
        }
    )
    RequestDefaults.model_validate(defaults.model_dump())
    versus = (
        f" against the published {published['published_few_step_end_to_end_s']:.0f} s (that run also changes "
        "kernels this profile cannot split off, so the profile is conservative)"
        if "published_few_step_end_to_end_s" in published
        else " (no published few-step figure for this pair is used)"
    )
    first = next(iter(kinds.values()))
    shape, costs = next(iter(first.shapes.items()))
    return Profile(
        source="derived",
        description=(
            f"DERIVED, not measured: a step- and CFG-distilled {base.model_pair} pair, {STEPS} euler steps at "
            f"{TIMESTEPS}, shift {SHIFT}, guidance 1 (one forward per step). Step costs are half the CFG steps of "
            f"{base_name}; encode and decode as there: {costs.detail['derived_large_only_end_to_end_s']:.0f} s "
            f"large-only end to end on {first.name} at {shape}{versus}. No adaptive-switch figure (at 4 steps "
            "adaptive is fixed:2). See benchmarks/derive_few_step_profile.py."
        ),
        model_pair=base.model_pair,
        defaults=defaults,
        kinds=kinds,
        delays=base.delays,
        role_memory_gib=dict(base.role_memory_gib),
        adaptive_switch={},
        measured_at={
            "source": f"derived: {base_name}" + (" and published H200 figures (LightX2V)" if published else "")
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    for pair, (base_name, out_name, published) in PAIRS.items():
        profile = derive(Profile.read(RESULTS / base_name), published, base_name)
        path = profile.write(args.out_dir / out_name)
        for kind in profile.kinds.values():
            for shape, costs in kind.shapes.items():
                print(
                    f"{pair} few-step {kind.name} {shape}: large step {costs.large_step_s:.2f}s, small "
                    f"{costs.small_step_s:.2f}s, large-only {costs.detail['derived_large_only_end_to_end_s']:.1f}s"
                )
        print(f"  -> {path}")


if __name__ == "__main__":
    main()
