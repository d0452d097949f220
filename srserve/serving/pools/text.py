"""The optional text-encoder pool (text_encoder_placement: pool): encodes prompts on its own replicas."""

from __future__ import annotations

from typing import Any

from ray import serve

from srserve.engine import ModelPairConfig, Role
from srserve.engine.families import EncodedPrompt
from srserve.engine.request import ResolvedRequest
from srserve.serving.control.artifacts import ArtifactStoreConfig
from srserve.serving.control.attempts import StageTicket
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.pools import stages
from srserve.serving.pools.worker import PoolWorker


class TextEncoderWorker(PoolWorker):
    pool_name = "text"

    def __init__(self, model: ModelPairConfig, job_store: JobStoreConfig, artifacts: ArtifactStoreConfig) -> None:
        super().__init__(model, job_store, artifacts, frozenset({Role.TEXT}))

    async def encode(self, ticket: StageTicket) -> EncodedPrompt:
        """The embeddings travel to the sketch replica through Ray's object store (not a durable point)."""
        reporter = self.reporter(ticket, "encode")
        request = ResolvedRequest.model_validate(ticket.request)
        encoded = await self.compute(reporter.job_id, lambda: stages.encode(self.engine, reporter, request))
        negative = encoded.negative_prompt_embeds
        return EncodedPrompt(encoded.prompt_embeds.cpu(), None if negative is None else negative.cpu())


def text_deployment(**options: Any):
    return serve.deployment(TextEncoderWorker, name="TextEncoderWorker").options(**options)
