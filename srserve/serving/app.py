"""Builds the srserve Ray Serve application from a ServingConfig.

Deployments: Ingress (HTTP + gRPC) -> SketchWorker pool -> RenderWorker pool, a JobBoard, and
an optional TextEncoderWorker pool. Each pool takes its own replicas/autoscaling and actor
options (GPUs, accelerator type, custom resources) from the config.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve import Application

from srserve.serving.api.grpc import GrpcApi
from srserve.serving.api.http import app as http_app
from srserve.serving.api.tls_gateway import GrpcTlsGateway
from srserve.serving.config import ServingConfig
from srserve.serving.ingress import IngressCore
from srserve.serving.job_board import JobBoard
from srserve.serving.ops.job_logging import install_job_log_filter
from srserve.serving.ops.metrics import export_backlog_gauges
from srserve.serving.pools.colocated import colocated_deployment, colocated_ingress_config
from srserve.serving.pools.workers import render_deployment, sketch_deployment, text_deployment

logger = logging.getLogger("ray.serve")

GRPC_SERVICER_FUNCTIONS = [
    "srserve.serving.proto.video_pb2_grpc.add_VideoGenerationServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]


@serve.deployment(name="Ingress")
@serve.ingress(http_app)
class Ingress(GrpcApi, IngressCore):
    """HTTP (/v1/videos) and gRPC (srserve.v1) entry point; drives jobs through the pools."""

    def __init__(self, config: ServingConfig, board, sketch, render, text=None, tls_gateway=None) -> None:
        pair = config.model_pair(write_tiny=False)
        IngressCore.__init__(self, config, pair.defaults, pair.name, pair.family, board, sketch, render, text)
        install_job_log_filter()
        self._backlog_gauges = asyncio.get_event_loop().create_task(export_backlog_gauges(self))

    async def __del__(self) -> None:
        """Serve calls this when replacing or removing the replica: finish the jobs in flight first."""
        left = await self.drain(self.config.ingress.graceful_shutdown_timeout_s)
        if left:
            logger.warning("ingress stopped with %d job(s) still running", left)


def build_app(config: ServingConfig) -> Application:
    pair = config.model_pair()
    board = JobBoard.bind(config.ingress.retain_jobs, config.ingress.stall_timeout_s)
    text = None
    if config.text_encoder_placement == "pool":
        text = text_deployment(**config.text_pool.deployment_options()).bind(config.text_pool.model_for(pair), board)
    if config.layout == "colocated":  # one pool holding both models; the ingress's sketch call runs it all
        sketch = render = colocated_deployment(**config.colocated_pool.deployment_options()).bind(
            config.colocated_pool.model_for(pair), board
        )
        config = colocated_ingress_config(config)
    else:
        sketch = sketch_deployment(**config.sketch_pool.deployment_options()).bind(
            config.sketch_pool.model_for(pair), board, config.text_encoder_placement == "sketch"
        )
        render = render_deployment(**config.render_pool.deployment_options()).bind(
            config.render_pool.model_for(pair), board
        )
    ingress = Ingress.options(
        num_replicas=config.ingress.num_replicas,
        ray_actor_options=dict(config.ingress.ray_actor_options),
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        graceful_shutdown_timeout_s=config.ingress.graceful_shutdown_timeout_s,
    )
    tls_gateway = GrpcTlsGateway.bind(config.grpc_tls) if config.grpc_tls is not None else None
    return ingress.bind(config, board, sketch, render, text, tls_gateway)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Serve config files (`import_path: srserve.serving.app:app_builder`)."""
    return build_app(ServingConfig.model_validate(args or {}))
