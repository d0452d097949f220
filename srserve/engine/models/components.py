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


def transformer_kind(backend: str, compiled: bool = False) -> str:
    """Cache kind of a transformer: one instance per attention backend and compile setting, so an
    eager and a compiled engine in one process never share (and silently change) a module."""
    return f"transformer[{backend},compiled]" if compiled else f"transformer[{backend}]"


def check_compilable(class_name: str | None) -> None:
    """Raise ValueError before any weights load when a transformer class has no repeated blocks to compile."""
    import diffusers

    cls = getattr(diffusers, class_name or "", None)
    if cls is None or not getattr(cls, "_repeated_blocks", None):
        raise ValueError(
            f"compile: transformer class {class_name!r} declares no repeated blocks (diffusers' `_repeated_blocks`), "
            "so it has no regional compile; set compile: false for this pair"
        )


def compile_repeated_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """Regional compile (torch.compile of each repeated block, diffusers' `compile_repeated_blocks`):
    one block's graph is compiled and reused by all its siblings, so compiling takes seconds rather
    than the minutes a whole-model compile would, for about the same speed. Compiles lazily, on the
    first forward of each new input shape."""
    model.compile_repeated_blocks()
    return model
