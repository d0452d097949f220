"""The GPU pools: sketch workers (large model) and render workers (small model + VAE).

A worker runs one job at a time behind a lock but accepts several (max_ongoing_requests > 1),
so its next job is already waiting in the replica when the current one ends. Jobs report every
step to the job board; its reply is how cancellation and deadlines reach a running job.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from typing import Any

import psutil
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from srserve.engine import HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.engine import Cancelled
from srserve.engine.families import EncodedPrompt
from srserve.engine.request import ResolvedRequest
from srserve.serving.control.jobs import JobState, JobStopped, Verdict
from srserve.serving.ops.job_logging import bind_job
from srserve.serving.ops.metrics import timed_handoff
from srserve.serving.ops.replica_operations import ReplicaOperations

REPORT_TIMEOUT_S = 30.0


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return "local"


class JobReporter:
    """Reports one job's progress to the board from a worker thread and relays stop verdicts."""

    def __init__(self, board: DeploymentHandle, job_id: str, stage: str) -> None:
        self.board = board
        self.job_id = job_id
        self.stage = stage
        self.replica = (stage, _replica_id())
        self.stopped: Verdict | None = None
        bind_job(job_id)  # made at the top of each stage's thread: its log lines carry the job id

    def report(
        self,
        state: JobState | None = None,
        step: int | None = None,
        total: int | None = None,
        stamps: dict[str, float] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        verdict = Verdict(
            self.board.report.remote(
                self.job_id, None if state is None else state.value, step, total, stamps, self.replica, info
            ).result(timeout_s=REPORT_TIMEOUT_S)
        )
        if verdict != Verdict.CONTINUE:
            self.stopped = verdict
            raise JobStopped(self.job_id, verdict)

    def on_step(self, state: JobState):
        def callback(_stage: str, done: int, total: int) -> None:
            self.report(state, done, total)

        return callback

    def cancelled(self) -> bool:
        return self.stopped is not None


def _run_stopping(fn, reporter: JobReporter):
    """Run a stage; the engine's Cancelled (raised by our cancel poll) becomes JobStopped."""
    try:
        return fn()
    except Cancelled:
        raise JobStopped(reporter.job_id, reporter.stopped or Verdict.CANCELLED) from None


class _Worker(ReplicaOperations):  # GPU telemetry, queue-of-work reports, job-id logging
    roles: frozenset[Role]

    def __init__(self, model: ModelPairConfig, board: DeploymentHandle, roles: frozenset[Role]) -> None:
        self.engine = SRDiffusionEngine(model, roles)
        self.board = board
        self._lock = threading.Lock()
        self.busy_s = 0.0
        self.jobs_done = 0

    async def stats(self) -> dict[str, Any]:
        """Busy time and placement of this replica (which GPU Ray gave it)."""
        return {
            "replica": _replica_id(),
            "busy_s": self.busy_s,
            "jobs_done": self.jobs_done,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "node_id": ray.get_runtime_context().get_node_id(),
            "rss_bytes": psutil.Process().memory_info().rss,
        }

    def _exclusive(self, fn):
        """Run `fn` holding the replica's compute lock; accounts busy time."""
        with self._lock:
            start = time.perf_counter()
            try:
                return fn()
            finally:
                self.busy_s += time.perf_counter() - start
                self.jobs_done += 1


class TextEncoderWorker(_Worker):
    """Optional pool: encodes prompts on its own replicas (text_encoder_placement: pool)."""

    def __init__(self, model: ModelPairConfig, board: DeploymentHandle) -> None:
        super().__init__(model, board, frozenset({Role.TEXT}))

    async def encode(self, ticket: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._exclusive, lambda: self._encode(ticket))

    def _encode(self, ticket: dict[str, Any]) -> dict[str, Any]:
        reporter = JobReporter(self.board, ticket["job_id"], "encode")
        reporter.report(JobState.ENCODING, 0, 1, stamps={"encode_start": time.time()})
        request = ResolvedRequest.model_validate(ticket["request"])
        encoded = self.engine.encode(request)
        reporter.report(stamps={"encode_end": time.time()})
        return {
            "prompt_embeds": encoded.prompt_embeds.cpu(),
            "negative_prompt_embeds": (
                None if encoded.negative_prompt_embeds is None else encoded.negative_prompt_embeds.cpu()
            ),
        }


class SketchWorker(_Worker):
    """Runs the large model's steps and returns the handoff state's bytes."""

    def __init__(self, model: ModelPairConfig, board: DeploymentHandle, encode_here: bool = True) -> None:
        roles = {Role.SKETCH} | ({Role.TEXT} if encode_here else set())
        super().__init__(model, board, frozenset(roles))

    async def sketch(self, ticket: dict[str, Any], encoded: dict[str, Any] | None = None) -> bytes:
        return await asyncio.to_thread(self._exclusive, lambda: self._sketch(ticket, encoded))

    def _sketch(self, ticket: dict[str, Any], encoded_dict: dict[str, Any] | None) -> bytes:
        reporter = JobReporter(self.board, ticket["job_id"], "sketch")
        request = ResolvedRequest.model_validate(ticket["request"])
        if encoded_dict is None:
            reporter.report(JobState.ENCODING, 0, 1, stamps={"encode_start": time.time()})
            encoded = self.engine.encode(request)
            reporter.report(stamps={"encode_end": time.time()})
        else:
            encoded = EncodedPrompt(encoded_dict["prompt_embeds"], encoded_dict["negative_prompt_embeds"])
        reporter.report(JobState.SKETCHING, 0, 0, stamps={"sketch_start": time.time()})
        state = _run_stopping(
            lambda: self.engine.sketch(
                request,
                encoded,
                job_id=ticket["job_id"],
                on_step=reporter.on_step(JobState.SKETCHING),
                cancelled=reporter.cancelled,
            ),
            reporter,
        )
        blob = timed_handoff("serialize", state.to_bytes)
        reporter.report(
            JobState.HANDED_OFF,
            state.switch_step,
            state.num_steps,
            stamps={"sketch_end": time.time()},
            info={"switch_step": state.switch_step, "handoff_bytes": len(blob)},
        )
        return blob


class RenderWorker(_Worker):
    """Continues a handoff with the small model, decodes with the VAE and posts the mp4 to the board."""

    def __init__(self, model: ModelPairConfig, board: DeploymentHandle) -> None:
        super().__init__(model, board, frozenset({Role.RENDER, Role.DECODE}))

    async def render(self, ticket: dict[str, Any], handoff: bytes) -> dict[str, Any]:
        return await asyncio.to_thread(self._exclusive, lambda: self._render(ticket, handoff))

    def _render(self, ticket: dict[str, Any], handoff: bytes) -> dict[str, Any]:
        reporter = JobReporter(self.board, ticket["job_id"], "render")
        state = timed_handoff("parse", lambda: HandoffState.from_bytes(handoff))
        n = state.num_steps
        reporter.report(JobState.RENDERING, state.switch_step, n, stamps={"render_start": time.time()})
        latents = _run_stopping(
            lambda: self.engine.render(
                state, on_step=reporter.on_step(JobState.RENDERING), cancelled=reporter.cancelled
            ),
            reporter,
        )
        digest = hashlib.sha256(latents.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
        reporter.report(JobState.DECODING, n, n, stamps={"decode_start": time.time()}, info={"latents_sha256": digest})
        frames = self.engine.decode(latents)
        video = self.engine.export(frames, state.request.fps)
        end = time.time()
        self.board.complete.remote(ticket["job_id"], video, {"render_end": end}).result(timeout_s=REPORT_TIMEOUT_S)
        return {"video_bytes": len(video), "switch_step": state.switch_step}


def sketch_deployment(**options: Any):
    return serve.deployment(SketchWorker, name="SketchWorker").options(**options)


def render_deployment(**options: Any):
    return serve.deployment(RenderWorker, name="RenderWorker").options(**options)


def text_deployment(**options: Any):
    return serve.deployment(TextEncoderWorker, name="TextEncoderWorker").options(**options)
