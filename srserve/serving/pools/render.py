"""The render pool: reads a handoff from artifact storage, finishes the steps, decodes, stores the mp4."""

from __future__ import annotations

from typing import Any

from ray import serve

from srserve.engine import HandoffState, ModelPairConfig, Role
from srserve.engine.parallel import ParallelSpec
from srserve.serving.control.artifacts import ArtifactNotFound, ArtifactStoreConfig
from srserve.serving.control.attempts import StageResult, StageTicket
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.ops.metrics import timed_handoff
from srserve.serving.pools import stages
from srserve.serving.pools.worker import PoolWorker


class RendersHandoffs(PoolWorker):
    """The render stage of a stored handoff: the render pool's, and the colocated pool's for uploaded ones."""

    async def render(self, ticket: StageTicket) -> StageResult:
        reporter = self.reporter(ticket, self.pool_name)
        if ticket.handoff_key is None:
            return StageResult.handoff_lost()
        try:  # read before taking the compute lock: overlaps the job running now
            blob = await self.artifacts.get_async(ticket.handoff_key)
        except ArtifactNotFound:
            return StageResult.handoff_lost()
        await self.hold_adapter(ticket, ("render",))

        def run():
            state = timed_handoff("parse", lambda: HandoffState.from_bytes(blob))
            body = stages.render if self.ranks is None else self.ranks.render  # one device, or SPMD on the ranks
            return body(self.engine, reporter, state)

        return await self.render_and_store(reporter, run)


class RenderWorker(RendersHandoffs):
    pool_name = "render"

    def __init__(
        self,
        model: ModelPairConfig,
        job_store: JobStoreConfig,
        artifacts: ArtifactStoreConfig,
        parallel: ParallelSpec | None = None,
    ) -> None:
        super().__init__(model, job_store, artifacts, frozenset({Role.RENDER, Role.DECODE}), parallel)


def render_deployment(**options: Any):
    return serve.deployment(RenderWorker, name="RenderWorker").options(**options)
