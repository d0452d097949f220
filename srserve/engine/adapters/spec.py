"""LoRA adapters as configured and as requested: the pair's named adapters, a request's `lora` text, the
resolved adapter a job runs with. Pydantic only (no torch), so a request parse and a config check stay light;
loading and activating are srserve.engine.adapters.loading'.

A pair names its adapters (`ModelPairConfig.adapters`); a request names one of them (`lora: NAME` or
`NAME:SCALE`), never a file. Resolving against the pair's adapters gives a `ResolvedLora`: the name, the
scale, and which models have a file for it (a 14B LoRA with no 1.3B counterpart renders without one), part
of the `ResolvedRequest`, so a resumed job and a handoff carry the same adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from srserve.engine.grammar import Grammar, Number, Spelling

# A name is a peft adapter name too (a module-dict key: no '.'), and never holds the grammar's ':'.
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}"
MAX_SCALE = 4.0
ScaleValue = Annotated[float, Field(ge=0.0, le=MAX_SCALE)]
AdapterName = Annotated[str, Field(pattern=f"^{NAME_PATTERN}$")]


class AdapterConfig(BaseModel):
    """One named adapter of a pair: a LoRA file per model (either may be absent) and its default scale.

    `fuse`: merged into the weights when the engine loads (diffusers' fuse_lora), so it costs nothing per
    step and applies to every job of the pool, at `scale`; a request may name it only at that scale.
    wan2.2: `sketch` goes to the high-noise expert (`transformer`), `render` to the low-noise one
    (`transformer_2`), as WanPipeline's `load_lora_weights(..., load_into_transformer_2=True)` does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sketch: str | None = Field(None, description="LoRA file (.safetensors) for the sketch (large) model")
    render: str | None = Field(None, description="LoRA file (.safetensors) for the render (small) model")
    scale: ScaleValue = 1.0
    fuse: bool = Field(False, description="merge into the weights at load (every job of the pool runs with it)")

    @model_validator(mode="after")
    def _has_a_file(self) -> AdapterConfig:
        if self.sketch is None and self.render is None:
            raise ValueError("an adapter needs a sketch or a render file (or both)")
        return self

    def path(self, side: str) -> str | None:
        """The file for `side` ("sketch" or "render")."""
        return self.sketch if side == "sketch" else self.render


class LoraSpec(BaseModel):
    """A request's adapter: a name the pair configures, and a scale (unset: the adapter's own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: AdapterName
    scale: ScaleValue | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        return LORA.fields(value) if isinstance(value, str) else value

    def __str__(self) -> str:
        return self.name if self.scale is None else f"{self.name}:{self.scale}"


class ResolvedLora(LoraSpec):
    """The adapter a job runs with: its scale, and which models apply it (`sketch`, `render`: a file is
    configured for that model); `fused`: already in the pool's weights, nothing to switch per job."""

    scale: ScaleValue
    sketch: bool
    render: bool
    fused: bool = False

    def on(self, side: str) -> bool:
        """Whether the model of `side` ("sketch" or "render") runs with this adapter."""
        return self.sketch if side == "sketch" else self.render


_SCALE = Number(
    exact=r"(?:[0-3](?:\.[0-9]{0,15})?|\.[0-9]{1,15}|4(?:\.0{0,15})?)",  # 0..4, as MAX_SCALE
    loose=r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?",
    read=float,
)


def _lora_grammar(s: Spelling) -> str:
    return f"{s.word('name', NAME_PATTERN)}(?:{s.sep(':')}{s.number('scale', _SCALE)})?"


LORA = Grammar("lora", _lora_grammar, f"NAME or NAME:SCALE (a configured adapter; SCALE in [0, {MAX_SCALE:g}])")


def _scale_spellings(value: float) -> str | None:
    """The exact grammar's spellings of one scale (trailing zeros, a bare leading point); None when it has
    more decimals than the grammar writes (such a fused adapter is published by its name alone)."""
    whole, _, frac = format(Decimal(repr(float(value))), "f").partition(".")
    frac = frac.rstrip("0")
    room = 15 - len(frac)
    if room < 0:
        return None
    if not frac:
        return f"{whole}(?:\\.0{{0,15}})?" + ("|\\.0{1,15}" if whole == "0" else "")
    tail = f"{frac}0{{0,{room}}}"
    return f"{whole}\\.{tail}" + (f"|\\.{tail}" if whole == "0" else "")


def lora_pattern(adapters: Mapping[str, AdapterConfig]) -> str | None:
    """The `lora` field's published regex for a pair's adapters: a text matches it exactly when
    `resolve_lora` admits it (a switched adapter at any scale, a fused one at its own); None for no adapters."""
    alternatives = []
    switched = sorted(name for name, a in adapters.items() if not a.fuse)
    if switched:  # names are NAME_PATTERN: regex literals as they stand
        alternatives.append(f"(?:{'|'.join(switched)})(?::{_SCALE.exact})?")
    for name, adapter in sorted(adapters.items()):
        if adapter.fuse:
            scale = _scale_spellings(adapter.scale)
            alternatives.append(name if scale is None else f"{name}(?::(?:{scale}))?")
    return None if not alternatives else "^(?:" + "|".join(alternatives) + ")$"


def resolve_lora(value: Any, adapters: Mapping[str, AdapterConfig] | None) -> ResolvedLora | None:
    """The adapter a request's `lora` names, against the pair's adapters; ValueError for an unknown name or a
    fused adapter at another scale. An already resolved adapter (a stored or handed-off request) stays."""
    if value is None or isinstance(value, ResolvedLora):
        return value
    if isinstance(value, Mapping) and "sketch" in value:
        return ResolvedLora.model_validate(value)
    spec = value if isinstance(value, LoraSpec) else LoraSpec.model_validate(value)
    known = adapters or {}
    if spec.name not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ValueError(f"unknown adapter {spec.name!r}; this model pair has: {names}")
    adapter = known[spec.name]
    scale = adapter.scale if spec.scale is None else spec.scale
    if adapter.fuse and scale != adapter.scale:
        raise ValueError(f"adapter {spec.name!r} is fused into the weights at scale {adapter.scale}; got {scale}")
    return ResolvedLora(
        name=spec.name,
        scale=scale,
        sketch=adapter.sketch is not None,
        render=adapter.render is not None,
        fused=adapter.fuse,
    )
