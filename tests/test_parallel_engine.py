"""Multi-device engine parity without Ray: ranks are spawned processes (gloo on 127.0.0.1), each
with its own engine on the same tiny folders, and every rank's result must equal the one-device
engine's bit for bit (`torch.equal`): Ulysses-2 sketch and render, CFG-2, Ulysses-2 x CFG-2.

Each rank runs the same job SPMD; every rank writes what it computed, so the tests also show the
ranks never diverge (the adaptive switch and the cancel decision included).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from srserve.engine import GenerationRequest, HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.engine import Cancelled
from srserve.engine.parallel import ParallelSpec, ParallelUnsupported, check_parallel, init_runtime

REQUEST = {"prompt": "a red fox running through snow", "seed": 7, "num_inference_steps": 6, "guidance_scale": 5.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(
    rank: int, spec: dict[str, Any], port: int, root: str, out: str, request: dict[str, Any], job: dict[str, Any]
) -> None:
    """One rank: join the group, load the pair with the parallel degree, run the job, write the result."""
    torch.set_num_threads(1)
    runtime = init_runtime(ParallelSpec(**spec), rank, "127.0.0.1", port, "cpu")
    try:
        config = ModelPairConfig.tiny(root, write=False, num_threads=1)
        engine = SRDiffusionEngine(config, {Role.TEXT, Role.SKETCH, Role.RENDER}, parallel=runtime)
        resolved = engine.resolve(GenerationRequest(**request))
        encoded = engine.encode(resolved)
        # diffusers' context-parallel hooks are on both transformers exactly when the degree splits tokens.
        result: dict[str, Any] = {
            "context_parallel": [m._parallel_config is not None for m in (engine.sketch_model, engine.render_model)]
        }
        if job.get("sketch"):
            state = engine.sketch(resolved, encoded, cancelled=runtime.agreed(None))
            result["sketch"] = state.to_bytes()
        if job.get("render"):
            state = HandoffState.from_bytes(Path(job["render"]).read_bytes())
            result["render"] = engine.render(state, cancelled=runtime.agreed(None))
        if job.get("cancel_at") is not None:
            stop_at = job["cancel_at"]
            calls = {"n": 0}
            agreed = runtime.agreed(lambda: calls["n"] > stop_at)  # asked on rank 0 only

            def check() -> bool:
                calls["n"] += 1
                return agreed()

            try:
                engine.sketch(resolved, encoded, cancelled=check)
                result["cancelled_at"] = None
            except Cancelled:
                result["cancelled_at"] = calls["n"] - 1
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        runtime.close()


def _run(spec: ParallelSpec, root: Path, tmp_path: Path, request: dict[str, Any], job: dict[str, Any]) -> list[dict]:
    """Spawn spec.world_size ranks and return what each one computed."""
    mp.start_processes(
        _rank_main,
        args=(spec.model_dump(), _free_port(), str(root), str(tmp_path), request, job),
        nprocs=spec.world_size,
        start_method="spawn",
    )
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(spec.world_size)]


@pytest.fixture(scope="module")
def serial(engine: SRDiffusionEngine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The one-device results: the sketch's handoff bytes and the render's final latents from it."""
    resolved = engine.resolve(GenerationRequest(**REQUEST, switch="fixed:3"))
    state = engine.sketch(resolved, engine.encode(resolved))
    blob = state.to_bytes()
    path = tmp_path_factory.mktemp("serial") / "handoff.srh"
    path.write_bytes(blob)
    return {"handoff": blob, "handoff_path": str(path), "render": engine.render(HandoffState.from_bytes(blob))}


def _same_handoff(a: bytes, b: bytes) -> None:
    x, y = HandoffState.from_bytes(a), HandoffState.from_bytes(b)
    assert x.switch_step == y.switch_step
    assert torch.equal(x.latents, y.latents)
    assert torch.equal(x.generator_state, y.generator_state)
    assert x.to_bytes() == y.to_bytes()  # scheduler state and embeddings too: the whole wire format


def test_ulysses_2_sketch_and_render_equal_one_device(serial, tiny_root: Path, tmp_path: Path) -> None:
    ranks = _run(
        ParallelSpec(ulysses=2),
        tiny_root,
        tmp_path,
        {**REQUEST, "switch": "fixed:3"},
        {"sketch": True, "render": serial["handoff_path"]},
    )
    for result in ranks:
        assert result["context_parallel"] == [True, True]
        _same_handoff(result["sketch"], serial["handoff"])
        assert torch.equal(result["render"], serial["render"])


def test_cfg_2_equals_one_device(serial, tiny_root: Path, tmp_path: Path) -> None:
    ranks = _run(
        ParallelSpec(cfg=2),
        tiny_root,
        tmp_path,
        {**REQUEST, "switch": "fixed:3"},
        {"sketch": True, "render": serial["handoff_path"]},
    )
    for result in ranks:
        assert result["context_parallel"] == [False, False]  # CFG parallel alone splits no tokens
        _same_handoff(result["sketch"], serial["handoff"])
        assert torch.equal(result["render"], serial["render"])


def test_adaptive_switch_and_cancel_agree_on_every_rank(engine, tiny_root: Path, tmp_path: Path) -> None:
    """The adaptive switch decides from the gathered prediction (the same on every rank); a cancel
    that only rank 0 sees stops every rank at the same step."""
    request = {**REQUEST, "num_inference_steps": 8, "switch": "adaptive:0.5:1:6"}
    resolved = engine.resolve(GenerationRequest(**request))
    state = engine.sketch(resolved, engine.encode(resolved))
    ranks = _run(ParallelSpec(ulysses=2), tiny_root, tmp_path, request, {"sketch": True, "cancel_at": 2})
    for result in ranks:
        _same_handoff(result["sketch"], state.to_bytes())
        assert result["cancelled_at"] == 2


@pytest.mark.slow
def test_ulysses_2_x_cfg_2_equals_one_device(serial, tiny_root: Path, tmp_path: Path) -> None:
    """Four processes on this 2-core machine: slow, but the same bits."""
    ranks = _run(
        ParallelSpec(ulysses=2, cfg=2),
        tiny_root,
        tmp_path,
        {**REQUEST, "switch": "fixed:3"},
        {"sketch": True, "render": serial["handoff_path"]},
    )
    for result in ranks:
        _same_handoff(result["sketch"], serial["handoff"])
        assert torch.equal(result["render"], serial["render"])


def _silent_peer_main(rank: int, port: int, root: str, out: str, mode: str) -> None:
    """Rank 1 joins and loads like any rank, then dies (`exit`) or stops taking part (`hang`);
    rank 0 runs a sketch and records how it ended."""
    torch.set_num_threads(1)
    runtime = init_runtime(ParallelSpec(ulysses=2, timeout_s=5), rank, "127.0.0.1", port, "cpu")
    engine = SRDiffusionEngine(ModelPairConfig.tiny(root, write=False, num_threads=1), parallel=runtime)
    if rank == 1:
        if mode == "exit":
            os._exit(0)
        # Alive but silent past rank 0's collective timeout, until rank 0 has recorded how it ended (the
        # deadline only bounds a hang of the test itself).
        deadline = time.monotonic() + 120
        while not Path(out, "rank0.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return
    resolved = engine.resolve(GenerationRequest(**REQUEST, switch="fixed:3"))
    try:
        engine.sketch(resolved, engine.encode(resolved), cancelled=runtime.agreed(None))
        outcome = "finished"
    except Exception as exc:  # what a replica's rank 0 sees: an error, never a hang
        outcome = f"{type(exc).__name__}: {exc}"
    Path(out, "rank0.txt").write_text(outcome)
    os._exit(0)  # the group is broken: no orderly teardown


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_a_dead_or_silent_rank_fails_the_others_collective(tiny_root: Path, tmp_path: Path, mode: str) -> None:
    """gloo: a peer that died closes its connection, one that hangs trips the collective timeout;
    either way rank 0's sketch raises (the serving layer then takes the replica down)."""
    ctx = mp.start_processes(
        _silent_peer_main,
        args=(_free_port(), str(tiny_root), str(tmp_path), mode),
        nprocs=2,
        start_method="spawn",
        join=False,
    )
    while not ctx.join():
        pass
    outcome = (tmp_path / "rank0.txt").read_text()
    # Measured here: "RuntimeError: [...gloo...] Connection closed by peer" (exit) and "RuntimeError:
    # [...gloo...] Timed out waiting 5000ms for send operation to complete" (hang): plain RuntimeErrors.
    assert outcome.startswith("RuntimeError") and "gloo" in outcome, outcome


def test_degrees_that_cannot_run_are_refused_with_the_reason() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(ParallelUnsupported, match="log-sum-exp"):
        check_parallel(ParallelSpec(ring=2), "wan2.1", "native", cpu)
    with pytest.raises(ParallelUnsupported, match="log-sum-exp"):
        check_parallel(ParallelSpec(ring=2), "wan2.1", "flash", cpu)
    check_parallel(ParallelSpec(ring=2), "wan2.1", "flash", cuda)  # allowed where flash runs
    with pytest.raises(ParallelUnsupported, match="_cp_plan"):
        check_parallel(ParallelSpec(ulysses=2), "cogvideox", "native", cpu)
    with pytest.raises(ParallelUnsupported, match="batched forward"):
        check_parallel(ParallelSpec(cfg=2), "cogvideox", "native", cpu)
    with pytest.raises(ParallelUnsupported, match="does not support context parallelism"):
        check_parallel(ParallelSpec(ulysses=2), "wan2.1", "xformers", cuda)
    with pytest.raises(ParallelUnsupported, match="4 attention heads"):
        check_parallel(ParallelSpec(ulysses=3), "wan2.1", "native", cpu, {"render": 4})
    with pytest.raises(ValueError, match="not both"):
        ParallelSpec(ulysses=2, ring=2)
    assert ParallelSpec(ulysses=2, cfg=2).world_size == 4 and ParallelSpec().world_size == 1
