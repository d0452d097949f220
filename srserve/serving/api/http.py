"""OpenAI-compatible `/v1/videos` HTTP API (plus health and models), as a FastAPI app.

Every route declares its request and response models (`schemas.py`) and each status it can
answer, so `/openapi.json` describes the whole API (with the served model's name and, when the
deployment sets `auth`, the bearer scheme filled in). The official `openai` SDK posts `create` as
multipart/form-data with every value as text (extra_body fields included); JSON bodies and
urlencoded forms are accepted too, all checked by the one published model, so errors name the
field either way.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from importlib import metadata
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.routing import Match

from srserve.engine.denoising.cache import CacheSpec
from srserve.engine.denoising.schedule import SCHEDULE_FIELDS, ScheduleLimits
from srserve.serving.api.errors import (
    HttpStatusError,
    InvalidRequest,
    JobNotFound,
    MethodNotAllowed,
    RangeUnsatisfiable,
    RequestTooLarge,
    RouteNotFound,
    ServingError,
    UnsupportedMediaType,
    http_status,
)
from srserve.serving.api.schemas import (
    VIDEO_ID_PATTERN,
    ErrorResponse,
    Health,
    ModelList,
    ProgressEvent,
    Video,
    VideoCreateParams,
    VideoDeleted,
    VideoList,
    create_priority,
    create_request,
    form_values,
    narrow_limits,
    narrow_schedule,
)
from srserve.serving.control.artifacts import RangeNotSatisfiable, parse_range_header
from srserve.serving.control.edit_uploads import EditUploads
from srserve.serving.control.jobs import Job, JobState
from srserve.serving.control.pricing.request_limits import RequestLimits
from srserve.serving.control.tenants import PRIORITY_LIMIT, Tenant
from srserve.serving.ingress import IngressCore

POLL_AFTER_MS = "250"
MAX_SEQ = 2**63 - 1  # event sequence numbers are PostgreSQL bigints
_OWS = r"[ \t]*"
_BYTE_RANGE = rf"[Bb][Yy][Tt][Ee][Ss]{_OWS}={_OWS}(?:[0-9]+{_OWS}-{_OWS}[0-9]*|-{_OWS}0*[1-9][0-9]*)"
# One byte range (srserve serves no multipart ranges), or an empty value, which names none (the whole video).
RANGE_PATTERN = rf"^{_OWS}(?:{_BYTE_RANGE}{_OWS})?$"
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
_VIDEO_ID = re.compile(VIDEO_ID_PATTERN)
_RANGE = re.compile(RANGE_PATTERN)
_STATUS = {
    JobState.QUEUED: "queued",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "failed",
}


def _version() -> str:
    try:
        return metadata.version("srserve")
    except metadata.PackageNotFoundError:
        return "0"


app = FastAPI(
    title="srserve",
    version=_version(),
    description="SRDiffusion text-to-video, OpenAI-compatible /v1/videos (srserve's fields as extra body fields)",
)


def _core() -> IngressCore:
    from ray import serve

    return serve.get_replica_context().servable_object


# -- errors ---------------------------------------------------------------------------------------

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "required": True, "schema": {"type": "integer"}}
}
_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("invalid_argument: the request does not match its schema; the message names the field", {}),
    401: (
        "unauthenticated: missing or wrong bearer token (only when the deployment sets `auth`)",
        {"WWW-Authenticate": {"description": "always `Bearer`", "required": True, "schema": {"type": "string"}}},
    ),
    404: ("not_found: no video with this id for the caller's tenant (or its video is no longer retained)", {}),
    409: ("failed_precondition: the video is not completed (yet)", {}),
    413: ("request_too_large: the body exceeds the ingress's size limit", {}),
    415: ("unsupported_media_type: send application/json, multipart/form-data or a urlencoded form", {}),
    416: (
        "range_not_satisfiable: the Range header (well-formed: a malformed one is a 400) names no byte of the "
        "video: it starts at or past the video's end, or ends before it starts",
        {"Content-Range": {"description": "`bytes */SIZE`", "required": True, "schema": {"type": "string"}}},
    ),
    429: (
        "resource_exhausted: a pool's backlog is full, or the caller's tenant has used up a quota (`param` names "
        "it: max_live_jobs); nothing was created, retry later",
        _RETRY_AFTER,
    ),
    503: ("unavailable: the job store cannot be reached; retry later", _RETRY_AFTER),
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all with the error object."""
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        description, headers = _ERRORS[code]
        out[code] = {"description": description, "content": content, **({"headers": headers} if headers else {})}
    return out


def _error(exc: ServingError) -> JSONResponse:
    status = http_status(exc)
    headers = {"retry-after": "1"} if status in (429, 503) else {}
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    body = {"error": {"message": exc.message, "type": exc.code, "param": exc.param, "code": exc.code}}
    return JSONResponse(body, status_code=status, headers={**headers, **exc.headers})


@app.exception_handler(ServingError)
async def _serving_error(_request: Request, exc: ServingError) -> JSONResponse:
    return _error(exc)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Routing's own answers (unknown path, unsupported method, unreadable form) in the error format."""
    if exc.status_code == 405:
        allowed = sorted({m for route in app.router.routes for m in _route_methods(route, request)})
        method = request.method
        return _error(
            MethodNotAllowed(
                f"{method} is not allowed here; use {', '.join(allowed)}", None, {"allow": ", ".join(allowed)}
            )
        )
    if exc.status_code == 404:
        return _error(RouteNotFound(f"no route {request.url.path!r}"))
    if exc.status_code == 400:
        return _error(InvalidRequest(str(exc.detail)))
    return _error(HttpStatusError(str(exc.detail), exc.status_code))


def _route_methods(route: Any, request: Request) -> set[str]:
    """The methods `route` serves at this request's path (the union over routes is the `Allow` header)."""
    match, _ = route.matches(request.scope)
    return set(getattr(route, "methods", None) or ()) if match != Match.NONE else set()


@app.middleware("http")
async def _authenticate(request: Request, call_next):
    """Every route but the health check needs the bearer token when auth or tenants are configured; the
    tenant it names is the request's (`CallerTenant`)."""
    if not request.scope["path"].endswith("/health"):
        try:
            request.state.tenant = _core().authorize(request.headers.get("authorization"))
        except ServingError as exc:
            return _error(exc)
    return await call_next(request)


def _tenant(request: Request) -> Tenant:
    return request.state.tenant


# The tenant the request's bearer token names (the middleware identified it): every job route is its.
CallerTenant = Annotated[Tenant, Depends(_tenant)]


@app.exception_handler(RequestValidationError)
async def _bad_parameters(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "header", "body")]
        problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    first = exc.errors()[0].get("loc", ("", ""))[-1] if exc.errors() else None
    return _error(InvalidRequest("; ".join(problems), param=str(first) if first is not None else None))


# -- the Video object -----------------------------------------------------------------------------


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
            "switch_cap": job.get("switch_cap"),
            "switch_reason": job.get("switch_reason"),
            "cache": str(CacheSpec.model_validate(req["cache"])) if req.get("cache") else "none",
            "schedule": {name: req.get(name) for name in SCHEDULE_FIELDS},
            "input_reference": _image_summary(req.get("input_reference")),
            "video": _video_summary(req.get("video")),
            "mask": _video_summary(req.get("mask")),
            "reference_images": None
            if req.get("reference_images") is None
            else [_image_summary(ref) for ref in req["reference_images"]],
            "conditioning_scale": req.get("conditioning_scale"),
            "lora": req.get("lora"),
            "priority": job.get("priority", 0),
        },
    }


def _image_summary(ref: dict[str, Any] | None) -> dict[str, Any] | None:
    """The input image as a client may see it: never the server's storage key."""
    return None if ref is None else {k: ref[k] for k in ("sha256", "media_type", "width", "height")}


def _video_summary(described: dict[str, Any] | None) -> dict[str, Any] | None:
    """An input video or mask as a client may see it: never the server's storage key."""
    if described is None:
        return None
    return {k: described[k] for k in ("sha256", "media_type", "width", "height", "num_frames")}


def _known_id(video_id: str) -> str:
    """A path id that cannot be a video id is a video that does not exist (the store is not asked)."""
    if not _VIDEO_ID.fullmatch(video_id):
        raise JobNotFound(f"no job with id {video_id!r}", param="id")
    return video_id


# -- request bodies -------------------------------------------------------------------------------


SEND_IMAGE_AS_FILE = (
    "input_reference: send the image as a multipart/form-data file part (what the openai SDK does with "
    "input_reference=open('image.png', 'rb'))"
)
# A video-editing request's file parts (srserve extensions beside input_reference): each field's sentence.
EDIT_PARTS = {
    "video": "video: send the video as a multipart/form-data file part (an mp4)",
    "mask": "mask: send the mask as a multipart/form-data file part (an mp4)",
    "reference_images": (
        "reference_images: send each reference image as a multipart/form-data file part named reference_images "
        "(PNG, JPEG or WebP; repeat the part for more)"
    ),
}


def _file_refusal(core: IngressCore, name: str) -> InvalidRequest:
    """Why an editing input cannot come as text: a VACE deployment takes it as a file part, another none."""
    return InvalidRequest(EDIT_PARTS[name], param=name) if core.edits_video else core.not_editing(name)


def create_body_limit(core: IngressCore, ctype: str) -> int:
    """The largest create body: the request's own limit, plus for a multipart form what its files may carry
    (the input image; on a video-editing deployment the video, mask and reference images too). Each part's
    own limit is checked, and named, when it is read."""
    limits = core.config.ingress
    if ctype != "multipart/form-data":
        return limits.max_request_bytes
    if core.edits_video:
        return limits.max_request_bytes + limits.edit_upload_bytes()
    return limits.max_request_bytes + limits.max_image_bytes


async def _read_create_body(
    request: Request, core: IngressCore
) -> tuple[dict[str, Any], bytes | None, EditUploads | None]:
    """The create body as JSON types (parsed JSON, or a form's text fields typed by the schema), the input
    image's bytes when a multipart form carries one (`input_reference`), and a video-editing request's
    files (`video`, `mask`, `reference_images`; None when it sends none)."""
    limits = core.config.ingress
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = create_body_limit(core, ctype)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"request body of {length} bytes exceeds the {limit}-byte limit")
    if ctype in _FORMS:
        items, files = [], {}
        for key, value in (await request.form()).multi_items():
            if isinstance(value, UploadFile):
                if key == "input_reference":
                    bound = limits.max_image_bytes
                elif key in EDIT_PARTS:
                    if not core.edits_video:
                        raise _file_refusal(core, key)
                    bound = limits.max_video_bytes if key != "reference_images" else limits.max_image_bytes
                else:
                    raise InvalidRequest(f"{key}: expected a text field, got a file", param=key)
                if key in files and key != "reference_images":
                    raise InvalidRequest(f"{key}: given more than once", param=key)
                data = await value.read(bound + 1)  # one byte past: the decoder names the field and the limit
                if not data:
                    raise InvalidRequest(f"{key}: the file is empty", param=key)
                files.setdefault(key, []).append(data)
                continue
            if key == "input_reference":
                raise InvalidRequest(SEND_IMAGE_AS_FILE, param=key)
            if key.removesuffix("[]") in EDIT_PARTS:
                raise _file_refusal(core, key.removesuffix("[]"))
            items.append((key, value))
        image = files.get("input_reference", [None])[0]
        edit = EditUploads(
            video=files.get("video", [None])[0],
            mask=files.get("mask", [None])[0],
            reference_images=tuple(files.get("reference_images", ())),
        )
        return form_values(items), image, edit if edit.fields() else None
    if ctype not in ("", "application/json"):
        raise UnsupportedMediaType(
            f"content-type {ctype!r}: send application/json, multipart/form-data or application/x-www-form-urlencoded"
        )
    raw = await request.body()
    if len(raw) > limit:
        raise RequestTooLarge(f"request body of {len(raw)} bytes exceeds the {limit}-byte limit")
    try:
        body = json.loads(raw or b"{}")
        json.dumps(body, ensure_ascii=False).encode()  # lone surrogates ("\ud800") are not text
    except (ValueError, UnicodeError):
        raise InvalidRequest("body: not valid JSON text (send application/json or multipart/form-data)") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body: expected a JSON object")
    if "input_reference" in body:
        raise InvalidRequest(SEND_IMAGE_AS_FILE, param="input_reference")
    for name in EDIT_PARTS:
        if name in body:
            raise _file_refusal(core, name)
    return body, None, None


_CREATE_SCHEMA = {"$ref": "#/components/schemas/VideoCreateParams"}
_CREATE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": _CREATE_SCHEMA},
        "multipart/form-data": {"schema": _CREATE_SCHEMA},
        "application/x-www-form-urlencoded": {"schema": _CREATE_SCHEMA},
    },
}
_HANDOFF_BODY = {
    "required": True,
    "description": (
        "a handoff state in srserve's wire format, made for this server's model pair (`srserve generate "
        "--handoff-out`, or a sketch replica): safetensors bytes whose header carries srserve's versioned handoff "
        "record. Not any bytes: JSON Schema cannot state which bytes are one, so other bytes are answered 400"
    ),
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
_POLL = {"openai-poll-after-ms": {"description": "when to poll again", "schema": {"type": "integer"}}}
_ID = {"video_id": "$response.body#/id"}
_LINKS = {
    "retrieve": {"operationId": "retrieveVideo", "parameters": _ID},
    "events": {"operationId": "videoEvents", "parameters": _ID},
    "cancel": {"operationId": "cancelVideo", "parameters": _ID},
    "content": {"operationId": "downloadVideo", "parameters": _ID},
    "delete": {"operationId": "deleteVideo", "parameters": _ID},
}
VideoId = Annotated[
    str, Path(description="a video id: video_ and 32 hex digits", json_schema_extra={"pattern": VIDEO_ID_PATTERN})
]


# -- routes ---------------------------------------------------------------------------------------


@app.post(
    "/v1/videos",
    operation_id="createVideo",
    response_model=Video,
    responses={200: {"headers": _POLL, "links": _LINKS}, **_errors(400, 401, 413, 415, 429, 503)},
    openapi_extra={"requestBody": _CREATE_BODY},
)
async def create_video(request: Request, response: Response, tenant: CallerTenant) -> dict[str, Any]:
    """Queue a video; poll it (GET), follow its events (SSE) or wait for it, then download the mp4."""
    core = _core()
    body, image, edit = await _read_create_body(request, core)
    size_only = core.config.ingress.limits.limits_size
    generation, deadline_s = create_request(body, core.model_name, core.defaults.num_inference_steps, size_only)
    job = await core.submit(generation, deadline_s, image, edit, tenant=tenant, priority=create_priority(body))
    response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return video_object(job, core.model_name)


_NOT_A_HANDOFF = (
    "invalid_argument: the body is not a handoff state this server can render (not the wire format, another "
    "format version, another model family or pair, inconsistent steps; the message says which), or a bad deadline_s"
)


@app.post(
    "/v1/handoffs",
    operation_id="renderHandoff",
    response_model=Video,
    responses={
        200: {"headers": _POLL, "links": _LINKS},
        **_errors(400, 401, 413, 429, 503),
        400: {**_errors(400)[400], "description": _NOT_A_HANDOFF},
    },
    openapi_extra={"requestBody": _HANDOFF_BODY},
)
async def render_handoff(
    request: Request,
    response: Response,
    tenant: CallerTenant,
    deadline_s: Annotated[float | None, Query(gt=0, description="seconds until the job fails")] = None,
    priority: Annotated[
        int, Query(ge=0, le=PRIORITY_LIMIT, description="as the create body's: up to the tenant's max_priority")
    ] = 0,
) -> dict[str, Any]:
    """srserve extension: render an uploaded handoff state (body: the handoff bytes)."""
    core = _core()
    limit = core.config.ingress.max_handoff_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"handoff of {length} bytes exceeds the {limit}-byte limit")
    job = await core.submit_handoff(await request.body(), deadline_s, tenant=tenant, priority=priority)
    response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return video_object(job, core.model_name)


@app.get("/v1/videos", operation_id="listVideos", response_model=VideoList, responses=_errors(400, 401, 503))
async def list_videos(
    tenant: CallerTenant,
    limit: Annotated[int, Query(ge=1, le=1000, description="videos per page")] = 20,
    after: Annotated[str | None, Query(description="the last video id of the previous page")] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by creation")] = "desc",
) -> dict[str, Any]:
    core = _core()
    if after is not None and not _VIDEO_ID.fullmatch(after):  # no such video: nothing after it
        jobs, has_more = [], False
    else:
        jobs, has_more = await core.list(limit, after, order, tenant=tenant)
    data = [video_object(j, core.model_name) for j in jobs]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@app.get(
    "/v1/videos/{video_id}",
    operation_id="retrieveVideo",
    response_model=Video,
    responses={200: {"headers": _POLL}, **_errors(401, 404, 503)},
)
async def retrieve_video(video_id: VideoId, response: Response, tenant: CallerTenant) -> dict[str, Any]:
    core = _core()
    job = await core.get(_known_id(video_id), tenant=tenant)
    response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return video_object(job, core.model_name)


@app.post(
    "/v1/videos/{video_id}/cancel",
    operation_id="cancelVideo",
    response_model=Video,
    responses=_errors(401, 404, 503),
)
async def cancel_video(video_id: VideoId, tenant: CallerTenant) -> dict[str, Any]:
    """Stops the job at its next step boundary; a finished job is returned as it is."""
    core = _core()
    return video_object(await core.cancel(_known_id(video_id), tenant=tenant), core.model_name)


@app.delete(
    "/v1/videos/{video_id}",
    operation_id="deleteVideo",
    response_model=VideoDeleted,
    responses=_errors(401, 404, 503),
)
async def delete_video(video_id: VideoId, tenant: CallerTenant) -> dict[str, Any]:
    """Cancels the job if it still runs, then forgets it and its video."""
    await _core().delete(_known_id(video_id), tenant=tenant)
    return {"id": video_id, "object": "video.deleted", "deleted": True}


class Mp4Response(Response):
    media_type = "video/mp4"


_MP4 = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}
_MP4_HEADERS = {
    "Accept-Ranges": {"description": "`bytes`", "schema": {"type": "string"}},
    "Content-Length": {"schema": {"type": "integer"}},
    "Content-Disposition": {"schema": {"type": "string"}},
}


@app.get(
    "/v1/videos/{video_id}/content",
    operation_id="downloadVideo",
    response_class=Mp4Response,
    responses={
        200: {"description": "the whole mp4", "content": _MP4, "headers": _MP4_HEADERS},
        206: {
            "description": "the requested byte range of the mp4",
            "content": _MP4,
            "headers": {
                **_MP4_HEADERS,
                "Content-Range": {"description": "`bytes START-END/SIZE`", "schema": {"type": "string"}},
            },
        },
        **_errors(400, 401, 404, 409, 416, 503),
    },
)
async def download_video(
    video_id: VideoId,
    tenant: CallerTenant,
    variant: Annotated[Literal["video"], Query(description="only the mp4 is available")] = "video",
    range: Annotated[
        str | None,
        Header(description="one byte range (empty: the whole video)", json_schema_extra={"pattern": RANGE_PATTERN}),
    ] = None,
) -> Response:
    """Streams the mp4 from artifact storage; honours a single HTTP Range (206, or 416 when unsatisfiable)."""
    if range is not None and not _RANGE.fullmatch(range):  # the published pattern decides: a malformed header
        raise InvalidRequest(
            f"range: malformed Range header {range!r}; expected one byte range: bytes=START-, bytes=START-END "
            "or bytes=-SUFFIX",
            param="range",
        )
    core = _core()
    job, size = await core.video(_known_id(video_id), tenant=tenant)
    headers = {"content-disposition": f'attachment; filename="{video_id}.mp4"', "accept-ranges": "bytes"}
    try:
        span = parse_range_header(range if range and range.strip(" \t") else None, size)
    except RangeNotSatisfiable as exc:
        raise RangeUnsatisfiable(f"range: {exc}", "range", {**headers, "content-range": f"bytes */{size}"}) from None
    start, end = span if span is not None else (0, size)
    headers["content-length"] = str(end - start)
    status = 200
    if span is not None:
        status = 206
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    stream = core.video_stream(job, start, end)
    return StreamingResponse(stream, status_code=status, media_type="video/mp4", headers=headers)


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


def _json_data(component: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{component}"}
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": ref}


_SSE_EVENT = {
    "description": "one event of the stream",
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "event": {"const": "progress"},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": _json_data("ProgressEvent"),
            },
            "required": ["event", "id", "data"],
        },
        {
            "type": "object",
            "properties": {"event": {"const": "done"}, "data": _json_data("Video")},
            "required": ["event", "data"],
        },
    ],
}
_SSE = (
    "Server-Sent Events: `progress` events (data: a ProgressEvent, id: its seq; reconnect with Last-Event-ID), "
    "then one `done` event (data: the Video), after which the stream closes; `: keep-alive` comments between."
)


@app.get(
    "/v1/videos/{video_id}/events",
    operation_id="videoEvents",
    response_class=EventStreamResponse,
    responses={
        200: {"description": _SSE, "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
        **_errors(400, 401, 404, 503),
    },
)
async def video_events(
    video_id: VideoId,
    tenant: CallerTenant,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="resume after this event seq")] = 0,
    last_event_id: Annotated[str | None, Header(description="as `after`, when it is a number")] = None,
) -> Response:
    """srserve extension: the job's progress as Server-Sent Events, pushed by the store's notifications.

    Each `progress` event carries a state/step/progress record (its `id` is the event's sequence
    number, so a reconnecting client resumes with Last-Event-ID); a final `done` event carries the
    Video object, after which the stream closes.
    """
    core = _core()
    if last_event_id is not None and last_event_id.isdigit() and int(last_event_id) <= MAX_SEQ:
        after = int(last_event_id)
    first = await core.events(_known_id(video_id), after, 0.0, tenant=tenant)  # a 404 before the stream starts

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
            batch = await core.events(video_id, seq, 10.0, tenant=tenant)

    return EventStreamResponse(stream(), headers={"cache-control": "no-cache"})


@app.get("/v1/models", operation_id="listModels", response_model=ModelList, responses=_errors(401))
async def list_models() -> dict[str, Any]:
    core = _core()
    return {
        "object": "list",
        "data": [{"id": core.model_name, "object": "model", "created": int(time.time()), "owned_by": "srserve"}],
    }


async def _health() -> dict[str, Any]:
    core = _core()
    return {"status": "ok", "model": core.model_name, **(await core.health())}


_HEALTH = {"response_model": Health, "responses": _errors(503), "summary": "Health (no auth: for probes)"}
app.get("/health", operation_id="health", **_HEALTH)(_health)
app.get("/v1/health", operation_id="healthV1", **_HEALTH)(_health)


# -- the OpenAPI document -------------------------------------------------------------------------


def _collapse_nulls(schema: dict[str, Any]) -> None:
    """Parameters are left out, never null: drop FastAPI's null branches and null defaults."""
    branches = schema.pop("anyOf", None)
    if branches is not None:
        kept = [b for b in branches if b.get("type") != "null"]
        if len(kept) == 1:
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
    if "default" in schema and schema["default"] is None:
        del schema["default"]


def openapi_document(
    model_name: str | None = None,
    auth: bool = False,
    cache_pattern: str | None = None,
    takes_image: bool = False,
    lora_pattern: str | None = None,
    schedule: ScheduleLimits | None = None,
    limits: RequestLimits | None = None,
    max_priority: int | None = None,
    edits_video: bool = False,
) -> dict[str, Any]:
    """The whole API as OpenAPI 3.1: routes, bodies, every status; the deployment's model, auth, the
    cache kinds its pools allow requests (`cache_pattern`), its pair's LoRA adapters (`lora_pattern`;
    None: the pair has none, and `lora` is left out, so the schema refuses it as the server does), what
    its pair lets a request set of the schedule (`schedule`, `narrow_schedule`; None: the engine's limits),
    the operator's limits on a request (`limits`, `narrow_limits`), the highest `priority` any of its
    tenants may ask for (`max_priority`; None: the schema's own limit), for an image-to-video pair
    (`takes_image`) the create body as the one form that can carry the image, and for a video-editing pair
    (`edits_video`) the form with its optional video, mask, reference images and first frame
    (`conditioning_scale` is published for such a pair only)."""
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, servers=app.servers
    )
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (VideoCreateParams, ProgressEvent, ErrorResponse):
        spec = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(spec.pop("$defs", {}))
        components[model.__name__] = spec
    for unused in ("HTTPValidationError", "ValidationError"):  # validation answers 400, not FastAPI's 422
        components.pop(unused, None)
    events = doc["paths"]["/v1/videos/{video_id}/events"]["get"]["responses"]["200"]["content"]
    events["text/event-stream"]["schema"] = _SSE_EVENT  # exactly this (FastAPI adds its own "type")
    if model_name is not None:
        components["VideoCreateParams"]["properties"]["model"]["enum"] = [model_name]
    if cache_pattern is not None:
        components["VideoCreateParams"]["properties"]["cache"]["pattern"] = cache_pattern
    if lora_pattern is None:
        del components["VideoCreateParams"]["properties"]["lora"]
    else:
        components["VideoCreateParams"]["properties"]["lora"]["pattern"] = lora_pattern
    if schedule is not None:
        narrow_schedule(components["VideoCreateParams"], schedule)
    if limits is not None:
        narrow_limits(components["VideoCreateParams"], limits)
    if max_priority is not None:
        _priority_bound(doc, max_priority)
    if not edits_video:
        del components["VideoCreateParams"]["properties"]["conditioning_scale"]
    if takes_image:
        _image_form(doc)
    elif edits_video:
        _edit_form(doc)
    if auth:
        components_root = doc["components"]
        components_root["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, item in doc["paths"].items():
        for operation in item.values():
            operation["responses"].pop("422", None)
            for parameter in operation.get("parameters", []):
                _collapse_nulls(parameter["schema"])
            if auth and not path.endswith("/health"):
                operation["security"] = [{"bearer": []}]
    return doc


def _priority_bound(doc: dict[str, Any], max_priority: int) -> None:
    """`priority`'s maximum where it is given (the create body, the handoff's query): the deployment's highest
    tenant bound, exact with one tenant (a tenant with a lower bound is refused above its own, 400)."""
    doc["components"]["schemas"]["VideoCreateParams"]["properties"]["priority"]["maximum"] = max_priority
    for parameter in doc["paths"]["/v1/handoffs"]["post"].get("parameters", []):
        if parameter["name"] == "priority":
            parameter["schema"]["maximum"] = max_priority


def _image_form(doc: dict[str, Any]) -> None:
    """An image-to-video deployment's create body: multipart/form-data only (JSON and urlencoded forms
    cannot carry a file), the params plus the required `input_reference` file part."""
    components = doc["components"]["schemas"]
    form = json.loads(json.dumps(components["VideoCreateParams"]))
    form["title"] = "VideoCreateForm"
    form["properties"]["input_reference"] = {
        "type": "string",
        "format": "binary",
        "contentMediaType": "application/octet-stream",
        "description": (
            "the first frame to animate: a PNG, JPEG or WebP file, stretched (no crop) to the video's size; "
            "within the server's byte and pixel limits"
        ),
    }
    form["required"] = [*form.get("required", []), "input_reference"]
    components["VideoCreateForm"] = form
    body = doc["paths"]["/v1/videos"]["post"]["requestBody"]
    body["content"] = {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoCreateForm"}}}


_BINARY = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
_MP4_PART = {"type": "string", "format": "binary", "contentMediaType": "video/mp4"}


def _edit_form(doc: dict[str, Any]) -> None:
    """A video-editing deployment's create body: multipart/form-data only, the params plus its optional file
    parts (each within the server's limits; a refused one is answered 400 naming it)."""
    components = doc["components"]["schemas"]
    form = json.loads(json.dumps(components["VideoCreateParams"]))
    form["title"] = "VideoCreateForm"
    form["properties"].update(
        {
            "video": {
                **_MP4_PART,
                "description": (
                    "srserve extension: the video to edit, an mp4 (H.264 or another codec ffmpeg decodes); the output "
                    "keeps its frame count (4k+1) and size (multiples of 16), so `num_frames`, `width` and `height`, "
                    "when given, must equal them; within the server's byte, frame and pixel limits"
                ),
            },
            "mask": {
                **_MP4_PART,
                "description": (
                    "srserve extension: the video's mask, an mp4 of its frame count and size: white regenerates, "
                    "black keeps (inpainting, outpainting, extension); needs `video`"
                ),
            },
            "reference_images": {
                "type": "array",
                "items": {**_BINARY},
                "minItems": 1,
                "description": (
                    "srserve extension: reference images (PNG, JPEG or WebP), one file part named reference_images "
                    "each, prepended as extra frames the video is generated to match; at most the server's "
                    "max_reference_images, each within its image byte and pixel limits"
                ),
            },
            "input_reference": {
                **_BINARY,
                "description": (
                    "the first frame, a PNG, JPEG or WebP file, stretched (no crop) to the video's size: a "
                    "first-frame condition on a video-editing pair; within the server's byte and pixel limits"
                ),
            },
        }
    )
    components["VideoCreateForm"] = form
    body = doc["paths"]["/v1/videos"]["post"]["requestBody"]
    body["content"] = {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoCreateForm"}}}


def served_document(core: IngressCore) -> dict[str, Any]:
    """`openapi_document` for the deployment `core` serves: its model, auth, caches, adapters, schedule and
    its tenants' priority bound."""
    return openapi_document(
        core.model_name,
        not core.tokens.open,
        core.cache_pattern(),
        core.takes_image,
        core.lora_pattern(),
        core.schedule_limits(),
        core.config.ingress.limits,
        core.tokens.max_priority(),
        core.edits_video,
    )


def _openapi() -> dict[str, Any]:
    """Built once per replica, from the deployment it serves."""
    if app.openapi_schema is None:
        app.openapi_schema = served_document(_core())
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]
