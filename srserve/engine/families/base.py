"""What a model family must provide for srserve to sketch with one model and render with another."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from srserve.engine.config import ModelPairConfig
from srserve.engine.handoff import HandoffState
from srserve.engine.request import ResolvedRequest


class IncompatiblePairError(ValueError):
    """The sketch and render checkpoints cannot hand latents to each other."""


@dataclass
class EncodedPrompt:
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None


class ModelFamily(ABC):
    """Loading, conditioning, one denoising prediction and decoding for one family of models.

    The engine owns the loop, the switch and the handoff; a family owns model internals.
    """

    name: str

    @abstractmethod
    def check_pair(self, config: ModelPairConfig) -> None:
        """Raise IncompatiblePairError, naming the mismatch, before any weights load."""

    @abstractmethod
    def load_transformer(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module: ...

    @abstractmethod
    def load_text_encoder(self, path: str, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
        """(tokenizer, text_encoder)."""

    @abstractmethod
    def load_vae(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module: ...

    @abstractmethod
    def load_scheduler(self, path: str) -> Any:
        """A fresh scheduler instance; the engine makes one per request from its config."""

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
    ) -> torch.Tensor:
        """The CFG-combined model output for one denoising step."""

    def convert_handoff(self, state: HandoffState) -> HandoffState:
        """Map the sketch model's latent space to the render model's (identity when shared)."""
        return state

    @abstractmethod
    def decode(self, vae: torch.nn.Module, latents: torch.Tensor) -> np.ndarray:
        """Frames as float32 in [0, 1], shape [F, H, W, 3]."""
