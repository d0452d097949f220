"""Registry of model families srserve can split into a sketch and a render model."""

from __future__ import annotations

from srserve.engine.config import ModelPairConfig
from srserve.engine.families.base import EncodedPrompt, IncompatiblePairError, ModelFamily
from srserve.engine.families.cogvideox import CogVideoXFamily
from srserve.engine.families.wan import WanFamily
from srserve.engine.families.wan22 import Wan22Family

_FAMILIES: dict[str, type[ModelFamily]] = {
    WanFamily.name: WanFamily,
    Wan22Family.name: Wan22Family,
    CogVideoXFamily.name: CogVideoXFamily,
}


def get_family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def check_pair(config: ModelPairConfig) -> None:
    """The pair's family's check that its folders fit together (no weights load); IncompatiblePairError names
    the misfit. What serving runs when it reads a pool's model, before any replica starts."""
    get_family(config.family).check_pair(config)


__all__ = ["EncodedPrompt", "IncompatiblePairError", "ModelFamily", "check_pair", "family_names", "get_family"]
