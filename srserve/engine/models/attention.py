"""Attention backends: which diffusers attention kernel a transformer runs, checked before any weights load.

diffusers 0.42 dispatches attention through `ModelMixin.set_attention_backend(name)` for the
processors that call `dispatch_attention_fn` (Wan's do). A backend is refused, with the reason,
when the model family does not allow it, when its package is missing, or when the device cannot
run it (CPU, too old a GPU, float32 weights for the flash kernels).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch is imported by the checks that need it: a pair's config names a backend without it
    import torch

AttentionBackend = Literal[
    "native",
    "_native_math",
    "_native_flash",
    "_native_efficient",
    "_native_cudnn",
    "xformers",
    "flash",
    "flash_varlen",
    "_flash_3",
    "sage",
]
"""diffusers' `AttentionBackendName` values srserve offers (the hub-kernel ones would download code)."""

# Backends whose kernels exist only on CUDA devices.
_CUDA_ONLY = frozenset({"_native_efficient", "_native_cudnn", "xformers", "flash", "flash_varlen", "_flash_3", "sage"})
# Minimum compute capability (major, minor) of the kernels that have one.
_MIN_CAPABILITY = {"flash": (8, 0), "flash_varlen": (8, 0), "_flash_3": (9, 0), "sage": (8, 0)}
# Kernels that take only half-precision inputs.
_HALF_ONLY = frozenset({"flash", "flash_varlen", "_flash_3", "sage"})


class AttentionBackendUnavailable(RuntimeError):
    """The configured attention backend cannot run for this family, package set or device."""


def check_attention_backend(
    backend: str, family: str, allowed: frozenset[str], device: torch.device, dtype: torch.dtype
) -> None:
    """Raise AttentionBackendUnavailable, naming the reason, unless `backend` can run here."""
    import torch

    if backend not in allowed:
        raise AttentionBackendUnavailable(
            f"attention_backend {backend!r} is not allowed for model family {family!r} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    if backend in _CUDA_ONLY and device.type != "cuda":
        raise AttentionBackendUnavailable(
            f"attention_backend {backend!r} needs a CUDA device; this process runs on {device}. "
            "Use 'native' here, or run the pool on GPUs."
        )
    if backend in _HALF_ONLY and dtype not in (torch.float16, torch.bfloat16):
        raise AttentionBackendUnavailable(
            f"attention_backend {backend!r} needs bfloat16 or float16 weights; the model dtype is {dtype}"
        )
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(backend))
    except RuntimeError as exc:  # diffusers names the missing package
        raise AttentionBackendUnavailable(f"attention_backend {backend!r} is not installed here: {exc}") from None
    need = _MIN_CAPABILITY.get(backend)
    if need is not None and device.type == "cuda":
        have = torch.cuda.get_device_capability(device)
        if have < need:
            raise AttentionBackendUnavailable(
                f"attention_backend {backend!r} needs compute capability {need[0]}.{need[1]}+; "
                f"{torch.cuda.get_device_name(device)} has {have[0]}.{have[1]}"
            )


def apply_attention_backend(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    """Route the model's attention through `backend`; set explicitly even for `native`, because
    diffusers keeps a process-wide active backend that another model's setting would change."""
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)  # silence the "experimental feature" warning per load
    try:
        model.set_attention_backend(backend)
    finally:
        diffusers_logger.setLevel(level)
    return model


def attention_backend_of(model: torch.nn.Module) -> set[str]:
    """The backends the model's attention processors are set to (for checks and diagnostics)."""
    found: set[str] = set()
    for module in model.modules():
        processor = getattr(module, "processor", None)
        value = getattr(processor, "_attention_backend", None)
        if value is not None:
            found.add(getattr(value, "value", str(value)))
    return found
