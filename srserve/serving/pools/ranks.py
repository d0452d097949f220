"""Multi-device pool replicas: rank actors in the replica's placement group, and the SPMD driver.

A pool with `parallel: {ulysses: U, cfg: C}` reserves U x C bundles (STRICT_PACK: one node). The
Serve replica is rank 0 (bundle 0): it encodes the prompt (text encoder on rank 0 only), holds the
VAE (render pools decode on rank 0 only), reports progress, decides cancellation and stores the
result. Ranks 1.. are `RankWorker` actors in bundles 1..; each loads the transformer with the same
degree and runs the same loop. Every job is dispatched to all ranks before rank 0 starts it, and
the replica holds its compute lock until every rank has finished, so the ranks see jobs in the
same order.

Failure. A rank that dies fails its peers' next collective (gloo at once on a closed connection;
nccl and a rank that hangs after `parallel.timeout_s`), and the replica also watches each rank's
call: either way the replica kills its ranks and exits, so the call in flight fails as a lost
replica (the orchestrator runs the attempt again, on the replica Serve starts in its place). An idle
replica's health check pings every rank, so a rank lost between jobs takes the replica down too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import ray
import torch
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from srserve.engine import HandoffState, ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.denoising.cache import CachePolicy
from srserve.engine.engine import Cancelled
from srserve.engine.families import EncodedPrompt, get_family
from srserve.engine.parallel import ParallelRuntime, ParallelSpec, ParallelUnsupported, check_parallel, init_runtime
from srserve.engine.parallel.config import attention_heads
from srserve.engine.request import ResolvedRequest
from srserve.serving.control.progress import AttemptReporter
from srserve.serving.pools import stages

logger = logging.getLogger("ray.serve")

# Roles only rank 0 loads: the prompt is encoded and the latents decoded once, on the replica.
LEADER_ONLY_ROLES = frozenset({Role.TEXT, Role.DECODE})
PING_TIMEOUT_S = 10.0
T = TypeVar("T")


def check_pool_parallel(spec: ParallelSpec, model: ModelPairConfig, actor_options: dict[str, Any]) -> None:
    """A pool's degree against its pair, backend and device, before any replica starts (ParallelUnsupported).

    The device is the pair's, or with `device: auto` the pool's: CUDA where its replicas get GPUs.
    Head counts are checked where the folders are readable (else each rank checks at load).
    """
    if not spec.enabled:
        return
    if model.device == "auto":
        device = torch.device("cuda" if actor_options.get("num_gpus") else "cpu")
    else:
        device = torch.device(model.device)
    heads = attention_heads(get_family(model.family), model.sketch_path, model.render_path)
    check_parallel(spec, model.family, model.attention_backend, device, heads)


def refuse_data_dependent_cache(spec: ParallelSpec, policy: CachePolicy | None) -> None:
    """First-block caching decides from the first block's residual, which under Ulysses / ring is
    each rank's own token slice: ranks would skip different steps and their collectives would no
    longer match. Refused (before anything is dispatched); schedule-driven caches are the same on all ranks."""
    if spec.context_degree > 1 and policy is not None and policy.kind == "first_block":
        raise ParallelUnsupported(
            f"a first_block step cache cannot run with parallel {spec.label()} (its skip decision is per token "
            "slice, so the ranks would diverge); use taylorseer or mag, or no cache"
        )


def collective_failure(exc: BaseException) -> bool:
    """Whether an error came out of the process group (its state is then unknown: the group is broken).

    gloo raises plain RuntimeErrors ("[.../gloo/transport/tcp/pair.cc] Connection closed by peer", "Timed
    out waiting 5000ms for send operation"), nccl DistBackendError; both are matched."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(mark in text for mark in ("gloo", "NCCL", "nccl", "ProcessGroup"))


def rank_actor_name(replica: str, rank: int) -> str:
    """Each rank actor's name (in the replica's namespace): how operators and tests find one."""
    return f"srserve-rank:{replica}:{rank}"


def replica_name() -> str:
    """APP#DEPLOYMENT#ID of this Serve replica (what its rank actors' names start from)."""
    try:
        from ray import serve

        rid = serve.get_replica_context().replica_id
        return f"{rid.deployment_id.app_name}#{rid.deployment_id.name}#{rid.unique_id}"
    except Exception:  # outside a Serve replica
        return f"local-{os.getpid()}"


def _bundle_options(bundle: dict[str, float]) -> dict[str, Any]:
    """Actor options that take exactly one bundle of the replica's placement group."""
    rest = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
    options: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0), "resources": rest}
    if "memory" in bundle:
        options["memory"] = bundle["memory"]
    return options


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@ray.remote(concurrency_groups={"compute": 1, "health": 1})
class RankWorker:
    """Rank k >= 1 of a replica: the same engine on its own device, running what rank 0 dispatches."""

    def __init__(self) -> None:
        self.engine: SRDiffusionEngine | None = None
        self.runtime: ParallelRuntime | None = None

    @ray.method(concurrency_group="compute")
    def start(
        self, spec: ParallelSpec, rank: int, address: str, port: int, model: ModelPairConfig, roles: frozenset[Role]
    ) -> int:
        """Join the group and load this rank's models (collective with every other rank's start)."""
        self.runtime = init_runtime(spec, rank, address, port, model.resolved_device())
        self.engine = SRDiffusionEngine(model, roles - LEADER_ONLY_ROLES, parallel=self.runtime)
        return os.getpid()

    @ray.method(concurrency_group="compute")
    def sketch(self, request: ResolvedRequest, encoded: EncodedPrompt) -> int | None:
        """The large model's steps; the switch step (rank 0 returns the handoff), None when cancelled."""
        assert self.engine is not None and self.runtime is not None
        try:
            state = self.engine.sketch(request, encoded, cancelled=self.runtime.agreed(None))
        except Cancelled:
            return None
        return state.switch_step

    @ray.method(concurrency_group="compute")
    def render(self, state: HandoffState) -> bool:
        """The small model's steps from a handoff; rank 0 decodes. False when cancelled."""
        assert self.engine is not None and self.runtime is not None
        try:
            self.engine.render(state, cancelled=self.runtime.agreed(None))
        except Cancelled:
            return False
        return True

    @ray.method(concurrency_group="health")
    def ping(self) -> int:
        return os.getpid()


class RankLost(RuntimeError):
    """A rank of this replica died, hung past the collective timeout or failed to start."""


class RankGroup:
    """Rank 0's side: starts ranks 1.. in the replica's placement group and drives each job on all ranks."""

    def __init__(self, spec: ParallelSpec, model: ModelPairConfig, roles: frozenset[Role]) -> None:
        self.spec = spec
        pg = get_current_placement_group()
        if pg is None or len(pg.bundle_specs) < spec.world_size:
            raise RankLost(
                f"parallel {spec.label()} needs the replica in a placement group of {spec.world_size} bundles "
                "(PoolConfig sets placement_group_bundles when parallel is on)"
            )
        address, port = ray.util.get_node_ip_address(), _free_port()
        self.actors = [
            RankWorker.options(
                name=rank_actor_name(replica_name(), rank),
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
                **_bundle_options(pg.bundle_specs[rank]),
            ).remote()
            for rank in range(1, spec.world_size)
        ]
        started = [a.start.remote(spec, r, address, port, model, roles) for r, a in enumerate(self.actors, 1)]
        try:
            self.runtime = init_runtime(spec, 0, address, port, model.resolved_device())
            self.engine = SRDiffusionEngine(model, roles, parallel=self.runtime)
            self.pids = ray.get(started, timeout=spec.timeout_s)
        except Exception as exc:
            self.kill()
            raise RankLost(f"parallel {spec.label()}: the ranks did not start: {exc}") from exc
        logger.info("parallel %s replica up: ranks 1..%d are pids %s", spec.label(), spec.world_size - 1, self.pids)

    # -- the stage bodies (on the replica's compute thread, under its lock) ---------------------
    # stages.sketch / stages.render's own pieces, except that once the job is dispatched every cancel
    # check is collective (rank 0 decides, all ranks get its verdict at the same step boundary).
    def sketch(
        self,
        engine: SRDiffusionEngine,
        reporter: AttemptReporter,
        request: ResolvedRequest,
        encoded: EncodedPrompt | None,
    ) -> HandoffState | None:
        """Rank 0 encodes, dispatches the job to every rank, steps with them and returns the handoff."""
        if reporter.cancelled():
            return None
        refuse_data_dependent_cache(self.spec, request.cache.sketch if request.cache is not None else None)
        embeddings = stages.prompt(engine, reporter, request, encoded)
        cpu = EncodedPrompt(
            embeddings.prompt_embeds.cpu(),
            None if embeddings.negative_prompt_embeds is None else embeddings.negative_prompt_embeds.cpu(),
        )
        refs = [a.sketch.remote(request, cpu) for a in self.actors]

        def lead() -> HandoffState | None:
            return stages.sketch_steps(engine, reporter, request, embeddings, self.runtime.agreed(reporter.cancelled))

        state, others = self._lead(refs, lead)
        mine = None if state is None else state.switch_step
        if any(other != mine for other in others):  # the switch and the cancel are decided alike on every rank
            self.fail(f"the ranks diverged: rank 0 stopped the sketch at {mine}, the others at {others}")
        return state

    def render(
        self, engine: SRDiffusionEngine, reporter: AttemptReporter, state: HandoffState
    ) -> tuple[bytes, str, dict[str, float]] | None:
        """The steps on every rank; the decode and the mp4 on rank 0: (video, latents digest, stamps), or None."""
        if reporter.cancelled():
            return None
        cache = state.request.cache
        refuse_data_dependent_cache(self.spec, cache.render if cache is not None else None)
        refs = [a.render.remote(state) for a in self.actors]

        def lead() -> torch.Tensor | None:
            return stages.render_steps(engine, reporter, state, self.runtime.agreed(reporter.cancelled))

        latents, others = self._lead(refs, lead)
        if any(other != (latents is not None) for other in others):
            self.fail("the ranks diverged: not all of them finished (or were cancelled in) the render")
        return None if latents is None else stages.decode(engine, reporter, state, latents)  # rank 0 alone

    def _lead(self, refs: list[ray.ObjectRef], body: Callable[[], T]) -> tuple[T, list[Any]]:
        """Rank 0's part while a watcher waits on the others' calls; a rank lost takes the replica down.

        An error every rank raised alike (an invalid handoff, found before or at the same step on all
        of them) leaves the group consistent and fails only the job; anything else ends the replica.
        """
        done = threading.Event()

        def watch() -> None:
            try:
                ray.get(refs)
            except ray.exceptions.RayActorError as exc:  # a rank died: do not wait for a collective timeout
                if not done.is_set():
                    self.fail(f"a rank died during the job: {exc}")
            except Exception:  # a task error: the main path below judges it
                pass

        threading.Thread(target=watch, name="srserve-rank-watch", daemon=True).start()
        try:
            out = body()
        except Exception as exc:
            if collective_failure(exc):
                self.fail(f"a collective failed on rank 0: {exc}")
            self._same_error_everywhere(refs, exc)
            done.set()
            raise
        try:
            others = ray.get(refs, timeout=self.spec.timeout_s)
        except Exception as exc:
            self.fail(f"a rank did not finish the job: {exc}")
        done.set()
        return out, others

    def _same_error_everywhere(self, refs: list[ray.ObjectRef], exc: Exception) -> None:
        """Return if every other rank failed with rank 0's error type; else the group is broken: fail."""
        for ref in refs:
            try:
                ray.get(ref, timeout=self.spec.timeout_s)
            except ray.exceptions.RayTaskError as other:
                if isinstance(other.cause, type(exc)) and not collective_failure(other.cause):
                    continue
                self.fail(f"rank 0 raised {type(exc).__name__}: {exc}; another rank {other.cause!r}")
            except Exception as other:
                self.fail(f"rank 0 raised {type(exc).__name__}: {exc}; another rank: {other}")
            else:
                self.fail(f"rank 0 raised {type(exc).__name__}: {exc}; another rank finished the job")

    # -- health and failure ---------------------------------------------------------------------
    def check(self) -> None:
        """Serve's health check: every rank answers a ping, else the replica is replaced."""
        try:
            ray.get([a.ping.remote() for a in self.actors], timeout=PING_TIMEOUT_S)
        except Exception as exc:
            self.fail(f"a rank does not answer: {exc}")

    def kill(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)

    def fail(self, reason: str) -> None:
        """The group is unusable (a collective may be half done): kill the ranks and end this replica, so its
        calls fail as a lost replica (retried by the orchestrator) and Serve starts a fresh one."""
        logger.error("parallel %s replica going down: %s", self.spec.label(), reason)
        self.kill()
        for handler in logging.getLogger().handlers + logger.handlers:
            handler.flush()
        os._exit(1)
