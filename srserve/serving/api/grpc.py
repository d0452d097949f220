"""The srserve.v1 gRPC API as ingress methods (Serve's gRPC proxy calls them by RPC name).

Requests arrive as bytes (api/grpc_servicers.py registers the services without a deserializer)
and are decoded here, so a message that is not valid protobuf is INVALID_ARGUMENT. Errors carry
standard status codes: INVALID_ARGUMENT (field named in the details), UNAUTHENTICATED,
RESOURCE_EXHAUSTED (backpressure, or a message over the size limit), NOT_FOUND,
FAILED_PRECONDITION (video not ready), UNAVAILABLE (the job store cannot be reached), and
CANCELLED / DEADLINE_EXCEEDED / INTERNAL for a job that ended that way while streaming.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from ray.serve.grpc_util import RayServegRPCContext

from srserve.engine.request import GenerationRequest
from srserve.serving.api.errors import InvalidRequest, JobNotFound, RequestTooLarge, ServingError, grpc_status
from srserve.serving.api.schemas import VIDEO_ID_PATTERN, check_model, engine_request
from srserve.serving.control.edit_uploads import EditUploads
from srserve.serving.control.jobs import ErrorCode, Job, JobState
from srserve.serving.control.tenants import Tenant
from srserve.serving.proto import video_pb2

_OPTIONAL_FIELDS = (
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "fps",
    "shift",
    "conditioning_scale",
)
_VIDEO_ID = re.compile(VIDEO_ID_PATTERN)


M = TypeVar("M", bound=Message)


class StatusError(Exception):
    """Raised after setting the status on the context, so Serve returns that status."""


def _fail(context: RayServegRPCContext | None, code: grpc.StatusCode, details: str) -> StatusError:
    if context is not None:
        context.set_code(code)
        context.set_details(details)
    return StatusError(details)


def _serving_fail(context: RayServegRPCContext | None, exc: ServingError) -> StatusError:
    return _fail(context, getattr(grpc.StatusCode, grpc_status(exc)), exc.message)


def generate_request(
    msg: video_pb2.GenerateRequest, served_model: str, default_steps: int
) -> tuple[GenerationRequest, float | None]:
    """A GenerateRequest as the engine's request and the job's deadline: gRPC's one conversion (switch steps
    capped at the step count, as over HTTP)."""
    for name in ("prompt", "negative_prompt"):
        if "\x00" in getattr(msg, name):
            raise InvalidRequest(f"{name}: must not contain NUL characters", param=name)
    deadline = msg.deadline_s if msg.HasField("deadline_s") else None
    if deadline is not None and deadline <= 0:
        raise InvalidRequest("deadline_s: must be positive", param="deadline_s")
    check_model(msg.model or None, served_model)
    fields: dict[str, Any] = {"prompt": msg.prompt, "negative_prompt": msg.negative_prompt}
    fields |= {name: getattr(msg, name) for name in _OPTIONAL_FIELDS if msg.HasField(name)}
    fields |= {name: getattr(msg, name) for name in ("switch", "cache", "lora", "scheduler") if getattr(msg, name)}
    fields |= {name: list(getattr(msg, name)) for name in ("timesteps", "sigmas") if getattr(msg, name)}
    return engine_request(fields, default_steps), deadline


def job_message(job: Job | dict[str, Any]) -> video_pb2.Job:
    if isinstance(job, Job):
        job = job.summary()
    return video_pb2.Job(
        id=job["id"],
        state=job["state"],
        progress=job["progress"],
        step=job["step"],
        total=job["total"],
        switch_step=-1 if job.get("switch_step") is None else job["switch_step"],
        num_steps=job["num_steps"],
        error_code=job.get("error_code") or "",
        error=job.get("error") or "",
        created_at=job["created_at"],
        completed_at=job.get("completed_at") or 0.0,
        video_bytes=job.get("video_bytes", 0),
        handoff_bytes=job.get("handoff_bytes", 0),
        timeline=job.get("timeline", {}),
        replicas=job.get("replicas", {}),
        request_json=json.dumps(job["request"]),
        latents_sha256=job.get("latents_sha256") or "",
        switch_cap=-1 if job.get("switch_cap") is None else job["switch_cap"],
        switch_reason=job.get("switch_reason") or "",
        lora=_lora_message(job["request"].get("lora")),
        schedule=_schedule_message(job["request"]),
        priority=job.get("priority", 0),
    )


def _schedule_message(request: dict[str, Any]) -> video_pb2.Job.Schedule:
    """The schedule fields of the job's stored request (unset: the pair's folder's)."""
    return video_pb2.Job.Schedule(
        scheduler=request.get("scheduler") or "",
        shift=request.get("shift"),
        timesteps=request.get("timesteps") or [],
        sigmas=request.get("sigmas") or [],
    )


def _lora_message(lora: dict[str, Any] | None) -> video_pb2.Job.Lora | None:
    """The job's resolved adapter (stored with its request) as the Job message's `lora`."""
    if lora is None:
        return None
    return video_pb2.Job.Lora(**{k: lora[k] for k in ("name", "scale", "sketch", "render", "fused")})


def _terminal_status(job: dict[str, Any]) -> tuple[grpc.StatusCode, str] | None:
    if job["state"] == JobState.CANCELLED.value:
        return grpc.StatusCode.CANCELLED, f"job {job['id']} was cancelled"
    if job["state"] == JobState.FAILED.value:
        code = grpc.StatusCode.INTERNAL
        if job.get("error_code") == ErrorCode.DEADLINE_EXCEEDED.value:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        return code, f"job {job['id']} failed: {job.get('error') or job.get('error_code')}"
    return None


def _authorization(context: RayServegRPCContext | None) -> str | None:
    if context is None:
        return None
    return dict(context.invocation_metadata()).get("authorization")


def _check_size(context: RayServegRPCContext | None, message: bytes | Message, limit: int) -> None:
    size = len(message) if isinstance(message, bytes) else message.ByteSize()
    if size > limit:
        raise _fail(
            context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"message of {size} bytes exceeds the {limit}-byte limit"
        )


def _decode(context: RayServegRPCContext | None, kind: type[M], request: bytes | M) -> M:
    """The request message; bytes that are not one are INVALID_ARGUMENT."""
    if isinstance(request, kind):
        return request
    try:
        return kind.FromString(request)
    except (DecodeError, TypeError) as exc:
        details = f"request: not a valid {kind.DESCRIPTOR.full_name} message ({exc})"
        raise _fail(context, grpc.StatusCode.INVALID_ARGUMENT, details) from None


def _known_id(job_id: str) -> str:
    """An id that cannot be a job id names no job (the store is not asked)."""
    if not _VIDEO_ID.fullmatch(job_id):
        raise JobNotFound(f"no job with id {job_id!r}", param="id")
    return job_id


class GrpcApi:
    """Mixed into the ingress; relies on IngressCore's submit/get/cancel/list/events/content."""

    def _admit(
        self, context: RayServegRPCContext | None, kind: type[M], request: bytes | M, limit: int = 0
    ) -> tuple[Tenant, M]:
        """Authentication (the caller's tenant: every job it names is that tenant's), the message-size limit,
        then decoding, before anything else looks at the request."""
        try:
            tenant = self.authorize(_authorization(context))
        except ServingError as exc:
            raise _serving_fail(context, exc) from None
        _check_size(context, request, limit or self.config.ingress.max_request_bytes)
        return tenant, _decode(context, kind, request)

    async def _submit_message(self, msg: video_pb2.GenerateRequest, tenant: Tenant) -> Job:
        limit = self.config.ingress.max_request_bytes
        files = len(msg.input_reference) + len(msg.video) + len(msg.mask) + sum(map(len, msg.reference_images))
        size = msg.ByteSize() - files  # each file has its own limit, checked with it
        if size > limit:
            raise RequestTooLarge(f"message of {size} bytes (without its files) exceeds the {limit}-byte limit")
        edit = EditUploads(
            video=msg.video if msg.HasField("video") else None,
            mask=msg.mask if msg.HasField("mask") else None,
            reference_images=tuple(msg.reference_images),
        )
        request, deadline = generate_request(msg, self.model_name, self.defaults.num_inference_steps)
        image = msg.input_reference if msg.HasField("input_reference") else None
        if image is not None and not image:
            raise InvalidRequest("input_reference: the image is empty", param="input_reference")
        return await self.submit(request, deadline, image, edit, tenant=tenant, priority=msg.priority)

    def _generate_limit(self) -> int:
        """A GenerateRequest may carry an input image (on a video-editing deployment also a video, a mask and
        reference images) on top of the request's own limit: the transport's bound; the files' own limits
        are checked once it is decoded."""
        ingress = self.config.ingress
        if self.edits_video:
            return ingress.max_request_bytes + ingress.edit_upload_bytes()
        return ingress.max_request_bytes + ingress.max_image_bytes

    async def Submit(self, request: bytes, grpc_context: RayServegRPCContext = None) -> video_pb2.Job:
        tenant, msg = self._admit(grpc_context, video_pb2.GenerateRequest, request, self._generate_limit())
        try:
            return job_message(await self._submit_message(msg, tenant))
        except ServingError as exc:
            raise _serving_fail(grpc_context, exc) from None

    async def Generate(
        self, request: bytes, grpc_context: RayServegRPCContext = None
    ) -> AsyncIterator[video_pb2.GenerateEvent]:
        tenant, msg = self._admit(grpc_context, video_pb2.GenerateRequest, request, self._generate_limit())
        try:
            job = await self._submit_message(msg, tenant)
        except ServingError as exc:
            raise _serving_fail(grpc_context, exc) from None
        try:
            final = job
            async for events, latest in self.stream_events(
                job.id, tenant=tenant
            ):  # pushed by the store's notifications
                final = latest
                for ev in events:
                    yield video_pb2.GenerateEvent(
                        progress=video_pb2.Progress(
                            job_id=ev.job_id,
                            state=ev.state,
                            step=ev.step,
                            total=ev.total,
                            progress=ev.progress,
                            time=ev.time,
                        )
                    )
            status = _terminal_status(final.summary())
            if status is not None:
                raise _fail(grpc_context, *status)
            video = await self.content(final.id, tenant=tenant)
        except ServingError as exc:
            raise _serving_fail(grpc_context, exc) from None
        yield video_pb2.GenerateEvent(video=video_pb2.Video(job_id=final.id, mp4=video, job=job_message(final)))

    async def GetJob(self, request: bytes, grpc_context: RayServegRPCContext = None) -> video_pb2.Job:
        tenant, msg = self._admit(grpc_context, video_pb2.JobRef, request)
        try:
            return job_message(await self.get(_known_id(msg.id), tenant=tenant))
        except ServingError as exc:
            raise _serving_fail(grpc_context, exc) from None

    async def Cancel(self, request: bytes, grpc_context: RayServegRPCContext = None) -> video_pb2.Job:
        tenant, msg = self._admit(grpc_context, video_pb2.JobRef, request)
        try:
            return job_message(await self.cancel(_known_id(msg.id), tenant=tenant))
        except ServingError as exc:
            raise _serving_fail(grpc_context, exc) from None

    async def ListJobs(self, request: bytes, grpc_context: RayServegRPCContext = None) -> video_pb2.ListJobsResponse:
        tenant, msg = self._admit(grpc_context, video_pb2.ListJobsRequest, request)
        if msg.after and not _VIDEO_ID.fullmatch(msg.after):  # no such job: nothing after it
            return video_pb2.ListJobsResponse(jobs=[], has_more=False)
        try:
            jobs, has_more = await self.list(msg.limit or 20, msg.after or None, msg.order or "desc", tenant=tenant)
        except ServingError as exc:
            raise _serving_fail(grpc_context, exc) from None
        return video_pb2.ListJobsResponse(jobs=[job_message(j) for j in jobs], has_more=has_more)

    async def GetVideo(self, request: bytes, grpc_context: RayServegRPCContext = None) -> video_pb2.Video:
        tenant, msg = self._admit(grpc_context, video_pb2.JobRef, request)
        try:
            job = await self.get(_known_id(msg.id), tenant=tenant)
            mp4 = await self.content(msg.id, tenant=tenant)
            return video_pb2.Video(job_id=msg.id, mp4=mp4, job=job_message(job))
        except ServingError as exc:
            raise _serving_fail(grpc_context, exc) from None

    async def RenderHandoff(self, request: bytes, grpc_context: RayServegRPCContext = None) -> video_pb2.Job:
        tenant, msg = self._admit(grpc_context, video_pb2.HandoffUpload, request, self.config.ingress.max_handoff_bytes)
        try:
            deadline = msg.deadline_s if msg.HasField("deadline_s") else None
            if deadline is not None and deadline <= 0:
                raise InvalidRequest("deadline_s: must be positive", param="deadline_s")
            return job_message(await self.submit_handoff(msg.handoff, deadline, tenant=tenant, priority=msg.priority))
        except ServingError as exc:
            raise _serving_fail(grpc_context, exc) from None

    async def Check(self, request: bytes, grpc_context: RayServegRPCContext = None) -> health_pb2.HealthCheckResponse:
        """Standard grpc.health.v1 health checking: SERVING once the app is up."""
        msg = _decode(grpc_context, health_pb2.HealthCheckRequest, request)
        if msg.service not in ("", "srserve.v1.VideoGeneration"):
            raise _fail(grpc_context, grpc.StatusCode.NOT_FOUND, f"unknown service {msg.service!r}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
