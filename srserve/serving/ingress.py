"""The ingress core: admits jobs, drives each through the pools, answers job queries.

The latent never comes here: the sketch response's ObjectRef is handed to the render pool
unopened. The render call is made only once the sketch result exists (checked without
fetching it), so jobs still sketching never occupy render-replica slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import ray
from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle

from srserve.engine.request import GenerationRequest, RequestDefaults, describe_validation_error, resolve_request
from srserve.serving.config import ServingConfig
from srserve.serving.errors import InvalidRequest, JobNotFound, NotReady, Overloaded
from srserve.serving.jobs import ErrorCode, JobState

logger = logging.getLogger("ray.serve")
READY_POLL_S = 0.005


class IngressCore:
    def __init__(
        self,
        config: ServingConfig,
        defaults: RequestDefaults,
        model_name: str,
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
        self.sketch_backlog = 0
        self.render_backlog = 0
        self._tasks: set[asyncio.Task] = set()

    # -- admission -----------------------------------------------------------------------
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

    async def _drive(self, ticket: dict[str, Any]) -> None:
        job_id = ticket["job_id"]
        in_sketch, in_render = True, False
        try:
            if self.text is not None:
                encoded = self.text.encode.remote(ticket)
                sketch_resp = self.sketch.sketch.remote(ticket, encoded)
            else:
                sketch_resp = self.sketch.sketch.remote(ticket)
            ref = await sketch_resp._to_object_ref()
            while not ray.wait([ref], timeout=0, fetch_local=False)[0]:
                await asyncio.sleep(READY_POLL_S)
            self.sketch_backlog -= 1
            in_sketch = False
            job = await self.board.get.remote(job_id)
            if job is None or job["state"] in (JobState.CANCELLED, JobState.FAILED):
                return
            self.render_backlog += 1
            in_render = True
            await self.render.render.remote(ticket, ref)
        except Exception as exc:  # the board knows cancellations; anything else is a failure
            job = await self.board.get.remote(job_id)
            if job is not None and job["state"] not in (JobState.CANCELLED, JobState.FAILED, JobState.COMPLETED):
                logger.warning("job %s failed: %s", job_id, exc)
                await self.board.fail.remote(job_id, ErrorCode.INTERNAL.value, _short_error(exc))
        finally:
            if in_sketch:
                self.sketch_backlog -= 1
            if in_render:
                self.render_backlog -= 1

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

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]
