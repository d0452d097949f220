"""The ingress core: admits jobs into the store, drives them through the pools, answers queries.

It holds nothing a job needs: the store has the job, artifact storage its inputs (an input image; a video,
mask and reference images), handoff and video, and
any ingress replica's orchestrator can take over a job another one was driving. The latent never
comes here: the sketch replica writes the handoff to artifact storage, the render replica reads it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import ray
from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle

from srserve.engine.adapters.spec import AdapterConfig, LoraSpec, ResolvedLora, lora_pattern, resolve_lora
from srserve.engine.config import ModelPairConfig
from srserve.engine.denoising.cache import CacheSpec
from srserve.engine.denoising.schedule import ScheduleLimits
from srserve.engine.families import (
    check_edit_inputs,
    check_input_image,
    check_schedule,
    edits_video,
    get_family,
    takes_image,
)
from srserve.engine.families.base import IncompatiblePairError
from srserve.engine.handoff import HandoffFormatError, HandoffState
from srserve.engine.inputs.image import ImageInputError, describe_image, load_image
from srserve.engine.request import (
    GenerationRequest,
    InputImage,
    RequestDefaults,
    ResolvedRequest,
    cache_refusal,
    describe_validation_error,
    error_field,
    resolve_request,
)
from srserve.serving.config import AdapterRouting, ServingConfig
from srserve.serving.control.artifacts import ArtifactNotFound, ArtifactStore
from srserve.serving.control.attempts import StageResult, StageTicket
from srserve.serving.control.edit_uploads import EditUploads, decode_uploads
from srserve.serving.control.errors import (
    InvalidRequest,
    JobNotFound,
    NotReady,
    QuotaExceeded,
    RequestTooLarge,
    Unauthenticated,
)
from srserve.serving.control.events import EventHub
from srserve.serving.control.jobs import Job, JobEvent, JobState, Phase, edit_input_key, handoff_key, input_image_key
from srserve.serving.control.orchestrator import Orchestrator, OrchestratorSettings
from srserve.serving.control.pricing.load_switch import SwitchChoice, choose_switch, load_snapshot
from srserve.serving.control.pricing.request_limits import check_cost, check_request, predicted_gpu_s, unit_step_times
from srserve.serving.control.queueing.dispatch import DispatchPlan
from srserve.serving.control.request_cache import CacheRefused, cache_pattern, fit_schedule, resolve_cache
from srserve.serving.control.store.database import open_store
from srserve.serving.control.tenants import Tenant
from srserve.serving.ops.job_logging import bind_job, log_job_finished
from srserve.serving.ops.metrics import record_job_finished, record_quota_refusal, record_switch_choice

# What a caller sees when the replica running its request dies (Serve does not retry these).
REPLICA_LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
)


def _replica_lost(exc: BaseException | None, depth: int = 0) -> bool:
    """A lost replica, also when it surfaces wrapped: a text-pool response passed into the sketch
    call fails as the sketch call's error, with the dead actor as its cause."""
    if exc is None or depth > 5:
        return False
    if isinstance(exc, REPLICA_LOST):
        return True
    return _replica_lost(getattr(exc, "cause", None), depth + 1) or _replica_lost(exc.__cause__, depth + 1)


def stage_call_options(adapter: str | None, routing: AdapterRouting) -> dict[str, str]:
    """The handle options of a stage call for a job whose adapter the stage's models switch to (`adapter`,
    None: no such adapter). `multiplexed`: the adapter is Serve's multiplexed model id, so the call goes to a
    replica that holds it when one can take it; `none`: no options, Serve balances by queue length alone
    and the replica loads the adapter if it lacks it (`IngressConfig.adapter_routing`)."""
    if adapter is None or routing == "none":
        return {}
    return {"multiplexed_model_id": adapter}


def dispatch_plan(config: ServingConfig) -> DispatchPlan:
    """The queue's view of the deployment: the pool each stage is routed to, the stages whose call runs the
    whole job (colocated), and each tenant's weight in the fair share."""
    routes = config.pool_layout().routes
    return DispatchPlan(
        pools={stage: route.pool for stage, route in routes.items()},
        whole_job=frozenset(stage for stage, route in routes.items() if {"sketch", "render"} <= set(route.sides)),
        weights={name: tenant.weight for name, tenant in config.tenants.items()},
    )


def _job_ended(job: Job) -> None:
    """What the serving layer does when a job ends: its metrics and its summary log line."""
    record_job_finished(job)
    log_job_finished(job)


class IngressCore:
    def __init__(
        self,
        config: ServingConfig,
        defaults: RequestDefaults,
        model_name: str,
        family: str,
        pools: Mapping[str, DeploymentHandle],
        replica: str = "local",
        pair: ModelPairConfig | None = None,
    ) -> None:
        self.config = config
        self.layout = config.pool_layout()
        self.defaults = defaults
        self.model_name = model_name
        self.family = family
        self.pools = dict(pools)  # one handle per pool of the layout
        self.tokens = config.tenant_tokens()  # who each bearer token names (open: everyone is the default tenant)
        self.pair = pair
        self._family = None
        # The pair's LoRA adapters: a request's `lora` names one of them (never a file on the server).
        self.adapters: dict[str, AdapterConfig] = dict(pair.adapters) if pair is not None else {}
        if pair is not None:  # configs only, no weights: lets uploads be checked before they queue
            self._family = get_family(pair.family)
            self._family.bind(pair)
        # A family with its own expert boundary (wan2.2) switches there unless the client says otherwise.
        self._boundary_switch = getattr(self._family, "boundary_switch", None)
        self.store = open_store(config.job_store)
        self.artifacts = ArtifactStore.from_config(config.artifacts)
        ing = config.ingress
        self.owner = f"ingress-{replica}-{uuid.uuid4().hex[:8]}"  # one per process incarnation
        self.orchestrator = Orchestrator(
            self.store,
            self.artifacts,
            self.owner,
            OrchestratorSettings(
                lease_ttl_s=ing.lease_ttl_s,
                claim_interval_s=ing.claim_interval_s,
                max_attempts=ing.max_attempts,
                stall_timeout_s=ing.stall_timeout_s,
                retain_jobs=ing.retain_jobs,
                retain_age_s=ing.retain_age_s,
            ),
            self._run_stage,
            _replica_lost,
            on_job_ended=_job_ended,
            bind_job=bind_job,
            plan=dispatch_plan(config),
        )
        self.events_hub = EventHub(self.store)

    def start(self) -> None:
        """Background work on the replica's loop: leases, resumption, sweeping, progress streams."""
        self.orchestrator.start()
        self.events_hub.start()

    async def _run_stage(self, stage: Phase, ticket: StageTicket) -> StageResult:
        """Call the pool the layout routes `stage` to, with the encoder pool's embeddings where the route
        takes them (passed as a response: Ray hands the result to the stage's replica)."""
        route = self.layout.routes[stage]
        handle = self.pools[route.pool]
        options = stage_call_options(ticket.adapter(route.sides), self.config.ingress.adapter_routing)
        if options:  # Serve's multiplexing prefers a replica that already holds the adapter
            handle = handle.options(**options)
        call = getattr(handle, route.method)
        if route.takes_prompt and self.layout.encoder is not None:
            return await call.remote(ticket, self.pools[self.layout.encoder].encode.remote(ticket))
        return await call.remote(ticket)

    # -- admission -----------------------------------------------------------------------
    def authorize(self, authorization: str | None) -> Tenant:
        """The tenant the `Authorization` header names (every configured token compared, in constant time)."""
        tenant = self.tokens.identify(authorization)
        if tenant is None:
            raise Unauthenticated("missing or invalid bearer token")
        return tenant

    @staticmethod
    def check_priority(tenant: Tenant, priority: int) -> None:
        """InvalidRequest naming `priority` and the tenant's maximum unless the priority is within it."""
        if not 0 <= priority <= tenant.max_priority:
            record_quota_refusal(tenant.name, "max_priority")
            raise InvalidRequest(
                f"priority: must be between 0 and {tenant.max_priority} (this tenant's max_priority), got {priority}",
                param="priority",
            )

    async def submit(
        self,
        request: GenerationRequest,
        deadline_s: float | None = None,
        image: bytes | None = None,
        edit: EditUploads | None = None,
        *,
        tenant: Tenant,
        priority: int = 0,
    ) -> Job:
        """Admit a prompt (and for an image-to-video pair its input image, `image`'s bytes; for a video-editing
        pair its video, mask and reference images, `edit`'s) for `tenant`."""
        self.check_priority(tenant, priority)
        if edit is not None and not edit.fields():
            edit = None
        if image is not None:
            request = request.model_copy(update={"input_reference": await self.check_image(image)})
        if edit is not None:
            request = await self.check_edit(request, edit)
        try:
            check_input_image(self.family, request)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="input_reference") from None
        resolved, choice, cost = await self.resolve(request, deadline_s, tenant)
        job = await self._admit_job(
            resolved.model_dump(mode="json"),
            resolved.num_inference_steps,
            deadline_s,
            switch_choice=None if choice is None else (choice.cap, choice.reason),
            image=image,
            tenant=tenant,
            priority=priority,
            cost_gpu_s=cost,
            edit=edit,
        )
        record_switch_choice(job)
        return job

    @property
    def takes_image(self) -> bool:
        """Whether this deployment's pair generates from an input image (and from nothing else)."""
        return takes_image(self.family)

    @property
    def edits_video(self) -> bool:
        """Whether this deployment's pair edits video (VACE: a video, mask and reference images)."""
        return edits_video(self.family)

    def not_editing(self, name: str) -> InvalidRequest:
        """The refusal of an editing input (`name`) by a deployment whose pair does not edit video."""
        return InvalidRequest(
            f"{name}: the {self.model_name} pair ({self.family}) does not edit video; send {name} to a "
            "video-editing (VACE) deployment",
            param=name,
        )

    async def check_edit(self, request: GenerationRequest, uploads: EditUploads) -> GenerationRequest:
        """The request with its editing inputs described, once their bytes decode within the limits (a thread)
        and fit the request: a mask the video's shape, a video the request's frame count and size. Every
        refusal is an InvalidRequest naming the field, before anything is stored or queued; a pair that
        does not edit video refuses the files before any is decoded."""
        if not self.edits_video:
            raise self.not_editing(uploads.fields()[0])
        inputs, described = await asyncio.to_thread(decode_uploads, uploads, self.config.ingress.edit_limits())
        try:  # validated as a whole: a mask unlike its video, a video unlike the request, named
            request = GenerationRequest.model_validate({**request.model_dump(exclude_unset=True), **described})
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc), param=error_field(exc)) from None
        try:
            check_edit_inputs(self.family, request, inputs)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=str(exc).split(":", 1)[0].split("[", 1)[0]) from None
        return request

    async def check_image(self, image: bytes) -> InputImage:
        """The input image's description, once its bytes are known to decode within the limits (a thread:
        decoding is CPU work); InvalidRequest names `input_reference` otherwise, before anything is queued.
        A video-editing pair's image (a first-frame condition) is checked as an image-to-video pair's; whether
        the family takes it is `check_input_image`'s to say."""
        if not self.takes_image and not self.edits_video:
            raise InvalidRequest(
                f"input_reference: the {self.model_name} pair is text-to-video and takes no input image",
                param="input_reference",
            )
        limits = self.config.ingress

        def check():
            load_image(image, limits.max_image_bytes, limits.max_image_pixels).close()
            return describe_image(image)

        try:
            return await asyncio.to_thread(check)
        except ImageInputError as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None

    async def resolve(
        self, request: GenerationRequest, deadline_s: float | None = None, tenant: Tenant | None = None
    ) -> tuple[ResolvedRequest, SwitchChoice | None, float | None]:
        """The request a job runs, decided here once: the model pair's defaults for unset sizes and the
        schedule (checked against the family and the pair's schedule bounds), the family's own switch
        (wan2.2's expert boundary, counted on that schedule) when the request names none, the step caches
        within the pools' limits (a pool's default that the schedule cannot run with left off), then for a
        `load` switch the cap chosen from the pools' queued work. Also its predicted GPU-seconds where the
        deployment's `max_gpu_s` or `tenant`'s `max_queued_gpu_s` needs them (else, or unmeasured, None)."""
        resolved = self.decide(request)
        limits = self.config.ingress.limits
        cost = None
        queued_quota = tenant is not None and tenant.max_queued_gpu_s is not None
        if limits.max_gpu_s is not None or queued_quota:  # priced with the store's measured step times
            jobs, now, devices = await self.store.work_snapshot(), self.store.clock(), self.layout.devices()
            cost = check_cost(limits, resolved, jobs, now, devices)
            if cost is None and queued_quota:
                cost = predicted_gpu_s(resolved, unit_step_times(jobs, now), devices, limits.assumed_step_s)
        if resolved.switch.kind != "load":
            return resolved, None, cost
        choice = await self._choose_switch(resolved, deadline_s)
        return resolved.model_copy(update={"switch": choice.policy}), choice, cost

    def decide(self, request: GenerationRequest) -> ResolvedRequest:
        """`resolve` short of the load switch's cap (which reads the store and refuses nothing): every refusal
        of a request's fields (InvalidRequest naming the field; the input image's aside), so the published
        schema can be checked against what the ingress accepts without a store."""
        try:  # a pair that does not edit video refuses `conditioning_scale` (and any described input) here
            check_edit_inputs(self.family, request)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=str(exc).split(":", 1)[0]) from None
        # The schedule first (without the caches, which depend on it): what every later choice reads.
        schedule = self._resolved(request.model_copy(update={"cache": None}))
        self._check_schedule(schedule)
        updates: dict[str, Any] = {"cache": self._caches(request.cache, schedule=schedule)}
        if self._boundary_switch is not None and "switch" not in request.model_fields_set:
            updates["switch"] = self._boundary_switch(schedule.num_inference_steps, schedule)
        resolved = self._resolved(request, **updates)
        check_request(self.config.ingress.limits, resolved)  # the operator's limits (ingress.limits)
        return resolved

    def _resolved(self, request: GenerationRequest, **updates: Any) -> ResolvedRequest:
        try:
            return resolve_request(request, self.defaults, adapters=self.adapters, **updates)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc), param=error_field(exc)) from None

    def _check_schedule(self, request: ResolvedRequest, where: str | None = None) -> None:
        """InvalidRequest naming the first field (or `where`) unless the family runs the request's schedule
        within the pair's bounds (`srserve.engine.families.check_schedule`): refused before anything queues."""
        if self.pair is None or self._family is None:
            return
        try:
            check_schedule(self._family, self.pair, request)
        except ValueError as exc:
            message = str(exc) if where is None else f"{where}: {exc}"
            raise InvalidRequest(message, param=where or str(exc).split(":", 1)[0]) from None

    def lora_pattern(self) -> str | None:
        """The `lora` field's published grammar for this deployment: its pair's adapters (None: it has none)."""
        return lora_pattern(self.adapters)

    def schedule_limits(self) -> ScheduleLimits | None:
        """What requests may set of the schedule, for the published schema: the pair's bounds met with its
        family's schedulers, and its defaults (None: no pair, nothing checked beyond the engine's limits)."""
        if self.pair is None or self._family is None:
            return None
        return ScheduleLimits.of(self.pair.schedule, self._family.schedulers, self.defaults)

    def cache_pattern(self) -> str:
        """The `cache` field's published grammar for this deployment: the kinds each stage's pool allows."""
        sketch, render = self.layout.pool("sketch"), self.layout.pool("render")
        return cache_pattern((sketch.cache, sketch.cache_limits), (render.cache, render.cache_limits))

    def _caches(
        self, asked: CacheSpec | None, render_only: bool = False, schedule: ResolvedRequest | None = None
    ) -> CacheSpec | None:
        """The step caches the job runs: the request's within the pools' limits, else the pools' own, except
        a pool's own that `schedule` (the request's) cannot run with (`fit_schedule`)."""
        sketch, render = self.layout.pool("sketch"), self.layout.pool("render")
        if render_only and asked is not None:
            asked = CacheSpec(render=asked.render)
        try:
            spec = resolve_cache(asked, (sketch.cache, sketch.cache_limits), (render.cache, render.cache_limits))
        except CacheRefused as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        return spec if schedule is None else fit_schedule(spec, asked, schedule)

    async def _choose_switch(self, request: ResolvedRequest, deadline_s: float | None) -> SwitchChoice:
        """The load-aware switch's cap for a new job, from the pools' queued work in the store."""
        cfg = self.config
        jobs = await self.store.work_snapshot()
        layout = self.layout
        load = load_snapshot(
            jobs,
            self.store.clock(),
            *layout.replica_floors(),
            pools=(layout.phases["sketch"], layout.phases["render"]),
            text_pool=layout.encoder is not None,
        )
        slo = cfg.ingress.load_switch.slo_s
        if slo is None:
            slo = deadline_s if deadline_s is not None else cfg.ingress.default_deadline_s
        return choose_switch(request.switch, request.num_inference_steps, load, cfg.ingress.load_switch, slo)

    async def submit_handoff(
        self, blob: bytes, deadline_s: float | None = None, *, tenant: Tenant, priority: int = 0
    ) -> Job:
        """Accept a client's handoff state and render it for `tenant`; the blob is parsed safely and checked first."""
        self.check_priority(tenant, priority)
        limit = self.config.ingress.max_handoff_bytes
        if len(blob) > limit:
            raise RequestTooLarge(f"handoff of {len(blob)} bytes exceeds the {limit}-byte limit")
        try:
            state = HandoffState.from_bytes(bytes(blob))
        except HandoffFormatError as exc:
            raise InvalidRequest(f"handoff: {exc}", param="handoff") from None
        if state.family != self.family:
            raise InvalidRequest(
                f"handoff: made for family {state.family!r}, this server serves {self.family!r}", param="handoff"
            )
        n = state.num_steps
        if not 0 <= state.switch_step <= n or len(state.timesteps) != n:
            raise InvalidRequest(
                f"handoff: switch step {state.switch_step} / {len(state.timesteps)} timesteps do not fit {n} steps",
                param="handoff",
            )
        if self._family is not None:
            try:
                self._family.check_handoff(state)
            except IncompatiblePairError as exc:
                raise InvalidRequest(f"handoff: {exc}", param="handoff") from None
        self._check_schedule(state.request, where="handoff")
        check_request(self.config.ingress.limits, state.request, where="handoff")
        caches = self._caches(state.request.cache, render_only=True, schedule=state.request)
        refused = cache_refusal("render", caches.render if caches else None, state.request)
        if refused is not None:
            raise InvalidRequest(f"handoff: {refused}", param="handoff")
        lora = self._handoff_lora(state.request.lora)
        if caches != state.request.cache or lora != state.request.lora:
            # The render runs what this server allows and has, never a client's file.
            state.request = state.request.model_copy(update={"cache": caches, "lora": lora})
            blob = state.to_bytes()
        return await self._admit_job(
            state.request.model_dump(mode="json"),
            n,
            deadline_s,
            (blob, state.switch_step),
            tenant=tenant,
            priority=priority,
        )

    def _handoff_lora(self, lora: ResolvedLora | None) -> ResolvedLora | None:
        """An uploaded handoff's adapter, by its name and scale against this server's adapters: whether the
        render applies one is this server's to say (the sketch's flag stays the client's); an unknown name is
        refused, naming `lora`."""
        if lora is None:
            return None
        try:
            ours = resolve_lora(LoraSpec(name=lora.name, scale=lora.scale), self.adapters)
        except ValueError as exc:
            raise InvalidRequest(f"handoff: lora: {exc}", param="handoff") from None
        assert ours is not None
        return ours.model_copy(update={"sketch": lora.sketch})

    async def _admit_job(
        self,
        request: dict[str, Any],
        num_steps: int,
        deadline_s: float | None,
        handoff: tuple[bytes, int] | None = None,
        switch_choice: tuple[int, str] | None = None,
        image: bytes | None = None,
        edit: EditUploads | None = None,
        *,
        tenant: Tenant,
        priority: int = 0,
        cost_gpu_s: float | None = None,
    ) -> Job:
        """One admission path for prompts and uploaded handoffs: store the inputs (image; video, mask and
        reference images) or the handoff under the job's id, then the job (with its predicted cost,
        `cost_gpu_s`, counted against its tenant's queued GPU-seconds), then drive it. A job is never
        accepted without its bytes; what was written is deleted when the store refuses the job."""
        job_id = f"video_{uuid.uuid4().hex}"
        deadline = deadline_s if deadline_s is not None else self.config.ingress.default_deadline_s
        stored = None
        written: list[str] = []
        try:
            if image is not None:
                key = input_image_key(job_id)
                await self.artifacts.put_async(key, bytes(image))
                written.append(key)
                request = {**request, "input_reference": {**request["input_reference"], "key": key}}
            if edit is not None:
                request = await self._store_edit(job_id, request, edit, written)
            if handoff is not None:
                blob, switch_step = handoff
                key = handoff_key(job_id, 0)
                await self.artifacts.put_async(key, bytes(blob))
                written.append(key)
                stored = (key, len(blob), switch_step)
            job = await self.store.create(
                job_id,
                request,
                num_steps,
                deadline,
                self.owner,
                self.config.ingress.lease_ttl_s,
                self.layout.backlogs(),
                stored,
                switch_choice,
                tenant=tenant,
                priority=priority,
                cost_gpu_s=cost_gpu_s,
            )
        except Exception as exc:
            if isinstance(exc, QuotaExceeded):
                record_quota_refusal(tenant.name, exc.quota)
            for key in written:
                await self.artifacts.delete_async(key)
            raise
        self.orchestrator.drive(job_id)
        return job

    async def _store_edit(
        self, job_id: str, request: dict[str, Any], edit: EditUploads, written: list[str]
    ) -> dict[str, Any]:
        """Store a video-editing job's inputs under its id (each key appended to `written` once written);
        the request (JSON) with each description's `key` set."""
        request = dict(request)
        refs = [dict(ref) for ref in request.get("reference_images") or []]
        for name, data in edit.parts():
            key = edit_input_key(job_id, name)
            await self.artifacts.put_async(key, bytes(data))
            written.append(key)
            if name.startswith("reference_"):
                refs[int(name.removeprefix("reference_"))]["key"] = key
            else:
                request[name] = {**request[name], "key": key}
        if refs:
            request["reference_images"] = refs
        return request

    # -- queries -------------------------------------------------------------------------
    # Every query is a tenant's: another tenant's job is answered exactly as a job that does not exist.
    async def get(self, job_id: str, *, tenant: Tenant) -> Job:
        job = await self.store.get(job_id)
        if job is None or job.tenant != tenant.name:
            raise JobNotFound(f"no job with id {job_id!r}", param="id")
        return job

    async def cancel(self, job_id: str, *, tenant: Tenant) -> Job:
        before = await self.get(job_id, tenant=tenant)
        job = await self.store.cancel(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}", param="id")
        if not before.terminal:
            _job_ended(job)
        return job

    async def delete(self, job_id: str, *, tenant: Tenant) -> None:
        await self.get(job_id, tenant=tenant)  # a job's tenant never changes: checked once, then forgotten
        if await self.store.forget(job_id) is None:
            raise JobNotFound(f"no job with id {job_id!r}", param="id")
        await self.orchestrator.delete_artifacts(job_id)

    async def list(
        self, limit: int = 20, after: str | None = None, order: str = "desc", *, tenant: Tenant
    ) -> tuple[list[Job], bool]:
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit: must be between 1 and 1000", param="limit")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order: must be 'asc' or 'desc'", param="order")
        return await self.store.list_jobs(limit, after, order, tenant=tenant.name)

    async def events(
        self, job_id: str, after_seq: int, timeout_s: float = 10.0, *, tenant: Tenant
    ) -> tuple[list[JobEvent], Job]:
        out = await self.events_hub.wait(job_id, after_seq, timeout_s, tenant=tenant.name)
        if out is None:
            raise JobNotFound(f"no job with id {job_id!r}", param="id")
        return out

    async def stream_events(
        self, job_id: str, after_seq: int = 0, *, tenant: Tenant
    ) -> AsyncIterator[tuple[list[JobEvent], Job]]:
        """Batches of new events until the job ends (the last batch carries the final job)."""
        seq = after_seq
        while True:
            events, job = await self.events(job_id, seq, 10.0, tenant=tenant)
            if events:
                seq = events[-1].seq
            yield events, job
            if job.terminal:
                return

    async def video(self, job_id: str, *, tenant: Tenant) -> tuple[Job, int]:
        """The completed job and its video's size; the bytes stream from storage (`video_stream`)."""
        job = await self.get(job_id, tenant=tenant)
        if job.state != JobState.COMPLETED:
            raise NotReady(f"job {job_id} is {job.state.value}, not completed; no video yet")
        if job.video_key is None:
            raise JobNotFound(f"video of job {job_id} is no longer retained", param="id")
        try:
            size = await self.artifacts.size_async(job.video_key)
        except ArtifactNotFound:
            raise JobNotFound(f"video of job {job_id} is no longer retained", param="id") from None
        return job, size

    def video_stream(self, job: Job, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        assert job.video_key is not None
        return self.artifacts.stream(job.video_key, start, end)

    async def content(self, job_id: str, *, tenant: Tenant) -> bytes:
        """The whole video (gRPC sends it in one message)."""
        job, _ = await self.video(job_id, tenant=tenant)
        assert job.video_key is not None
        try:
            return await self.artifacts.get_async(job.video_key)
        except ArtifactNotFound:
            raise JobNotFound(f"video of job {job_id} is no longer retained", param="id") from None

    async def wait(self, job_id: str, timeout_s: float, *, tenant: Tenant) -> Job:
        """Block until the job is terminal or `timeout_s` passes; returns it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        seq = 0
        while True:
            events, job = await self.events(job_id, seq, min(10.0, max(0.0, end - loop.time())), tenant=tenant)
            if events:
                seq = events[-1].seq
            if job.terminal or loop.time() >= end:
                return job

    async def health(self) -> dict[str, Any]:
        return {"jobs": await self.store.counts(), "driving": self.orchestrator.driving}

    async def drain(self, timeout_s: float) -> int:
        """Let the jobs this ingress drives finish (up to `timeout_s`); the rest are released to others."""
        return await self.orchestrator.drain(timeout_s)
