"""The one-shot GPU suite (benchmarks/gpu/) on the CPU with tiny configs, so it cannot rot unseen.

`--smoke` runs the same parts as on a GPU (engine, handoff, render-replica path, budget guard,
telemetry) on wan_sizes.TINY; the real-size run needs a CUDA device (docs/gpu_suite.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
GPU = REPO / "benchmarks" / "gpu"
SUITE = GPU / "run_suite.py"
FAST_PARTS = "device,steps,vae_decode,srdiffusion,handoff,vace_steps,text_encoder,backends"


def _run(out: Path, *args: str, timeout: float = 600) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "suite.json").read_text())


def _parts_module() -> ModuleType:
    sys.path.insert(0, str(GPU))
    try:
        spec = importlib.util.spec_from_file_location("gpu_suite_parts", GPU / "parts.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GPU))


def test_smoke_suite_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    result = _run(out, "--parts", FAST_PARTS)
    parts = result["parts"]
    assert [name for name in parts] == FAST_PARTS.split(",")
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(parts, "ok"), parts
    assert result["complete"] is True and result["smoke"] is True

    steps = parts["steps"]
    assert [(e["model"], e["backend"], e["mode"]) for e in steps["entries"]] == [
        ("small", "native", "eager"),
        ("large", "native", "eager"),
    ]
    assert all(e["step_s"] > 0 and e["output_finite"] for e in steps["entries"])
    small, large = (e["step_s"] for e in steps["entries"])
    assert steps["ratio_small_to_large"] == pytest.approx(small / large)

    sr = parts["srdiffusion"]
    assert sr["num_steps"] == 4 and sr["switch_step"] == 1
    # Timings of tiny models on a shared CPU are noise: check the arithmetic, not the magnitudes.
    n, k, r = sr["num_steps"], sr["switch_step"], sr["ratio_used"]
    assert sr["amdahl_bound"] == pytest.approx(n / (k + (n - k) * r))
    assert sr["speedup_denoise"] == pytest.approx(sr["large_only"]["denoise_s"] / sr["srdiffusion"]["denoise_s"])
    # The render replica's path (bytes -> engine {render, decode} loading its models from disk) is exact.
    assert sr["fresh_equals_colocated"] is True and sr["fresh_vs_colocated"]["max_abs_diff"] == 0
    replica = sr["render_replica"]
    assert replica["render_steps"] == 3 and len(replica["latents_sha256"]) == 64
    assert replica["frames_shape"] == [5, 32, 32, 3]

    handoff = parts["handoff"]
    assert handoff["round_trip_equal"] is True and handoff["bytes"] == sr["handoff_bytes"]
    assert handoff["state_from"] == "the SRDiffusion part's sketch"
    assert handoff["tensors"]["latents"]["shape"] == [1, 16, 2, 4, 4]

    vace = parts["vace_steps"]  # the smoke preset's models with a VACE block at every other layer
    assert [(e["model"], e["status"], e["vace_layers"]) for e in vace["entries"]] == [
        ("small", "ok", [0]),
        ("large", "ok", [0]),
    ]
    assert all(e["output_finite"] and e["flop_ratio"] > 1 and e["t2v_step_s"] > 0 for e in vace["entries"])

    device = parts["device"]
    assert device["attention_backends"]["native"] == "available"
    assert device["attention_backends"]["flash"].startswith("unavailable")
    assert {e["backend"] for e in parts["backends"]["entries"]} == set(parts["backends"]["backends"])
    assert parts["vae_decode"]["vae_decode_s"] > 0 and parts["text_encoder"]["text_encode_s"] > 0

    telemetry = json.loads((out / "telemetry.json").read_text())
    assert telemetry["available"] is False and telemetry["reason"]  # no NVML on a CPU machine: said why
    summary = (out / "summary.md").read_text()
    for heading in ("## Per-step cost", "## SRDiffusion on the device", "## Handoff", "## VACE step", "## Parts"):
        assert heading in summary
    assert "done in" in (out / "suite.log").read_text()


def test_spent_budget_skips_every_part_and_says_so(tmp_path: Path) -> None:
    result = _run(tmp_path, "--budget-s", "0", "--parts", "device,steps,srdiffusion")
    assert result["complete"] is False
    for part in result["parts"].values():
        assert part["status"] == "skipped" and "budget" in part["reason"]
    assert "skipped: time budget of 0 s spent" in (tmp_path / "summary.md").read_text()


def test_budget_guard_skips_a_compile_that_would_overrun(tmp_path: Path) -> None:
    result = _run(tmp_path, "--parts", "device,steps,handoff,compiled", "--budget-s", "60")
    parts = result["parts"]
    assert [parts[name]["status"] for name in ("device", "steps", "handoff")] == ["ok", "ok", "ok"]
    # Without the SRDiffusion part, the handoff part sketches its own state (the 14B-side engine alone).
    assert parts["handoff"]["state_from"] == "two sketch steps run by this part"
    assert parts["handoff"]["round_trip_equal"] is True
    # A compile is estimated at 60 s, so in a 60 s budget both compiled entries are skipped, and said why.
    entries = parts["compiled"]["entries"]
    assert [e["status"] for e in entries] == ["skipped", "skipped"]
    assert all("would run past the 60 s budget" in e["reason"] for e in entries)
    assert result["complete"] is False


def test_budget_estimates_skip_what_would_overrun() -> None:
    parts = _parts_module()
    spent = parts.Budget(100.0, start=time.monotonic() - 200.0)
    assert spent.spent() and not spent.allows(None) and "spent" in spent.reason()
    fresh = parts.Budget(100.0)
    assert fresh.allows(None) and fresh.allows(50.0) and not fresh.allows(500.0)
    assert "would run past" in fresh.reason(500.0)
    assert [parts.typical_switch(n) for n in (4, 8, 10, 50)] == [1, 2, 2, 10]


@pytest.mark.slow
def test_smoke_compiled_part_matches_eager(tmp_path: Path) -> None:
    result = _run(tmp_path, "--parts", "steps,compiled", timeout=900)
    entries = result["parts"]["compiled"]["entries"]
    assert [e["status"] for e in entries] == ["ok", "ok"], entries
    for e in entries:
        assert e["mode"] == "compiled" and e["first_call_s"] > 0 and e["speedup_vs_eager"] > 0
        assert e["vs_eager"]["rel_diff"] < 1e-4  # float32 on the CPU: inductor reorders reductions only


def test_device_run_without_wheels_says_how_to_get_them(tmp_path: Path) -> None:
    env = {**os.environ, "SRSERVE_WHEELS": str(tmp_path / "none"), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(GPU / "device_run.sh"), "--out", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "fetch_wheels.sh" in proc.stderr
