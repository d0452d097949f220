"""The colocated layout: every replica holds both models and runs a whole request.

This is how a plain `WanPipeline(transformer=large, transformer_2=small)` deployment serves
SRDiffusion (and, with `fixed:N` / `fixed:0`, large-only and small-only): the baseline the
disaggregated pools are compared against. The handoff stays in memory (no wire format), and
the replica reports the same stage stamps as the two pools do, under the stage name
`colocated`, so the job timeline reads the same in both layouts.

The ingress drives it through its usual sketch call: the replica's `sketch` method finishes the
job (video posted to the board), and the ingress sees a completed job and makes no render call.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from srserve.engine import ALL_ROLES, ModelPairConfig
from srserve.engine.families import EncodedPrompt
from srserve.engine.request import ResolvedRequest
from srserve.serving.config import ServingConfig
from srserve.serving.control.jobs import JobState
from srserve.serving.pools.workers import REPORT_TIMEOUT_S, JobReporter, _run_stopping, _Worker

COLOCATED_STAGE = "colocated"


class ColocatedWorker(_Worker):
    """Encode, sketch, render, decode and export in one replica, one job at a time."""

    def __init__(self, model: ModelPairConfig, board: DeploymentHandle) -> None:
        super().__init__(model, board, ALL_ROLES)

    async def sketch(self, ticket: dict[str, Any], encoded: dict[str, Any] | None = None) -> dict[str, Any]:
        """Named like the sketch pool's method so the ingress drives both layouts alike."""
        return await asyncio.to_thread(self._exclusive, lambda: self._generate(ticket, encoded))

    def _generate(self, ticket: dict[str, Any], encoded_dict: dict[str, Any] | None) -> dict[str, Any]:
        reporter = JobReporter(self.board, ticket["job_id"], COLOCATED_STAGE)
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
        n = state.num_steps
        now = time.time()
        reporter.report(
            JobState.HANDED_OFF,
            state.switch_step,
            n,
            stamps={"sketch_end": now, "render_start": now},
            info={"switch_step": state.switch_step},
        )
        reporter.report(JobState.RENDERING, state.switch_step, n)
        latents = _run_stopping(
            lambda: self.engine.render(
                state, on_step=reporter.on_step(JobState.RENDERING), cancelled=reporter.cancelled
            ),
            reporter,
        )
        digest = hashlib.sha256(latents.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
        reporter.report(JobState.DECODING, n, n, stamps={"decode_start": time.time()}, info={"latents_sha256": digest})
        video = self.engine.export(self.engine.decode(latents), request.fps)
        self.board.complete.remote(ticket["job_id"], video, {"render_end": time.time()}).result(
            timeout_s=REPORT_TIMEOUT_S
        )
        return {"video_bytes": len(video), "switch_step": state.switch_step}


def colocated_deployment(**options: Any):
    return serve.deployment(ColocatedWorker, name="ColocatedWorker").options(**options)


def colocated_ingress_config(config: ServingConfig) -> ServingConfig:
    """The ingress admits jobs against its sketch pool's backlog; in this layout that is the colocated pool."""
    return config.model_copy(update={"sketch_pool": config.colocated_pool})
