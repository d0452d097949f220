from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("deadline_s", "fps", "guidance_scale", "height", "negative_prompt", "num_frames", "num_inference_steps", "prompt", "seed", "switch", "width")
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
    def __init__(self, prompt: str | None = ..., negative_prompt: str | None = ..., height: int | None = ..., width: int | None = ..., num_frames: int | None = ..., num_inference_steps: int | None = ..., guidance_scale: float | None = ..., seed: int | None = ..., switch: str | None = ..., fps: int | None = ..., deadline_s: float | None = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: str | None = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("completed_at", "created_at", "error", "error_code", "handoff_bytes", "id", "num_steps", "progress", "replicas", "request_json", "state", "step", "switch_step", "timeline", "total", "video_bytes")
    class TimelineEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: str | None = ..., value: float | None = ...) -> None: ...
    class ReplicasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...
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
    def __init__(self, id: str | None = ..., state: str | None = ..., progress: int | None = ..., step: int | None = ..., total: int | None = ..., switch_step: int | None = ..., num_steps: int | None = ..., error_code: str | None = ..., error: str | None = ..., created_at: float | None = ..., completed_at: float | None = ..., video_bytes: int | None = ..., handoff_bytes: int | None = ..., timeline: _Mapping[str, float] | None = ..., replicas: _Mapping[str, str] | None = ..., request_json: str | None = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("job_id", "progress", "state", "step", "time", "total")
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
    def __init__(self, job_id: str | None = ..., state: str | None = ..., step: int | None = ..., total: int | None = ..., progress: int | None = ..., time: float | None = ...) -> None: ...

class Video(_message.Message):
    __slots__ = ("job", "job_id", "mp4")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MP4_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    mp4: bytes
    job: Job
    def __init__(self, job_id: str | None = ..., mp4: bytes | None = ..., job: Job | _Mapping | None = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("progress", "video")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    video: Video
    def __init__(self, progress: Progress | _Mapping | None = ..., video: Video | _Mapping | None = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("after", "limit", "order")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    after: str
    order: str
    def __init__(self, limit: int | None = ..., after: str | None = ..., order: str | None = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("has_more", "jobs")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    has_more: bool
    def __init__(self, jobs: _Iterable[Job | _Mapping] | None = ..., has_more: bool | None = ...) -> None: ...
