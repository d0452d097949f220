"""What every pool replica shares: its engine, its line to the store and artifacts, one job at a time.

A replica runs one job at a time behind a lock but accepts several (max_ongoing_requests > 1), so
its next job is already waiting in the replica when the current one ends. The compute thread only
computes: progress leaves through the replica's ProgressChannel without waiting, and the stage's
durable write (artifact, then the store) happens on the event loop after the lock is released, so
the next job computes meanwhile. State lives in the store; a replica can die at any moment.

LoRA adapters switched per job are Ray Serve multiplexed models: the ingress calls a stage with the
job's adapter as `multiplexed_model_id`, Serve routes it to a replica that holds that adapter when one
can take it, and the replica's `@serve.multiplexed` loader (capacity: the pool's adapter_cache_size)
loads it into the engine under the compute lock. When Serve's LRU evicts one it awaits the token's
`__del__`, which unloads it from the engine too, so the engine holds what Serve reports (the engine's
own LRU, of the same capacity, bounds it meanwhile). The engine activates the job's adapter per stage
and turns LoRA off after it: nothing carries into the next job. With the ingress's `adapter_routing:
none` the call comes without a model id (Serve balances by load alone) and the same loader runs here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from typing import Any, TypeVar

import psutil
import ray
from PIL import Image
from ray import serve

from srserve.engine import ModelPairConfig, Role, SRDiffusionEngine
from srserve.engine.inputs.edit_inputs import EditInputs
from srserve.engine.inputs.image import load_image
from srserve.engine.parallel import ParallelSpec
from srserve.engine.request import ResolvedRequest
from srserve.serving.config.single_node import check_replica_node
from srserve.serving.control.artifacts import ArtifactStore, ArtifactStoreConfig
from srserve.serving.control.attempts import StageResult, StageTicket
from srserve.serving.control.edit_uploads import decode_stored, stored_parts
from srserve.serving.control.progress import AttemptReporter, ProgressChannel
from srserve.serving.control.queueing.replica_slots import ReplicaSlots, replica_slots
from srserve.serving.control.store.database import JobStoreConfig, open_store
from srserve.serving.ops.job_logging import bind_job, log_job_finished
from srserve.serving.ops.metrics import record_adapter_counts, record_adapter_routing, record_job_finished
from srserve.serving.ops.replica_operations import ReplicaOperations
from srserve.serving.pools.ranks import RankGroup

T = TypeVar("T")


def replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return "local"


def max_ongoing_requests() -> int | None:
    """This replica's deployment's max_ongoing_requests (None outside a replica)."""
    try:
        return int(serve.get_replica_context()._deployment_config.max_ongoing_requests)
    except Exception:
        return None


class AdapterToken:
    """What Serve's multiplexing keeps for one loaded adapter. Serve awaits a model's `__del__` when its LRU
    evicts it; here that is an instance attribute (so the garbage collector never calls it) that unloads
    the adapter from the engine."""

    def __init__(self, name: str, unload: Callable[[str], Awaitable[None]]) -> None:
        self.name = name

        async def evicted() -> None:
            await unload(name)

        self.__del__ = evicted


class PoolWorker(ReplicaOperations):
    """Base of the pools' deployments; subclasses add their stage method."""

    def __init__(
        self,
        model: ModelPairConfig,
        job_store: JobStoreConfig,
        artifacts: ArtifactStoreConfig,
        roles: frozenset[Role],
        parallel: ParallelSpec | None = None,
    ) -> None:
        check_replica_node(job_store, artifacts, ray.get_runtime_context().get_node_id())
        # A multi-device replica is rank 0 of its group; its RankGroup runs each stage on every rank.
        self.ranks: RankGroup | None = None
        if parallel is not None and parallel.enabled:
            self.ranks = RankGroup(parallel, model, roles)
            self.engine = self.ranks.engine
        else:
            self.engine = SRDiffusionEngine(model, roles)
        self.store = open_store(job_store)
        self.artifacts = ArtifactStore.from_config(artifacts)
        self.progress = ProgressChannel(self.store).start()
        # The queue's capacity counts this replica while it lives (the text pool's calls ride on the sketch's).
        self.slots: ReplicaSlots | None = None
        if self.pool_name != "text":
            slots = replica_slots(max_ongoing_requests())
            self.slots = ReplicaSlots(self.store, replica_id(), self.pool_name, slots).start()
        self._lock = threading.Lock()
        self.busy_s = 0.0
        self.jobs_done = 0
        # Adapters switched per job: Serve's multiplexing holds them (see the module docstring).
        self._adapters = bool(model.adapters)
        self._adapter_counts = (0, 0, 0)  # the engine's loads, hits, evictions as last exported
        self._adapter_summary: dict[str, Any] | None = None  # the same, what it holds, and Serve's view
        self._adapters_held: set[str] = set()
        self._hold_adapter: Callable[[str], Awaitable[AdapterToken]] | None = None
        if any(not adapter.fuse for adapter in model.adapters.values()):
            self._hold_adapter = serve.multiplexed(max_num_models_per_replica=model.adapter_cache_size)(
                self._adapter_loader()
            )

    async def check_health(self) -> None:
        """Serve's health check; a multi-device replica also pings its ranks (one lost: the replica goes)."""
        if self.ranks is not None:
            await asyncio.to_thread(self.ranks.check)

    def reporter(self, ticket: StageTicket, stage: str) -> AttemptReporter:
        return AttemptReporter(self.progress, ticket, stage, replica_id())

    async def stats(self) -> dict[str, Any]:
        """Busy time and placement of this replica (which GPU Ray gave it)."""
        return {
            "replica": replica_id(),
            "pid": os.getpid(),
            "busy_s": self.busy_s,
            "jobs_done": self.jobs_done,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "node_id": ray.get_runtime_context().get_node_id(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "adapters": self._adapter_summary,
        }

    async def input_image(self, request: ResolvedRequest) -> Image.Image | None:
        """The job's input image (image-to-video), decoded from the bytes the ingress stored before it
        accepted the job: every attempt, on any replica, reads the same ones. None for text-to-video."""
        ref = request.input_reference
        if ref is None:
            return None
        if ref.key is None:
            raise ValueError("input_reference: the job's image was not stored (an admission bug)")
        data = await self.artifacts.get_async(ref.key)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ValueError(f"input_reference: the stored image {ref.key!r} is not the one the job was accepted with")
        # Checked at admission against the configured limits; these bounds only restate what was accepted.
        return await asyncio.to_thread(load_image, data, len(data), ref.width * ref.height)

    async def edit_inputs(self, request: ResolvedRequest) -> EditInputs | None:
        """The job's video-editing inputs (video, mask, reference images), decoded (a thread) from the bytes the
        ingress stored before it accepted the job, each checked against the sha256 the request describes:
        every attempt, on any replica, reads the same ones. None when the request describes none."""
        parts = stored_parts(request)
        if not parts:
            return None
        blobs = []
        for field, _, described in parts:
            if described.key is None:
                raise ValueError(f"{field}: the job's input was not stored (an admission bug)")
            blobs.append(await self.artifacts.get_async(described.key))
        return await asyncio.to_thread(decode_stored, request, blobs)

    async def compute(self, job_id: str | None, fn: Callable[[], T], job: bool = True) -> T:
        """Run `fn` on a thread holding the replica's compute lock; accounts busy time (and, for a job's
        stage rather than an adapter load, the job)."""

        def locked() -> T:
            bind_job(job_id)  # the thread's log lines carry the job id
            with self._lock:
                start = time.perf_counter()
                try:
                    return fn()
                finally:
                    self.busy_s += time.perf_counter() - start
                    self.jobs_done += int(job)
                    if self._adapters:  # read under the lock: no stage is switching adapters now
                        self._export_adapter_counts()

        return await asyncio.to_thread(locked)

    # -- LoRA adapters -------------------------------------------------------------------------
    def _adapter_loader(self) -> Callable[[str], Awaitable[AdapterToken]]:
        """The function Serve's multiplexing calls for an adapter this replica does not hold (a closure, so
        that each pool's capacity is its own: `serve.multiplexed` takes it when it wraps the function)."""

        async def load_adapter(name: str) -> AdapterToken:
            self._adapters_held.add(name)  # as Serve reports it: held from the start of its load
            try:
                await self.compute(None, lambda: self.engine.warm_adapter(name), job=False)
            except BaseException:
                self._adapters_held.discard(name)
                raise
            return AdapterToken(name, self._unload_adapter)

        return load_adapter

    async def _unload_adapter(self, name: str) -> None:
        self._adapters_held.discard(name)
        await self.compute(None, lambda: self.engine.evict_adapter(name), job=False)

    async def hold_adapter(self, ticket: StageTicket, sides: Iterable[str]) -> None:
        """Before a stage on the models `sides`: the job's adapter loaded here through Serve's multiplexing
        (which routed the call here, preferring a replica that holds it, unless the ingress routes without
        it); counts whether it was held."""
        name = ticket.adapter(sides)
        if name is None or self._hold_adapter is None:
            return
        record_adapter_routing(self.pool_name, held=name in self._adapters_held)
        await self._hold_adapter(name)

    def _export_adapter_counts(self) -> None:
        """The engine's adapter loads, hits and evictions since the last export, as the pool's counters."""
        stats = self.engine.adapter_stats()
        now = (stats.loads, stats.hits, stats.evictions)
        loads, hits, evictions = (n - before for n, before in zip(now, self._adapter_counts, strict=True))
        record_adapter_counts(self.pool_name, loads, hits, evictions)
        self._adapter_counts = now
        self._adapter_summary = {
            **asdict(stats),
            "held": sorted(self._adapters_held.copy()),  # what Serve's multiplexing reports this replica holds
        }

    async def render_and_store(self, reporter: AttemptReporter, run: Callable[[], Any]) -> StageResult:
        """Compute a stage body ending in the mp4 (`run`: (video, digest, stamps), or None when stopped),
        then store it: the render pool's and the colocated pool's common end."""
        out = await self.compute(reporter.job_id, run)
        if out is None:
            return reporter.stopped()
        result, job = await reporter.complete(self.artifacts, *out)
        if job is not None:  # completed here: its end is recorded here
            record_job_finished(job)
            log_job_finished(job)
        return result
