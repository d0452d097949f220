"""OpenAI-compatible `/v1/videos` HTTP API (plus health and models), as a FastAPI app.

The official `openai` SDK posts `create` as multipart/form-data with every value as a string
(extra_body fields included); JSON bodies are accepted too. Values are coerced by the same
pydantic request model the engine uses, so errors name the field either way.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from srserve.serving.api.errors import InvalidRequest, RequestTooLarge, ServingError
from srserve.serving.control.artifacts import RangeNotSatisfiable, parse_range_header
from srserve.serving.control.jobs import Job, JobState
from srserve.serving.ingress import IngressCore

OPENAI_FIELDS = ("prompt", "model", "seconds", "size", "input_reference")
POLL_AFTER_MS = "250"
_STATUS = {
    JobState.QUEUED: "queued",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "failed",
}

app = FastAPI(title="srserve", description="SRDiffusion text-to-video, OpenAI-compatible /v1/videos")


def _core() -> IngressCore:
    from ray import serve

    return serve.get_replica_context().servable_object


def _error(exc: ServingError) -> JSONResponse:
    headers = {"retry-after": "1"} if exc.http_status in (429, 503) else None
    if exc.http_status == 401:
        headers = {"www-authenticate": "Bearer"}
    body = {"error": {"message": exc.message, "type": exc.code, "param": exc.param, "code": exc.code}}
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


@app.exception_handler(ServingError)
async def _serving_error(_request: Request, exc: ServingError) -> JSONResponse:
    return _error(exc)


@app.middleware("http")
async def _authenticate(request: Request, call_next):
    """Every route but the health check needs the bearer token when auth is configured."""
    if not request.scope["path"].endswith("/health"):
        try:
            _core().authorize(request.headers.get("authorization"))
        except ServingError as exc:
            return _error(exc)
    return await call_next(request)


@app.exception_handler(RequestValidationError)
async def _bad_parameters(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    first = exc.errors()[0].get("loc", ("", ""))[-1] if exc.errors() else None
    return _error(InvalidRequest("; ".join(problems), param=str(first) if first is not None else None))


def frames_for_seconds(seconds: float, fps: int) -> int:
    """The 4k+1 frame count closest to `seconds` of video at `fps`."""
    return max(1, 4 * round(seconds * fps / 4) + 1)


def to_generation_fields(body: dict[str, Any], served_model: str) -> tuple[dict[str, Any], float | None]:
    """Map an OpenAI-style body to GenerationRequest fields (+ an optional deadline)."""
    fields = dict(body)
    model = fields.pop("model", None)
    if model not in (None, "", served_model):
        raise InvalidRequest(f"model: unknown model {model!r}; this server serves {served_model!r}", param="model")
    if fields.pop("input_reference", None) is not None:
        raise InvalidRequest("input_reference: image-to-video is not supported", param="input_reference")
    size = fields.pop("size", None)
    if size is not None:
        try:
            width, height = (int(v) for v in str(size).lower().split("x"))
        except ValueError:
            raise InvalidRequest(f"size: expected WIDTHxHEIGHT such as '832x480', got {size!r}", param="size") from None
        fields.setdefault("width", width)
        fields.setdefault("height", height)
    seconds = fields.pop("seconds", None)
    if seconds is not None and fields.get("num_frames") is None:
        try:
            secs = float(seconds)
            fps = int(fields.get("fps", 16))
        except (TypeError, ValueError):
            raise InvalidRequest(f"seconds: expected a number, got {seconds!r}", param="seconds") from None
        if not 0 < secs <= 60:
            raise InvalidRequest("seconds: must be in (0, 60]", param="seconds")
        fields["num_frames"] = frames_for_seconds(secs, fps)
    deadline = fields.pop("deadline_s", None)
    try:
        deadline_s = None if deadline in (None, "") else float(deadline)
    except (TypeError, ValueError):
        raise InvalidRequest(f"deadline_s: expected seconds, got {deadline!r}", param="deadline_s") from None
    if deadline_s is not None and deadline_s <= 0:
        raise InvalidRequest("deadline_s: must be positive", param="deadline_s")
    return fields, deadline_s


def video_object(job: Job | dict[str, Any], model: str) -> dict[str, Any]:
    """A job as the OpenAI `Video` object, with srserve's details under `srserve`."""
    if isinstance(job, Job):
        job = job.summary()
    req = job["request"]
    state = JobState(job["state"])
    error = None
    if job.get("error_code"):
        error = {"code": job["error_code"], "message": job.get("error") or job["error_code"]}
    return {
        "id": job["id"],
        "object": "video",
        "created_at": int(job["created_at"]),
        "completed_at": None if job.get("completed_at") is None else int(job["completed_at"]),
        "expires_at": None,
        "status": _STATUS.get(state, "in_progress"),
        "progress": job["progress"],
        "model": model,
        "prompt": req.get("prompt"),
        "seconds": f"{(req['num_frames'] - 1) / req.get('fps', 16):g}",
        "size": f"{req['width']}x{req['height']}",
        "error": error,
        "remixed_from_video_id": None,
        "srserve": {
            "state": state.value,
            "step": job["step"],
            "total": job["total"],
            "switch_step": job.get("switch_step"),
            "num_steps": job["num_steps"],
            "handoff_bytes": job.get("handoff_bytes", 0),
            "latents_sha256": job.get("latents_sha256"),
            "attempts": job.get("attempts", {}),
            "timeline": job.get("timeline", {}),
            "replicas": job.get("replicas", {}),
        },
    }


async def _read_body(request: Request, limit: int) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"request body of {length} bytes exceeds the {limit}-byte limit")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
        form = await request.form()
        body: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                body[key] = value.filename or "file"
            else:
                body[key] = value
        return body
    raw = await request.body()
    if len(raw) > limit:
        raise RequestTooLarge(f"request body of {len(raw)} bytes exceeds the {limit}-byte limit")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidRequest("body: not valid JSON (send application/json or multipart/form-data)") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body: expected a JSON object")
    return body


@app.post("/v1/videos")
async def create_video(request: Request) -> JSONResponse:
    core = _core()
    body = await _read_body(request, core.config.ingress.max_request_bytes)
    fields, deadline_s = to_generation_fields(body, core.model_name)
    job = await core.submit(core.validate(fields), deadline_s)
    return JSONResponse(video_object(job, core.model_name), headers={"openai-poll-after-ms": POLL_AFTER_MS})


@app.post("/v1/handoffs")
async def render_handoff(request: Request, deadline_s: float | None = None) -> JSONResponse:
    """srserve extension: render an uploaded handoff state (body: the handoff bytes)."""
    core = _core()
    limit = core.config.ingress.max_handoff_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"handoff of {length} bytes exceeds the {limit}-byte limit")
    if deadline_s is not None and deadline_s <= 0:
        raise InvalidRequest("deadline_s: must be positive", param="deadline_s")
    job = await core.submit_handoff(await request.body(), deadline_s)
    return JSONResponse(video_object(job, core.model_name), headers={"openai-poll-after-ms": POLL_AFTER_MS})


@app.get("/v1/videos")
async def list_videos(limit: int = 20, after: str | None = None, order: str = "desc") -> dict[str, Any]:
    core = _core()
    jobs, has_more = await core.list(limit, after, order)
    data = [video_object(j, core.model_name) for j in jobs]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@app.get("/v1/videos/{video_id}")
async def retrieve_video(video_id: str) -> JSONResponse:
    core = _core()
    job = await core.get(video_id)
    return JSONResponse(video_object(job, core.model_name), headers={"openai-poll-after-ms": POLL_AFTER_MS})


@app.post("/v1/videos/{video_id}/cancel")
async def cancel_video(video_id: str) -> dict[str, Any]:
    core = _core()
    return video_object(await core.cancel(video_id), core.model_name)


@app.delete("/v1/videos/{video_id}")
async def delete_video(video_id: str) -> dict[str, Any]:
    """Cancels the job if it still runs, then forgets it and its video."""
    core = _core()
    await core.delete(video_id)
    return {"id": video_id, "object": "video.deleted", "deleted": True}


@app.get("/v1/videos/{video_id}/content")
async def download_video(video_id: str, variant: str = "video", range: str | None = Header(None)) -> Response:
    """Streams the mp4 from artifact storage; honours a single HTTP Range (206, or 416 when unsatisfiable)."""
    if variant != "video":
        raise InvalidRequest(f"variant: only 'video' is available, not {variant!r}", param="variant")
    core = _core()
    job, size = await core.video(video_id)
    headers = {"content-disposition": f'attachment; filename="{video_id}.mp4"', "accept-ranges": "bytes"}
    try:
        span = parse_range_header(range, size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={**headers, "content-range": f"bytes */{size}"})
    start, end = span if span is not None else (0, size)
    headers["content-length"] = str(end - start)
    status = 200
    if span is not None:
        status = 206
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    stream = core.video_stream(job, start, end)
    return StreamingResponse(stream, status_code=status, media_type="video/mp4", headers=headers)


@app.get("/v1/videos/{video_id}/events")
async def video_events(video_id: str, after: int = 0, last_event_id: str | None = Header(None)) -> Response:
    """srserve extension: the job's progress as Server-Sent Events, pushed by the store's notifications.

    Each `progress` event carries a state/step/progress record (its `id` is the event's sequence
    number, so a reconnecting client resumes with Last-Event-ID); a final `done` event carries the
    Video object, after which the stream closes.
    """
    core = _core()
    if last_event_id is not None and last_event_id.isdigit():
        after = int(last_event_id)
    first = await core.events(video_id, after, 0.0)  # a 404 before the stream starts

    async def stream():
        batch, seq = first, after
        while True:
            events, job = batch
            for ev in events:
                seq = ev.seq
                yield f"id: {ev.seq}\nevent: progress\ndata: {json.dumps(asdict(ev))}\n\n"
            if job.terminal:
                yield f"event: done\ndata: {json.dumps(video_object(job, core.model_name))}\n\n"
                return
            if not events:
                yield ": keep-alive\n\n"
            batch = await core.events(video_id, seq, 10.0)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


@app.get("/v1/models")
async def list_models() -> dict[str, Any]:
    core = _core()
    return {
        "object": "list",
        "data": [{"id": core.model_name, "object": "model", "created": int(time.time()), "owned_by": "srserve"}],
    }


@app.get("/health")
@app.get("/v1/health")
async def health() -> dict[str, Any]:
    core = _core()
    return {"status": "ok", "model": core.model_name, **(await core.health())}
