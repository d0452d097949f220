"""Each job's step caches: the request's choice within the operator's limits, else the pool's own.

A pool's `cache` is its default policy; its `cache_limits` say which kinds a request may choose
instead. A request's `mag` takes the pool's calibrated ratios file: a client
never names a file on the server. The resolved policies are stored in the job's request, so each
stage (and a retry of it) runs exactly what was admitted.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from srserve.engine.denoising.cache import CACHE, CACHE_KINDS, CacheKind, CachePolicy, CacheSpec
from srserve.engine.request import ResolvedRequest, cache_refusal


class CacheLimits(BaseModel):
    """Which kinds a request may choose for one pool's stage instead of the pool's own.

    Only kinds: a request's own threshold or interval trades its own quality for its own speed and
    never costs the pool more compute than no cache, so it is bounded only by the policy's fields.
    Kinds are what the published schema can state exactly (`allowed_kinds`)."""

    model_config = ConfigDict(extra="forbid")

    kinds: list[CacheKind] = Field(
        default_factory=lambda: ["none"], description="kinds a request may choose (the pool's own kind always)"
    )


class CacheRefused(ValueError):
    """A request's cache is outside the pool's limits; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def allowed_kinds(default: CachePolicy, limits: CacheLimits) -> list[str]:
    """The kinds a request may ask of this stage: `mag` only where the pool has calibrated ratios."""
    kinds = {*limits.kinds, default.kind}
    if default.kind != "mag" or default.ratios_file is None:
        kinds.discard("mag")
    return [k for k in CACHE_KINDS if k in kinds]


def cache_pattern(sketch: tuple[CachePolicy, CacheLimits], render: tuple[CachePolicy, CacheLimits]) -> str:
    """The `cache` grammar's published regex for a deployment: a text matches it exactly when
    `resolve_cache` admits it (each stage's kinds as its pool allows)."""
    return CACHE.pattern(sketch=allowed_kinds(*sketch), render=allowed_kinds(*render))


def _one(stage: str, asked: CachePolicy | None, default: CachePolicy, limits: CacheLimits) -> CachePolicy:
    if asked is None:
        return default
    field = f"cache.{stage}"
    allowed = allowed_kinds(default, limits)
    if asked.kind not in allowed:
        why = " (this pool has no calibrated MagCache ratios)" if asked.kind == "mag" else ""
        raise CacheRefused(
            f"{field}: kind {asked.kind!r} is not allowed here{why}; allowed: {', '.join(allowed)}", field
        )
    if asked.kind != "mag":
        return asked.model_copy(update={"ratios_file": None})
    # The pool's tuning, with the request's threshold if it gave one; never a client's file path.
    return default.model_copy(update={"threshold": asked.threshold or default.threshold})


def resolve_cache(
    asked: CacheSpec | None,
    sketch: tuple[CachePolicy, CacheLimits],
    render: tuple[CachePolicy, CacheLimits],
) -> CacheSpec | None:
    """The policies a job runs (None when both stages run without a cache: requests stay as before)."""
    asked = asked or CacheSpec()
    spec = CacheSpec(sketch=_one("sketch", asked.sketch, *sketch), render=_one("render", asked.render, *render))
    if not spec.sketch.enabled and not spec.render.enabled:
        return None
    return spec


def fit_schedule(spec: CacheSpec | None, asked: CacheSpec | None, request: ResolvedRequest) -> CacheSpec | None:
    """`spec` (from `resolve_cache`) without the pools' defaults the request's schedule cannot run with
    (`cache_refusal`: any cache with an explicit timestep or sigma list, `mag` with a scheduler or shift
    of the request's): a few-step request runs without them. A cache the request asked for itself stays,
    for the engine's validation to refuse, naming `cache`."""
    if spec is None:
        return None
    asked = asked or CacheSpec()
    kept = {}
    for stage in ("sketch", "render"):
        policy = getattr(spec, stage)
        defaulted = getattr(asked, stage) is None
        kept[stage] = CachePolicy() if defaulted and cache_refusal(stage, policy, request) else policy
    fitted = CacheSpec(**kept)
    if not fitted.sketch.enabled and not fitted.render.enabled:
        return None
    return fitted
