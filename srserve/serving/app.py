"""Builds the srserve Ray Serve application from a ServingConfig.

Deployments: Ingress (HTTP + gRPC, and each replica's orchestrator) -> SketchWorker pool ->
RenderWorker pool, and an optional TextEncoderWorker pool; or one ColocatedWorker pool. Each pool
takes its own replicas/autoscaling and actor options (GPUs, accelerator type, custom resources).
No deployment holds job state: that is in the job store (PostgreSQL) and artifact storage.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from srserve.engine.families import check_pair
from srserve.serving.api.grpc import GrpcApi
from srserve.serving.api.http import app as http_app
from srserve.serving.api.tls_gateway import GrpcTlsGateway
from srserve.serving.config import ServingConfig
from srserve.serving.control.database import migrate_store
from srserve.serving.ingress import IngressCore
from srserve.serving.ops.job_logging import install_job_log_filter
from srserve.serving.ops.metrics import export_store_gauges
from srserve.serving.pools.colocated import colocated_deployment, colocated_ingress_config
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

    def __init__(self, config: ServingConfig, sketch, render, text=None, tls_gateway=None) -> None:
        pair = config.model_pair(write_tiny=False)
        IngressCore.__init__(
            self, config, pair.defaults, pair.name, pair.family, sketch, render, text, replica_id(), pair
        )
        install_job_log_filter()
        self.start()
        self._gauges = asyncio.get_event_loop().create_task(export_store_gauges(self.store))

    async def __del__(self) -> None:
        """Serve calls this when replacing or removing the replica: finish the jobs in flight first."""
        left = await self.drain(self.config.ingress.graceful_shutdown_timeout_s)
        if left:
            logger.warning("ingress stopped with %d job(s) still running; released to the other replicas", left)


def build_app(config: ServingConfig) -> Application:
    config = config.resolved()  # the embedded database started, paths made absolute
    migrate_store(config.job_store)  # the schema is current before any replica uses it
    pair = config.model_pair()
    if config.layout == "disaggregated" and all(Path(p).exists() for p in (pair.sketch_path, pair.render_path)):
        # An incompatible sketch/render pair is refused here, naming what differs. Where the folders
        # are only on the GPU nodes (a KubeRay head mounts none), each replica refuses it at load.
        check_pair(pair)
    stores = (config.job_store, config.artifacts)
    text = None
    if config.text_encoder_placement == "pool":
        text = text_deployment(**config.text_pool.deployment_options()).bind(config.text_pool.model_for(pair), *stores)
    if config.layout == "colocated":  # one pool holding both models; the orchestrator's sketch call runs it all
        sketch = render = colocated_deployment(**config.colocated_pool.deployment_options()).bind(
            config.colocated_pool.model_for(pair), *stores
        )
        config = colocated_ingress_config(config)
    else:
        for pool in (config.sketch_pool, config.render_pool):  # a degree that cannot run fails here, with why
            check_pool_parallel(pool.parallel, pool.model_for(pair), pool.ray_actor_options)
        sketch = sketch_deployment(**config.sketch_pool.deployment_options()).bind(
            config.sketch_pool.model_for(pair),
            *stores,
            config.text_encoder_placement == "sketch",
            config.sketch_pool.parallel,
        )
        render = render_deployment(**config.render_pool.deployment_options()).bind(
            config.render_pool.model_for(pair), *stores, config.render_pool.parallel
        )
    ingress = Ingress.options(
        num_replicas=config.ingress.num_replicas,
        ray_actor_options=dict(config.ingress.ray_actor_options),
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        graceful_shutdown_timeout_s=config.ingress.graceful_shutdown_timeout_s,
    )
    tls_gateway = GrpcTlsGateway.bind(config.grpc_tls) if config.grpc_tls is not None else None
    return ingress.bind(config, sketch, render, text, tls_gateway)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Serve config files (`import_path: srserve.serving.app:app_builder`)."""
    return build_app(ServingConfig.model_validate(args or {}))
