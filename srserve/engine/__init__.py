"""The SRDiffusion engine: model pairs, stages and the handoff state. Knows nothing of Ray.

Names are exported lazily (PEP 562): `import srserve.engine.request` (a request's validation, as the
serving side does) must not load torch and diffusers through this package; `from srserve.engine
import SRDiffusionEngine` loads them on first use.
"""

from __future__ import annotations

import os
from typing import Any

# srserve loads only local folders; never let a missing file turn into a hub download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = [
    "ALL_ROLES",
    "Cancelled",
    "GenerationRequest",
    "GenerationResult",
    "HandoffFormatError",
    "HandoffState",
    "InputImage",
    "ModelPairConfig",
    "ResolvedRequest",
    "Role",
    "SRDiffusionEngine",
    "SwitchPolicy",
]


def __getattr__(name: str) -> Any:
    if name in ("ALL_ROLES", "Cancelled", "GenerationResult", "Role", "SRDiffusionEngine"):
        from srserve.engine import engine as module
    elif name == "ModelPairConfig":
        from srserve.engine import config as module
    elif name in ("HandoffFormatError", "HandoffState"):
        from srserve.engine import handoff as module
    elif name in ("GenerationRequest", "InputImage", "ResolvedRequest", "SwitchPolicy"):
        from srserve.engine import request as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
