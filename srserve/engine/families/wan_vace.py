"""Wan video editing (VACE): `wan2.1-vace` (Wan2.1-VACE-14B sketches, Wan2.1-VACE-1.3B renders) and
`wan2.2-vace` (Wan2.2-VACE-Fun-A14B's high-noise expert sketches, its low-noise expert renders, at the
model's boundary_ratio, as `wan2.2`).

Conditioning is diffusers' WanVACEPipeline's own code, run once on the sketch side: its
`preprocess_conditions` (the video, or black frames; the mask, or all white; each reference image
letterboxed onto a white canvas of the video's size), `prepare_video_latents` (the VAE latents, the
distribution's mode, of the video's kept part `video * (1 - mask)` and regenerated part `video * mask`,
each reference image's latents, zero-padded to both halves, prepended: the last image first) and
`prepare_masks` (the mask folded to 8 x 8 = 64 channels per latent pixel and resampled to the latent frames,
zero frames for the references). Together: the VACE context, 2 x z_dim + 64 channels (96), cast to the
sketch transformer's dtype as the pipeline casts it to its transformer's.

The noise has one latent frame more per reference image, and both models denoise those frames too;
the render drops them before decoding (the pipeline's `latents[:, :, num_reference_images:]`). So the
handoff (format version 4) carries the VACE context, the reference-frame count and the latents with
their reference frames; the request in it carries `conditioning_scale`. The render needs no video, VAE
encoder or images.

The pair check names each misfit: both transformers VACE models with valid `vace_layers`, the VACE
context width (`vace_in_channels` = 2 x z_dim + the VAE's spatial factor squared), and as for the
text-to-video parent (`wan2.1`, `wan2.2`), the latent channels, patch size, text width, VAE and
scheduler. The two models may have different VACE layers (the 14B has 8, the 1.3B 15): each reads the
scalar scale per its own layers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from diffusers import WanVACEPipeline, WanVACETransformer3DModel

from srserve.engine.config import ModelPairConfig
from srserve.engine.families.base import EncodedPrompt, IncompatiblePairError, refuse_misfit, require_component_config
from srserve.engine.families.wan import WanFamily
from srserve.engine.families.wan22 import Wan22Family, _with_defaults, locate, pipeline_folder
from srserve.engine.handoff import HandoffState
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.models.component_config import read_model_index
from srserve.engine.request import ResolvedRequest

VACE_CLASS = "WanVACETransformer3DModel"
DEFAULT_CONDITIONING_SCALE = 1.0  # WanVACEPipeline's


def expected_vace_channels(vae: dict[str, Any]) -> int:
    """The VACE context's channels: kept and regenerated latents (z_dim each), the mask folded per latent pixel."""
    return 2 * int(vae.get("z_dim", 16)) + int(vae.get("scale_factor_spatial", 8)) ** 2


def vace_problems(label: str, transformer: dict[str, Any], vae: dict[str, Any]) -> list[str]:
    """Why one transformer config cannot read this family's VACE context (empty: it can)."""
    problems = []
    if transformer.get("_class_name") != VACE_CLASS:
        problems.append(
            f"{label} transformer is a {transformer.get('_class_name')!r}, not a {VACE_CLASS} (no VACE blocks)"
        )
        return problems
    transformer = _with_defaults(WanVACETransformer3DModel, transformer)  # a key a folder omits is the class's
    layers, num_layers = transformer.get("vace_layers"), transformer.get("num_layers")
    if (
        not isinstance(layers, list)
        or not layers
        or not isinstance(num_layers, int)
        or 0 not in layers
        or len(set(layers)) != len(layers)
        or not all(isinstance(i, int) and 0 <= i < num_layers for i in layers)
    ):
        problems.append(
            f"{label} transformer vace_layers {layers!r}: distinct block indices below num_layers {num_layers!r}, "
            "layer 0 among them"
        )
    expected = expected_vace_channels(vae)
    if transformer.get("vace_in_channels") != expected:
        problems.append(
            f"{label} transformer vace_in_channels {transformer.get('vace_in_channels')!r} != {expected} "
            f"(2 x VAE z_dim {vae.get('z_dim')} + mask channels {vae.get('scale_factor_spatial')}^2)"
        )
    return problems


class _VACEConditioned:
    """What both Wan VACE families add to their text-to-video parents: the context, its frames, its checks."""

    edits_video = True
    first_frame_image = True  # input_reference: the first frame to keep (EditInputs.with_first_frame)
    # Not yet checked here: LoRA on VACE blocks (WanVACEPipeline's loader; a pair with adapters is refused, no
    # loader), and step caches, whose skipped blocks would meet the VACE hints the transformer adds between them.
    lora_pipeline = None
    step_caches = False
    name: str
    _render_transformer: dict[str, Any]
    _vae_config: dict[str, Any]

    def vace_pair_problems(self, sketch: dict[str, Any], render: dict[str, Any], vae: dict[str, Any]) -> list[str]:
        return vace_problems("sketch", sketch, vae) + vace_problems("render", render, vae)

    def latent_shape(self, request: ResolvedRequest, vae_config: dict[str, Any]) -> tuple[int, ...]:
        """The video's latents with one leading frame per reference image (WanVACEPipeline.prepare_latents)."""
        batch, channels, frames, height, width = super().latent_shape(request, vae_config)  # type: ignore[misc]
        return batch, channels, frames + len(request.reference_images or ()), height, width

    @torch.no_grad()
    def condition_edit(
        self,
        encoded: EncodedPrompt,
        inputs: EditInputs,
        request: ResolvedRequest,
        vae: torch.nn.Module,
        transformer: torch.nn.Module,
        device: torch.device,
    ) -> EncodedPrompt:
        """WanVACEPipeline.__call__'s step 5 up to the noise: its own methods, on a pipeline of this VAE and model."""
        # The pipeline object only lends its methods: they read the VAE, the transformer's patch size and the
        # video processor; no text encoder or scheduler is needed.
        pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=None, transformer=transformer)
        video, mask, references = pipe.preprocess_conditions(
            inputs.video,
            inputs.mask,
            inputs.reference_images or None,  # the pipeline reads an empty list as a malformed input
            1,
            request.height,
            request.width,
            request.num_frames,
            torch.float32,
            device,
        )
        latents = pipe.prepare_video_latents(video, mask, references, None, device)  # argmax: no generator drawn
        context = torch.cat([latents, pipe.prepare_masks(mask, references, None)], dim=1)
        scale = request.conditioning_scale
        return replace(
            encoded,
            vace_context=context.to(transformer.dtype),
            conditioning_scale=DEFAULT_CONDITIONING_SCALE if scale is None else scale,
            reference_frames=len(references[0]),
        )

    def output_latents(self, latents: torch.Tensor, state: HandoffState) -> torch.Tensor:
        """The video's latents: the reference frames dropped, as the pipeline drops them before decoding."""
        return latents[:, :, state.reference_frames :]

    def check_vace_handoff(self, state: HandoffState) -> None:
        """The VACE context the render model reads, the latents it continues, and their reference frames agree."""
        r, vae = state.request, self._vae_config
        temporal, spatial = int(vae.get("scale_factor_temporal", 4)), int(vae.get("scale_factor_spatial", 8))
        references = len(r.reference_images or ())
        frames = (r.num_frames - 1) // temporal + 1 + references
        grid = [frames, r.height // spatial, r.width // spatial]
        problems = []
        if state.reference_frames != references:
            problems.append(f"reference_frames {state.reference_frames}, the request has {references} reference_images")
        context = state.vace_context
        expected = [1, self._render_transformer.get("vace_in_channels"), *grid]
        if context is None:
            problems.append(
                f"no vace_context (a handoff older than version 4, or not from a VACE sketch): {self.name} needs one"
            )
        elif list(context.shape) != expected:
            problems.append(f"vace_context has shape {list(context.shape)}, expected {expected}")
        if list(state.latents.shape[2:]) != grid:
            problems.append(f"latents have frames x height x width {list(state.latents.shape[2:])}, expected {grid}")
        if problems:
            raise IncompatiblePairError("handoff does not fit this VACE render model: " + "; ".join(problems))


class WanVACEFamily(_VACEConditioned, WanFamily):
    """Wan2.1-VACE-14B sketches, Wan2.1-VACE-1.3B renders; one schedule, one latent space, one VACE context."""

    name = "wan2.1-vace"

    def __init__(self) -> None:
        self._render_transformer = {}
        self._vae_config = {}

    def check_pair(self, config: ModelPairConfig) -> None:
        index = read_model_index(config.sketch_path) or {}
        if index.get("boundary_ratio") is not None or (index.get("transformer_2") or [None])[0] is not None:
            raise IncompatiblePairError(
                f"sketch folder {config.sketch_path!r} is a two-expert (Wan2.2 VACE-Fun A14B) folder (boundary_ratio / "
                "transformer_2 in its model_index.json): use family wan2.2-vace"
            )
        super().check_pair(config)  # folders, latent channels, patch size, text width, VAE, scheduler
        vae = require_component_config(config.vae_path or config.render_path, "vae")
        sketch_t = require_component_config(config.sketch_path, "transformer")
        render_t = require_component_config(config.render_path, "transformer")
        problems = self.vace_pair_problems(sketch_t, render_t, vae)
        refuse_misfit(config.sketch_path, config.render_path, problems)

    def bind(self, config: ModelPairConfig) -> None:
        self._render_transformer = require_component_config(config.render_path, "transformer")
        self._vae_config = require_component_config(config.vae_path or config.render_path, "vae")

    def load_transformer(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        model = WanVACETransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        return model.to(device).eval()

    def check_handoff(self, state: HandoffState) -> None:
        self.check_vace_handoff(state)

    def render_timesteps(self, scheduler: Any, state: HandoffState) -> torch.Tensor:
        self.check_vace_handoff(state)
        return super().render_timesteps(scheduler, state)


class Wan22VACEFamily(_VACEConditioned, Wan22Family):
    """Wan2.2-VACE-Fun-A14B: its high-noise expert sketches, its low-noise expert renders (WanVACEPipeline with
    `transformer_2` and `boundary_ratio`); the boundary switch, guidance_scale_2 and paths as `wan2.2`."""

    name = "wan2.2-vace"
    transformer_class = WanVACETransformer3DModel

    def check_pair(self, config: ModelPairConfig) -> None:
        super().check_pair(config)  # the A14B folder, both experts' class, latents, text, VAE, schedule
        sketch, render = locate(config.sketch_path, render=False), locate(config.render_path, render=True)
        vae_folder = pipeline_folder(config.vae_path) if config.vae_path else render.pipeline
        problems = self.vace_pair_problems(
            require_component_config(sketch.pipeline, sketch.subfolder),
            require_component_config(render.pipeline, render.subfolder),
            require_component_config(vae_folder, "vae"),
        )
        refuse_misfit(sketch.transformer, render.transformer, problems)

    def check_handoff(self, state: HandoffState) -> None:
        self.check_vace_handoff(state)
        super().check_handoff(state)

    def render_timesteps(self, scheduler: Any, state: HandoffState) -> torch.Tensor:
        self.check_vace_handoff(state)
        return super().render_timesteps(scheduler, state)
