"""The stage bodies the pools run on their compute thread, shared by the split and colocated layouts.

Each reports through an AttemptReporter (never waiting on the store) and returns None when the job
was stopped at a step boundary (the reporter's verdict says why).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch

from srserve.engine import HandoffState, SRDiffusionEngine
from srserve.engine.engine import Cancelled
from srserve.engine.families import EncodedPrompt
from srserve.engine.request import ResolvedRequest
from srserve.serving.control.jobs import JobState
from srserve.serving.control.progress import AttemptReporter


def encode(engine: SRDiffusionEngine, reporter: AttemptReporter, request: ResolvedRequest) -> EncodedPrompt:
    reporter.report(JobState.ENCODING, 0, 1, stamps={"encode_start": time.time()})
    encoded = engine.encode(request)
    reporter.report(stamps={"encode_end": time.time()})
    return encoded


def prompt(
    engine: SRDiffusionEngine, reporter: AttemptReporter, request: ResolvedRequest, encoded: dict[str, Any] | None
) -> EncodedPrompt:
    """The prompt's embeddings: from the text pool when it sent them, else encoded here."""
    if encoded is None:
        return encode(engine, reporter, request)
    return EncodedPrompt(encoded["prompt_embeds"], encoded["negative_prompt_embeds"])


def sketch(
    engine: SRDiffusionEngine, reporter: AttemptReporter, request: ResolvedRequest, encoded: dict[str, Any] | None
) -> HandoffState | None:
    """The prompt (`encoded` by the text pool, else here) and the large model's steps; the handoff
    state, or None when stopped."""
    if reporter.cancelled():
        return None
    embeddings = prompt(engine, reporter, request, encoded)
    reporter.report(JobState.SKETCHING, 0, 0, stamps={"sketch_start": time.time()})
    try:
        return engine.sketch(
            request,
            embeddings,
            job_id=reporter.job_id,
            on_step=reporter.on_step(JobState.SKETCHING),
            cancelled=reporter.cancelled,
        )
    except Cancelled:
        return None


def latents_digest(latents: torch.Tensor) -> str:
    """sha256 of the final latents: lets tests and clients check bit equality with the engine."""
    return hashlib.sha256(latents.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def render(
    engine: SRDiffusionEngine, reporter: AttemptReporter, state: HandoffState
) -> tuple[bytes, str, dict[str, float]] | None:
    """The small model's steps, the VAE decode and the mp4: (video, latents digest, stamps), or None."""
    n = state.num_steps
    if reporter.cancelled():
        return None
    reporter.report(JobState.RENDERING, state.switch_step, n, stamps={"render_start": time.time()})
    try:
        latents = engine.render(state, on_step=reporter.on_step(JobState.RENDERING), cancelled=reporter.cancelled)
    except Cancelled:
        return None
    digest = latents_digest(latents)
    reporter.report(JobState.DECODING, n, n, stamps={"decode_start": time.time()}, info={"latents_sha256": digest})
    video = engine.export(engine.decode(latents), state.request.fps)
    return video, digest, {"render_end": time.time()}
