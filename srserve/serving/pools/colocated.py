"""The colocated layout: every replica holds both models and runs a whole request.

This is how a plain `WanPipeline(transformer=large, transformer_2=small)` deployment serves
SRDiffusion (and, with `fixed:N` / `fixed:0`, large-only and small-only): the baseline the
disaggregated pools are compared against. The handoff stays in memory (nothing durable between
sketch and render: a replica lost mid-job is sketched again), and the replica reports the same
stage stamps as the two pools do, under the stage name `colocated`.

The layout (srserve.serving.config.layout) routes a job's sketch stage to `generate`, whose answer is
a completed job, and an uploaded handoff's render stage to `render`.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from srserve.engine import ALL_ROLES, ModelPairConfig
from srserve.engine.families import EncodedPrompt
from srserve.engine.request import ResolvedRequest
from srserve.serving.control.artifacts import ArtifactStoreConfig
from srserve.serving.control.attempts import StageResult, StageTicket
from srserve.serving.control.jobs import JobState
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.pools import stages
from srserve.serving.pools.render import RendersHandoffs


class ColocatedWorker(RendersHandoffs):
    """Encode, sketch, render, decode and export in one replica, one job at a time."""

    pool_name = "colocated"

    def __init__(self, model: ModelPairConfig, job_store: JobStoreConfig, artifacts: ArtifactStoreConfig) -> None:
        super().__init__(model, job_store, artifacts, ALL_ROLES)

    async def generate(self, ticket: StageTicket, encoded: EncodedPrompt | None = None) -> StageResult:
        """The whole job: the sketch, the handoff in memory, the render and the mp4."""
        reporter = self.reporter(ticket, self.pool_name)
        request = ResolvedRequest.model_validate(ticket.request)
        image = await self.input_image(request)
        edit = await self.edit_inputs(request)
        await self.hold_adapter(ticket, ("sketch", "render"))

        def run():
            state = stages.sketch(self.engine, reporter, request, encoded, image, edit)
            if state is None:
                return None
            now = reporter.now()
            n = state.num_steps
            reporter.report(
                JobState.HANDED_OFF,
                state.switch_step,
                n,
                stamps={"sketch_end": now, "render_start": now},
                switch_step=state.switch_step,
            )
            return stages.render(self.engine, reporter, state)

        return await self.render_and_store(reporter, run)


def colocated_deployment(**options: Any):
    return serve.deployment(ColocatedWorker, name="ColocatedWorker").options(**options)
