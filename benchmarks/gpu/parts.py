"""The GPU suite's parts. Each measures one thing on the suite's device and returns a JSON-ready dict.

Sizes come from srserve.profiling.wan_sizes (WAN21 on a GPU, TINY for --smoke); model building,
timing, VAE decode, text encode and FLOP counts are srserve.profiling's; the per-step work is
the engine's own CFG prediction (`WanFamily.predict`: cond and uncond as two forwards); the
SRDiffusion runs go through `srserve.engine.SRDiffusionEngine` with the roles the pools load.
Random weights: the compute is that of the real checkpoints, the outputs are not.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from srserve.engine import GenerationRequest, HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.families import EncodedPrompt, get_family
from srserve.engine.models import components
from srserve.engine.models.attention import (
    AttentionBackendUnavailable,
    apply_attention_backend,
    check_attention_backend,
)
from srserve.engine.request import RequestDefaults
from srserve.profiling.flops import device_peak_tflops, transformer_forward_flops, vace_extra_flops, video_tokens
from srserve.profiling.gpu_stages import (
    GIB,
    Timer,
    build_text_encoder,
    build_transformer,
    build_vace_transformer,
    build_vae,
    latent_shape,
    param_gib,
    profile_export,
    profile_text_encode,
    profile_vae_decode,
)
from srserve.profiling.wan_sizes import VACE_IN_CHANNELS, WAN21, WAN21_VACE_LAYERS, ArchPreset, OutputShape

GUIDANCE_SCALE = 5.0  # GenerationRequest's default: CFG on, two forwards per step
# The paper's adaptive switch lands around step 8-10 of 50 on the real checkpoints (docs/engine.md);
# with random weights the rule fires anywhere, so the suite switches at that fraction instead.
TYPICAL_SWITCH_FRACTION = 0.2
# Backends the step matrix tries, in order; each is kept only where srserve's own check passes.
BACKEND_CANDIDATES = (
    "native",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "flash",
    "_flash_3",
    "xformers",
    "sage",
    "_native_math",
)
# The math kernel materialises every [heads, L, L] score: 40 x 32760^2 x 2 B = 86 GB per 14B attention.
MATH_ONLY_TINY = "_native_math"
ROLES = ("small", "large")  # 1.3B (render) first: cheaper, and its figures feed the later estimates


class BudgetSpent(RuntimeError):
    """What is left of the suite's time budget cannot hold this measurement."""


@dataclass
class Budget:
    """The suite's wall-clock budget, counted from the suite's start."""

    total_s: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def spent(self) -> bool:
        return self.elapsed() >= self.total_s

    def allows(self, estimate_s: float | None) -> bool:
        """False once spent, or when an estimated cost would run past the budget."""
        if self.spent():
            return False
        return estimate_s is None or self.elapsed() + estimate_s <= self.total_s

    def reason(self, estimate_s: float | None = None) -> str:
        if self.spent():
            return f"time budget of {self.total_s:.0f} s spent ({self.elapsed():.0f} s elapsed)"
        return (
            f"estimated {estimate_s:.0f} s would run past the {self.total_s:.0f} s budget "
            f"({self.elapsed():.0f} s elapsed)"
        )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same bits (NaNs included), not just close."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.detach().cpu().contiguous().reshape(-1), b.detach().cpu().contiguous().reshape(-1)
    return bool(torch.equal(a.view(torch.uint8), b.view(torch.uint8)))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item()
    return {"max_abs_diff": diff, "ref_max_abs": scale, "rel_diff": diff / scale if scale else diff}


@dataclass
class SuiteContext:
    """Settings and the state parts share: built models, earlier figures, the handoff produced."""

    device: torch.device
    dtype: torch.dtype
    smoke: bool
    preset: ArchPreset
    shape: OutputShape
    budget: Budget
    workdir: Path
    log: Callable[[str], None]
    warmup: dict[str, int]
    iters: dict[str, int]
    sr_steps: int
    compile_estimate_s: float
    io_estimate_s: float
    text_encoder: bool = True
    family: Any = field(default_factory=lambda: get_family("wan2.1"))
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)
    vae: torch.nn.Module | None = None
    peak_tflops: float | None = None
    matmul_tflops: float | None = None
    backends: list[str] = field(default_factory=list)
    step_s: dict[tuple[str, str, str], float] = field(default_factory=dict)
    outputs: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    compiled: set[str] = field(default_factory=set)
    inputs: dict[str, tuple[torch.Tensor, torch.Tensor, EncodedPrompt]] = field(default_factory=dict)
    pair: tuple[Path, Path] | None = None
    render_weights_written: bool = False
    sketch_state: HandoffState | None = None
    handoff_blob: bytes | None = None
    decode_s: float | None = None

    def config(self, role: str) -> dict[str, Any]:
        return self.preset.large if role == "large" else self.preset.small

    def model(self, role: str) -> torch.nn.Module:
        """The role's transformer, built once (seeded, so a rebuild has the same weights)."""
        if role not in self.models:
            torch.manual_seed(1 if role == "large" else 2)
            start = time.perf_counter()
            model = build_transformer(self.config(role), self.device, self.dtype)
            sync(self.device)
            self.build_s[role] = time.perf_counter() - start
            self.models[role] = apply_attention_backend(model, "native")
            self.log(f"built {role} transformer: {param_gib(model):.2f} GiB in {self.build_s[role]:.1f} s")
        return self.models[role]

    def get_vae(self) -> torch.nn.Module:
        if self.vae is None:
            torch.manual_seed(3)
            self.vae = build_vae(self.preset.vae, self.device, torch.float32)
        return self.vae

    def step_inputs(self, role: str) -> tuple[torch.Tensor, torch.Tensor, EncodedPrompt]:
        """Latents as the engine holds them (float32), a mid timestep, prompt and negative embeddings."""
        if role not in self.inputs:
            g = torch.Generator().manual_seed(10)
            latents = torch.randn(latent_shape(self.shape), generator=g).to(self.device)
            dim = self.config(role)["text_dim"]
            embeds = [torch.randn(1, self.preset.text_tokens, dim, generator=g) for _ in range(2)]
            encoded = EncodedPrompt(*(e.to(self.device, self.dtype) for e in embeds))
            self.inputs[role] = (latents, torch.tensor(500.0, device=self.device), encoded)
        return self.inputs[role]

    def cfg_step_flops(self, role: str) -> float:
        s = self.shape
        forward = transformer_forward_flops(self.config(role), s.width, s.height, s.num_frames, self.preset.text_tokens)
        return 2 * forward

    def step_estimate(self, role: str) -> float | None:
        """Seconds per CFG step: measured (native, eager) when known, else from FLOPs at 35% of peak."""
        known = self.step_s.get((role, "native", "eager"))
        if known is not None:
            return known
        if self.peak_tflops:
            return self.cfg_step_flops(role) / (0.35 * self.peak_tflops * 1e12)
        return None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "pydantic", "safetensors", "numpy"):
        module = sys.modules.get(name)
        if module is None:
            with contextlib.suppress(ImportError):
                module = __import__(name)
        out[name] = getattr(module, "__version__", "absent") if module is not None else "absent"
    out["cuda"] = str(torch.version.cuda)
    return out


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int) -> dict[str, Any]:
    """TFLOP/s of an n x n x n product on random data: what this device reaches, beside the datasheet."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    m = Timer(device, warmup=3, iters=10).measure(lambda: a @ b)
    return {"n": n, "dtype": str(dtype), "mean_s": m["mean_s"], "tflops": 2 * n**3 / m["mean_s"] / 1e12}


def part_device(ctx: SuiteContext) -> dict[str, Any]:
    """Which device, its bf16 peak (datasheet table) and a measured matmul ceiling; which backends run."""
    out: dict[str, Any] = {"versions": _versions(), "dtype": str(ctx.dtype)}
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        name = torch.cuda.get_device_name(ctx.device)
        out.update(
            name=name,
            capability=".".join(map(str, torch.cuda.get_device_capability(ctx.device))),
            memory_gib=props.total_memory / GIB,
            multiprocessors=props.multi_processor_count,
        )
        ctx.peak_tflops = device_peak_tflops(name)
    else:
        out.update(name=f"{platform.processor() or platform.machine()} (CPU)", threads=torch.get_num_threads())
    out["peak_bf16_tflops_datasheet"] = ctx.peak_tflops
    out["matmul"] = matmul_ceiling(ctx.device, ctx.dtype, 256 if ctx.smoke else 8192)
    ctx.matmul_tflops = out["matmul"]["tflops"]
    backends: dict[str, str] = {}
    for backend in BACKEND_CANDIDATES:
        if backend == MATH_ONLY_TINY and not ctx.smoke:
            backends[backend] = "skipped: materialises the full attention matrix (86 GB per 14B layer at 480p x 81)"
            continue
        try:
            check_attention_backend(backend, "wan2.1", ctx.family.attention_backends, ctx.device, ctx.dtype)
        except AttentionBackendUnavailable as exc:
            backends[backend] = f"unavailable: {exc}"
            continue
        backends[backend] = "available"
        ctx.backends.append(backend)
    out["attention_backends"] = backends
    out["shape"] = ctx.shape.model_dump() | {"latent": list(latent_shape(ctx.shape))}
    out["video_tokens"] = video_tokens(ctx.preset.large, ctx.shape.width, ctx.shape.height, ctx.shape.num_frames)
    return out


def _stance(eager: bool) -> contextlib.AbstractContextManager[Any]:
    """Eager on a compiled model without undoing its compile: torch's force_eager stance."""
    return torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext()


def step_entry(ctx: SuiteContext, role: str, backend: str, mode: str) -> dict[str, Any]:
    """One CFG step (the engine's two forwards) of `role` on `backend`, eager or compiled; a failure
    (a kernel that refuses the shape, out of memory, a compile error) is this entry's, not the part's."""
    entry: dict[str, Any] = {"model": role, "backend": backend, "mode": mode}
    try:
        return _step_entry(ctx, entry, role, backend, mode)
    except Exception as exc:
        free_memory()
        ctx.log(f"  {role} {backend} {mode}: error {exc!r}")
        return entry | {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}


def _step_entry(ctx: SuiteContext, entry: dict[str, Any], role: str, backend: str, mode: str) -> dict[str, Any]:
    warmup, iters = ctx.warmup[role], ctx.iters[role]
    step = ctx.step_estimate(role)
    estimate = None
    if step is not None:
        estimate = step * (warmup + iters + 2) + (ctx.compile_estimate_s if mode == "compiled" else 0.0)
    if not ctx.budget.allows(estimate):
        return entry | {"status": "skipped", "reason": ctx.budget.reason(estimate)}
    model = ctx.model(role)
    latents, t, encoded = ctx.step_inputs(role)
    apply_attention_backend(model, backend)
    last: dict[str, torch.Tensor] = {}

    def fn() -> None:
        last["out"] = ctx.family.predict(model, latents, t, encoded, GUIDANCE_SCALE)

    try:
        if mode == "compiled":
            if role not in ctx.compiled:
                components.compile_repeated_blocks(model)  # what the engine does with compile: true
                ctx.compiled.add(role)
            torch._dynamo.reset()  # each (model, backend) compiles afresh: its own compile time, static shapes
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            sync(ctx.device)
            entry["first_call_s"] = time.perf_counter() - start
        base = allocated_gib(ctx.device)
        with _stance(eager=mode == "eager" and role in ctx.compiled):
            m = Timer(ctx.device, warmup, iters).measure(fn)
    finally:
        apply_attention_backend(model, "native")
    tflops = ctx.cfg_step_flops(role) / m["mean_s"] / 1e12
    ctx.step_s[(role, backend, mode)] = m["mean_s"]
    out = last["out"].detach().float().cpu()
    entry.update(
        status="ok",
        step_s=m["mean_s"],
        min_s=m["min_s"],
        stdev_s=m["stdev_s"],
        warmup=warmup,
        iters=iters,
        tflops=tflops,
        mfu=tflops / ctx.peak_tflops if ctx.peak_tflops else None,
        of_matmul_ceiling=tflops / ctx.matmul_tflops if ctx.matmul_tflops else None,
        peak_memory_gib=m["peak_memory_gib"],
        activation_peak_gib=(m["peak_memory_gib"] - base) if base is not None else None,
        params_gib=param_gib(model),
        output_finite=bool(torch.isfinite(out).all()),
    )
    eager_ref = ctx.outputs.get((role, backend))
    if mode == "eager":
        ctx.outputs[(role, backend)] = out
    elif eager_ref is not None:
        entry["vs_eager"] = max_abs_diff(eager_ref, out)
    eager_s = ctx.step_s.get((role, backend, "eager"))
    if mode == "compiled" and eager_s:
        entry["speedup_vs_eager"] = eager_s / m["mean_s"]
    ctx.log(
        f"  {role} {backend} {mode}: {m['mean_s']:.3f} s/step, {tflops:.1f} TFLOP/s"
        + (f", MFU {entry['mfu']:.1%}" if entry["mfu"] else "")
        + (f", first call {entry['first_call_s']:.1f} s" if "first_call_s" in entry else "")
    )
    return entry


def _ratio(ctx: SuiteContext, backend: str = "native", mode: str = "eager") -> float | None:
    small, large = ctx.step_s.get(("small", backend, mode)), ctx.step_s.get(("large", backend, mode))
    return small / large if small and large else None


def part_steps(ctx: SuiteContext) -> dict[str, Any]:
    """Per-step cost of both transformers, native attention, eager; the 1.3B/14B ratio."""
    entries = [step_entry(ctx, role, "native", "eager") for role in ROLES]
    return {
        "entries": entries,
        "ratio_small_to_large": _ratio(ctx),
        "build_s": dict(ctx.build_s),
        "params_gib": {role: param_gib(m) for role, m in ctx.models.items()},
        "flops_per_cfg_step_tflop": {role: ctx.cfg_step_flops(role) / 1e12 for role in ROLES},
    }


def part_compiled(ctx: SuiteContext) -> dict[str, Any]:
    """Both transformers with their repeated blocks compiled (the engine's compile: true), native attention."""
    entries = [step_entry(ctx, role, "native", "compiled") for role in ROLES]
    return {"entries": entries, "ratio_small_to_large": _ratio(ctx, "native", "compiled")}


def part_backends(ctx: SuiteContext) -> dict[str, Any]:
    """Every other available attention backend, eager."""
    entries = [step_entry(ctx, role, b, "eager") for b in ctx.backends if b != "native" for role in ROLES]
    return {"entries": entries, "backends": [b for b in ctx.backends if b != "native"]}


def part_backends_compiled(ctx: SuiteContext) -> dict[str, Any]:
    """Every other available attention backend, compiled."""
    entries = [step_entry(ctx, role, b, "compiled") for b in ctx.backends if b != "native" for role in ROLES]
    return {"entries": entries}


def part_vae_decode(ctx: SuiteContext) -> dict[str, Any]:
    """The Wan VAE (float32, as the pair config's default) decoding one video's latents."""
    vae = ctx.get_vae()
    timer = Timer(ctx.device, ctx.warmup["vae"], ctx.iters["vae"])
    figures: dict[str, Any] = dict(profile_vae_decode(vae, ctx.shape, timer))
    ctx.decode_s = figures["vae_decode_s"]
    figures["params_gib"] = param_gib(vae)
    figures["warmup"], figures["iters"] = ctx.warmup["vae"], ctx.iters["vae"]
    if _have_ffmpeg():
        figures["export_s"] = profile_export(ctx.shape)
    else:
        figures["export"] = "skipped: imageio-ffmpeg is not installed"
    ctx.log(f"  VAE decode {figures['vae_decode_s']:.3f} s (tiled: {bool(figures['vae_tiled'])})")
    return figures


def part_text_encoder(ctx: SuiteContext) -> dict[str, Any]:
    """umT5-XXL encoding one prompt (a sketch replica encodes two per request with CFG)."""
    if not ctx.text_encoder:
        return {"status": "skipped", "reason": "--no-text-encoder"}
    torch.manual_seed(4)
    start = time.perf_counter()
    encoder = build_text_encoder(ctx.preset.text_encoder, ctx.device, ctx.dtype)
    sync(ctx.device)
    built = time.perf_counter() - start
    try:
        timer = Timer(ctx.device, ctx.warmup["small"], ctx.iters["small"])
        figures = profile_text_encode(encoder, ctx.preset.text_encoder, ctx.preset.text_tokens, timer)
        figures["params_gib"] = param_gib(encoder)
        figures["build_s"] = built
    finally:
        del encoder
        free_memory()
    ctx.log(f"  text encode {figures['text_encode_s']:.4f} s per prompt")
    return figures


def _have_ffmpeg() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _scheduler() -> Any:
    """The Wan2.1-T2V Diffusers checkpoints' scheduler, as the tiny pair writes it too."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=3.0,
        solver_order=2,
    )


def ensure_pair(ctx: SuiteContext, render_weights: bool) -> tuple[Path, Path]:
    """Diffusers folders for the pair: configs always (what the engine reads before loading), and with
    `render_weights` the 1.3B and VAE weights a render replica loads. The 14B's weights are never written
    (tens of GB): sketch-side engines take the suite's built model through the component cache."""
    from transformers import UMT5Config

    if ctx.pair is None:
        sketch, render = ctx.workdir / "pair" / "sketch", ctx.workdir / "pair" / "render"
        ctx.model("large").save_config(sketch / "transformer")
        ctx.model("small").save_config(render / "transformer")
        UMT5Config(**ctx.preset.text_encoder).save_pretrained(sketch / "text_encoder")
        ctx.get_vae().save_config(render / "vae")
        for folder in (sketch, render):
            _scheduler().save_pretrained(folder / "scheduler")
        ctx.pair = (sketch, render)
    if render_weights and not ctx.render_weights_written:
        _, render = ctx.pair
        ctx.model("small").save_pretrained(render / "transformer")
        ctx.get_vae().save_pretrained(render / "vae")
        ctx.render_weights_written = True
    return ctx.pair


def pair_config(ctx: SuiteContext, steps: int) -> ModelPairConfig:
    sketch, render = ensure_pair(ctx, render_weights=False)
    s = ctx.shape
    return ModelPairConfig(
        family="wan2.1",
        name=f"{ctx.preset.name}-random",
        sketch_path=str(sketch),
        render_path=str(render),
        device=str(ctx.device),
        dtype="float32" if ctx.dtype == torch.float32 else "bfloat16",
        max_sequence_length=ctx.preset.text_tokens,
        defaults=RequestDefaults(height=s.height, width=s.width, num_frames=s.num_frames, num_inference_steps=steps),
    )


def colocated_engine(ctx: SuiteContext, config: ModelPairConfig, roles: frozenset[Role]) -> SRDiffusionEngine:
    """An engine of `roles` as a replica holds them. The sketch role takes the suite's built 14B, put into
    the component cache under the key the engine looks up (its weights are never written); the render
    role loads the 1.3B from the folder like a render replica, so this engine's render model and a fresh
    replica's are the same load of the same file."""
    components.clear()
    kind = components.transformer_kind(config.attention_backend, config.compile)
    large = apply_attention_backend(ctx.model("large"), config.attention_backend)
    components.load_shared(kind, config.sketch_path, ctx.dtype, ctx.device, lambda: large)
    if Role.RENDER in roles:
        ensure_pair(ctx, render_weights=True)
    engine = SRDiffusionEngine(config, roles)
    if Role.SKETCH in roles and engine.sketch_model is not large:
        raise RuntimeError("the engine did not take the suite's 14B from the component cache")
    return engine


def typical_switch(steps: int) -> int:
    return max(1, min(steps - 1, round(TYPICAL_SWITCH_FRACTION * steps)))


def _request(ctx: SuiteContext, steps: int, switch: str) -> GenerationRequest:
    s = ctx.shape
    return GenerationRequest(
        prompt="a red fox running through snow",
        height=s.height,
        width=s.width,
        num_frames=s.num_frames,
        num_inference_steps=steps,
        switch=switch,
        seed=7,
    )


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    timings[name] = time.perf_counter() - start


def part_srdiffusion(ctx: SuiteContext) -> dict[str, Any]:
    """Large-only against a fixed switch at the typical step, through the engine; then the render
    replica's path: handoff bytes into a fresh engine that loads the render models from disk."""
    large_s, small_s = ctx.step_estimate("large"), ctx.step_estimate("small")
    steps, decode = ctx.sr_steps, ctx.decode_s or 0.0
    note = None
    if large_s is not None and small_s is not None:

        def estimate(n: int) -> float:
            k = typical_switch(n)
            return (n + k) * large_s + 2 * (n - k) * small_s + decode + ctx.io_estimate_s

        while steps > 4 and not ctx.budget.allows(estimate(steps)):
            steps -= 1
        if not ctx.budget.allows(estimate(steps)):
            raise BudgetSpent(ctx.budget.reason(estimate(steps)))
        if steps != ctx.sr_steps:
            note = f"steps reduced from {ctx.sr_steps} to {steps} to fit the time budget"
    k = typical_switch(steps)
    config = pair_config(ctx, steps)
    start = time.perf_counter()
    ensure_pair(ctx, render_weights=True)
    out_io = {"write_render_weights_s": time.perf_counter() - start}
    with _timed(out_io, "colocated_load_s", ctx.device):
        engine = colocated_engine(ctx, config, frozenset({Role.SKETCH, Role.RENDER}))
    encoded = ctx.step_inputs("large")[2]
    out: dict[str, Any] = {"num_steps": steps, "switch_step": k, "switch_fraction": TYPICAL_SWITCH_FRACTION}
    out["setup"] = out_io
    if note:
        out["note"] = note

    large_only: dict[str, float] = {}
    request = engine.resolve(_request(ctx, steps, f"fixed:{steps}"))
    with _timed(large_only, "denoise_s", ctx.device):
        with _timed(large_only, "sketch_s", ctx.device):
            state = engine.sketch(request, encoded, job_id="large-only")
        engine.render(state)
    ctx.log(f"  large-only {steps} steps: {large_only['denoise_s']:.2f} s")

    sr: dict[str, float] = {}
    request = engine.resolve(_request(ctx, steps, f"fixed:{k}"))
    with _timed(sr, "denoise_s", ctx.device):
        with _timed(sr, "sketch_s", ctx.device):
            state = engine.sketch(request, encoded, job_id="srdiffusion")
        with _timed(sr, "handoff_serialize_s", ctx.device):
            blob = state.to_bytes()
        with _timed(sr, "handoff_deserialize_s", ctx.device):
            parsed = HandoffState.from_bytes(blob)
        with _timed(sr, "render_s", ctx.device):
            colocated_latents = engine.render(parsed)
    ctx.sketch_state, ctx.handoff_blob = state, blob
    colocated_latents = colocated_latents.detach().cpu()
    ctx.log(f"  SRDiffusion fixed:{k} of {steps}: {sr['denoise_s']:.2f} s")
    del engine
    components.clear()

    fresh = render_replica(ctx, config, blob)
    fresh_latents = fresh.pop("latents")
    ratio = _ratio(ctx)
    measured_ratio = (sr["render_s"] / (steps - k)) / (sr["sketch_s"] / k)
    r = ratio if ratio is not None else measured_ratio
    handoff = sr["handoff_serialize_s"] + sr["handoff_deserialize_s"]
    decode_s = ctx.decode_s if ctx.decode_s is not None else fresh.get("decode_s", 0.0)
    out.update(
        large_only=large_only,
        srdiffusion=sr,
        handoff_bytes=len(blob),
        speedup_denoise=large_only["denoise_s"] / sr["denoise_s"],
        speedup_with_decode=(large_only["denoise_s"] + decode_s) / (sr["denoise_s"] + decode_s),
        ratio_used=r,
        ratio_source="steps part (native eager)" if ratio is not None else "this part's own sketch/render steps",
        ratio_in_engine=measured_ratio,
        amdahl_bound=steps / (k + (steps - k) * r),
        amdahl_bound_with_handoff=steps * large_s / (k * large_s + (steps - k) * r * large_s + handoff)
        if large_s
        else None,
        render_replica=fresh,
        fresh_equals_colocated=bitwise_equal(fresh_latents, colocated_latents),
        fresh_vs_colocated=max_abs_diff(colocated_latents, fresh_latents),
    )
    ctx.log(
        f"  speedup {out['speedup_denoise']:.2f}x (Amdahl bound {out['amdahl_bound']:.2f}x at ratio {r:.3f}); "
        f"fresh render replica equal: {out['fresh_equals_colocated']}"
    )
    return out


def render_replica(ctx: SuiteContext, config: ModelPairConfig, blob: bytes) -> dict[str, Any]:
    """What RenderWorker does with a handoff (srserve/serving/pools/workers.py), without Ray: parse the
    bytes, render on an engine of roles {render, decode} that loaded its models from the folders, hash the
    latents, decode, export (skipped without imageio-ffmpeg)."""
    timings: dict[str, Any] = {}
    with _timed(timings, "load_s", ctx.device):
        engine = SRDiffusionEngine(config, frozenset({Role.RENDER, Role.DECODE}))
    if engine.render_model is ctx.models["small"]:
        raise RuntimeError("the render replica's engine reused the suite's model instead of loading its own")
    try:
        steps: list[int] = []
        with _timed(timings, "parse_s", ctx.device):
            state = HandoffState.from_bytes(blob)
        with _timed(timings, "render_s", ctx.device):
            latents = engine.render(state, on_step=lambda _s, done, _n: steps.append(done), cancelled=lambda: False)
        timings["render_steps"] = len(steps)
        timings["latents_sha256"] = hashlib.sha256(
            latents.detach().float().cpu().contiguous().numpy().tobytes()
        ).hexdigest()
        with _timed(timings, "decode_s", ctx.device):
            frames = engine.decode(latents)
        timings["frames_shape"] = list(frames.shape)
        if _have_ffmpeg():
            with _timed(timings, "export_s", ctx.device):
                timings["video_bytes"] = len(engine.export(frames, state.request.fps))
        else:
            timings["export"] = "skipped: imageio-ffmpeg is not installed"
        timings["latents"] = latents.detach().cpu()
    finally:
        del engine
        components.clear()
        free_memory()
    return timings


def _tensors(state: HandoffState) -> dict[str, torch.Tensor]:
    tensors = {"latents": state.latents, "prompt_embeds": state.prompt_embeds, "timesteps": state.timesteps}
    if state.negative_prompt_embeds is not None:
        tensors["negative_prompt_embeds"] = state.negative_prompt_embeds
    if state.sigmas is not None:
        tensors["sigmas"] = state.sigmas
    tensors.update({f"scheduler/{k}": v for k, v in state.scheduler.tensors.items()})
    return tensors


def part_handoff(ctx: SuiteContext) -> dict[str, Any]:
    """The real-size handoff: serialize (incl. its device-to-host copies), parse, the copies alone,
    against one render step."""
    state = ctx.sketch_state
    out: dict[str, Any] = {}
    if state is None:  # the SRDiffusion part did not run: sketch two steps for a state
        steps = ctx.sr_steps
        engine = colocated_engine(ctx, pair_config(ctx, steps), frozenset({Role.SKETCH}))
        encoded = ctx.step_inputs("large")[2]
        state = engine.sketch(engine.resolve(_request(ctx, steps, "fixed:2")), encoded, job_id="handoff")
        del engine
        components.clear()
        out["state_from"] = "two sketch steps run by this part"
    else:
        out["state_from"] = "the SRDiffusion part's sketch"
    iters = 3 if ctx.smoke else 5
    times: dict[str, list[float]] = {k: [] for k in ("serialize_s", "deserialize_s", "d2h_s", "h2d_s")}
    blob, parsed = b"", None
    for _ in range(iters):
        timings: dict[str, float] = {}
        with _timed(timings, "serialize_s", ctx.device):
            blob = state.to_bytes()
        with _timed(timings, "deserialize_s", ctx.device):
            parsed = HandoffState.from_bytes(blob)
        with _timed(timings, "d2h_s", ctx.device):
            host = {k: v.to("cpu") for k, v in _tensors(state).items()}
        with _timed(timings, "h2d_s", ctx.device):
            moved = {k: v.to(ctx.device) for k, v in _tensors(parsed).items()}
        for key, value in timings.items():
            times[key].append(value)
        del host, moved
    assert parsed is not None
    out.update({k: statistics.median(v) for k, v in times.items()})
    out["iters"] = iters
    out["bytes"] = len(blob)
    out["tensors"] = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype), "bytes": v.numel() * v.element_size()}
        for k, v in _tensors(parsed).items()
    }
    sent, received = _tensors(state), _tensors(parsed)
    out["round_trip_equal"] = sent.keys() == received.keys() and all(bitwise_equal(sent[k], received[k]) for k in sent)
    render_step = ctx.step_s.get(("small", "native", "eager"))
    total = out["serialize_s"] + out["deserialize_s"] + out["h2d_s"]
    out["handoff_total_s"] = total
    out["render_step_s"] = render_step
    out["handoff_over_render_step"] = total / render_step if render_step else None
    ctx.log(f"  handoff {len(blob) / 2**20:.1f} MiB: {total * 1e3:.1f} ms total")
    return out


def vace_config(ctx: SuiteContext, role: str) -> dict[str, Any]:
    """The role's model as a VACE model: Wan2.1-VACE-14B / 1.3B's layers at real size, every other layer on the
    smoke preset."""
    config = ctx.config(role)
    layers = WAN21_VACE_LAYERS[role] if ctx.preset == WAN21 else list(range(0, config["num_layers"], 2))
    return {**config, "vace_layers": layers, "vace_in_channels": VACE_IN_CHANNELS}


def vace_step_entry(ctx: SuiteContext, role: str) -> dict[str, Any]:
    """One CFG step of the role's VACE model (`WanVACEFamily.predict`, a random VACE context), built for this
    entry and freed after it; against the T2V step of the `steps` part and the FLOP model's ratio."""
    config = vace_config(ctx, role)
    s = ctx.shape
    shape = (s.width, s.height, s.num_frames, ctx.preset.text_tokens)
    forward = transformer_forward_flops(config, *shape)
    vace_forward = forward + vace_extra_flops(config, *shape)
    entry: dict[str, Any] = {"model": role, "vace_layers": config["vace_layers"], "flop_ratio": vace_forward / forward}
    warmup, iters = ctx.warmup[role], ctx.iters[role]
    step = ctx.step_estimate(role)
    estimate = None if step is None else step * entry["flop_ratio"] * (warmup + iters + 2) + ctx.build_s.get(role, 0.0)
    if not ctx.budget.allows(estimate):
        return entry | {"status": "skipped", "reason": ctx.budget.reason(estimate)}
    model = None
    try:
        torch.manual_seed(4 if role == "large" else 5)
        start = time.perf_counter()
        model = apply_attention_backend(build_vace_transformer(config, ctx.device, ctx.dtype), "native")
        sync(ctx.device)
        entry["build_s"] = time.perf_counter() - start
        latents, t, encoded = ctx.step_inputs(role)
        g = torch.Generator().manual_seed(11)
        context = torch.randn(1, VACE_IN_CHANNELS, *latents.shape[2:], generator=g).to(ctx.device, ctx.dtype)
        encoded = EncodedPrompt(
            encoded.prompt_embeds, encoded.negative_prompt_embeds, vace_context=context, conditioning_scale=1.0
        )
        family = get_family("wan2.1-vace")
        last: dict[str, torch.Tensor] = {}

        def fn() -> None:
            last["out"] = family.predict(model, latents, t, encoded, GUIDANCE_SCALE)

        base = allocated_gib(ctx.device)
        m = Timer(ctx.device, warmup, iters).measure(fn)
        tflops = 2 * vace_forward / m["mean_s"] / 1e12
        t2v = ctx.step_s.get((role, "native", "eager"))
        entry.update(
            status="ok",
            step_s=m["mean_s"],
            min_s=m["min_s"],
            warmup=warmup,
            iters=iters,
            tflops=tflops,
            mfu=tflops / ctx.peak_tflops if ctx.peak_tflops else None,
            peak_memory_gib=m["peak_memory_gib"],
            activation_peak_gib=(m["peak_memory_gib"] - base) if base is not None else None,
            params_gib=param_gib(model),
            t2v_step_s=t2v,
            measured_ratio_over_t2v=m["mean_s"] / t2v if t2v else None,
            output_finite=bool(torch.isfinite(last["out"]).all()),
        )
        ctx.log(
            f"  VACE {role}: {m['mean_s']:.3f} s/step ({len(config['vace_layers'])} VACE blocks), "
            f"{tflops:.1f} TFLOP/s; FLOP ratio over T2V {entry['flop_ratio']:.3f}"
            + (f", measured {entry['measured_ratio_over_t2v']:.3f}" if t2v else "")
        )
        return entry
    except Exception as exc:
        ctx.log(f"  VACE {role}: error {exc!r}")
        return entry | {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        model = None  # the VACE model's memory goes back before the next entry builds its own
        free_memory()


def part_vace_steps(ctx: SuiteContext) -> dict[str, Any]:
    """Per-step cost of Wan2.1-VACE-1.3B and -14B (random weights, random context), native attention, eager:
    what the derived VACE profile (benchmarks/derive_vace_profile.py) takes as T2V step x FLOP ratio."""
    entries = [vace_step_entry(ctx, role) for role in ROLES]
    steps = {e["model"]: e.get("step_s") for e in entries}
    return {
        "entries": entries,
        "ratio_small_to_large": steps["small"] / steps["large"] if steps["small"] and steps["large"] else None,
    }


def cleanup(ctx: SuiteContext) -> None:
    components.clear()
    shutil.rmtree(ctx.workdir, ignore_errors=True)


PARTS: list[tuple[str, Callable[[SuiteContext], dict[str, Any]]]] = [
    ("device", part_device),
    ("steps", part_steps),
    ("vae_decode", part_vae_decode),
    ("srdiffusion", part_srdiffusion),
    ("handoff", part_handoff),
    ("vace_steps", part_vace_steps),
    ("text_encoder", part_text_encoder),
    ("compiled", part_compiled),
    ("backends", part_backends),
    ("backends_compiled", part_backends_compiled),
]
