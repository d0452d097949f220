"""Wan2.2-T2V-A14B: the high-noise expert sketches, the low-noise expert (or a Wan2.1 model) renders.

A14B is two transformers of the Wan2.1-14B architecture in one Diffusers folder, `transformer`
(high noise) and `transformer_2` (low noise), with Wan2.1's umT5 encoder and VAE. WanPipeline runs
`transformer` while t >= boundary_ratio * num_train_timesteps (0.875 in the folder's
model_index.json) and `transformer_2` after, with `guidance_scale_2` as the low-noise CFG scale.
Here the two experts are the sketch and the render model, so each pool holds one 14B expert; the
switch at the model's own boundary (`boundary_switch`) is exactly where WanPipeline switches, and
fixed or adaptive switches move it.

The latent space is Wan2.1's, so the render may also be another Wan model whose latents, VAE, text
width and schedule agree (Wan2.1-T2V-1.3B: the cross pair). `check_pair` compares all of them and
names every difference; `render_timesteps` checks each handoff against the render model, since an
uploaded handoff may come from any sketch model.

Guidance. Sketch steps use the request's guidance_scale, render steps the pair's guidance_scale_2
(the request's when unset). At the boundary switch that is WanPipeline's rule exactly; at another
switch step the scale follows the model, i.e. WanPipeline with its boundary at that step. CFG runs
iff the request's guidance_scale > 1, as in WanPipeline (guidance_scale_2 never turns it on or off).

Paths. `sketch_path` is the A14B folder (its `transformer`) or that transformer's own folder;
`render_path` is a transformer's folder inside a pipeline folder (`<A14B>/transformer_2`), or a
pipeline folder (its `transformer_2` if it has one, else its `transformer`). The engine keeps one
loaded transformer per path, so one folder's two experts need two paths.
"""

from __future__ import annotations

import inspect
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import UMT5Config

from srserve.engine.config import ModelPairConfig
from srserve.engine.denoising.schedule import build_scheduler
from srserve.engine.families.base import EncodedPrompt, IncompatiblePairError, refuse_misfit, require_component_config
from srserve.engine.families.wan import WanFamily
from srserve.engine.handoff import HandoffState
from srserve.engine.models.component_config import read_component_config, read_model_index
from srserve.engine.parallel.cfg import CfgSplit
from srserve.engine.request import ResolvedRequest, SwitchPolicy

HIGH_NOISE = "transformer"
LOW_NOISE = "transformer_2"
HANDOFF_EXTRAS_KEY = "wan22"
SCHEDULER_CLASS = "UniPCMultistepScheduler"
# What a latent and the text embeddings must agree on between the two transformers (their sizes may differ).
_TRANSFORMER_KEYS = ("in_channels", "out_channels", "patch_size", "text_dim")
# The umT5 fields that decide which embeddings a transformer was trained on.
_TEXT_ENCODER_KEYS = (
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_heads",
    "vocab_size",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "feed_forward_proj",
)
# Set on each transformer this family loads: the folder it came from (how predict tells the render model).
_SOURCE_ATTR = "_srserve_transformer_folder"


@dataclass(frozen=True)
class ModelLocation:
    """A transformer, and the pipeline folder its VAE, text encoder and scheduler come from."""

    pipeline: Path
    subfolder: str

    @property
    def transformer(self) -> Path:
        return self.pipeline / self.subfolder


def _has_component(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def locate(path: str | Path, *, render: bool) -> ModelLocation:
    """Where a sketch or render path's transformer is (see the module docstring)."""
    folder = Path(path)
    index = read_model_index(folder)
    if index is not None:
        return ModelLocation(folder, LOW_NOISE if render and _has_component(index, LOW_NOISE) else HIGH_NOISE)
    if (folder / "config.json").is_file() and read_model_index(folder.parent) is not None:
        return ModelLocation(folder.parent, folder.name)
    raise IncompatiblePairError(
        f"{str(path)!r} is neither a Diffusers pipeline folder (model_index.json) nor a transformer folder inside one"
    )


def pipeline_folder(path: str | Path) -> Path:
    """The pipeline folder of a path that names one, or a transformer folder inside one."""
    folder = Path(path)
    if read_model_index(folder) is None and read_model_index(folder.parent) is not None:
        return folder.parent
    return folder


def low_noise_expert_path(folder: str | Path) -> str:
    """`<folder>/transformer_2` when the folder is a two-expert pipeline (A14B); else the folder itself."""
    index = read_model_index(folder)
    if index is not None and _has_component(index, LOW_NOISE):
        return str(Path(folder) / LOW_NOISE)
    return str(folder)


def _with_defaults(cls: type, cfg: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the class's defaults filled in: folders saved by older diffusers omit newer keys."""
    params = inspect.signature(cls.__init__).parameters.values()
    out = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    out.update({k: v for k, v in cfg.items() if not k.startswith("_")})
    return {k: _plain(v) for k, v in out.items()}


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _differences(
    what: str,
    keys: tuple[str, ...] | None,
    sketch: dict[str, Any],
    render: dict[str, Any],
    names: tuple[str, str] = ("sketch", "render"),
) -> list[str]:
    """One line per differing field (all fields when `keys` is None)."""
    fields = keys if keys is not None else tuple(sorted(set(sketch) | set(render)))
    return [
        f"{what} {key}: {names[0]} has {sketch.get(key)!r}, {names[1]} has {render.get(key)!r}"
        for key in fields
        if _plain(sketch.get(key)) != _plain(render.get(key))
    ]


def _text_encoder_config(folder: Path) -> dict[str, Any]:
    cfg = UMT5Config.from_dict(require_component_config(folder, "text_encoder"))
    return {key: getattr(cfg, key, None) for key in _TEXT_ENCODER_KEYS}


class Wan22Family(WanFamily):
    name = "wan2.2"
    # Both experts' class (the VACE variant's experts are WanVACETransformer3DModel).
    transformer_class: type[torch.nn.Module] = WanTransformer3DModel

    def __init__(self) -> None:
        self._config: ModelPairConfig | None = None
        self._sketch: ModelLocation | None = None
        self._render: ModelLocation | None = None
        self._boundary_ratio = 0.0
        self._vae_config: dict[str, Any] = {}
        self._render_transformer: dict[str, Any] = {}
        self._sketch_scheduler: Any = None
        self._render_scheduler: Any = None
        self._is_render: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()

    # -- the pair ---------------------------------------------------------------------------

    def check_pair(self, config: ModelPairConfig) -> None:
        if config.use_dynamic_cfg:
            raise IncompatiblePairError("use_dynamic_cfg is CogVideoXPipeline's option; Wan2.2 has no such schedule")
        for label, path in (("sketch", config.sketch_path), ("render", config.render_path)):
            if not Path(path).is_dir():
                raise IncompatiblePairError(f"{label} model folder {path!r} does not exist")
        sketch, render = locate(config.sketch_path, render=False), locate(config.render_path, render=True)
        index = read_model_index(sketch.pipeline) or {}
        boundary = index.get("boundary_ratio")
        if index.get("expand_timesteps"):
            raise IncompatiblePairError(
                f"sketch folder {str(sketch.pipeline)!r} has expand_timesteps (Wan2.2 TI2V-5B: per-token timesteps, "
                "48-channel latents); the wan2.2 family sketches with the A14B high-noise expert"
            )
        if not isinstance(boundary, int | float) or not 0.0 < boundary < 1.0:
            raise IncompatiblePairError(
                f"sketch folder {str(sketch.pipeline)!r} has no boundary_ratio in (0, 1) in its model_index.json "
                f"(found {boundary!r}): not a Wan2.2 A14B folder (a Wan2.1 pair is family wan2.1)"
            )
        if sketch.subfolder != HIGH_NOISE:
            raise IncompatiblePairError(
                f"the sketch must be the high-noise expert ({HIGH_NOISE}), not {sketch.subfolder!r}"
            )
        if sketch.transformer.resolve() == render.transformer.resolve():
            raise IncompatiblePairError(f"sketch and render are the same transformer, {str(sketch.transformer)!r}")
        if config.sketch_path == config.render_path:
            raise IncompatiblePairError(
                "sketch_path and render_path are the same folder, and srserve keeps one transformer per path: "
                f"name the low-noise expert by its own folder, render_path: {str(render.transformer)!r}"
            )
        problems: list[str] = []
        transformers = []
        for label, loc in (("sketch", sketch), ("render", render)):
            cfg = read_component_config(str(loc.pipeline), loc.subfolder)
            if cfg is None:
                raise IncompatiblePairError(f"{label} transformer folder {str(loc.transformer)!r} has no config.json")
            expected_class = self.transformer_class.__name__
            if cfg.get("_class_name") != expected_class:
                raise IncompatiblePairError(
                    f"{label} transformer is {cfg.get('_class_name')!r}, not a {expected_class}"
                )
            transformers.append(cfg)
        problems += _differences("transformer", _TRANSFORMER_KEYS, *transformers)
        problems += self._vae_problems(config, sketch, render, transformers[0])
        problems += self._text_problems(config, sketch, render, transformers[0])
        problems += self._scheduler_problems(config, sketch, render)
        refuse_misfit(sketch.transformer, render.transformer, problems)

    def _vae_problems(
        self, config: ModelPairConfig, sketch: ModelLocation, render: ModelLocation, transformer: dict[str, Any]
    ) -> list[str]:
        """The latent space: every VAE config field, and the channels the transformers take."""
        sketch_vae = _with_defaults(AutoencoderKLWan, require_component_config(sketch.pipeline, "vae"))
        render_vae = _with_defaults(AutoencoderKLWan, require_component_config(render.pipeline, "vae"))
        problems = _differences("VAE", None, sketch_vae, render_vae)
        if config.vae_path is not None:
            decode_vae = _with_defaults(
                AutoencoderKLWan, require_component_config(pipeline_folder(config.vae_path), "vae")
            )
            problems += _differences("VAE", None, sketch_vae, decode_vae, ("sketch", "vae_path"))
        problem = self.channel_problem(sketch_vae, transformer)
        if problem:
            problems.append(f"sketch {problem}")
        return problems

    @staticmethod
    def _text_problems(
        config: ModelPairConfig, sketch: ModelLocation, render: ModelLocation, transformer: dict[str, Any]
    ) -> list[str]:
        """The embeddings both transformers read: one encoder's, as wide as text_dim, like each model's own."""
        te_folder = pipeline_folder(config.text_encoder_path) if config.text_encoder_path else sketch.pipeline
        te = _text_encoder_config(te_folder)
        problems = []
        if te["d_model"] != transformer.get("text_dim"):
            problems.append(
                f"text encoder width {te['d_model']!r} != transformer text_dim {transformer.get('text_dim')!r}"
            )
        if read_component_config(str(render.pipeline), "text_encoder") is not None:
            problems += _differences("text encoder", _TEXT_ENCODER_KEYS, te, _text_encoder_config(render.pipeline))
        return problems

    @staticmethod
    def _scheduler_problems(config: ModelPairConfig, sketch: ModelLocation, render: ModelLocation) -> list[str]:
        """The schedule: the same scheduler config, hence the same timesteps and sigmas for every N."""
        raw = [require_component_config(loc.pipeline, "scheduler") for loc in (sketch, render)]
        classes = [cfg.get("_class_name") for cfg in raw]
        if classes != [SCHEDULER_CLASS, SCHEDULER_CLASS]:
            return [
                f"scheduler class: sketch has {classes[0]!r}, render has {classes[1]!r} "
                f"(srserve runs {SCHEDULER_CLASS})"
            ]
        scheds = [
            UniPCMultistepScheduler.from_pretrained(str(loc.pipeline), subfolder="scheduler")
            for loc in (sketch, render)
        ]
        problems = _differences(
            "scheduler", None, *({k: v for k, v in dict(s.config).items() if not k.startswith("_")} for s in scheds)
        )
        n = config.defaults.num_inference_steps
        for s in scheds:
            s.set_timesteps(n)
        if not torch.equal(scheds[0].timesteps, scheds[1].timesteps):
            problems.append(
                f"timesteps for {n} steps: sketch {scheds[0].timesteps.tolist()}, render {scheds[1].timesteps.tolist()}"
            )
        elif not torch.equal(scheds[0].sigmas, scheds[1].sigmas):
            problems.append(
                f"sigmas for {n} steps: sketch {scheds[0].sigmas.tolist()}, render {scheds[1].sigmas.tolist()}"
            )
        return problems

    def bind(self, config: ModelPairConfig) -> None:
        self._config = config
        self._sketch = locate(config.sketch_path, render=False)
        self._render = locate(config.render_path, render=True)
        self._boundary_ratio = float((read_model_index(self._sketch.pipeline) or {})["boundary_ratio"])
        vae_folder = pipeline_folder(config.vae_path) if config.vae_path else self._render.pipeline
        self._vae_config = _with_defaults(AutoencoderKLWan, require_component_config(vae_folder, "vae"))
        self._render_transformer = require_component_config(self._render.pipeline, self._render.subfolder)
        self._sketch_scheduler = self.load_scheduler(config.sketch_path)
        self._render_scheduler = self.load_render_scheduler(config)

    @property
    def boundary_ratio(self) -> float:
        self._bound()
        return self._boundary_ratio

    def _bound(self) -> tuple[ModelLocation, ModelLocation]:
        if self._sketch is None or self._render is None:
            raise RuntimeError("Wan22Family.bind(config) was not called")
        return self._sketch, self._render

    def boundary_step(self, num_steps: int, request: ResolvedRequest | None = None) -> int:
        """Sketch steps WanPipeline gives the high-noise expert: the timesteps t >= boundary_ratio * T
        (of the request's schedule when it names one, srserve.engine.denoising.schedule)."""
        self._bound()
        if request is not None:
            sched = build_scheduler(self._sketch_scheduler, request, None)
        else:
            sched = type(self._sketch_scheduler).from_config(self._sketch_scheduler.config)
            sched.set_timesteps(num_steps)
        boundary_t = self._boundary_ratio * sched.config.num_train_timesteps
        return int((sched.timesteps >= boundary_t).sum())

    def boundary_switch(self, num_steps: int, request: ResolvedRequest | None = None) -> SwitchPolicy:
        """The model's own switch as a fixed policy for `num_steps` steps (of `request`'s schedule if given)."""
        return SwitchPolicy(kind="fixed", step=self.boundary_step(num_steps, request))

    # -- loading ----------------------------------------------------------------------------

    def _location_of(self, path: str) -> ModelLocation:
        if self._config is not None and path == self._config.render_path:
            return self._bound()[1]
        if self._config is not None and path == self._config.sketch_path:
            return self._bound()[0]
        return locate(path, render=False)

    def transformer_config(self, path: str, render: bool) -> dict[str, Any] | None:
        """The expert's own config: a two-expert folder's render model is its transformer_2/."""
        config = locate(path, render=render).transformer / "config.json"
        return json.loads(config.read_text()) if config.is_file() else None

    def load_transformer(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        folder = self._location_of(path).transformer
        model = self.transformer_class.from_pretrained(str(folder), torch_dtype=dtype)
        setattr(model, _SOURCE_ATTR, str(folder.resolve()))
        return model.to(device).eval()

    def load_text_encoder(self, path: str, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
        return super().load_text_encoder(str(pipeline_folder(path)), dtype, device)

    def load_vae(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        return super().load_vae(str(pipeline_folder(path)), dtype, device)

    def load_scheduler(self, path: str) -> Any:
        return super().load_scheduler(str(pipeline_folder(path)))

    def load_render_scheduler(self, config: ModelPairConfig) -> Any:
        """The render model's own scheduler, so each handoff's schedule is checked against it."""
        return self.load_scheduler(config.render_path)

    # -- conditioning and one step ----------------------------------------------------------

    def latent_shape(self, request: ResolvedRequest, vae_config: dict[str, Any]) -> tuple[int, ...]:
        # The engine reads the VAE config from vae_path or render_path, which here may be a transformer folder.
        return super().latent_shape(request, self._vae_config or vae_config)

    def _is_render_model(self, transformer: torch.nn.Module) -> bool:
        known = self._is_render.get(transformer)
        if known is None:
            folder = _loaded_from(transformer)
            known = folder is not None and folder == self._bound()[1].transformer.resolve()
            self._is_render[transformer] = known
        return known

    @torch.no_grad()
    def predict(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoded: EncodedPrompt,
        guidance_scale: float,
        *,
        cfg_split: CfgSplit | None = None,
    ) -> torch.Tensor:
        scale_2 = self._config.guidance_scale_2 if self._config is not None else None
        if scale_2 is not None and self._is_render_model(transformer):
            guidance_scale = scale_2
        cfg = encoded.negative_prompt_embeds is not None  # the request's guidance_scale > 1, as WanPipeline decides
        return self._guided(transformer, latents, timestep, encoded, guidance_scale, cfg=cfg, cfg_split=cfg_split)

    def convert_handoff(self, state: HandoffState) -> HandoffState:
        """Latents cross unchanged (one latent space); the state records the model's boundary for reference."""
        state.extras[HANDOFF_EXTRAS_KEY] = {
            "boundary_ratio": self._boundary_ratio,
            "boundary_step": self.boundary_step(state.num_steps, state.request),
        }
        return state

    def check_handoff(self, state: HandoffState) -> None:
        """Refuse a handoff that does not fit the render model, naming each mismatch (request time)."""
        self._bound()
        self._check_handoff(build_scheduler(self._render_scheduler, state.request, None), state)

    def render_timesteps(self, scheduler: Any, state: HandoffState) -> torch.Tensor:
        """The render model's own schedule, after the same checks (an uploaded handoff may come from anywhere)."""
        self._check_handoff(scheduler, state)
        return scheduler.timesteps

    def _check_handoff(self, scheduler: Any, state: HandoffState) -> None:
        """The latent, the text embeddings and the schedule against the render model's, all misfits at once."""
        problems = []
        channels = int(self._render_transformer.get("in_channels", 0))
        text_dim = int(self._render_transformer.get("text_dim", 0))
        expected = self.latent_shape(state.request, {})
        if tuple(state.latents.shape) != expected:
            r = state.request
            problems.append(
                f"latents have shape {list(state.latents.shape)}, this render model takes {list(expected)} for "
                f"{r.width}x{r.height}, {r.num_frames} frames ({channels} latent channels)"
            )
        for label, embeds in (
            ("prompt_embeds", state.prompt_embeds),
            ("negative_prompt_embeds", state.negative_prompt_embeds),
        ):
            if embeds is not None and (embeds.ndim != 3 or embeds.shape[-1] != text_dim):
                problems.append(f"{label} have shape {list(embeds.shape)}, this render model reads width {text_dim}")
        if state.request.guidance_scale > 1.0 and state.negative_prompt_embeds is None:
            problems.append("guidance_scale > 1 but the handoff has no negative_prompt_embeds")
        n = state.num_steps
        if not torch.equal(scheduler.timesteps.cpu(), state.timesteps.cpu()):
            problems.append(
                f"timesteps {state.timesteps.tolist()} differ from this render model's schedule for {n} steps "
                f"{scheduler.timesteps.tolist()}"
            )
        elif state.sigmas is not None and not torch.equal(scheduler.sigmas.cpu(), state.sigmas.cpu()):
            problems.append(f"sigmas differ from this render model's schedule for {n} steps")
        if problems:
            raise IncompatiblePairError("handoff does not fit this render model: " + "; ".join(problems))


def _loaded_from(transformer: torch.nn.Module) -> Path | None:
    """The folder a loaded transformer came from: ours are tagged; WanFamily loads `<pipeline>`/transformer."""
    tagged = getattr(transformer, _SOURCE_ATTR, None)
    if tagged:
        return Path(tagged)
    name = getattr(getattr(transformer, "config", None), "_name_or_path", None)
    if not name:
        return None
    folder = Path(name)
    return (folder / HIGH_NOISE if read_model_index(folder) is not None else folder).resolve()
