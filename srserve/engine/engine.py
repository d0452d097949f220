"""The SRDiffusion engine: composable stages over one sketch/render model pair. No Ray here.

encode -> sketch (steps 0..k, large model) -> HandoffState -> render (steps k..N, small model)
-> decode (VAE) -> export (mp4). Each stage can run in a different process; the handoff state
is the only thing that crosses from sketch to render.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from PIL import Image

from srserve.engine.adapters.loading import AdapterStats, EngineAdapters
from srserve.engine.adapters.spec import ResolvedLora
from srserve.engine.config import ModelPairConfig
from srserve.engine.denoising.cache import step_cache
from srserve.engine.denoising.schedule import build_scheduler
from srserve.engine.denoising.scheduler_state import capture, restore
from srserve.engine.denoising.switch import SwitchDecider
from srserve.engine.families import (
    EncodedPrompt,
    check_edit_inputs,
    check_input_image,
    check_pair_schedule,
    check_schedule,
    get_family,
)
from srserve.engine.handoff import HandoffState
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.models import components
from srserve.engine.models.attention import apply_attention_backend, check_attention_backend
from srserve.engine.models.component_config import read_component_config
from srserve.engine.parallel.config import attention_heads, check_parallel
from srserve.engine.parallel.group import ParallelRuntime
from srserve.engine.request import GenerationRequest, ResolvedRequest, resolve_request
from srserve.engine.video import encode_mp4, to_uint8

ProgressFn = Callable[[str, int, int], None]
"""Called as (stage, steps_done, steps_total) after every denoising step."""
CancelFn = Callable[[], bool]
"""Polled at every step boundary; True stops the stage with `Cancelled`."""


class Role(StrEnum):
    """What a process does with a pair; each role loads only the components it needs."""

    TEXT = "text"
    SKETCH = "sketch"
    RENDER = "render"
    DECODE = "decode"


ALL_ROLES = frozenset(Role)


class Cancelled(Exception):
    """The job was cancelled (or ran out of time) at a step boundary."""


class MissingRoleError(RuntimeError):
    """A stage was called on an engine that did not load the components for it."""


@dataclass
class GenerationResult:
    video: bytes
    frames: np.ndarray
    latents: torch.Tensor
    switch_step: int
    num_steps: int
    timings: dict[str, float] = field(default_factory=dict)
    handoff_bytes: int = 0
    switch_trace: list[float] = field(default_factory=list)
    handoff: bytes = b""
    lora: ResolvedLora | None = None  # the adapter the job ran with, and which models applied it


class SRDiffusionEngine:
    """One model pair, loaded for a subset of roles, with the stages as methods."""

    def __init__(
        self,
        config: ModelPairConfig,
        roles: frozenset[Role] | set[Role] = ALL_ROLES,
        parallel: ParallelRuntime | None = None,
    ) -> None:
        self.config = config
        self.roles = frozenset(roles)
        # This process's rank of a multi-device replica (srserve.engine.parallel); None: one device.
        self.parallel = parallel
        self.family = get_family(config.family)
        self.family.check_pair(config)
        check_pair_schedule(self.family, config)
        self.family.bind(config)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = config.resolved_device()
        self.dtype = config.resolve_dtype(config.dtype)
        self.render_dtype = self.dtype if config.render_dtype is None else config.resolve_dtype(config.render_dtype)
        self.max_sequence_length = self.family.max_sequence_length(config)
        backend = config.attention_backend
        if self.roles & {Role.SKETCH, Role.RENDER}:  # fail before any weights load
            check_attention_backend(backend, self.family.name, self.family.attention_backends, self.device, self.dtype)
            if config.compile:
                for path, render in ((config.sketch_path, False), (config.render_path, True)):
                    components.check_compilable((self.family.transformer_config(path, render) or {}).get("_class_name"))
            if parallel is not None:
                heads = attention_heads(self.family, config.sketch_path, config.render_path)
                check_parallel(parallel.spec, self.family.name, backend, self.device, heads)
        # The pair's LoRA files for this engine's models, checked against them before any weights load.
        self.adapters = EngineAdapters(config, self.family, {r.value for r in self.roles & {Role.SKETCH, Role.RENDER}})
        vae_path = config.vae_path or config.render_path
        self.vae_config: dict[str, Any] = read_component_config(vae_path, "vae") or {}
        self._scheduler_template = self.family.load_scheduler(config.sketch_path)
        self._render_scheduler_template = self.family.load_render_scheduler(config)
        self.sketch_model = self.render_model = self.vae = None
        self.tokenizer = self.text_encoder = None
        if Role.TEXT in self.roles:
            te_path = config.text_encoder_path or config.sketch_path
            te_dtype = config.resolve_dtype(config.text_encoder_dtype)
            self.tokenizer, self.text_encoder = components.load_shared(
                "text_encoder",
                te_path,
                te_dtype,
                self.device,
                lambda: self.family.load_text_encoder(te_path, te_dtype, self.device),
            )
        if Role.SKETCH in self.roles:
            self.sketch_model = components.load_shared(
                self._transformer_kind() + self.adapters.kind_tag("sketch"),
                config.sketch_path,
                self.dtype,
                self.device,
                lambda: self._prepare_transformer(
                    self.adapters.prepare(
                        "sketch", self.family.load_transformer(config.sketch_path, self.dtype, self.device)
                    )
                ),
            )
        if Role.RENDER in self.roles:
            self.render_model = components.load_shared(
                self._transformer_kind() + self.adapters.kind_tag("render"),
                config.render_path,
                self.render_dtype,
                self.device,
                lambda: self._prepare_transformer(
                    self.adapters.prepare(
                        "render", self.family.load_transformer(config.render_path, self.render_dtype, self.device)
                    )
                ),
            )
        self.image_encoder: Any = None
        if Role.SKETCH in self.roles and self.family.takes_image:  # the image is encoded on the sketch side
            ie_dtype = config.resolve_dtype(config.image_encoder_dtype)
            self.image_encoder = components.load_shared(
                "image_encoder",
                config.sketch_path,
                ie_dtype,
                self.device,
                lambda: self.family.load_image_encoder(config, ie_dtype, self.device),
            )
        encodes_pixels = self.family.takes_image or self.family.edits_video  # on the sketch side, with the VAE
        if Role.DECODE in self.roles or (Role.SKETCH in self.roles and encodes_pixels):
            vae_dtype = config.resolve_dtype(config.vae_dtype)
            self.vae = components.load_shared(
                "vae",
                vae_path,
                vae_dtype,
                self.device,
                lambda: self.family.load_vae(vae_path, vae_dtype, self.device),
            )

    def _prepare_transformer(self, model: torch.nn.Module) -> torch.nn.Module:
        """Set the pair's attention backend, then (compile: true) compile the repeated blocks around it."""
        model = apply_attention_backend(model, self.config.attention_backend)
        if self.parallel is not None:  # diffusers' context-parallel hooks, before compile traces the blocks
            model = self.parallel.apply(model)
        return components.compile_repeated_blocks(model) if self.config.compile else model

    def _transformer_kind(self) -> str:
        """Component-cache kind of this engine's transformers (backend, compile, parallel degree)."""
        kind = components.transformer_kind(self.config.attention_backend, self.config.compile)
        return kind if self.parallel is None else f"{kind}{self.parallel.cache_tag()}"

    def _predict(
        self, model: torch.nn.Module, latents: torch.Tensor, t: torch.Tensor, encoded: EncodedPrompt, scale: float
    ) -> torch.Tensor:
        """The family's step prediction; with CFG parallel this rank runs one branch and exchanges."""
        split = None if self.parallel is None else self.parallel.cfg_split
        if split is None:
            return self.family.predict(model, latents, t, encoded, scale)
        return self.family.predict(model, latents, t, encoded, scale, cfg_split=split)

    def _need(self, role: Role) -> None:
        if role not in self.roles:
            raise MissingRoleError(f"this engine was loaded without the {role.value!r} role")

    def _new_scheduler(self, request: ResolvedRequest, template: Any = None) -> Any:
        """The request's scheduler (denoising.schedule), timesteps set: the folder's unless it names another."""
        template = self._scheduler_template if template is None else template
        return build_scheduler(template, request, self.device)

    def resolve(self, request: GenerationRequest) -> ResolvedRequest:
        """Fill unset fields from the pair's defaults, resolve its `lora` against the pair's adapters,
        re-validate the whole request, and check its schedule against the family and the pair's bounds."""
        resolved = resolve_request(request, self.config.defaults, adapters=self.config.adapters)
        self.check_schedule(resolved)
        return resolved

    def check_schedule(self, request: ResolvedRequest) -> None:
        """ValueError naming each field outside what the family runs and the pair's schedule bounds allow."""
        check_schedule(self.family, self.config, request)

    def adapter_stats(self) -> AdapterStats:
        """This engine's adapter counters (loads, hits, evictions) and what its transformers hold now."""
        return self.adapters.stats()

    def warm_adapter(self, name: str) -> None:
        """Load a configured adapter into this engine's transformers before a job needs it."""
        if name not in self.config.adapters:
            raise ValueError(f"lora: unknown adapter {name!r}")
        self.adapters.warm(name, {"sketch": self.sketch_model, "render": self.render_model})

    def evict_adapter(self, name: str) -> None:
        """Unload a configured adapter from this engine's transformers (a no-op where it is not loaded)."""
        if name not in self.config.adapters:
            raise ValueError(f"lora: unknown adapter {name!r}")
        self.adapters.evict(name)

    def check_image(self, request: GenerationRequest, image: Image.Image | None) -> None:
        """ValueError naming `input_reference` unless the request has an image exactly when the pair takes one
        (`srserve.engine.families.check_input_image`)."""
        check_input_image(self.family.name, request, image)

    def check_edit(self, request: GenerationRequest, inputs: EditInputs | None) -> None:
        """ValueError naming the field unless the request's editing inputs (video, mask, reference_images,
        conditioning_scale) are ones the pair takes, and the decoded ones, if given, what it describes."""
        check_edit_inputs(self.family.name, request, inputs)

    def encode(self, request: ResolvedRequest) -> EncodedPrompt:
        self._need(Role.TEXT)
        with torch.no_grad():
            return self.family.encode_prompt(
                self.tokenizer, self.text_encoder, request, self.max_sequence_length, self.device
            )

    @torch.no_grad()
    def sketch(
        self,
        request: ResolvedRequest,
        encoded: EncodedPrompt,
        *,
        image: Image.Image | None = None,
        edit: EditInputs | None = None,
        job_id: str = "",
        on_step: ProgressFn | None = None,
        cancelled: CancelFn | None = None,
    ) -> HandoffState:
        """Run the large model from pure noise until the switch policy hands over.

        Image-to-video pairs take the request's decoded input image (`image`, RGB; see
        srserve.engine.inputs.image.load_image); it is encoded here, once, and its conditioning crosses in the handoff.
        Video-editing (VACE) pairs take the decoded video, mask and reference images (`edit`; see
        srserve.engine.inputs.video_input.load_video), which the request describes; None: the request gives none, and
        the VACE context is the pipeline's for no video (black frames, all regenerated). Their `image`, where
        the request gives `input_reference` and no video, is the first frame to keep
        (srserve.engine.inputs.edit_inputs.EditInputs.with_first_frame).
        """
        self.check_image(request, image)
        self.check_edit(request, edit)
        if request.input_reference is not None and image is None:
            raise ValueError(f"input_reference: the {self.family.name} sketch needs the decoded image (image=)")
        if image is not None and image.mode != "RGB":
            raise ValueError(f"input_reference: the image must be RGB (load_image converts it), not {image.mode}")
        if image is not None and self.family.takes_image:
            self._need(Role.SKETCH)
            assert self.vae is not None
            condition, image_embeds = self.family.encode_image(
                image, request, self.image_encoder, self.vae, self.device
            )
            encoded = replace(encoded, image_condition=condition, image_embeds=image_embeds)
        if self.family.edits_video:
            inputs = edit if edit is not None else EditInputs()
            inputs.check(request)  # a described video, mask or reference image needs its pixels, named if missing
            if image is not None:  # check_image allowed it: the request gives no video
                inputs = inputs.with_first_frame(image, request.width, request.height, request.num_frames)
            self._need(Role.SKETCH)
            assert self.vae is not None and self.sketch_model is not None
            encoded = self.family.condition_edit(encoded, inputs, request, self.vae, self.sketch_model, self.device)
        self.check_schedule(request)
        num_steps = request.num_inference_steps
        sched = self._new_scheduler(request)
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(0)
        timesteps = sched.timesteps
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        latents = self.family.initial_latents(request, encoded, sched, generator, self.device, self.vae_config)
        decider = SwitchDecider(request.switch, num_steps)
        done = 0
        policy = request.cache.sketch if request.cache is not None else None
        if not decider.done_before(0):
            self._need(Role.SKETCH)
        with (
            self.adapters.active("sketch", request.lora, None if decider.done_before(0) else self.sketch_model),
            step_cache(self.sketch_model, policy, num_steps, 0, "sketch", self.family.cached_modules),
        ):
            while done < num_steps and not decider.done_before(done):
                if cancelled is not None and cancelled():
                    raise Cancelled(f"cancelled during sketch at step {done}/{num_steps}")
                t = timesteps[done]
                scale = self.family.guidance_scale(request, t, num_steps)
                pred = self._predict(self.sketch_model, latents, t, encoded, scale)
                latents = self.family.step(sched, pred, timesteps, done, latents, generator)
                done += 1
                if on_step is not None:
                    on_step("sketch", done, decider.max_steps)
                if decider.observe(done - 1, pred):
                    break
        state = HandoffState(
            family=self.family.name,
            request=request,
            switch_step=done,
            latents=latents,
            prompt_embeds=encoded.prompt_embeds,
            negative_prompt_embeds=encoded.negative_prompt_embeds,
            generator_state=generator.get_state(),
            scheduler=capture(sched),
            timesteps=timesteps,
            sigmas=getattr(sched, "sigmas", None),
            job_id=job_id,
            switch_trace=list(decider.trace),
            image_condition=encoded.image_condition,
            image_embeds=encoded.image_embeds,
            vace_context=encoded.vace_context,
            reference_frames=encoded.reference_frames,
        )
        return self.family.convert_handoff(state)

    @torch.no_grad()
    def render(
        self,
        state: HandoffState,
        *,
        on_step: ProgressFn | None = None,
        cancelled: CancelFn | None = None,
    ) -> torch.Tensor:
        """Continue a handoff with the small model to the last step; returns final latents."""
        if state.family != self.family.name:
            raise ValueError(f"handoff is for family {state.family!r}, this engine serves {self.family.name!r}")
        self.check_schedule(state.request)
        num_steps = state.num_steps
        sched = self._new_scheduler(state.request, self._render_scheduler_template)
        timesteps = self.family.render_timesteps(sched, state)
        restore(sched, state.scheduler, self.device)
        generator = torch.Generator(device="cpu")
        generator.set_state(state.generator_state)
        scale = state.request.conditioning_scale
        encoded = EncodedPrompt(
            state.prompt_embeds.to(self.device),
            None if state.negative_prompt_embeds is None else state.negative_prompt_embeds.to(self.device),
            None if state.image_condition is None else state.image_condition.to(self.device),
            None if state.image_embeds is None else state.image_embeds.to(self.device),
            None if state.vace_context is None else state.vace_context.to(self.device),
            1.0 if scale is None else scale,
            state.reference_frames,
        )  # conditioning_scale unset: diffusers' WanVACEPipeline default, 1
        latents = state.latents.to(self.device)
        if state.switch_step < num_steps:
            self._need(Role.RENDER)
        policy = state.request.cache.render if state.request.cache is not None else None
        with (
            self.adapters.active(
                "render", state.request.lora, self.render_model if state.switch_step < num_steps else None
            ),
            step_cache(self.render_model, policy, num_steps, state.switch_step, "render", self.family.cached_modules),
        ):
            for i in range(state.switch_step, num_steps):
                if cancelled is not None and cancelled():
                    raise Cancelled(f"cancelled during render at step {i}/{num_steps}")
                t = timesteps[i]
                scale = self.family.guidance_scale(state.request, t, num_steps)
                pred = self._predict(self.render_model, latents, t, encoded, scale)
                latents = self.family.step(sched, pred, timesteps, i, latents, generator)
                if on_step is not None:
                    on_step("render", i + 1, num_steps)
        return self.family.output_latents(latents, state)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Frames as float32 [F, H, W, 3] in [0, 1]."""
        self._need(Role.DECODE)
        return self.family.decode(self.vae, latents)

    @staticmethod
    def export(frames: np.ndarray, fps: int) -> bytes:
        return encode_mp4(to_uint8(frames), fps=fps)

    def generate(
        self,
        request: GenerationRequest,
        *,
        image: Image.Image | None = None,
        edit: EditInputs | None = None,
        on_step: ProgressFn | None = None,
        through_bytes: bool = True,
    ) -> GenerationResult:
        """All stages in this process; the handoff goes through its wire format unless told not to.

        `image`: the decoded input image of an image-to-video request (its `input_reference` describes it).
        `edit`: the decoded video, mask and reference images of a video-editing request (it describes them).
        """
        timings: dict[str, float] = {}

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            start = time.perf_counter()
            out = fn()
            timings[name] = time.perf_counter() - start
            return out

        resolved = self.resolve(request)
        self.check_image(resolved, image)  # before the text encoder runs
        self.check_edit(resolved, edit)
        encoded = timed("encode", lambda: self.encode(resolved))
        state = timed("sketch", lambda: self.sketch(resolved, encoded, image=image, edit=edit, on_step=on_step))
        nbytes, blob = 0, b""
        if through_bytes:
            blob = timed("handoff_serialize", state.to_bytes)
            nbytes = len(blob)
            state = timed("handoff_deserialize", lambda: HandoffState.from_bytes(blob))
        latents = timed("render", lambda: self.render(state, on_step=on_step))
        frames = timed("decode", lambda: self.decode(latents))
        video = timed("export", lambda: self.export(frames, resolved.fps))
        return GenerationResult(
            video=video,
            frames=frames,
            latents=latents,
            switch_step=state.switch_step,
            num_steps=resolved.num_inference_steps,
            timings=timings,
            handoff_bytes=nbytes,
            switch_trace=state.switch_trace,
            handoff=blob,
            lora=resolved.lora,
        )
