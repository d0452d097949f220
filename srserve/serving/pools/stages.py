"""The stage bodies the pools run on their compute thread, shared by the split and colocated layouts.

Each reports through an AttemptReporter (never waiting on the store) and returns None when the job
was stopped at a step boundary (the reporter's `reason` says why).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from PIL import Image

from srserve.engine import HandoffState, SRDiffusionEngine
from srserve.engine.engine import Cancelled
from srserve.engine.families import EncodedPrompt
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.request import ResolvedRequest
from srserve.serving.control.jobs import JobState
from srserve.serving.control.progress import AttemptReporter


def encode(engine: SRDiffusionEngine, reporter: AttemptReporter, request: ResolvedRequest) -> EncodedPrompt:
    reporter.report(JobState.ENCODING, 0, 1, stamps={"encode_start": reporter.now()})
    encoded = engine.encode(request)
    reporter.report(stamps={"encode_end": reporter.now()})
    return encoded


def prompt(
    engine: SRDiffusionEngine, reporter: AttemptReporter, request: ResolvedRequest, encoded: EncodedPrompt | None
) -> EncodedPrompt:
    """The prompt's embeddings: from the text pool when it sent them, else encoded here."""
    return encode(engine, reporter, request) if encoded is None else encoded


def sketch(
    engine: SRDiffusionEngine,
    reporter: AttemptReporter,
    request: ResolvedRequest,
    encoded: EncodedPrompt | None,
    image: Image.Image | None = None,
    edit: EditInputs | None = None,
) -> HandoffState | None:
    """The prompt (`encoded` by the text pool, else here) and the large model's steps (from the decoded
    input image of an image-to-video job, the decoded video, mask and reference images of a video-editing
    one); the handoff state, or None when stopped."""
    if reporter.cancelled():
        return None
    embeddings = prompt(engine, reporter, request, encoded)
    return sketch_steps(engine, reporter, request, embeddings, image=image, edit=edit)


def sketch_steps(
    engine: SRDiffusionEngine,
    reporter: AttemptReporter,
    request: ResolvedRequest,
    embeddings: EncodedPrompt,
    cancelled: Callable[[], bool] | None = None,
    image: Image.Image | None = None,
    edit: EditInputs | None = None,
) -> HandoffState | None:
    """The large model's steps from the embeddings; `cancelled` replaces the reporter's own check
    (a multi-device replica's collective one, srserve.serving.pools.ranks)."""
    reporter.report(JobState.SKETCHING, 0, 0, stamps={"sketch_start": reporter.now()})
    try:
        return engine.sketch(
            request,
            embeddings,
            image=image,
            edit=edit,
            job_id=reporter.job_id,
            on_step=reporter.on_step(JobState.SKETCHING),
            cancelled=cancelled or reporter.cancelled,
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
    if reporter.cancelled():
        return None
    latents = render_steps(engine, reporter, state)
    return None if latents is None else decode(engine, reporter, state, latents)


def render_steps(
    engine: SRDiffusionEngine,
    reporter: AttemptReporter,
    state: HandoffState,
    cancelled: Callable[[], bool] | None = None,
) -> torch.Tensor | None:
    """The small model's steps (final latents), or None when stopped; `cancelled` as in sketch_steps."""
    reporter.report(JobState.RENDERING, state.switch_step, state.num_steps, stamps={"render_start": reporter.now()})
    try:
        return engine.render(
            state, on_step=reporter.on_step(JobState.RENDERING), cancelled=cancelled or reporter.cancelled
        )
    except Cancelled:
        return None


def decode(
    engine: SRDiffusionEngine, reporter: AttemptReporter, state: HandoffState, latents: torch.Tensor
) -> tuple[bytes, str, dict[str, float]]:
    """The VAE decode and the mp4 of the final latents: (video, latents digest, stamps)."""
    n = state.num_steps
    digest = latents_digest(latents)
    reporter.report(JobState.DECODING, n, n, stamps={"decode_start": reporter.now()}, latents_sha256=digest)
    video = engine.export(engine.decode(latents), state.request.fps)
    return video, digest, {"render_end": reporter.now()}
