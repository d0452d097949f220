"""The sketch pool: the large model's steps; returns once the handoff is durable."""

from __future__ import annotations

from typing import Any

from ray import serve

from srserve.engine import ModelPairConfig, Role
from srserve.engine.families import EncodedPrompt
from srserve.engine.parallel import ParallelSpec
from srserve.engine.request import ResolvedRequest
from srserve.serving.control.artifacts import ArtifactStoreConfig
from srserve.serving.control.attempts import StageResult, StageTicket
from srserve.serving.control.jobs import JobState
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.ops.metrics import timed_handoff
from srserve.serving.pools import stages
from srserve.serving.pools.worker import PoolWorker


class SketchWorker(PoolWorker):
    pool_name = "sketch"

    def __init__(
        self,
        model: ModelPairConfig,
        job_store: JobStoreConfig,
        artifacts: ArtifactStoreConfig,
        encode_here: bool,
        parallel: ParallelSpec | None = None,
    ) -> None:
        roles = {Role.SKETCH} | ({Role.TEXT} if encode_here else set())
        super().__init__(model, job_store, artifacts, frozenset(roles), parallel)

    async def sketch(self, ticket: StageTicket, encoded: EncodedPrompt | None = None) -> StageResult:
        reporter = self.reporter(ticket, "sketch")
        request = ResolvedRequest.model_validate(ticket.request)
        image = await self.input_image(request)
        edit = await self.edit_inputs(request)
        await self.hold_adapter(ticket, ("sketch",))

        def run():
            if self.ranks is None:
                state = stages.sketch(self.engine, reporter, request, encoded, image, edit)
            else:  # SPMD on the ranks; image-to-video and VACE pairs refuse multi-device replicas at config load
                state = self.ranks.sketch(self.engine, reporter, request, encoded)
            if state is None:
                return None
            blob = timed_handoff("serialize", state.to_bytes)
            reporter.report(JobState.SKETCHING, state.switch_step, state.switch_step, handoff_bytes=len(blob))
            return state, blob, reporter.now()

        out = await self.compute(reporter.job_id, run)
        if out is None:
            return reporter.stopped()
        state, blob, end = out
        return await reporter.hand_off(self.artifacts, blob, state.switch_step, {"sketch_end": end})


def sketch_deployment(**options: Any):
    return serve.deployment(SketchWorker, name="SketchWorker").options(**options)
