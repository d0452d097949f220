"""One-shot GPU suite: real-size Wan2.1 stage costs, SRDiffusion on the device, the handoff, compile
and attention backends, with NVML telemetry, in one command on one CUDA device.

    python benchmarks/gpu/run_suite.py --out DIR              # on a CUDA machine (docs/gpu_suite.md)
    bash benchmarks/gpu/device_run.sh --out DIR               # the same on the offline GPU machine
    python benchmarks/gpu/run_suite.py --smoke --out DIR      # tiny configs on a CPU, in seconds

Writes DIR/suite.json and DIR/summary.md after every part, DIR/telemetry.json (every NVML sample)
and DIR/suite.log. Parts run in order of value; once the time budget (--budget-s) is spent, or a
part's estimate would overrun it, the rest are skipped and marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

T0 = time.monotonic()  # the budget counts from here: imports and CUDA start-up are part of the suite's time
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FORMAT = "srserve.gpu_suite"
VERSION = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for suite.json, summary.md, telemetry.json")
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU: the same code paths in seconds")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget; later parts are skipped")
    parser.add_argument("--parts", default=None, help="comma-separated subset of the parts, e.g. device,steps")
    parser.add_argument("--sr-steps", type=int, default=None, help="denoising steps of the SRDiffusion runs")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each step measurement")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per measurement (1.3B; 14B takes 2/3)")
    parser.add_argument("--no-text-encoder", action="store_true", help="skip the umT5-XXL part")
    parser.add_argument("--telemetry-interval-s", type=float, default=0.5)
    parser.add_argument(
        "--telemetry-source",
        choices=["project", "own"],
        default="project",
        help="project: srserve.serving.ops.gpu_telemetry where it imports (needs Ray), else the suite's own reader",
    )
    parser.add_argument("--check-imports", action="store_true", help="import everything the suite needs, then exit")
    return parser.parse_args(argv)


def _write_json(path: Path, data: Any) -> None:
    """Whole file or nothing: a run killed mid-write leaves the previous complete version."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _fmt(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:{spec}}{suffix}"
    return f"{value}{suffix}"


def _step_rows(entries: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| model | backend | mode | s/step | TFLOP/s | MFU | peak GiB | first call s | vs eager | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        why = "" if e["status"] == "ok" else ": " + e.get("reason", e.get("error", ""))[:80]
        cells = [
            e["model"],
            e["backend"],
            e["mode"],
            _fmt(e.get("step_s")),
            _fmt(e.get("tflops"), ".3g"),
            _fmt(e.get("mfu"), ".1%"),
            _fmt(e.get("peak_memory_gib"), ".1f"),
            _fmt(e.get("first_call_s"), ".1f"),
            _fmt(e.get("speedup_vs_eager"), ".2f", "x"),
            e["status"] + why,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _sr_lines(sr: dict[str, Any]) -> list[str]:
    fresh = sr["render_replica"]
    return [
        "## SRDiffusion on the device",
        "",
        f"{sr['num_steps']} steps, switch after {sr['switch_step']} ({sr['switch_fraction']:.0%} of N, the "
        f"typical adaptive switch): large-only {sr['large_only']['denoise_s']:.2f} s, SRDiffusion "
        f"{sr['srdiffusion']['denoise_s']:.2f} s: **{sr['speedup_denoise']:.2f}x** (Amdahl bound "
        f"{sr['amdahl_bound']:.2f}x at ratio {sr['ratio_used']:.3f}; with decode {sr['speedup_with_decode']:.2f}x)",
        "",
        f"Render replica path (bytes -> fresh engine {{render, decode}} loaded from disk): load "
        f"{fresh['load_s']:.1f} s, render {fresh['render_s']:.2f} s, decode {fresh['decode_s']:.2f} s; "
        f"latents equal to the colocated render bit for bit: **{sr['fresh_equals_colocated']}**",
        "",
    ]


def _handoff_lines(ho: dict[str, Any]) -> list[str]:
    ms = {k: ho[k] * 1e3 for k in ("serialize_s", "deserialize_s", "d2h_s", "h2d_s", "handoff_total_s")}
    return [
        "## Handoff",
        "",
        f"{ho['bytes'] / 2**20:.1f} MiB: serialize {ms['serialize_s']:.1f} ms, parse {ms['deserialize_s']:.1f} ms, "
        f"D2H {ms['d2h_s']:.1f} ms, H2D {ms['h2d_s']:.1f} ms; total {ms['handoff_total_s']:.1f} ms = "
        f"{_fmt(ho['handoff_over_render_step'], '.3f')} of one render step",
        "",
    ]


def render_summary(results: dict[str, Any]) -> str:
    """The short markdown note: device, step matrix, SRDiffusion, handoff, VAE, text encoder, parts."""
    parts = results["parts"]
    lines = [f"# GPU suite{' (smoke: tiny configs on a CPU)' if results['smoke'] else ''}", ""]
    dev = parts.get("device", {})
    if dev.get("status") == "ok":
        shape, matmul = dev["shape"], dev["matmul"]
        where = f", capability {dev['capability']}, {dev['memory_gib']:.0f} GiB" if "capability" in dev else ""
        lines += [
            f"Device: **{dev.get('name')}**{where}",
            "",
            f"bf16 peak (datasheet): {_fmt(dev.get('peak_bf16_tflops_datasheet'), '.0f', ' TFLOP/s')}; "
            f"measured {matmul['n']}^3 matmul: {_fmt(matmul['tflops'], '.1f', ' TFLOP/s')}",
            "",
            f"Shape: {shape['width']}x{shape['height']}x{shape['num_frames']} (latent {shape['latent']}, "
            f"{dev['video_tokens']} video tokens); " + ", ".join(f"{k} {v}" for k, v in dev["versions"].items()),
            "",
        ]
    matrix = ("steps", "compiled", "backends", "backends_compiled")
    entries = [e for name in matrix for e in parts.get(name, {}).get("entries", [])]
    if entries:
        ratio = parts.get("steps", {}).get("ratio_small_to_large")
        lines += ["## Per-step cost (CFG: two forwards)", "", *_step_rows(entries), ""]
        lines += [f"1.3B/14B step-cost ratio (native, eager): **{_fmt(ratio)}**", ""]
    if parts.get("srdiffusion", {}).get("status") == "ok":
        lines += _sr_lines(parts["srdiffusion"])
    if parts.get("handoff", {}).get("status") == "ok":
        lines += _handoff_lines(parts["handoff"])
    vace = parts.get("vace_steps", {})
    if vace.get("status") == "ok":
        lines += ["## VACE step (Wan2.1-VACE, random context)", ""]
        for e in vace["entries"]:
            if e.get("status") != "ok":
                lines.append(f"- {e['model']}: {e.get('status')} {e.get('reason', e.get('error', ''))}")
                continue
            lines.append(
                f"- {e['model']} ({len(e['vace_layers'])} VACE blocks): {e['step_s']:.3f} s/step, "
                f"{e['tflops']:.1f} TFLOP/s; over the T2V step {_fmt(e['measured_ratio_over_t2v'])} "
                f"(FLOP model {e['flop_ratio']:.3f})"
            )
        lines.append("")
    vae, te = parts.get("vae_decode", {}), parts.get("text_encoder", {})
    if vae.get("status") == "ok":
        peak = _fmt(vae["vae_decode_peak_memory_gib"], ".1f")
        lines += [f"VAE decode: {vae['vae_decode_s']:.2f} s (peak {peak} GiB)", ""]
    if te.get("status") == "ok":
        lines += [f"umT5 encode: {te['text_encode_s'] * 1e3:.1f} ms per prompt ({te['params_gib']:.1f} GiB)", ""]
    tel = results.get("telemetry", {})
    lines += [f"Telemetry: {tel.get('source')} ({tel.get('reason')}, {tel.get('samples', 0)} samples)", ""]
    lines += ["## Parts", "", "| part | status | s | GPU util mean | power mean W | memory max GiB |"]
    lines.append("|---|---|---|---|---|---|")
    for name, part in parts.items():
        t = part.get("telemetry", {})
        mem = t.get("memory_used_bytes_max")
        status = part["status"] + (": " + part["reason"] if part.get("reason") else "")
        if part["status"] == "error":
            status += ": " + part.get("error", "")[:100]
        cells = [
            name,
            status,
            _fmt(part.get("elapsed_s"), ".1f"),
            _fmt(t.get("utilization_pct_mean"), ".0f", "%"),
            _fmt(t.get("power_w_mean"), ".0f"),
            _fmt(mem / 2**30 if mem else None, ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Total {results['elapsed_s']:.1f} s of a {results['budget_s']:.0f} s budget."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (HERE, REPO):  # the suite's modules; srserve from a checkout where it is not installed
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import parts as suite  # benchmarks/gpu/parts.py
    import torch
    from nvml_sampler import NvmlSampler

    from srserve.profiling.wan_sizes import TINY, WAN21

    if args.check_imports:
        import diffusers
        import pydantic
        import transformers

        optional = {}
        for name in ("pynvml", "imageio_ffmpeg", "ray"):
            try:
                __import__(name)
                optional[name] = "present"
            except ImportError:
                optional[name] = "absent"
        print(
            f"imports ok: torch {torch.__version__}, diffusers {diffusers.__version__}, "
            f"pydantic {pydantic.__version__}, transformers {transformers.__version__}; "
            + ", ".join(f"{k} {v}" for k, v in optional.items())
        )
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print("run_suite.py: no CUDA device is visible to torch; use --smoke on a CPU", file=sys.stderr)
        return 3

    budget = suite.Budget(args.budget_s, start=T0)
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "suite.log").open("a")

    def log(message: str) -> None:
        line = f"[{budget.elapsed():7.1f}s] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    device = torch.device("cpu") if args.smoke else torch.device("cuda")
    if args.smoke:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    preset = TINY if args.smoke else WAN21
    workdir = Path(tempfile.mkdtemp(prefix="srserve-gpu-suite-"))
    warmup = args.warmup if args.warmup is not None else 1
    iters = args.iters if args.iters is not None else (2 if args.smoke else 3)
    ctx = suite.SuiteContext(
        device=device,
        dtype=torch.float32 if args.smoke else torch.bfloat16,
        smoke=args.smoke,
        preset=preset,
        shape=preset.shapes[0],
        budget=budget,
        workdir=workdir,
        log=log,
        warmup={"small": warmup, "large": warmup, "vae": 1},
        iters={"small": iters, "large": max(1, (2 * iters) // 3), "vae": 1 if not args.smoke else 2},
        sr_steps=args.sr_steps or (preset.steps if args.smoke else 8),
        compile_estimate_s=60.0,
        io_estimate_s=2.0 if args.smoke else 20.0,
        text_encoder=not args.no_text_encoder,
    )
    chosen = [name for name, _ in suite.PARTS]
    if args.parts:
        wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
        unknown = set(wanted) - set(chosen)
        if unknown:
            print(f"run_suite.py: unknown parts {sorted(unknown)}; known: {', '.join(chosen)}", file=sys.stderr)
            return 2
        chosen = [name for name in chosen if name in wanted]

    sampler = NvmlSampler(args.telemetry_interval_s, prefer=args.telemetry_source).start()
    results: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "smoke": args.smoke,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "argv": sys.argv[1:] if argv is None else argv,
        "budget_s": args.budget_s,
        "elapsed_s": 0.0,
        "complete": False,
        "parts": {name: {"status": "pending"} for name in chosen},
        "telemetry": {},
    }

    def flush() -> None:
        results["elapsed_s"] = budget.elapsed()
        report = sampler.report(budget.start)
        results["telemetry"] = {k: report[k] for k in ("available", "source", "reason", "notes", "interval_s")}
        results["telemetry"]["samples"] = len(report["t_s"])
        _write_json(args.out / "suite.json", results)
        _write_json(args.out / "telemetry.json", report)
        (args.out / "summary.md").write_text(render_summary(results))

    log(f"GPU suite on {device} ({'smoke, ' if args.smoke else ''}budget {args.budget_s:.0f} s): {', '.join(chosen)}")
    log(f"telemetry: {sampler.source} ({sampler.reason}){'; ' + '; '.join(sampler.notes) if sampler.notes else ''}")
    flush()
    part_fns = dict(suite.PARTS)
    try:
        for name in chosen:
            if budget.spent():
                results["parts"][name] = {"status": "skipped", "reason": budget.reason()}
                log(f"{name}: skipped ({budget.reason()})")
                flush()
                continue
            log(f"{name}: {part_fns[name].__doc__.splitlines()[0]}")
            start = time.monotonic()
            try:
                figures = part_fns[name](ctx)
                status = figures.pop("status", "ok")
                entry = {"status": status, **figures}
            except suite.BudgetSpent as exc:
                entry = {"status": "skipped", "reason": str(exc)}
            except Exception as exc:  # one part's failure (OOM, a kernel) must not lose the others
                suite.free_memory()
                entry = {
                    "status": "error",
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
                log(f"{name}: error {exc!r}")
            end = time.monotonic()
            entry["started_s"], entry["elapsed_s"] = start - budget.start, end - start
            entry["telemetry"] = sampler.window(start, end)
            results["parts"][name] = entry
            log(f"{name}: {entry['status']} in {end - start:.1f} s")
            flush()
        results["complete"] = all(
            p["status"] == "ok" and all(e.get("status") == "ok" for e in p.get("entries", []))
            for p in results["parts"].values()
        )
    finally:
        sampler.stop()
        suite.cleanup(ctx)
        flush()
        log(f"done in {budget.elapsed():.1f} s: {args.out / 'suite.json'}")
        log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
