"""Builds the srserve Ray Serve application from a ServingConfig.

Deployments: Ingress (HTTP + gRPC, and each replica's orchestrator) and one deployment per pool of
the config's layout (srserve.serving.config.layout): SketchWorker and RenderWorker pools, or one
ColocatedWorker pool, and an optional TextEncoderWorker pool. Each pool takes its own
replicas/autoscaling and actor options (GPUs, accelerator type, custom resources).
No deployment holds job state: that is in the job store (PostgreSQL) and artifact storage.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from srserve.engine.adapters.loading import check_adapters
from srserve.engine.config import ModelPairConfig
from srserve.engine.families import check_pair
from srserve.serving.api.grpc import GrpcApi
from srserve.serving.api.http import app as http_app
from srserve.serving.api.tls_gateway import GrpcTlsGateway
from srserve.serving.config import PoolConfig, PoolLayout, ServingConfig
from srserve.serving.config.layout import PoolName
from srserve.serving.config.single_node import check_cluster, check_replica_node
from srserve.serving.control.store.database import migrate_store
from srserve.serving.ingress import IngressCore
from srserve.serving.ops.job_logging import install_job_log_filter
from srserve.serving.ops.metrics import export_store_gauges
from srserve.serving.pools.colocated import colocated_deployment
from srserve.serving.pools.ranks import check_pool_parallel
from srserve.serving.pools.render import render_deployment
from srserve.serving.pools.sketch import sketch_deployment
from srserve.serving.pools.text import text_deployment
from srserve.serving.pools.worker import replica_id

logger = logging.getLogger("ray.serve")


@serve.deployment(name="Ingress")
@serve.ingress(http_app)
class Ingress(GrpcApi, IngressCore):
    """HTTP (/v1/videos) and gRPC (srserve.v1) entry point; its orchestrator drives jobs through the pools."""

    def __init__(self, config: ServingConfig, pools: dict[str, DeploymentHandle], tls_gateway=None) -> None:
        check_replica_node(config.job_store, config.artifacts, ray.get_runtime_context().get_node_id())
        pair = config.model_pair(write_tiny=False)
        IngressCore.__init__(self, config, pair.defaults, pair.name, pair.family, pools, replica_id(), pair)
        install_job_log_filter()
        self.start()
        self._gauges = asyncio.get_event_loop().create_task(export_store_gauges(self.store, self.layout))

    async def __del__(self) -> None:
        """Serve calls this when replacing or removing the replica: finish the jobs in flight first."""
        left = await self.drain(self.config.ingress.graceful_shutdown_timeout_s)
        if left:
            logger.warning("ingress stopped with %d job(s) still running; released to the other replicas", left)


def build_app(config: ServingConfig) -> Application:
    nodes, here = _ray_nodes()
    # On a cluster of several nodes the single-node defaults are refused before the embedded database starts.
    check_cluster(config.job_store, config.artifacts, nodes)
    config = config.resolved(here)  # the embedded database started, paths absolute, this node their home
    migrate_store(config.job_store)  # the schema is current before any replica uses it
    pair = config.model_pair()
    if all(Path(p).exists() for p in (pair.sketch_path, pair.render_path)):
        # An incompatible sketch/render pair is refused here, naming what differs, and so is a LoRA file
        # that does not fit its model (AdapterMisfitError, naming the adapter and the module). Where the
        # folders are only on the GPU nodes (a KubeRay head mounts none), each replica refuses them at load.
        check_pair(pair)
        if pair.adapters:
            check_adapters(pair)
    layout = config.pool_layout()
    stores = (config.job_store, config.artifacts)
    pools = {name: _pool_app(name, pool, pool.model_for(pair), stores, layout) for name, pool in layout.pools.items()}
    ingress = Ingress.options(
        num_replicas=config.ingress.num_replicas,
        ray_actor_options=dict(config.ingress.ray_actor_options),
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        graceful_shutdown_timeout_s=config.ingress.graceful_shutdown_timeout_s,
    )
    tls_gateway = GrpcTlsGateway.bind(config.grpc_tls) if config.grpc_tls is not None else None
    return ingress.bind(config, pools, tls_gateway)


def _ray_nodes() -> tuple[int, str | None]:
    """(alive nodes, this node's id) of the Ray cluster building the app; (1, None) outside one (a config
    file's app graph built to check it)."""
    if not ray.is_initialized():
        return 1, None
    return sum(1 for node in ray.nodes() if node["Alive"]), ray.get_runtime_context().get_node_id()


def _pool_app(
    name: PoolName, pool: PoolConfig, model: ModelPairConfig, stores: tuple[Any, Any], layout: PoolLayout
) -> Application:
    """The deployment of one pool of the layout, bound to its model and the stores."""
    options = pool.deployment_options()
    if name == "text":
        return text_deployment(**options).bind(model, *stores)
    if name == "colocated":
        return colocated_deployment(**options).bind(model, *stores)
    check_pool_parallel(pool.parallel, model, pool.ray_actor_options)  # a degree that cannot run fails here, with why
    if name == "sketch":
        return sketch_deployment(**options).bind(model, *stores, layout.encoder is None, pool.parallel)
    return render_deployment(**options).bind(model, *stores, pool.parallel)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Serve config files (`import_path: srserve.serving.app:app_builder`)."""
    return build_app(ServingConfig.model_validate(args or {}))
