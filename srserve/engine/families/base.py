"""What a model family must provide for srserve to sketch with one model and render with another."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from srserve.engine.config import ModelPairConfig
from srserve.engine.handoff import HandoffState
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.models.component_config import read_component_config
from srserve.engine.parallel.cfg import CfgSplit
from srserve.engine.request import ResolvedRequest


class IncompatiblePairError(ValueError):
    """The sketch and render checkpoints cannot hand latents to each other."""


def refuse_misfit(sketch: object, render: object, problems: list[str]) -> None:
    """IncompatiblePairError naming both models and every problem, if there is one."""
    if problems:
        raise IncompatiblePairError(
            f"render model {str(render)!r} cannot continue sketch model {str(sketch)!r}: " + "; ".join(problems)
        )


def require_component_config(folder: str | Path, component: str) -> dict[str, Any]:
    """A component's config that a pair check needs; IncompatiblePairError, naming the folder, if it is missing."""
    cfg = read_component_config(folder, component)
    if cfg is None:
        raise IncompatiblePairError(f"{str(folder)!r} has no {component}/ config; is it a Diffusers-format folder?")
    return cfg


@dataclass
class EncodedPrompt:
    """What conditions every denoising step: the prompt's embeddings and, image-to-video, the image's."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    # Image-to-video: the first-frame mask and VAE latents, concatenated to the noisy latent's channels ...
    image_condition: torch.Tensor | None = None
    # ... and the CLIP image embeddings the transformer's image cross-attention reads (None if it has none).
    image_embeds: torch.Tensor | None = None
    # Video editing (VACE): the context the VACE blocks read, its scale, and how many of the latents' leading
    # frames are reference images (dropped before decoding).
    vace_context: torch.Tensor | None = None
    conditioning_scale: float = 1.0
    reference_frames: int = 0


class ModelFamily(ABC):
    """Loading, conditioning, one denoising prediction and decoding for one family of models.

    The engine owns the loop, the switch and the handoff; a family owns model internals.
    """

    name: str
    # The diffusers pipeline class whose `lora_state_dict` / `load_lora_into_transformer` read this family's
    # LoRA files (srserve.engine.adapters.loading); None: the family takes no adapters.
    lora_pipeline: type | None = None
    # Attention backends (srserve.engine.models.attention) this family's processors can run. Only `native`
    # unless a family's attention goes through diffusers' dispatcher and was checked with the others.
    attention_backends: frozenset[str] = frozenset({"native"})
    # Block submodules whose outputs a TaylorSeer step cache extrapolates (srserve.engine.denoising.cache).
    cached_modules: tuple[str, ...] = ()
    # Whether requests may run step caches on this family's models (False: refused, naming `cache`).
    step_caches: bool = True
    # Image-to-video: every request needs an input image (`input_reference`), encoded on the sketch side.
    takes_image: bool = False
    # Video editing (VACE): requests may give a video, its mask and reference images, encoded on the sketch side.
    edits_video: bool = False
    # Video editing: a request may give an input image (`input_reference`) instead of a video, as the first
    # frame to keep (the family builds the conditioning video and mask from it).
    first_frame_image: bool = False
    # Schedulers a request may name (srserve.engine.denoising.schedule); empty: the folder's schedule only.
    schedulers: frozenset[str] = frozenset()

    @abstractmethod
    def check_pair(self, config: ModelPairConfig) -> None:
        """Raise IncompatiblePairError, naming the mismatch, before any weights load."""

    def bind(self, config: ModelPairConfig) -> None:
        """Read what the family needs from both folders' configs (no weights); once per engine."""
        return None

    def max_sequence_length(self, config: ModelPairConfig) -> int:
        """Text tokens per prompt: the pair's setting, else the family's default."""
        return config.max_sequence_length or 512

    def transformer_config(self, path: str, render: bool) -> dict[str, Any] | None:
        """The config of the sketch (or render) transformer a path names, without weights."""
        return read_component_config(path, "transformer")

    @abstractmethod
    def load_transformer(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module: ...

    @abstractmethod
    def load_text_encoder(self, path: str, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
        """(tokenizer, text_encoder)."""

    @abstractmethod
    def load_vae(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module: ...

    def load_image_encoder(self, config: ModelPairConfig, dtype: torch.dtype, device: torch.device) -> Any:
        """Image-to-video: what `encode_image` needs besides the VAE (e.g. a CLIP encoder); None if nothing."""
        return None

    def encode_image(
        self,
        image: Any,
        request: ResolvedRequest,
        image_encoder: Any,
        vae: torch.nn.Module,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image-to-video: (image_condition, image_embeds) for one PIL image, on the sketch side."""
        raise NotImplementedError(f"family {self.name!r} takes no input image")

    def condition_edit(
        self,
        encoded: EncodedPrompt,
        inputs: EditInputs,
        request: ResolvedRequest,
        vae: torch.nn.Module,
        transformer: torch.nn.Module,
        device: torch.device,
    ) -> EncodedPrompt:
        """Video editing: `encoded` with the VACE context of the decoded inputs, on the sketch side (once)."""
        raise NotImplementedError(f"family {self.name!r} does not edit video")

    @abstractmethod
    def load_scheduler(self, path: str) -> Any:
        """A fresh scheduler instance; the engine makes one per request from its config."""

    def load_render_scheduler(self, config: ModelPairConfig) -> Any:
        """The render stage's scheduler; by default the sketch's (a shared schedule)."""
        return self.load_scheduler(config.sketch_path)

    @abstractmethod
    def encode_prompt(
        self, tokenizer: Any, text_encoder: Any, request: ResolvedRequest, max_len: int, device: torch.device
    ) -> EncodedPrompt: ...

    @abstractmethod
    def latent_shape(self, request: ResolvedRequest, vae_config: dict[str, Any]) -> tuple[int, ...]: ...

    @abstractmethod
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
        """The CFG-combined model output for one denoising step.

        `cfg_split` (CFG parallel): run only this rank's branch and get the other's by exchange;
        a family that cannot split its branches refuses it (srserve.engine.parallel.check_parallel).
        """

    def initial_latents(
        self,
        request: ResolvedRequest,
        encoded: EncodedPrompt,
        scheduler: Any,
        generator: torch.Generator,
        device: torch.device,
        vae_config: dict[str, Any],
    ) -> torch.Tensor:
        """The sketch's starting noise, drawn from the request's generator (float32 by default)."""
        shape = self.latent_shape(request, vae_config)
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def guidance_scale(self, request: ResolvedRequest, timestep: torch.Tensor, num_steps: int) -> float:
        """The CFG scale at one step; constant by default."""
        return request.guidance_scale

    def step(
        self,
        scheduler: Any,
        prediction: torch.Tensor,
        timesteps: torch.Tensor,
        index: int,
        latents: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """One scheduler step at timesteps[index]; families whose scheduler takes more state override it."""
        return scheduler.step(prediction, timesteps[index], latents, return_dict=False)[0]

    def convert_handoff(self, state: HandoffState) -> HandoffState:
        """Map the sketch model's latent space to the render model's (identity when shared)."""
        return state

    def check_handoff(self, state: HandoffState) -> None:
        """Raise IncompatiblePairError, naming the misfit, if the render model cannot continue `state`.

        Needs only `bind` (no weights), so a server can refuse an uploaded handoff before queueing it;
        `render` checks again. By default nothing beyond `render_timesteps`' own check.
        """
        return None

    def render_timesteps(self, scheduler: Any, state: HandoffState) -> torch.Tensor:
        """The timesteps the render runs at (from switch_step on), on a scheduler after set_timesteps(N).

        By default the schedule is shared: the render scheduler's own, which must equal the handoff's.
        """
        if not torch.equal(scheduler.timesteps.cpu(), state.timesteps.cpu()):
            raise ValueError("handoff timesteps differ from this render model's schedule")
        return scheduler.timesteps

    def output_latents(self, latents: torch.Tensor, state: HandoffState) -> torch.Tensor:
        """The render's final latents in the space decode() expects (identity when shared)."""
        return latents

    @abstractmethod
    def decode(self, vae: torch.nn.Module, latents: torch.Tensor) -> np.ndarray:
        """Frames as float32 in [0, 1], shape [F, H, W, 3]."""
