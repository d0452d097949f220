"""Capture and restore a diffusers scheduler's per-request state, so a denoising loop can stop
on one process and continue exactly on another.

Multistep solvers (UniPC) keep a history of converted model outputs; restarting them with only
`set_begin_index(k)` silently drops that history and changes the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# Attributes that make up the mutable state of each supported scheduler class.
STATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "UniPCMultistepScheduler": (
        "model_outputs",
        "timestep_list",
        "lower_order_nums",
        "last_sample",
        "this_order",
        "_step_index",
        "_begin_index",
    ),
    "FlowMatchEulerDiscreteScheduler": ("_step_index", "_begin_index"),
    "DDIMScheduler": (),
    # Deterministic and single-step: set_timesteps(N) is all it needs.
    "CogVideoXDDIMScheduler": (),
    # DPM-Solver++(2M), stochastic: the previous x0 estimate and timestep (CogVideoXPipeline keeps them
    # in loop locals; srserve's CogVideoX family keeps them on the scheduler). The generator travels
    # in the handoff state itself.
    "CogVideoXDPMScheduler": ("old_pred_original_sample", "timestep_back"),
}
_ABSENT = "__absent__"


class SchedulerStateError(ValueError):
    """The scheduler (or a restored state) is not one srserve can continue exactly."""


@dataclass
class SchedulerSnapshot:
    """A scheduler's state split into tensors and JSON-safe scalars (the wire format's two halves)."""

    class_name: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def _attributes(class_name: str) -> tuple[str, ...]:
    try:
        return STATE_ATTRIBUTES[class_name]
    except KeyError:
        known = ", ".join(sorted(STATE_ATTRIBUTES))
        raise SchedulerStateError(f"scheduler {class_name} is not supported for handoff (known: {known})") from None


def _pack(name: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Return a JSON description of `value`, moving tensors into `tensors` under `name`."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().to("cpu").clone().contiguous()
        return {"tensor": name}
    if isinstance(value, list | tuple):
        return {"list": [_pack(f"{name}.{i}", v, tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise SchedulerStateError(f"scheduler attribute {name} has unsupported type {type(value).__name__}")


def _unpack(desc: Any, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    if not isinstance(desc, dict) or len(desc) != 1:
        raise SchedulerStateError(f"malformed scheduler state entry: {desc!r}")
    ((kind, payload),) = desc.items()
    if kind == "tensor":
        if payload not in tensors:
            raise SchedulerStateError(f"scheduler state names a missing tensor {payload!r}")
        return tensors[payload].to(device)
    if kind == "list":
        return [_unpack(d, tensors, device) for d in payload]
    if kind == "value":
        return payload
    raise SchedulerStateError(f"malformed scheduler state entry: {desc!r}")


def capture(scheduler: Any) -> SchedulerSnapshot:
    """Snapshot the state a continuation needs (copies: `step()` mutates the lists in place)."""
    class_name = type(scheduler).__name__
    snap = SchedulerSnapshot(class_name=class_name)
    for attr in _attributes(class_name):
        value = getattr(scheduler, attr, _ABSENT)
        snap.values[attr] = {"value": _ABSENT} if value is _ABSENT else _pack(attr, value, snap.tensors)
    return snap


def restore(scheduler: Any, snap: SchedulerSnapshot, device: torch.device) -> None:
    """Load `snap` into a scheduler on which `set_timesteps(N)` has already been called."""
    class_name = type(scheduler).__name__
    if class_name != snap.class_name:
        raise SchedulerStateError(f"handoff was made with {snap.class_name}, render side uses {class_name}")
    for attr in _attributes(class_name):
        if attr not in snap.values:
            raise SchedulerStateError(f"scheduler state lacks {attr!r}")
        value = _unpack(snap.values[attr], snap.tensors, device)
        if isinstance(value, str) and value == _ABSENT:
            continue
        setattr(scheduler, attr, value)
