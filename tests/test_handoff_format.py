"""The handoff wire format: lossless, versioned, and safe to parse from untrusted bytes."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from srserve.engine import GenerationRequest, HandoffFormatError, HandoffState, SRDiffusionEngine


@pytest.fixture(scope="module")
def state(engine: SRDiffusionEngine) -> HandoffState:
    request = engine.resolve(GenerationRequest(prompt="a boat", num_inference_steps=6, switch="fixed:3"))
    return engine.sketch(request, engine.encode(request), job_id="job-1")


def test_roundtrip_is_lossless(state: HandoffState) -> None:
    back = HandoffState.from_bytes(state.to_bytes())
    assert back.job_id == "job-1" and back.switch_step == 3 and back.request == state.request
    assert torch.equal(back.latents, state.latents)
    assert torch.equal(back.prompt_embeds, state.prompt_embeds)
    assert torch.equal(back.generator_state, state.generator_state)
    assert back.scheduler.values == state.scheduler.values
    assert back.scheduler.tensors.keys() == state.scheduler.tensors.keys()
    for name, tensor in state.scheduler.tensors.items():
        assert torch.equal(back.scheduler.tensors[name], tensor)


def test_bf16_is_preserved(state: HandoffState) -> None:
    state_bf16 = HandoffState(
        **{**state.__dict__, "latents": state.latents.bfloat16(), "prompt_embeds": state.prompt_embeds.bfloat16()}
    )
    back = HandoffState.from_bytes(state_bf16.to_bytes())
    assert back.latents.dtype == torch.bfloat16 and back.prompt_embeds.dtype == torch.bfloat16
    assert torch.equal(back.latents, state_bf16.latents)


@pytest.mark.parametrize(
    "blob",
    [b"", b"garbage", b"\xff" * 64, struct.pack("<Q", 10**12) + b"{}", st_save({"x": torch.zeros(1)})],
)
def test_garbage_is_rejected_with_a_clear_error(blob: bytes) -> None:
    with pytest.raises(HandoffFormatError):
        HandoffState.from_bytes(blob)


def _rewrite_header(blob: bytes, change) -> bytes:
    size = struct.unpack("<Q", blob[:8])[0]
    raw = json.loads(blob[8 : 8 + size])
    header = json.loads(raw["__metadata__"]["srserve.handoff"])
    change(header)
    raw["__metadata__"]["srserve.handoff"] = json.dumps(header)
    new = json.dumps(raw).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + blob[8 + size :]


def test_wrong_version_is_rejected(state: HandoffState) -> None:
    blob = _rewrite_header(state.to_bytes(), lambda h: h.update(version=99))
    with pytest.raises(HandoffFormatError, match="version 99 is not supported"):
        HandoffState.from_bytes(blob)


def test_invalid_request_inside_is_rejected(state: HandoffState) -> None:
    blob = _rewrite_header(state.to_bytes(), lambda h: h["request"].update(height=63))
    with pytest.raises(HandoffFormatError, match="height"):
        HandoffState.from_bytes(blob)


def test_format_contains_no_pickle(state: HandoffState) -> None:
    blob = state.to_bytes()
    assert b"\x80\x04" not in blob[: 8 + struct.unpack("<Q", blob[:8])[0]]  # header is plain JSON
    assert json.loads(blob[8 : 8 + struct.unpack("<Q", blob[:8])[0]])  # parses as JSON
