"""Jobs: states, progress events and the per-request timeline, as the job store keeps them. Plain Python."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

from srserve.serving.control.tenants import DEFAULT_TENANT


class JobState(StrEnum):
    QUEUED = "queued"
    ENCODING = "encoding"
    SKETCHING = "sketching"
    HANDED_OFF = "handed_off"
    RENDERING = "rendering"
    DECODING = "decoding"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
TERMINAL = tuple(s.value for s in TERMINAL_STATES)  # the same, as strings (API payloads, SQL)
RUNNING_STATES = frozenset({JobState.ENCODING, JobState.SKETCHING, JobState.RENDERING, JobState.DECODING})
# Jobs waiting for or in the sketch pool, and those past the handoff (admission counts them per phase).
SKETCH_PHASE = frozenset({JobState.QUEUED, JobState.ENCODING, JobState.SKETCHING})
RENDER_PHASE = frozenset({JobState.HANDED_OFF, JobState.RENDERING, JobState.DECODING})
Phase = Literal["sketch", "render"]
PHASE_STATES: dict[Phase, frozenset[JobState]] = {"sketch": SKETCH_PHASE, "render": RENDER_PHASE}


@dataclass(frozen=True)
class PoolBacklog:
    """Admission's limit on one pool: jobs in the phases it runs, beyond which new jobs are refused
    (srserve.serving.config.layout makes one per pool of the deployment)."""

    pool: str
    phases: frozenset[Phase]
    max_jobs: int


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    STALLED = "stalled"


@dataclass
class JobEvent:
    seq: int
    job_id: str
    state: str
    step: int
    total: int
    progress: int
    time: float
    message: str = ""


@dataclass
class Job:
    """The store's record of one request (one row of srserve_jobs)."""

    id: str
    request: dict[str, Any]
    created_at: float
    deadline: float | None = None
    state: JobState = JobState.QUEUED
    step: int = 0
    total: int = 0
    progress: int = 0
    switch_step: int | None = None
    num_steps: int = 0
    error_code: str | None = None
    error: str | None = None
    completed_at: float | None = None
    video_bytes: int = 0
    handoff_bytes: int = 0
    latents_sha256: str | None = None
    attempts: dict[str, int] = field(default_factory=dict)
    last_report: float = 0.0
    # Wall-clock stamps (time.time()) per stage edge, plus which replica ran each stage.
    timeline: dict[str, float] = field(default_factory=dict)
    replicas: dict[str, str] = field(default_factory=dict)
    # Where the durable artifacts are (artifact storage keys), and who drives the job under which attempt.
    video_key: str | None = None
    handoff_key: str | None = None
    fence: int = 0
    lease_owner: str | None = None
    # The load-aware switch's cap on the sketch steps and its reason (srserve.serving.control.pricing.load_switch).
    switch_cap: int | None = None
    switch_reason: str | None = None
    # Who created it (srserve.serving.control.tenants), the priority it asked for, its predicted GPU-seconds.
    tenant: str = DEFAULT_TENANT
    priority: int = 0
    cost_gpu_s: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def overall_progress(self) -> int:
        """0-100 over all denoising steps (sketch then render); 100 only when completed."""
        if self.state == JobState.COMPLETED:
            return 100
        n = max(self.num_steps, 1)
        if self.state == JobState.SKETCHING:
            done = self.step
        elif self.state == JobState.HANDED_OFF:
            done = self.switch_step or 0
        elif self.state in (JobState.RENDERING, JobState.DECODING):
            done = self.step
        else:
            done = 0
        return min(99, int(100 * done / n))

    def summary(self) -> dict[str, Any]:
        """Everything a client may see, JSON-safe (not where the artifacts are, nor who drives the job)."""
        data = asdict(self)
        for private in ("video_key", "handoff_key", "lease_owner"):
            data.pop(private)
        data["request"] = public_request(self.request)
        data["state"] = self.state.value
        data["progress"] = self.overall_progress()
        return data


def handoff_key(job_id: str, fence: int) -> str:
    """Artifact key of a sketch attempt's handoff (one per attempt: a stale attempt never overwrites)."""
    return f"handoffs/{job_id}/{fence}.srh"


def video_key(job_id: str, fence: int) -> str:
    return f"videos/{job_id}/{fence}.mp4"


def input_image_key(job_id: str) -> str:
    """Artifact key of a job's input image (image-to-video), stored before the job is accepted so every
    attempt reads the same bytes."""
    return f"inputs/{job_id}/image"


def edit_input_key(job_id: str, name: str) -> str:
    """Artifact key of one of a video-editing job's inputs (`video`, `mask`, `reference_0`, ...), stored, as
    the input image is, before the job is accepted; under the job's `inputs/` prefix, which retention and
    delete remove."""
    return f"inputs/{job_id}/{name}"


# Every kind of artifact a job owns: what retention and delete remove.
ARTIFACT_KINDS = ("videos", "handoffs", "inputs")


def artifact_prefix(kind: str, job_id: str) -> str:
    """Everything of one job under `kind` (ARTIFACT_KINDS): what retention and delete remove."""
    return f"{kind}/{job_id}/"


# A request's input descriptions (srserve.engine.request.InputImage / InputVideo): each carries its storage key.
INPUT_FIELDS = ("input_reference", "video", "mask", "reference_images")


def public_request(request: dict[str, Any]) -> dict[str, Any]:
    """A stored request as a client may see it: its inputs' descriptions without the server's storage keys."""

    def public(described: Any) -> Any:
        if isinstance(described, list):
            return [public(item) for item in described]
        if isinstance(described, dict):
            return {k: v for k, v in described.items() if k != "key"}
        return described

    return {**request, **{name: public(request[name]) for name in INPUT_FIELDS if request.get(name) is not None}}
