"""Step caching per stage on diffusers' cache hooks (FirstBlockCache, TaylorSeer, MagCache).

A cache skips (parts of) transformer forwards whose output it can reuse or extrapolate from earlier
steps. The sketch and render stages each get their own policy; a stage enables its policy on its
model when it starts and disables it when it ends, so no cache state crosses the handoff boundary
(nothing cache-related travels in `HandoffState` beyond the policy itself, inside the request).
With the policy `none` the stage runs exactly as without this module.

Step indices inside a stage count from the stage's first step: TaylorSeer's warm-up starts afresh in
the render stage. MagCache's per-step ratios are global, so the render stage takes the ratios from
its own first step on (`to_diffusers(first_step=...)`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from srserve.engine.grammar import Grammar, Spelling, field_limits, number

if TYPE_CHECKING:
    import torch

CacheKind = Literal["none", "first_block", "taylorseer", "mag"]
CACHE_KINDS: tuple[str, ...] = get_args(CacheKind)
MAG_RATIOS_FORMAT = "srserve.mag_ratios"

# Which optional fields each kind takes (anything else set is refused, naming the field).
_FIELDS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "first_block": frozenset({"threshold"}),
    "taylorseer": frozenset({"interval", "warmup_steps", "max_order"}),
    "mag": frozenset({"threshold", "max_skip_steps", "retention", "ratios_file"}),
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "first_block": {"threshold": 0.05},
    "taylorseer": {"interval": 5, "warmup_steps": 3, "max_order": 1},
    "mag": {"threshold": 0.06, "max_skip_steps": 3, "retention": 0.2},
}
_OPTIONAL = sorted(set().union(*_FIELDS.values()))  # every field some kind takes
# The one number a text spec may carry per kind (`first_block:0.08`, `taylorseer:4`, `mag:0.1`).
_TEXT_FIELD = {"first_block": "threshold", "taylorseer": "interval", "mag": "threshold"}


class CachePolicy(BaseModel):
    """One stage's step cache. Unset fields take the kind's defaults (`value`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CacheKind = "none"
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None, description="first_block: residual change under which the rest of the blocks is skipped; mag: error"
    )
    interval: Annotated[int, Field(ge=1, le=50)] | None = Field(None, description="taylorseer: steps between full")
    warmup_steps: Annotated[int, Field(ge=0, le=200)] | None = Field(None, description="taylorseer: full steps first")
    max_order: Annotated[int, Field(ge=1, le=4)] | None = Field(None, description="taylorseer: Taylor order")
    max_skip_steps: Annotated[int, Field(ge=1, le=50)] | None = Field(None, description="mag: consecutive skips")
    retention: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None, description="mag: fraction of the steps (from step 0) never skipped"
    )
    # Required by `mag` when it runs; a request's `mag` takes its pool's file (serving: CacheLimits).
    ratios_file: str | None = Field(None, description="mag: the file `srserve calibrate-mag` wrote")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> CachePolicy:
        allowed = _FIELDS[self.kind]
        for name in _OPTIONAL:
            if getattr(self, name) is not None and name not in allowed:
                raise ValueError(f"{name} does not apply to a {self.kind!r} cache")
        return self

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def value(self, name: str) -> Any:
        """A field's value, or the kind's default."""
        own = getattr(self, name)
        return own if own is not None else _DEFAULTS.get(self.kind, {}).get(name)

    def to_diffusers(
        self, num_steps: int, first_step: int = 0, model: str = "sketch", modules: tuple[str, ...] = ()
    ) -> Any:
        """The diffusers cache config for a stage that runs steps first_step..num_steps-1 on `model`.

        `modules`: the family's patterns of the block submodules TaylorSeer extrapolates (diffusers'
        defaults match no Wan or CogVideoX module: they full-match `blocks.*attn`, not `attn1`)."""
        import torch
        from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        if self.kind == "first_block":
            return FirstBlockCacheConfig(threshold=self.value("threshold"))
        if self.kind == "taylorseer":
            return TaylorSeerCacheConfig(
                cache_interval=self.value("interval"),
                disable_cache_before_step=self.value("warmup_steps"),
                max_order=self.value("max_order"),
                taylor_factors_dtype=torch.float32,  # the factors of a float32 model stay float32
                cache_identifiers=list(modules) or None,
            )
        if self.kind == "mag":
            if self.ratios_file is None:
                raise ValueError("a 'mag' cache needs ratios_file (write one with `srserve calibrate-mag`)")
            ratios = mag_ratios_for(self.ratios_file, model, num_steps)
            local = num_steps - first_step
            kept = max(0, int(self.value("retention") * num_steps + 0.5) - first_step)
            return MagCacheConfig(
                threshold=self.value("threshold"),
                max_skip_steps=self.value("max_skip_steps"),
                retention_ratio=kept / local if local else 0.0,
                num_inference_steps=local,
                mag_ratios=ratios[first_step:],
            )
        raise ValueError(f"no diffusers config for cache kind {self.kind!r}")

    def text(self) -> str:
        """The short text form (`first_block:0.05`), when the policy has one."""
        field = _TEXT_FIELD.get(self.kind)
        if field is None:
            return self.kind
        value = getattr(self, field)
        return self.kind if value is None else f"{self.kind}:{value}"


_TEXT_NUMBERS = {field: number(CachePolicy, field) for field in set(_TEXT_FIELD.values())}


def _cache_grammar(s: Spelling, sketch: Sequence[str] = CACHE_KINDS, render: Sequence[str] = CACHE_KINDS) -> str:
    """`KIND[:N]` for both stages, or `sketch=KIND[:N]` and/or `render=KIND[:N]` (either order), each
    stage's KIND one of the kinds given for it."""

    def policy(stage: str, kinds: Sequence[str]) -> str:
        forms = []
        for kind in kinds:
            form = s.word(f"{stage}.kind", kind)
            field = _TEXT_FIELD.get(kind)
            if field is not None:
                form += f"(?:{s.sep(':')}{s.number(f'{stage}.{field}', _TEXT_NUMBERS[field])})?"
            forms.append(form)
        return "(?:" + "|".join(forms) + ")"

    def stages(first: str, second: str) -> str:
        kinds = {"sketch": sketch, "render": render}
        return (
            f"{first}{s.sep('=')}{policy(first, kinds[first])}"
            f"(?:{s.sep(',')}{second}{s.sep('=')}{policy(second, kinds[second])})?"
        )

    both = [k for k in sketch if k in render]
    forms = [policy("both", both)] if both else []
    return "|".join([*forms, stages("sketch", "render"), stages("render", "sketch")])


_INTERVAL = field_limits(CachePolicy, "interval")
CACHE = Grammar(
    "cache",
    _cache_grammar,
    "KIND or sketch=KIND,render=KIND; KIND: none, first_block[:THRESHOLD], "
    f"taylorseer[:INTERVAL {_INTERVAL['ge']}..{_INTERVAL['le']}], mag[:THRESHOLD] (THRESHOLD in (0, 1])",
)


class CacheSpec(BaseModel):
    """A request's caches: one policy per stage; an unset stage takes the pool's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sketch: CachePolicy | None = None
    render: CachePolicy | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        """A text in the `cache` grammar; its both-stages form sets each stage."""
        if not isinstance(value, str):
            return value
        fields = CACHE.fields(value)
        both = fields.pop("both", None)
        return {"sketch": both, "render": both} if both is not None else fields

    @classmethod
    def parse(cls, text: str) -> CacheSpec:
        """`KIND[:N]` for both stages, or `sketch=KIND[:N],render=KIND[:N]` (either part optional)."""
        return cls.model_validate(text)

    def __str__(self) -> str:
        sketch = self.sketch.text() if self.sketch else None
        render = self.render.text() if self.render else None
        if sketch == render and sketch is not None:
            return sketch
        return ",".join(f"{k}={v}" for k, v in (("sketch", sketch), ("render", render)) if v is not None)


def with_ratios_file(spec: CacheSpec, path: str) -> CacheSpec:
    """`spec` with every mag policy that names no ratios file reading `path`."""

    def fill(policy: CachePolicy | None) -> CachePolicy | None:
        if policy is None or policy.kind != "mag" or policy.ratios_file is not None:
            return policy
        return policy.model_copy(update={"ratios_file": path})

    return CacheSpec(sketch=fill(spec.sketch), render=fill(spec.render))


@lru_cache(maxsize=16)
def _read_ratios(path: str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != MAG_RATIOS_FORMAT:
        raise ValueError(f"{path}: not a MagCache ratios file (format {data.get('format')!r})")
    return data


def mag_ratios_for(path: str, model: str, num_steps: int) -> list[float]:
    """The calibrated ratios of `model` ("sketch" or "render"), resampled to `num_steps` steps."""
    import torch
    from diffusers.hooks.mag_cache import nearest_interp

    data = _read_ratios(path)
    ratios = data.get(model)
    if not ratios:
        raise ValueError(f"{path}: no ratios for the {model} model")
    if len(ratios) == num_steps:
        return [float(r) for r in ratios]
    return [float(r) for r in nearest_interp(torch.tensor(ratios, dtype=torch.float32), num_steps).tolist()]


@contextmanager
def step_cache(
    model: torch.nn.Module,
    policy: CachePolicy | None,
    num_steps: int,
    first_step: int,
    role: str,
    modules: tuple[str, ...] = (),
) -> Iterator[None]:
    """Run a stage with `policy` on `model`; the hooks (and their state) go when the stage ends."""
    if policy is None or not policy.enabled or first_step >= num_steps:
        yield
        return
    model.enable_cache(policy.to_diffusers(num_steps, first_step, role, modules))
    try:
        yield
    finally:
        model.disable_cache()
