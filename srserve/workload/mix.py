"""Request mixes: weighted request classes (size, frames, steps, switch policy, SLO)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from srserve.engine.request import GenerationRequest


class RequestClass(BaseModel):
    """One kind of request in a mix. Unset sizes take the served pair's defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    weight: float = Field(1.0, gt=0)
    prompt: str = "a red fox running through snow"
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    switch: str = "fixed:5"
    slo_s: float | None = Field(None, gt=0, description="absolute latency SLO for this class")
    # For the planner's simulator only: the switch step distribution of an adaptive policy
    # (step -> probability); a fixed policy needs none.
    switch_steps: dict[int, float] | None = None

    @model_validator(mode="after")
    def _valid_request(self) -> RequestClass:
        GenerationRequest.model_validate(self.fields(seed=0))  # errors name the field
        return self

    def fields(self, seed: int) -> dict[str, Any]:
        """GenerationRequest fields for one request of this class."""
        out: dict[str, Any] = {"prompt": self.prompt, "switch": self.switch, "seed": seed}
        for name in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class RequestMix(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[RequestClass] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> RequestMix:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"classes: names must be unique, got {names}")
        return self

    @classmethod
    def single(cls, **fields: Any) -> RequestMix:
        return cls(classes=[RequestClass(**{k: v for k, v in fields.items() if v is not None})])

    @classmethod
    def from_yaml(cls, path: str | Path) -> RequestMix:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(data, list):
            data = {"classes": data}
        return cls.model_validate(data)

    def by_name(self, name: str) -> RequestClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"no request class {name!r} in the mix (have {[c.name for c in self.classes]})")

    def sample(self, rng: random.Random) -> RequestClass:
        if len(self.classes) == 1:
            return self.classes[0]
        return rng.choices(self.classes, weights=[c.weight for c in self.classes])[0]
