"""Per-stage timings of real-size architectures on a device (CUDA when present): the GPU profile.

Builds the Wan2.1 14B and 1.3B transformers, the Wan VAE and the umT5-XXL encoder from their
configs with random weights (no download: the compute is the same as with real weights), in
bf16 on CUDA, and measures: the per-step time at each output shape with CFG as srserve runs it
(cond and uncond as two forwards), with CFG batched (one forward of batch 2) and without CFG;
VAE decode (+ mp4 export on the CPU); text encode; peak memory; achieved TFLOP/s against the
device's peak. Writes a planner profile (`srserve.planner.profile.Profile`) whose `detail` holds
every figure. The `tiny` preset runs the same code on a CPU in seconds (tests).
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from srserve.engine.request import RequestDefaults
from srserve.engine.video import encode_mp4
from srserve.planner.profile import DeviceKind, Profile, ShapeCosts, shape_key
from srserve.profiling.flops import device_peak_tflops, transformer_forward_flops, umt5_encoder_flops, video_tokens
from srserve.profiling.wan_sizes import ArchPreset, OutputShape

GIB = float(1 << 30)


class Timer:
    """Wall time of a device computation (synchronizing CUDA), plus peak memory on CUDA."""

    def __init__(self, device: torch.device, warmup: int, iters: int) -> None:
        self.device = device
        self.warmup = warmup
        self.iters = iters

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GIB
        return None

    @torch.no_grad()
    def measure(self, fn: Callable[[], Any]) -> dict[str, float | None]:
        self.reset_peak()
        for _ in range(self.warmup):
            fn()
        self._sync()
        times = []
        for _ in range(self.iters):
            start = time.perf_counter()
            fn()
            self._sync()
            times.append(time.perf_counter() - start)
        return {
            "mean_s": statistics.mean(times),
            "min_s": min(times),
            "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
            "peak_memory_gib": self.peak_gib(),
        }


def _build(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Construct directly on the device in the target dtype: no float32 copy of 14B parameters."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = factory()
    finally:
        torch.set_default_dtype(previous)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32:  # as from_pretrained(torch_dtype=...) does: these stay float32
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_floating_point() and any(k in name.split(".") for k in keep):
                tensor.data = tensor.data.float()
    return module.eval()


def build_transformer(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    return _build(lambda: WanTransformer3DModel(**config), device, dtype)


def build_vace_transformer(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A WanVACETransformer3DModel: the config of a WanTransformer3DModel plus `vace_layers`, `vace_in_channels`."""
    from diffusers import WanVACETransformer3DModel

    return _build(lambda: WanVACETransformer3DModel(**config), device, dtype)


def build_vae(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    return _build(lambda: AutoencoderKLWan(**config), device, dtype)


def build_text_encoder(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    return _build(lambda: UMT5EncoderModel(UMT5Config(**config)), device, dtype)


def param_gib(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / GIB


def _free() -> None:
    """Return freed device memory to the pool (after the caller dropped its references)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def latent_shape(shape: OutputShape, batch: int = 1) -> tuple[int, ...]:
    return (batch, 16, (shape.num_frames - 1) // 4 + 1, shape.height // 8, shape.width // 8)


def profile_transformer(
    model: torch.nn.Module,
    config: dict[str, Any],
    shape: OutputShape,
    text_tokens: int,
    timer: Timer,
    peak_tflops: float | None,
) -> dict[str, float | None]:
    """Per-step times: CFG as two forwards (srserve today), CFG batched (batch 2), no CFG."""
    device, dtype = timer.device, next(model.parameters()).dtype
    g = torch.Generator(device="cpu").manual_seed(0)

    def inputs(batch: int):
        x = torch.randn(latent_shape(shape, batch), generator=g).to(device, dtype)
        ctx = torch.randn((batch, text_tokens, config["text_dim"]), generator=g).to(device, dtype)
        t = torch.full((batch,), 500.0, device=device)
        return x, ctx, t

    x1, c1, t1 = inputs(1)
    _, c1n, _ = inputs(1)
    x2, c2, t2 = inputs(2)

    def forward(x, ctx, t):
        return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]

    out: dict[str, float | None] = {}
    one = transformer_forward_flops(config, shape.width, shape.height, shape.num_frames, text_tokens)
    runs = {
        "cfg_sequential": (lambda: (forward(x1, c1, t1), forward(x1, c1n, t1)), 2 * one),
        "cfg_batched": (lambda: forward(x2, c2, t2), 2 * one),
        "no_cfg": (lambda: forward(x1, c1, t1), one),
    }
    for name, (fn, flops) in runs.items():
        m = timer.measure(fn)
        tflops = flops / m["mean_s"] / 1e12
        out[f"step_{name}_s"] = m["mean_s"]
        out[f"step_{name}_stdev_s"] = m["stdev_s"]
        out[f"step_{name}_peak_memory_gib"] = m["peak_memory_gib"]
        out[f"step_{name}_tflops"] = tflops
        out[f"step_{name}_mfu"] = tflops / peak_tflops if peak_tflops else None
    out["forward_tflop"] = one / 1e12
    out["video_tokens"] = float(video_tokens(config, shape.width, shape.height, shape.num_frames))
    return out


def profile_vae_decode(vae: torch.nn.Module, shape: OutputShape, timer: Timer) -> dict[str, float | None]:
    """Decode one video's latents (the render replica's decode); falls back to tiling on OOM."""
    z = torch.randn(latent_shape(shape), generator=torch.Generator().manual_seed(1)).to(timer.device, vae.dtype)
    tiled = 0.0
    try:
        m = timer.measure(lambda: vae.decode(z, return_dict=False)[0])
    except torch.OutOfMemoryError:
        _free()
        vae.enable_tiling()
        tiled = 1.0
        m = timer.measure(lambda: vae.decode(z, return_dict=False)[0])
    return {"vae_decode_s": m["mean_s"], "vae_decode_peak_memory_gib": m["peak_memory_gib"], "vae_tiled": tiled}


def profile_export(shape: OutputShape, fps: int = 16) -> float:
    """H.264 encode of the frames on the CPU (part of the render replica's work)."""
    frames = np.random.default_rng(0).integers(0, 255, (shape.num_frames, shape.height, shape.width, 3), np.uint8)
    start = time.perf_counter()
    encode_mp4(frames, fps=fps)
    return time.perf_counter() - start


def profile_text_encode(encoder: torch.nn.Module, config: dict[str, Any], tokens: int, timer: Timer) -> dict:
    ids = torch.randint(2, config["vocab_size"], (1, tokens), generator=torch.Generator().manual_seed(2))
    ids, mask = ids.to(timer.device), torch.ones_like(ids).to(timer.device)
    m = timer.measure(lambda: encoder(ids, mask).last_hidden_state)
    flops = umt5_encoder_flops(config, tokens)
    return {
        "text_encode_s": m["mean_s"],
        "text_encode_peak_memory_gib": m["peak_memory_gib"],
        "text_encode_tflops": flops / m["mean_s"] / 1e12,
    }


def device_identity(device: torch.device) -> tuple[str, str | None, float | None]:
    """(kind name, Ray accelerator type, memory GiB) of the device."""
    if device.type != "cuda":
        return f"{device.type}-{platform.machine()}", None, None
    name = torch.cuda.get_device_name(device)
    mem = torch.cuda.get_device_properties(device).total_memory / GIB
    for key in ("H200", "H100", "A100", "L40S", "L4", "A10G"):
        if key in name:
            return key, key, mem
    short = name.replace("NVIDIA", "").strip().replace(" ", "-")
    return short, short, mem


def run_gpu_profile(
    preset: ArchPreset,
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    vae_dtype: torch.dtype = torch.float32,
    warmup: int = 2,
    iters: int = 5,
    shapes: list[str] | None = None,
    cfg_in_profile: Literal["sequential", "batched"] = "sequential",
    peak_tflops: float | None = None,
    log: Callable[[str], None] = print,
) -> Profile:
    kind, accel, mem = device_identity(device)
    peak = (
        peak_tflops
        if peak_tflops is not None
        else (device_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    )
    timer = Timer(device, warmup, iters)
    chosen = [s for s in preset.shapes if shapes is None or s.name in shapes]
    detail: dict[str, dict[str, float | None]] = {s.name: {} for s in chosen}
    role_mem: dict[str, float] = {}

    for role, config in (("large", preset.large), ("small", preset.small)):
        model = build_transformer(config, device, dtype)
        log(f"{role} transformer: {param_gib(model):.2f} GiB of parameters")
        peaks = [param_gib(model)]
        for shape in chosen:
            figures = profile_transformer(model, config, shape, preset.text_tokens, timer, peak)
            detail[shape.name].update({f"{role}_{k}": v for k, v in figures.items()})
            peaks += [v for k, v in figures.items() if k.endswith("peak_memory_gib") and v is not None]
            log(
                f"  {shape.name}: step (CFG, 2 forwards) {figures['step_cfg_sequential_s']:.3f}s, "
                f"batched {figures['step_cfg_batched_s']:.3f}s, no CFG {figures['step_no_cfg_s']:.3f}s, "
                f"{figures['step_cfg_sequential_tflops']:.1f} TFLOP/s"
            )
        role_mem[role] = max(peaks)
        del model
        _free()

    vae = build_vae(preset.vae, device, vae_dtype)
    vae_peaks = [param_gib(vae)]
    for shape in chosen:
        figures = profile_vae_decode(vae, shape, timer)
        figures["export_s"] = profile_export(shape)
        detail[shape.name].update(figures)
        if figures["vae_decode_peak_memory_gib"] is not None:
            vae_peaks.append(figures["vae_decode_peak_memory_gib"])
        log(f"  {shape.name}: VAE decode {figures['vae_decode_s']:.3f}s, mp4 export {figures['export_s']:.3f}s")
    role_mem["vae"] = max(vae_peaks)
    del vae
    _free()

    encoder = build_text_encoder(preset.text_encoder, device, dtype)
    text = profile_text_encode(encoder, preset.text_encoder, preset.text_tokens, timer)
    role_mem["text_encoder"] = max(param_gib(encoder), text["text_encode_peak_memory_gib"] or 0.0)
    log(f"text encoder: {param_gib(encoder):.2f} GiB, encode {text['text_encode_s']:.3f}s per prompt")
    del encoder
    _free()

    step_key = "step_cfg_sequential_s" if cfg_in_profile == "sequential" else "step_cfg_batched_s"
    costs = {}
    for shape in chosen:
        d = detail[shape.name] | text
        costs[shape_key(shape.width, shape.height, shape.num_frames)] = ShapeCosts(
            encode_s=2 * text["text_encode_s"],  # prompt and negative prompt, as served with CFG
            large_step_s=d[f"large_{step_key}"],
            small_step_s=d[f"small_{step_key}"],
            decode_s=d["vae_decode_s"] + d["export_s"],
            detail={k: v for k, v in d.items() if v is not None},
        )
    first = chosen[0]
    return Profile(
        source="measured",
        description=(
            f"{preset.name} architectures with random weights on {kind} ({dtype} transformers and text encoder, "
            f"{vae_dtype} VAE), {iters} timed iterations after {warmup} warm-up; large/small_step_s = CFG "
            f"{cfg_in_profile}; encode_s = 2 prompts; decode_s = VAE decode + mp4 export; compute only "
            "(no serving overheads or delays)"
        ),
        model_pair=preset.name,
        defaults=RequestDefaults(
            width=first.width, height=first.height, num_frames=first.num_frames, num_inference_steps=preset.steps
        ),
        kinds={
            kind: DeviceKind(name=kind, accelerator_type=accel, memory_gib=mem, peak_bf16_tflops=peak, shapes=costs)
        },
        role_memory_gib=role_mem,
        host_cores=None if device.type == "cuda" else 1.0,
        measured_at={
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )
