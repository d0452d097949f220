"""The SRDiffusion engine: model pairs, stages and the handoff state. Knows nothing of Ray."""

import os

# srserve loads only local folders; never let a missing file turn into a hub download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from srserve.engine.config import ModelPairConfig
from srserve.engine.engine import ALL_ROLES, Cancelled, GenerationResult, Role, SRDiffusionEngine
from srserve.engine.handoff import HandoffFormatError, HandoffState
from srserve.engine.request import GenerationRequest, ResolvedRequest, SwitchPolicy

__all__ = [
    "ALL_ROLES",
    "Cancelled",
    "GenerationRequest",
    "GenerationResult",
    "HandoffFormatError",
    "HandoffState",
    "ModelPairConfig",
    "ResolvedRequest",
    "Role",
    "SRDiffusionEngine",
    "SwitchPolicy",
]
