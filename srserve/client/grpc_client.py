"""A small synchronous client over srserve.v1 (grpcio), used by `srserve client`, the demo and tests."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from srserve.serving.proto import video_pb2, video_pb2_grpc

ProgressCallback = Callable[[video_pb2.Progress], None]
_OPTIONAL = (
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "fps",
    "shift",
    "deadline_s",
    "input_reference",
    "video",
    "mask",
    "conditioning_scale",
)


JOB_ID = re.compile(r"video_[0-9a-f]{32}")


def video_path(directory: str | Path, job_id: str, prefix: str = "") -> Path:
    """Where to save a job's mp4: always inside `directory`, whatever the server sent as the id."""
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"refusing to name a file after an unexpected job id {job_id!r}")
    base = Path(directory).resolve()
    path = (base / f"{prefix}{job_id}.mp4").resolve()
    if path.parent != base:
        raise ValueError(f"{path} is outside {base}")
    return path


class GenerationFailed(Exception):
    """The server ended the job with a non-OK status; `code` is the grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def make_request(prompt: str, **fields: Any) -> video_pb2.GenerateRequest:
    """Build a GenerateRequest; unset (None) fields take the server's defaults. `input_reference`: an
    image-to-video pair's input image, a PNG, JPEG or WebP file's bytes; `lora`: an adapter the server
    configures, "NAME" or "NAME:SCALE"; `scheduler`, `timesteps` or `sigmas` (lists), `shift`: the schedule;
    `priority`: up to the caller's tenant's max_priority; `video`, `mask` (mp4 bytes), `reference_images`
    (image files' bytes), `conditioning_scale`: a video-editing (VACE) pair's inputs."""
    msg = video_pb2.GenerateRequest(
        prompt=prompt,
        negative_prompt=fields.pop("negative_prompt", "") or "",
        switch=fields.pop("switch", "") or "",
        cache=fields.pop("cache", "") or "",
        lora=fields.pop("lora", "") or "",
        scheduler=fields.pop("scheduler", "") or "",
        timesteps=fields.pop("timesteps", None) or [],
        sigmas=fields.pop("sigmas", None) or [],
        priority=fields.pop("priority", 0) or 0,
        reference_images=fields.pop("reference_images", None) or [],
    )
    for name in _OPTIONAL:
        value = fields.pop(name, None)
        if value is not None:
            setattr(msg, name, value)
    if fields:
        raise TypeError(f"unknown request fields: {', '.join(sorted(fields))}")
    return msg


class SrserveClient:
    def __init__(
        self,
        target: str = "127.0.0.1:9000",
        application: str = "srserve",
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float | None = 600.0,
        token: str | None = None,
    ) -> None:
        options = [("grpc.max_receive_message_length", 512 << 20), ("grpc.max_send_message_length", 1 << 30)]
        self.channel = (
            grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target, options)
        )
        self.stub = video_pb2_grpc.VideoGenerationStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("application", application),)
        if token:
            self.metadata += (("authorization", f"Bearer {token}"),)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SrserveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise GenerationFailed(err.code(), err.details() or "") from None

    def generate(
        self, request: video_pb2.GenerateRequest, on_progress: ProgressCallback | None = None
    ) -> video_pb2.Video:
        """Submit and stream progress; returns the final Video (mp4 bytes + job)."""
        try:
            for event in self.stub.Generate(request, metadata=self.metadata, timeout=self.timeout_s):
                if event.HasField("progress"):
                    if on_progress is not None:
                        on_progress(event.progress)
                elif event.HasField("video"):
                    return event.video
        except grpc.RpcError as err:
            raise GenerationFailed(err.code(), err.details() or "") from None
        raise GenerationFailed(grpc.StatusCode.UNKNOWN, "stream ended without a video")

    def submit(self, request: video_pb2.GenerateRequest) -> video_pb2.Job:
        return self._call(self.stub.Submit, request)

    def get_job(self, job_id: str) -> video_pb2.Job:
        return self._call(self.stub.GetJob, video_pb2.JobRef(id=job_id))

    def cancel(self, job_id: str) -> video_pb2.Job:
        return self._call(self.stub.Cancel, video_pb2.JobRef(id=job_id))

    def list_jobs(self, limit: int = 20, after: str = "", order: str = "desc") -> video_pb2.ListJobsResponse:
        return self._call(self.stub.ListJobs, video_pb2.ListJobsRequest(limit=limit, after=after, order=order))

    def get_video(self, job_id: str) -> video_pb2.Video:
        return self._call(self.stub.GetVideo, video_pb2.JobRef(id=job_id))

    def render_handoff(self, handoff: bytes, deadline_s: float | None = None, priority: int = 0) -> video_pb2.Job:
        """Render a handoff state sketched elsewhere (`srserve generate --handoff-out`)."""
        msg = video_pb2.HandoffUpload(handoff=handoff, priority=priority)
        if deadline_s is not None:
            msg.deadline_s = deadline_s
        return self._call(self.stub.RenderHandoff, msg)
