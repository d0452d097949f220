"""LoRA adapters in the engine: checked against the models before any weights load, loaded through
diffusers' own loaders, kept loaded per transformer in an LRU and switched per job, or fused at load.

Reading. A file is read with the family's pipeline class (`WanPipeline.lora_state_dict`), which
converts the key formats diffusers knows (PEFT/diffusers, kohya/musubi, ComfyUI and lightx2v's
`diffusion_model.` keys) into `transformer.<module>.lora_A/B`; it goes into one transformer with that
class's `load_lora_into_transformer`, the call `load_lora_weights` makes (for wan2.2's render side the
call `load_lora_weights(..., load_into_transformer_2=True)` makes, on `transformer_2`).

Checking (`check_adapter_file`). The file's safetensors header gives every tensor's shape without
reading its data; the same converter runs on meta tensors of those shapes, and each converted key is
matched against a meta-device instance of the transformer built from its config: the module must
exist and be a Linear or Conv layer whose sizes fit the LoRA factors. A misfit raises
`AdapterMisfitError` naming the adapter, the side and the module.

Switching. A transformer's loaded adapters live in the module (peft layers), so their bookkeeping
does too: an `AdapterSlots` on each transformer holds them in LRU order up to the pair's
`adapter_cache_size`, evicting (peft `delete_adapters`) the least recently used. A stage runs inside
`EngineAdapters.active`, which activates the job's adapter at its scale (`set_adapters`) or none,
and always disables LoRA when the stage ends, so a job without an adapter runs the base layers, as a
fresh engine does. Engines with switched adapters keep their own transformer instances (component
cache kind `+lora[CAPACITY]`), so an engine without adapters never shares a module that holds peft layers.

Fusing (`fuse: true`). At load the adapter is merged into the weights at its scale (`fuse_lora`) and
its LoRA layers removed (`unload_lora`): no per-step cost, for every job of the pool. Such a
transformer is its own cache entry (`+fused[...]`), never the plain one changed in place.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from srserve.engine.adapters.spec import AdapterConfig, ResolvedLora
from srserve.engine.config import ModelPairConfig

SIDES = ("sketch", "render")
PREFIX = "transformer"  # the key prefix diffusers' Wan/CogVideoX loaders read a transformer's LoRA under
_SLOTS_ATTR = "_srserve_adapter_slots"
_SLOTS_LOCK = threading.Lock()


class AdapterMisfitError(ValueError):
    """An adapter file that does not fit its model (wrong module names or shapes), or cannot be read."""


def adapter_key(name: str, path: str | Path) -> str:
    """The peft adapter name of `name`'s file in a module: the name plus a digest of the file's identity
    (path, size, mtime), so two pairs that give one name to different files never collide in a shared module."""
    p = Path(path).resolve()
    st = p.stat()
    digest = hashlib.sha256(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
    return f"{name}_{digest}"


def header_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors as meta tensors of their shapes and dtypes (from the safetensors header, no
    data read), except scalars (kohya/ComfyUI `alpha`), which the key converters read and are read here."""
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is no mapping)
            part = f.get_slice(key)
            shape = part.get_shape()
            if len(shape) == 0 or (len(shape) == 1 and shape[0] == 1):
                out[key] = f.get_tensor(key)
            else:
                dtype = getattr(
                    torch, {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(part.get_dtype(), "float32")
                )
                out[key] = torch.empty(shape, dtype=dtype, device="meta")
    return out


@lru_cache(maxsize=16)
def _module_shapes(class_name: str, config_json: str) -> dict[str, tuple[str, int, int]]:
    """Every module of a transformer class built from `config_json` on the meta device: (type, in, out)."""
    import json

    import diffusers

    cls = getattr(diffusers, class_name)
    with torch.device("meta"):
        model = cls.from_config(json.loads(config_json))
    shapes: dict[str, tuple[str, int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = ("Linear", module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d):
            shapes[name] = (type(module).__name__, module.in_channels, module.out_channels)
        else:
            shapes[name] = (type(module).__name__, 0, 0)
    return shapes


def check_adapter_file(
    name: str, side: str, path: str | Path, pipeline_cls: type, transformer_config: dict[str, Any]
) -> None:
    """Raise AdapterMisfitError, naming the adapter and the module, if `path` cannot load into the transformer
    `transformer_config` describes. Reads the file's header only and builds the model on the meta device."""
    import json

    what = f"adapter {name!r} ({side} file {str(path)!r})"
    if not Path(path).is_file():
        raise AdapterMisfitError(f"{what}: no such file")
    try:
        converted = pipeline_cls.lora_state_dict(header_state_dict(path))
    except Exception as exc:  # safetensors and the converters raise their own types
        raise AdapterMisfitError(f"{what}: not a LoRA file diffusers can read: {exc}") from exc
    ours = {k.removeprefix(f"{PREFIX}."): v for k, v in converted.items() if k.startswith(f"{PREFIX}.")}
    if not ours:
        raise AdapterMisfitError(f"{what}: no LoRA weights for the transformer (no key starts with '{PREFIX}.')")
    class_name = transformer_config.get("_class_name", "")
    shapes = _module_shapes(class_name, json.dumps(transformer_config, sort_keys=True))
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in ours.items():
        for part in ("lora_A.weight", "lora_B.weight", "lora_B.bias"):
            if key.endswith(f".{part}"):
                factors.setdefault(key.removesuffix(f".{part}"), {})[part] = tensor
                break
        else:
            raise AdapterMisfitError(f"{what}: key {key!r} is not a LoRA factor (lora_A/lora_B)")
    for module, parts in sorted(factors.items()):
        if module not in shapes:
            raise AdapterMisfitError(f"{what}: module {module!r} does not exist in the {side} model ({class_name})")
        kind, fan_in, fan_out = shapes[module]
        if fan_in == 0:
            raise AdapterMisfitError(f"{what}: module {module!r} is a {kind}; LoRA applies to Linear or Conv layers")
        a, b = parts.get("lora_A.weight"), parts.get("lora_B.weight")
        if a is None or b is None:
            raise AdapterMisfitError(f"{what}: module {module!r} lacks its lora_A or lora_B weight")
        problems = []
        if a.shape[1] != fan_in:
            problems.append(f"lora_A takes {a.shape[1]} inputs, the {kind} has {fan_in}")
        if b.shape[0] != fan_out:
            problems.append(f"lora_B gives {b.shape[0]} outputs, the {kind} has {fan_out}")
        if a.shape[0] != b.shape[1]:
            problems.append(f"rank {a.shape[0]} (lora_A) != {b.shape[1]} (lora_B)")
        bias = parts.get("lora_B.bias")
        if bias is not None and bias.shape[0] != fan_out:
            problems.append(f"lora_B.bias has {bias.shape[0]} values, the {kind} {fan_out} outputs")
        if problems:
            raise AdapterMisfitError(f"{what}: module {module!r} does not fit: {'; '.join(problems)}")


def _require_peft() -> None:
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise RuntimeError("LoRA adapters need the peft package (pip install peft)")


def load_adapter(module: torch.nn.Module, pipeline_cls: type, key: str, path: str | Path) -> None:
    """Load a LoRA file into one transformer as adapter `key`, as the pipeline's `load_lora_weights` does."""
    _require_peft()
    state_dict, metadata = pipeline_cls.lora_state_dict(str(path), return_lora_metadata=True)
    pipeline_cls.load_lora_into_transformer(state_dict, transformer=module, adapter_name=key, metadata=metadata)


def fuse_adapters(module: torch.nn.Module, pipeline_cls: type, fused: list[tuple[str, str, float]]) -> torch.nn.Module:
    """Merge each (key, path, scale) into the weights (`fuse_lora`), then drop its LoRA layers (`unload_lora`)."""
    for key, path, scale in fused:
        load_adapter(module, pipeline_cls, key, path)
        module.fuse_lora(lora_scale=scale, adapter_names=[key])
        module.unload_lora()
    return module


@dataclass
class AdapterCounters:
    """What an engine's adapter switching did, for the serving layer to export: `loads` (a file loaded into a
    transformer), `hits` (a stage found its adapter loaded), `evictions` (dropped for capacity)."""

    loads: int = 0
    hits: int = 0
    evictions: int = 0


class AdapterSlots:
    """The switched adapters loaded into one transformer, least recently used first, at most `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.lock = threading.RLock()  # one stage at a time switches and runs this module's adapters

    @staticmethod
    def of(module: torch.nn.Module, capacity: int) -> AdapterSlots:
        """The slots of `module`, made on first use (engines sharing a module share them; the capacity is part of
        the module's cache kind, so they agree on it)."""
        with _SLOTS_LOCK:
            slots = module.__dict__.get(_SLOTS_ATTR)
            if slots is None:
                slots = AdapterSlots(capacity)
                module.__dict__[_SLOTS_ATTR] = slots
            return slots

    def ensure(
        self, module: torch.nn.Module, pipeline_cls: type, key: str, path: str, counters: AdapterCounters
    ) -> None:
        """Make `key` loaded and most recently used, evicting the least recently used beyond capacity."""
        if key in self.loaded:
            self.loaded.move_to_end(key)
            counters.hits += 1
            return
        while len(self.loaded) >= self.capacity:
            old, _ = self.loaded.popitem(last=False)
            module.delete_adapters([old])
            counters.evictions += 1
        load_adapter(module, pipeline_cls, key, path)
        self.loaded[key] = None
        counters.loads += 1


@dataclass(frozen=True)
class AdapterStats:
    """An engine's adapter counters and what its transformers hold now (adapter names, LRU order)."""

    loads: int
    hits: int
    evictions: int
    capacity: int
    # side -> names, least recently used first (the sides whose transformer has run a stage or been warmed)
    loaded: dict[str, list[str]] = field(default_factory=dict)
    fused: dict[str, list[str]] = field(default_factory=dict)  # side -> names fused at load


class EngineAdapters:
    """One engine's adapters: the pair's config, checked for the engine's sides before any weights load."""

    def __init__(self, config: ModelPairConfig, family: Any, sides: set[str]) -> None:
        self.config = config
        self.adapters: dict[str, AdapterConfig] = dict(config.adapters)
        self.pipeline_cls = getattr(family, "lora_pipeline", None)
        self.capacity = config.adapter_cache_size
        self.counters = AdapterCounters()
        self._keys: dict[tuple[str, str], str] = {}  # (name, side) -> peft adapter name
        self._modules: dict[str, torch.nn.Module] = {}
        if not self.adapters:
            return
        if self.pipeline_cls is None:
            raise ValueError(f"adapters: family {family.name} has no LoRA loader in srserve")
        _require_peft()
        for side in SIDES:
            if side not in sides:
                continue
            transformer_config = family.transformer_config(
                config.sketch_path if side == "sketch" else config.render_path, side == "render"
            )
            for name, adapter in sorted(self.adapters.items()):
                path = adapter.path(side)
                if path is None:
                    continue
                check_adapter_file(name, side, path, self.pipeline_cls, transformer_config or {})
                self._keys[(name, side)] = adapter_key(name, path)

    def _fused(self, side: str) -> list[tuple[str, str, float]]:
        return [
            (self._keys[(name, side)], a.path(side) or "", a.scale)
            for name, a in sorted(self.adapters.items())
            if a.fuse and (name, side) in self._keys
        ]

    def _switched(self, side: str) -> bool:
        return any(not a.fuse and (name, side) in self._keys for name, a in self.adapters.items())

    def kind_tag(self, side: str) -> str:
        """What this side's transformer holds beyond its weights, for the component cache's kind."""
        fused = self._fused(side)
        tag = "+fused[" + ",".join(f"{key}@{scale}" for key, _, scale in fused) + "]" if fused else ""
        return tag + (f"+lora[{self.capacity}]" if self._switched(side) else "")

    def prepare(self, side: str, module: torch.nn.Module) -> torch.nn.Module:
        """A freshly loaded transformer with this side's fused adapters merged in (before compile)."""
        fused = self._fused(side)
        return fuse_adapters(module, self.pipeline_cls, fused) if fused else module

    @contextmanager
    def active(self, side: str, lora: ResolvedLora | None, module: torch.nn.Module | None) -> Iterator[None]:
        """Run a stage with the job's adapter on `module` (at its scale), or with none; LoRA is off after."""
        if module is None or not self._switched(side):
            if lora is not None and lora.on(side) and not lora.fused and module is not None:
                raise ValueError(f"lora: adapter {lora.name!r} is not configured for the {side} model of this engine")
            yield
            return
        self._modules[side] = module
        slots = AdapterSlots.of(module, self.capacity)
        with slots.lock:
            use = lora is not None and lora.on(side) and not lora.fused
            if use:
                assert lora is not None
                key = self._keys.get((lora.name, side))
                if key is None:
                    raise ValueError(f"lora: adapter {lora.name!r} has no {side} file in this model pair")
                slots.ensure(module, self.pipeline_cls, key, self.adapters[lora.name].path(side) or "", self.counters)
                module.enable_lora()
                module.set_adapters([key], [lora.scale])
            elif getattr(module, "_hf_peft_config_loaded", False):
                module.disable_lora()
            try:
                yield
            finally:
                if getattr(module, "_hf_peft_config_loaded", False):
                    module.disable_lora()

    def warm(self, name: str, module_of: dict[str, torch.nn.Module | None]) -> None:
        """Load `name` into each side's transformer ahead of its first job (counted as loads)."""
        for side, module in module_of.items():
            key = self._keys.get((name, side))
            if module is None or key is None or self.adapters[name].fuse:
                continue
            self._modules[side] = module
            slots = AdapterSlots.of(module, self.capacity)
            with slots.lock:
                slots.ensure(module, self.pipeline_cls, key, self.adapters[name].path(side) or "", self.counters)
                module.disable_lora()

    def evict(self, name: str) -> None:
        """Unload `name` from each side's transformer now (counted as evictions): what a serving layer that
        keeps its own LRU of adapters (Ray Serve's multiplexing) calls when it drops one."""
        for side, module in self._modules.items():
            key = self._keys.get((name, side))
            slots = module.__dict__.get(_SLOTS_ATTR)
            if key is None or slots is None:
                continue
            with slots.lock:
                if key in slots.loaded:
                    del slots.loaded[key]
                    module.delete_adapters([key])
                    self.counters.evictions += 1

    def stats(self) -> AdapterStats:
        names = {key: name for (name, _), key in self._keys.items()}
        loaded = {}
        for side, module in self._modules.items():
            slots = module.__dict__.get(_SLOTS_ATTR)
            if slots is not None:
                loaded[side] = [names.get(key, key) for key in slots.loaded]
        fused = {side: [names[key] for key, _, _ in self._fused(side)] for side in SIDES if self._fused(side)}
        c = self.counters
        return AdapterStats(c.loads, c.hits, c.evictions, self.capacity, loaded, fused)


def check_adapters(config: ModelPairConfig) -> None:
    """Every adapter file of the pair against its model, without weights or an engine: what a serving
    start-up check runs (the engine runs the same for the models of its roles)."""
    from srserve.engine.families import get_family

    family = get_family(config.family)
    family.bind(config)
    EngineAdapters(config, family, set(SIDES))
