"""A Diffusers folder's JSON configs, read without loading any weights.

Pair checks, parallel checks and the engine's latent shapes all read them; json and paths only,
so checking a pool's folders costs no torch import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_component_config(folder: str | Path, component: str) -> dict[str, Any] | None:
    """A component's config.json (or scheduler_config.json) from a Diffusers folder; None if it has none."""
    base = Path(folder) / component
    for name in ("config.json", "scheduler_config.json"):
        if (base / name).is_file():
            return json.loads((base / name).read_text())
    return None


def read_model_index(folder: str | Path) -> dict[str, Any] | None:
    """A pipeline folder's model_index.json; None if the folder is not a pipeline."""
    path = Path(folder) / "model_index.json"
    return json.loads(path.read_text()) if path.is_file() else None
