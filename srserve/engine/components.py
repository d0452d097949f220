"""Loaded model components, shared per process.

The text encoder and VAE are the same weights for both models of a pair, so a process that
holds both roles loads them once; a cache keyed by (what, path, dtype, device) does that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str, str, str], Any] = {}


def load_shared(kind: str, path: str, dtype: torch.dtype, device: torch.device, loader: Callable[[], Any]) -> Any:
    """Return the process's instance of a component, loading it on first request."""
    key = (kind, str(path), str(dtype), str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = loader()
        return _CACHE[key]


def loaded_keys() -> list[tuple[str, str, str, str]]:
    """What this process has loaded (for tests and diagnostics)."""
    with _LOCK:
        return list(_CACHE)


def clear() -> None:
    with _LOCK:
        _CACHE.clear()
