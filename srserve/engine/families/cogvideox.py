"""CogVideoX text-to-video: sketch with CogVideoX-5B, render with CogVideoX-2B.

The two checkpoints share the T5 encoder and the VAE weights, but not the latent scaling (VAE
`scaling_factor` 0.7 vs 1.15258426), the noise schedule (`snr_shift_scale` 1.0 vs 3.0), the
positional encoding (RoPE vs sin-cos) or the preferred dtype (bf16 vs fp16). So the handoff is
not the identity: the latent is rescaled and moved to the render timestep of equal
signal-to-noise ratio (`srserve.engine.denoising.snr_match`), and the render continues from there with the
remaining steps (see docs/engine.md, "CogVideoX").

Conditioning, the denoising step and decoding mirror diffusers' CogVideoXPipeline operation for
operation: frames-first latents [B, F, C, H, W] created in the prompt embeddings' dtype, one
transformer call on [uncond, cond], `.float()` before CFG, optional dynamic CFG, the step with
`eta` and the generator (the DPM scheduler's also with the previous x0 estimate and the previous
timestep), and the cast back to the latents' dtype. That is what makes "switch at N" equal the
pipeline on the large model bit for bit.

Final latents leave `render` in the sketch model's latent space (scaled by its VAE
`scaling_factor`), and `decode` divides by that factor: with no render step nothing is converted
at all, and a rendered latent is mapped back exactly (both spaces agree on the clean sample).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXTransformer3DModel,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import AutoTokenizer, T5EncoderModel

from srserve.engine.config import ModelPairConfig
from srserve.engine.denoising.scheduler_state import SchedulerSnapshot
from srserve.engine.denoising.snr_match import SnrMatch
from srserve.engine.families.base import EncodedPrompt, IncompatiblePairError, ModelFamily, require_component_config
from srserve.engine.handoff import HandoffState
from srserve.engine.parallel.cfg import CfgSplit
from srserve.engine.parallel.config import ParallelUnsupported
from srserve.engine.request import ResolvedRequest

SCHEDULERS: dict[str, type] = {
    "CogVideoXDDIMScheduler": CogVideoXDDIMScheduler,
    "CogVideoXDPMScheduler": CogVideoXDPMScheduler,
}
# The DPM scheduler's multistep state, which CogVideoXPipeline keeps in loop locals; srserve keeps it
# on the scheduler instance so the handoff captures it (scheduler_state.STATE_ATTRIBUTES).
OLD_X0 = "old_pred_original_sample"
TIMESTEP_BACK = "timestep_back"
HANDOFF_EXTRAS_KEY = "cogvideox_handoff"

# Fields that must agree for a latent (and the text embeddings) to cross from one transformer to the other.
_TRANSFORMER_KEYS = (
    "in_channels",
    "out_channels",
    "patch_size",
    "patch_size_t",
    "text_embed_dim",
    "max_text_seq_length",
    "temporal_compression_ratio",
)
# The VAE weights are shared; its architecture must agree (the scaling factor may not).
_VAE_KEYS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "latent_channels",
    "layers_per_block",
    "norm_num_groups",
    "temporal_compression_ratio",
    "use_quant_conv",
    "use_post_quant_conv",
)


def _compare(what: str, keys: tuple[str, ...], sketch: dict[str, Any], render: dict[str, Any]) -> None:
    for key in keys:
        if sketch.get(key) != render.get(key):
            raise IncompatiblePairError(
                f"{what} mismatch on {key!r}: sketch has {sketch.get(key)!r}, render has {render.get(key)!r}"
            )


@functools.lru_cache(maxsize=32)
def _rotary_embeddings(
    head_dim: int, patch: int, sample_height: int, sample_width: int, frames: int, height: int, width: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """CogVideoXPipeline._prepare_rotary_positional_embeddings (CogVideoX 1.0), on latent sizes."""
    grid_height, grid_width = height // patch, width // patch
    base_width, base_height = sample_width // patch, sample_height // patch
    crops = get_resize_crop_region_for_grid((grid_height, grid_width), base_width, base_height)
    return get_3d_rotary_pos_embed(
        embed_dim=head_dim,
        crops_coords=crops,
        grid_size=(grid_height, grid_width),
        temporal_size=frames,
        device=torch.device(device),
    )


@dataclass(frozen=True)
class RenderPlan:
    """Where the render continues after `switch_step` sketch steps of `num_steps`."""

    sketch_timestep: int
    render_timestep: int
    latent_gain: float
    timesteps: torch.Tensor  # sketch timesteps [0, k), then the render schedule [k, N)


class CogVideoXFamily(ModelFamily):
    name = "cogvideox"
    cached_modules = (r"transformer_blocks\.\d+\.(attn1|ff)",)

    def __init__(self) -> None:
        self._config: ModelPairConfig | None = None
        self._sketch_scheduler: Any = None
        self._render_scheduler: Any = None
        self._match: SnrMatch | None = None
        self._max_text_len = 226

    # -- the pair ---------------------------------------------------------------------------

    def check_pair(self, config: ModelPairConfig) -> None:
        for label, path in (("sketch", config.sketch_path), ("render", config.render_path)):
            if not Path(path).is_dir():
                raise IncompatiblePairError(f"{label} model folder {path!r} does not exist")
        sketch_t = require_component_config(config.sketch_path, "transformer")
        render_t = require_component_config(config.render_path, "transformer")
        for label, cfg in (("sketch", sketch_t), ("render", render_t)):
            if cfg.get("_class_name") != "CogVideoXTransformer3DModel":
                raise IncompatiblePairError(
                    f"{label} transformer is {cfg.get('_class_name')!r}, not a CogVideoXTransformer3DModel"
                )
            if cfg.get("patch_size_t") is not None:
                raise IncompatiblePairError(
                    f"{label} transformer is CogVideoX 1.5 (patch_size_t); only 1.0 is supported"
                )
        _compare("transformer", _TRANSFORMER_KEYS, sketch_t, render_t)
        te = require_component_config(config.text_encoder_path or config.sketch_path, "text_encoder")
        if te.get("d_model") != sketch_t.get("text_embed_dim"):
            raise IncompatiblePairError(
                f"text encoder width {te.get('d_model')} != transformer text_embed_dim {sketch_t.get('text_embed_dim')}"
            )
        seq = config.max_sequence_length
        if seq is not None and seq != sketch_t.get("max_text_seq_length"):
            raise IncompatiblePairError(
                f"max_sequence_length {seq} != the transformers' max_text_seq_length "
                f"{sketch_t.get('max_text_seq_length')} (the sin-cos position table is built for that length)"
            )
        sketch_vae = require_component_config(config.sketch_path, "vae")
        render_vae = require_component_config(config.render_path, "vae")
        _compare("VAE", _VAE_KEYS, sketch_vae, render_vae)
        if config.vae_path is not None:
            _compare("VAE", _VAE_KEYS, sketch_vae, require_component_config(config.vae_path, "vae"))
        if render_vae.get("latent_channels") != sketch_t.get("in_channels"):
            raise IncompatiblePairError(
                f"VAE latent_channels {render_vae.get('latent_channels')} != transformer in_channels "
                f"{sketch_t.get('in_channels')}"
            )
        for label, vae in (("sketch", sketch_vae), ("render", render_vae)):
            if not isinstance(vae.get("scaling_factor"), int | float) or vae["scaling_factor"] <= 0:
                raise IncompatiblePairError(f"{label} VAE config has no positive scaling_factor")
        sketch_s = require_component_config(config.sketch_path, "scheduler")
        render_s = require_component_config(config.render_path, "scheduler")
        for label, cfg in (("sketch", sketch_s), ("render", render_s)):
            if cfg.get("_class_name") not in SCHEDULERS:
                raise IncompatiblePairError(
                    f"{label} scheduler {cfg.get('_class_name')!r} is not supported for CogVideoX "
                    f"(supported: {', '.join(SCHEDULERS)})"
                )
        _compare("scheduler", ("_class_name",), sketch_s, render_s)

    def bind(self, config: ModelPairConfig) -> None:
        self._config = config
        self._sketch_scheduler = self.load_scheduler(config.sketch_path)
        self._render_scheduler = self.load_scheduler(config.render_path)
        self._max_text_len = int(require_component_config(config.sketch_path, "transformer")["max_text_seq_length"])
        self._match = SnrMatch(
            sketch_alphas_cumprod=self._sketch_scheduler.alphas_cumprod.to(torch.float64),
            render_alphas_cumprod=self._render_scheduler.alphas_cumprod.to(torch.float64),
            sketch_scale=float(require_component_config(config.sketch_path, "vae")["scaling_factor"]),
            render_scale=float(require_component_config(config.render_path, "vae")["scaling_factor"]),
        )

    @property
    def snr_match(self) -> SnrMatch:
        if self._match is None:
            raise RuntimeError("CogVideoXFamily.bind(config) was not called")
        return self._match

    def max_sequence_length(self, config: ModelPairConfig) -> int:
        return config.max_sequence_length or self._max_text_len

    # -- loading ----------------------------------------------------------------------------

    def load_transformer(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        model = CogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer", dtype=dtype)
        return model.to(device).eval()

    def load_text_encoder(self, path: str, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        encoder = T5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        return tokenizer, encoder.to(device).eval()

    def load_vae(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        vae = AutoencoderKLCogVideoX.from_pretrained(path, subfolder="vae", dtype=dtype)
        return vae.to(device).eval()

    def load_scheduler(self, path: str) -> Any:
        class_name = require_component_config(path, "scheduler").get("_class_name")
        if class_name not in SCHEDULERS:
            raise IncompatiblePairError(f"scheduler {class_name!r} in {path!r} is not supported for CogVideoX")
        return SCHEDULERS[class_name].from_pretrained(path, subfolder="scheduler")

    def load_render_scheduler(self, config: ModelPairConfig) -> Any:
        return self.load_scheduler(config.render_path)

    # -- conditioning and one step ----------------------------------------------------------

    def _embed(self, tokenizer: Any, encoder: Any, text: str, max_len: int, device: torch.device) -> torch.Tensor:
        """CogVideoXPipeline._get_t5_prompt_embeds: padded to max_len, no attention mask."""
        ids = tokenizer(
            [text],
            padding="max_length",
            max_length=max_len,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        enc_device = next(encoder.parameters()).device
        embeds = encoder(ids.to(enc_device))[0]
        return embeds.to(dtype=encoder.dtype, device=device)

    @torch.no_grad()
    def encode_prompt(
        self, tokenizer: Any, text_encoder: Any, request: ResolvedRequest, max_len: int, device: torch.device
    ) -> EncodedPrompt:
        positive = self._embed(tokenizer, text_encoder, request.prompt, max_len, device)
        negative = None
        if request.guidance_scale > 1.0:
            negative = self._embed(tokenizer, text_encoder, request.negative_prompt or "", max_len, device)
        return EncodedPrompt(positive, negative)

    def latent_shape(self, request: ResolvedRequest, vae_config: dict[str, Any]) -> tuple[int, ...]:
        temporal = int(vae_config.get("temporal_compression_ratio", 4))
        spatial = 2 ** (len(vae_config.get("block_out_channels", (0, 0, 0, 0))) - 1)
        return (
            1,
            (request.num_frames - 1) // temporal + 1,
            int(vae_config.get("latent_channels", 16)),
            request.height // spatial,
            request.width // spatial,
        )

    def initial_latents(
        self,
        request: ResolvedRequest,
        encoded: EncodedPrompt,
        scheduler: Any,
        generator: torch.Generator,
        device: torch.device,
        vae_config: dict[str, Any],
    ) -> torch.Tensor:
        """CogVideoXPipeline.prepare_latents: in the prompt embeddings' dtype, times init_noise_sigma."""
        shape = self.latent_shape(request, vae_config)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=encoded.prompt_embeds.dtype)
        return latents * scheduler.init_noise_sigma

    def guidance_scale(self, request: ResolvedRequest, timestep: torch.Tensor, num_steps: int) -> float:
        """CogVideoXPipeline's `use_dynamic_cfg` schedule when the pair enables it, else the request's."""
        scale = request.guidance_scale
        if self._config is not None and self._config.use_dynamic_cfg:
            return 1 + scale * ((1 - math.cos(math.pi * ((num_steps - timestep.item()) / num_steps) ** 5.0)) / 2)
        return scale

    @torch.no_grad()
    def predict(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoded: EncodedPrompt,
        guidance_scale: float,
        *,
        cfg_split: CfgSplit | None = None,
    ) -> torch.Tensor:
        if cfg_split is not None:  # both branches are one batched forward here (check_parallel refuses it first)
            raise ParallelUnsupported("CFG parallel is not supported for CogVideoX (one batched forward)")
        dtype = transformer.dtype
        cfg = encoded.negative_prompt_embeds is not None
        if cfg:
            embeds = torch.cat([encoded.negative_prompt_embeds, encoded.prompt_embeds], dim=0)
            model_input = torch.cat([latents] * 2)
        else:
            embeds, model_input = encoded.prompt_embeds, latents
        config = transformer.config
        rotary = None
        if config.use_rotary_positional_embeddings:
            _, frames, _, height, width = latents.shape
            rotary = _rotary_embeddings(
                config.attention_head_dim,
                config.patch_size,
                config.sample_height,
                config.sample_width,
                frames,
                height,
                width,
                str(latents.device),
            )
        with transformer.cache_context("cond_uncond"):
            pred = transformer(
                hidden_states=model_input.to(dtype),
                encoder_hidden_states=embeds.to(dtype),
                timestep=timestep.expand(model_input.shape[0]),
                image_rotary_emb=rotary,
                attention_kwargs=None,
                return_dict=False,
            )[0]
        pred = pred.float()
        if cfg:
            uncond, text = pred.chunk(2)
            pred = uncond + guidance_scale * (text - uncond)
        return pred

    def step(
        self,
        scheduler: Any,
        prediction: torch.Tensor,
        timesteps: torch.Tensor,
        index: int,
        latents: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        t = timesteps[index]
        if isinstance(scheduler, CogVideoXDPMScheduler):
            out, x0 = scheduler.step(
                prediction,
                getattr(scheduler, OLD_X0, None),
                t,
                getattr(scheduler, TIMESTEP_BACK, None),
                latents,
                eta=0.0,
                generator=generator,
                return_dict=False,
            )
            setattr(scheduler, OLD_X0, x0)
            setattr(scheduler, TIMESTEP_BACK, t)
        else:
            out = scheduler.step(prediction, t, latents, eta=0.0, generator=generator, return_dict=False)[0]
        return out.to(latents.dtype)

    # -- the handoff ------------------------------------------------------------------------

    def render_plan(self, switch_step: int, num_steps: int) -> RenderPlan:
        """The SNR-matched start t' and the render schedule for the N - k remaining steps.

        The render model's own schedule for N steps, from step k on, shifted by t' - its k-th
        timestep: every step lands where the next begins (the schedulers step by
        num_train_timesteps // N), and with t' = that timestep (pure noise, or equal schedules)
        it is exactly the render model's own continuation.
        """
        sketch = type(self._sketch_scheduler).from_config(self._sketch_scheduler.config)
        render = type(self._render_scheduler).from_config(self._render_scheduler.config)
        sketch.set_timesteps(num_steps)
        render.set_timesteps(num_steps)
        k = switch_step
        if k >= num_steps:
            return RenderPlan(-1, -1, 1.0, sketch.timesteps)
        t = int(sketch.timesteps[k])
        t_render = self.snr_match.render_timestep(t)
        shift = t_render - int(render.timesteps[k])
        last = render.config.num_train_timesteps - 1
        remaining = (render.timesteps[k:] + shift).clamp(0, last)
        return RenderPlan(
            sketch_timestep=t,
            render_timestep=t_render,
            latent_gain=self.snr_match.latent_gain(t, t_render),
            timesteps=torch.cat([sketch.timesteps[:k], remaining]),
        )

    def convert_handoff(self, state: HandoffState) -> HandoffState:
        """Move the latent (and the DPM x0 history) into the render model's space and schedule."""
        k, n = state.switch_step, state.num_steps
        if k >= n:
            return state  # nothing left to render: the latent stays in the sketch's space
        match = self.snr_match
        plan = self.render_plan(k, n)
        snapshot = SchedulerSnapshot(state.scheduler.class_name, dict(state.scheduler.tensors), state.scheduler.values)
        if OLD_X0 in snapshot.tensors:
            snapshot.tensors[OLD_X0] = snapshot.tensors[OLD_X0] * match.clean_gain
        back = None
        if TIMESTEP_BACK in snapshot.tensors:
            back = int(snapshot.tensors[TIMESTEP_BACK])
            snapshot.tensors[TIMESTEP_BACK] = torch.tensor(match.render_timestep(back), dtype=torch.int64)
        info = {
            "latent_space": "render",
            "sketch_timestep": plan.sketch_timestep,
            "render_timestep": plan.render_timestep,
            "latent_gain": plan.latent_gain,
            "clean_gain": match.clean_gain,
            "sketch_timestep_back": back,
            "target_log_snr": match.target_log_snr(plan.sketch_timestep),
        }
        return replace(
            state,
            latents=state.latents * plan.latent_gain,
            timesteps=plan.timesteps.to(state.timesteps.device),
            scheduler=snapshot,
            extras={**state.extras, HANDOFF_EXTRAS_KEY: info},
        )

    def render_timesteps(self, scheduler: Any, state: HandoffState) -> torch.Tensor:
        """The handoff's schedule, after checking it is the one this pair plans and its state fits."""
        k, n = state.switch_step, state.num_steps
        expected = self.render_plan(k, n).timesteps
        got = state.timesteps
        if got.dtype != torch.int64 or got.shape != expected.shape or not torch.equal(got.cpu(), expected):
            raise ValueError("handoff timesteps differ from the schedule this CogVideoX pair plans for it")
        if k < n and state.extras.get(HANDOFF_EXTRAS_KEY, {}).get("latent_space") != "render":
            raise ValueError("handoff latent was not converted to the render model's space")
        tensors = state.scheduler.tensors
        if TIMESTEP_BACK in tensors:
            back = tensors[TIMESTEP_BACK]
            last = scheduler.config.num_train_timesteps - 1
            if back.numel() != 1 or back.dtype != torch.int64 or not 0 <= int(back) <= last:
                raise ValueError(f"handoff {TIMESTEP_BACK} is not a timestep in [0, {last}]")
        if OLD_X0 in tensors and tensors[OLD_X0].shape != state.latents.shape:
            raise ValueError(f"handoff {OLD_X0} shape {tuple(tensors[OLD_X0].shape)} != latents shape")
        return got.to(scheduler.timesteps.device)

    def output_latents(self, latents: torch.Tensor, state: HandoffState) -> torch.Tensor:
        """Rendered latents back in the sketch's space (exact on the clean sample), so decode has one scale."""
        if state.switch_step >= state.num_steps:
            return latents
        return latents * (self.snr_match.sketch_scale / self.snr_match.render_scale)

    # -- decoding ---------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, vae: torch.nn.Module, latents: torch.Tensor) -> np.ndarray:
        """CogVideoXPipeline.decode_latents + postprocess, with the sketch model's scaling factor."""
        latents = latents.to(next(vae.parameters()).device, dtype=vae.dtype)
        latents = latents.permute(0, 2, 1, 3, 4)
        latents = 1 / self.snr_match.sketch_scale * latents
        video = vae.decode(latents).sample
        spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        frames = VideoProcessor(vae_scale_factor=spatial).postprocess_video(video=video, output_type="np")
        return np.asarray(frames[0], dtype=np.float32)
