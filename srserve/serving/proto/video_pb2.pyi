from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HandoffUpload(_message.Message):
    __slots__ = ("handoff", "deadline_s", "priority")
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    handoff: bytes
    deadline_s: float
    priority: int
    def __init__(self, handoff: _Optional[bytes] = ..., deadline_s: _Optional[float] = ..., priority: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "seed", "switch", "fps", "deadline_s", "model", "cache", "input_reference", "lora", "scheduler", "timesteps", "sigmas", "shift", "priority", "video", "mask", "reference_images", "conditioning_scale")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SWITCH_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    INPUT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    SIGMAS_FIELD_NUMBER: _ClassVar[int]
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONING_SCALE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    switch: str
    fps: int
    deadline_s: float
    model: str
    cache: str
    input_reference: bytes
    lora: str
    scheduler: str
    timesteps: _containers.RepeatedScalarFieldContainer[int]
    sigmas: _containers.RepeatedScalarFieldContainer[float]
    shift: float
    priority: int
    video: bytes
    mask: bytes
    reference_images: _containers.RepeatedScalarFieldContainer[bytes]
    conditioning_scale: float
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., num_frames: _Optional[int] = ..., num_inference_steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., switch: _Optional[str] = ..., fps: _Optional[int] = ..., deadline_s: _Optional[float] = ..., model: _Optional[str] = ..., cache: _Optional[str] = ..., input_reference: _Optional[bytes] = ..., lora: _Optional[str] = ..., scheduler: _Optional[str] = ..., timesteps: _Optional[_Iterable[int]] = ..., sigmas: _Optional[_Iterable[float]] = ..., shift: _Optional[float] = ..., priority: _Optional[int] = ..., video: _Optional[bytes] = ..., mask: _Optional[bytes] = ..., reference_images: _Optional[_Iterable[bytes]] = ..., conditioning_scale: _Optional[float] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "progress", "step", "total", "switch_step", "num_steps", "error_code", "error", "created_at", "completed_at", "video_bytes", "handoff_bytes", "timeline", "replicas", "request_json", "latents_sha256", "switch_cap", "switch_reason", "lora", "schedule", "priority")
    class TimelineEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ReplicasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class Lora(_message.Message):
        __slots__ = ("name", "scale", "sketch", "render", "fused")
        NAME_FIELD_NUMBER: _ClassVar[int]
        SCALE_FIELD_NUMBER: _ClassVar[int]
        SKETCH_FIELD_NUMBER: _ClassVar[int]
        RENDER_FIELD_NUMBER: _ClassVar[int]
        FUSED_FIELD_NUMBER: _ClassVar[int]
        name: str
        scale: float
        sketch: bool
        render: bool
        fused: bool
        def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ..., sketch: _Optional[bool] = ..., render: _Optional[bool] = ..., fused: _Optional[bool] = ...) -> None: ...
    class Schedule(_message.Message):
        __slots__ = ("scheduler", "shift", "timesteps", "sigmas")
        SCHEDULER_FIELD_NUMBER: _ClassVar[int]
        SHIFT_FIELD_NUMBER: _ClassVar[int]
        TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
        SIGMAS_FIELD_NUMBER: _ClassVar[int]
        scheduler: str
        shift: float
        timesteps: _containers.RepeatedScalarFieldContainer[int]
        sigmas: _containers.RepeatedScalarFieldContainer[float]
        def __init__(self, scheduler: _Optional[str] = ..., shift: _Optional[float] = ..., timesteps: _Optional[_Iterable[int]] = ..., sigmas: _Optional[_Iterable[float]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SWITCH_STEP_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_BYTES_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    LATENTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    SWITCH_CAP_FIELD_NUMBER: _ClassVar[int]
    SWITCH_REASON_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    progress: int
    step: int
    total: int
    switch_step: int
    num_steps: int
    error_code: str
    error: str
    created_at: float
    completed_at: float
    video_bytes: int
    handoff_bytes: int
    timeline: _containers.ScalarMap[str, float]
    replicas: _containers.ScalarMap[str, str]
    request_json: str
    latents_sha256: str
    switch_cap: int
    switch_reason: str
    lora: Job.Lora
    schedule: Job.Schedule
    priority: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., progress: _Optional[int] = ..., step: _Optional[int] = ..., total: _Optional[int] = ..., switch_step: _Optional[int] = ..., num_steps: _Optional[int] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ..., created_at: _Optional[float] = ..., completed_at: _Optional[float] = ..., video_bytes: _Optional[int] = ..., handoff_bytes: _Optional[int] = ..., timeline: _Optional[_Mapping[str, float]] = ..., replicas: _Optional[_Mapping[str, str]] = ..., request_json: _Optional[str] = ..., latents_sha256: _Optional[str] = ..., switch_cap: _Optional[int] = ..., switch_reason: _Optional[str] = ..., lora: _Optional[_Union[Job.Lora, _Mapping]] = ..., schedule: _Optional[_Union[Job.Schedule, _Mapping]] = ..., priority: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("job_id", "state", "step", "total", "progress", "time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    step: int
    total: int
    progress: int
    time: float
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., total: _Optional[int] = ..., progress: _Optional[int] = ..., time: _Optional[float] = ...) -> None: ...

class Video(_message.Message):
    __slots__ = ("job_id", "mp4", "job")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MP4_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    mp4: bytes
    job: Job
    def __init__(self, job_id: _Optional[str] = ..., mp4: _Optional[bytes] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("progress", "video")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    video: Video
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., video: _Optional[_Union[Video, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit", "after", "order")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    after: str
    order: str
    def __init__(self, limit: _Optional[int] = ..., after: _Optional[str] = ..., order: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "has_more")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    has_more: bool
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...
