"""The ingress core: admits jobs, drives each through the pools, answers job queries.

The latent never comes here: the sketch response's ObjectRef is handed to the render pool
unopened. The render call is made only once the sketch result exists (checked without
fetching it), so jobs still sketching never occupy render-replica slots.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import ray
from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle

from srserve.engine.handoff import HandoffFormatError, HandoffState
from srserve.engine.request import GenerationRequest, RequestDefaults, describe_validation_error, resolve_request
from srserve.serving.api.errors import (
    InvalidRequest,
    JobNotFound,
    NotReady,
    Overloaded,
    RequestTooLarge,
    Unauthenticated,
)
from srserve.serving.config import ServingConfig
from srserve.serving.control.jobs import TERMINAL_STATES, ErrorCode, JobState, JobStopped
from srserve.serving.ops.job_logging import bind_job

logger = logging.getLogger("ray.serve")
READY_POLL_S = 0.005
TERMINAL = tuple(s.value for s in TERMINAL_STATES)
# What a caller sees when the replica running its request dies (Serve does not retry these).
REPLICA_LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
)


class IngressCore:
    def __init__(
        self,
        config: ServingConfig,
        defaults: RequestDefaults,
        model_name: str,
        family: str,
        board: DeploymentHandle,
        sketch: DeploymentHandle,
        render: DeploymentHandle,
        text: DeploymentHandle | None = None,
    ) -> None:
        self.config = config
        self.defaults = defaults
        self.model_name = model_name
        self.board = board
        self.sketch = sketch
        self.render = render
        self.text = text
        self.auth = config.auth.resolve()
        self.family = family
        self.sketch_backlog = 0
        self.render_backlog = 0
        self._tasks: set[asyncio.Task] = set()

    # -- admission -----------------------------------------------------------------------
    def authorize(self, authorization: str | None) -> None:
        if self.auth is not None and not self.auth.check(authorization):
            raise Unauthenticated("missing or invalid bearer token")

    def validate(self, fields: dict[str, Any]) -> GenerationRequest:
        try:
            request = GenerationRequest.model_validate(fields)
            resolve_request(request, self.defaults)
        except ValidationError as exc:
            first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
            raise InvalidRequest(describe_validation_error(exc), param=".".join(map(str, first)) or None) from None
        return request

    async def submit(self, request: GenerationRequest, deadline_s: float | None = None) -> dict[str, Any]:
        resolved = resolve_request(request, self.defaults)
        if self.sketch_backlog >= self.config.sketch_pool.max_backlog:
            raise Overloaded(f"sketch pool is full ({self.sketch_backlog} jobs waiting); retry later")
        if self.render_backlog >= self.config.render_pool.max_backlog:
            raise Overloaded(f"render pool is full ({self.render_backlog} jobs waiting); retry later")
        job_id = f"video_{uuid.uuid4().hex}"
        deadline = deadline_s if deadline_s is not None else self.config.ingress.default_deadline_s
        summary = await self.board.create.remote(
            job_id, resolved.model_dump(mode="json"), resolved.num_inference_steps, deadline
        )
        ticket = {"job_id": job_id, "request": resolved.model_dump(mode="json")}
        self.sketch_backlog += 1
        task = asyncio.get_running_loop().create_task(self._drive(ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return summary

    async def submit_handoff(self, blob: bytes, deadline_s: float | None = None) -> dict[str, Any]:
        """Accept a client's handoff state and render it; the blob is parsed safely and checked first."""
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
        if self.render_backlog >= self.config.render_pool.max_backlog:
            raise Overloaded(f"render pool is full ({self.render_backlog} jobs waiting); retry later")
        job_id = f"video_{uuid.uuid4().hex}"
        request = state.request.model_dump(mode="json")
        deadline = deadline_s if deadline_s is not None else self.config.ingress.default_deadline_s
        await self.board.create.remote(job_id, request, n, deadline)
        await self.board.report.remote(
            job_id,
            JobState.HANDED_OFF.value,
            state.switch_step,
            n,
            info={"switch_step": state.switch_step, "handoff_bytes": len(blob)},
        )
        ticket = {"job_id": job_id, "request": request}
        ref = ray.put(bytes(blob))
        self.render_backlog += 1
        task = asyncio.get_running_loop().create_task(self._drive_uploaded(ticket, ref))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await self.board.get.remote(job_id)

    async def _drive_uploaded(self, ticket: dict[str, Any], ref: ray.ObjectRef) -> None:
        bind_job(ticket["job_id"])  # this task's log lines carry the job id
        try:
            if await self._render_from_handoff(ticket, ref, {"sketch": 0, "render": 0}) == "resketch":
                raise RuntimeError("the uploaded handoff was lost from the object store")
        except Exception as exc:
            await self._fail(ticket["job_id"], exc)
        finally:
            self.render_backlog -= 1

    async def _drive(self, ticket: dict[str, Any]) -> None:
        """Sketch, then render from the handoff; recover from replica deaths at the handoff boundary.

        A render replica that dies is replaced by another render attempt from the same handoff
        object (the sketch is not redone); a sketch replica that dies restarts the sketch. Both are
        bounded by `ingress.max_attempts`, after which the job fails with the reason.
        """
        job_id = ticket["job_id"]
        bind_job(job_id)  # this task's log lines carry the job id
        attempts = {"sketch": 0, "render": 0}
        stage = "sketch"
        try:
            while True:
                ref = await self._sketch_until_handoff(ticket, attempts)
                self.sketch_backlog -= 1
                stage = "handoff"
                if ref is None:
                    return
                self.render_backlog += 1
                stage = "render"
                outcome = await self._render_from_handoff(ticket, ref, attempts)
                self.render_backlog -= 1
                stage = "done"
                if outcome != "resketch":
                    return
                self.sketch_backlog += 1
                stage = "sketch"
        except Exception as exc:  # anything unforeseen: the job must not stay in a running state
            await self._fail(job_id, exc)
        finally:
            if stage == "sketch":
                self.sketch_backlog -= 1
            elif stage == "render":
                self.render_backlog -= 1

    async def _sketch_until_handoff(self, ticket: dict[str, Any], attempts: dict[str, int]) -> ray.ObjectRef | None:
        """The handoff's ObjectRef once the sketch is done, or None when the job ended another way."""
        job_id = ticket["job_id"]
        while True:
            if await self._ended(job_id):
                return None
            attempts["sketch"] += 1
            await self.board.report.remote(job_id, JobState.QUEUED.value, 0, 0, info={"attempts": dict(attempts)})
            if self.text is not None:
                sketch_resp = self.sketch.sketch.remote(ticket, self.text.encode.remote(ticket))
            else:
                sketch_resp = self.sketch.sketch.remote(ticket)
            ref = await sketch_resp._to_object_ref()
            while not ray.wait([ref], timeout=0, fetch_local=False)[0]:
                await asyncio.sleep(READY_POLL_S)
            job = await self.board.get.remote(job_id)
            if job is None or job["state"] in TERMINAL:
                return None
            if job["state"] == JobState.HANDED_OFF:
                return ref  # the sketch returned; its handoff stays in the object store, unopened here
            try:
                await ref  # the sketch did not hand off: fetch its (small) error to see why
                return ref
            except REPLICA_LOST as exc:
                if attempts["sketch"] >= self.config.ingress.max_attempts:
                    raise RuntimeError(f"sketch failed {attempts['sketch']} times; last: {_short_error(exc)}") from exc
                logger.warning("job %s: sketch replica lost (%s); restarting the sketch", job_id, _short_error(exc))
            except JobStopped:
                return None

    async def _render_from_handoff(self, ticket: dict[str, Any], ref: ray.ObjectRef, attempts: dict[str, int]) -> str:
        """Render until done; returns 'done', or 'resketch' when the handoff itself was lost."""
        job_id = ticket["job_id"]
        while True:
            if await self._ended(job_id):
                return "done"
            attempts["render"] += 1
            await self.board.report.remote(job_id, info={"attempts": dict(attempts)})
            try:
                await self.render.render.remote(ticket, ref)
                return "done"
            except JobStopped:
                return "done"
            except ray.exceptions.ObjectLostError as exc:
                if attempts["sketch"] >= self.config.ingress.max_attempts:
                    raise RuntimeError(f"handoff lost and sketch attempts exhausted: {_short_error(exc)}") from exc
                logger.warning("job %s: handoff object lost; redoing the sketch", job_id)
                return "resketch"
            except REPLICA_LOST as exc:
                if attempts["render"] >= self.config.ingress.max_attempts:
                    raise RuntimeError(f"render failed {attempts['render']} times; last: {_short_error(exc)}") from exc
                logger.warning(
                    "job %s: render replica lost (%s); re-rendering from the saved handoff", job_id, _short_error(exc)
                )

    async def _ended(self, job_id: str) -> bool:
        job = await self.board.get.remote(job_id)
        return job is None or job["state"] in TERMINAL

    async def _fail(self, job_id: str, exc: BaseException) -> None:
        if not await self._ended(job_id):
            logger.warning("job %s failed: %s", job_id, exc)
            await self.board.fail.remote(job_id, ErrorCode.INTERNAL.value, _short_error(exc))

    # -- queries -------------------------------------------------------------------------
    async def get(self, job_id: str) -> dict[str, Any]:
        job = await self.board.get.remote(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}", param="id")
        return job

    async def cancel(self, job_id: str) -> dict[str, Any]:
        job = await self.board.cancel.remote(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}", param="id")
        return job

    async def delete(self, job_id: str) -> None:
        if not await self.board.forget.remote(job_id):
            raise JobNotFound(f"no job with id {job_id!r}", param="id")

    async def list(self, limit: int = 20, after: str | None = None, order: str = "desc") -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit: must be between 1 and 1000", param="limit")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order: must be 'asc' or 'desc'", param="order")
        return await self.board.list_jobs.remote(limit, after, order)

    async def events(self, job_id: str, after_seq: int, timeout_s: float = 10.0) -> dict[str, Any]:
        out = await self.board.events.remote(job_id, after_seq, timeout_s)
        if out is None:
            raise JobNotFound(f"no job with id {job_id!r}", param="id")
        return out

    async def content(self, job_id: str) -> bytes:
        job = await self.get(job_id)
        if job["state"] != JobState.COMPLETED:
            raise NotReady(f"job {job_id} is {job['state']}, not completed; no video yet")
        video = await self.board.content.remote(job_id)
        if video is None:
            raise JobNotFound(f"video of job {job_id} is no longer retained", param="id")
        return video

    async def wait(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        """Block until the job is terminal or `timeout_s` passes; returns its summary."""
        seq = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            out = await self.events(job_id, seq, min(10.0, max(0.0, end - loop.time())))
            if out["events"]:
                seq = out["events"][-1]["seq"]
            if out["job"]["state"] in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
                return out["job"]
            if loop.time() >= end:
                return out["job"]

    async def drain(self, timeout_s: float) -> int:
        """Let the jobs this ingress drives finish (up to `timeout_s`); returns how many did not."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            logger.info("ingress draining %d job(s)", len(pending))
            _, still = await asyncio.wait(pending, timeout=timeout_s)
            return len(still)
        return 0


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]
