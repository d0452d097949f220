"""Typed serving configuration (YAML): the model pair, the pools and the ingress."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from srserve.engine.attention import AttentionBackend
from srserve.engine.cache import CachePolicy
from srserve.engine.config import ModelPairConfig
from srserve.engine.parallel import ParallelSpec
from srserve.serving.api.auth import AuthConfig
from srserve.serving.api.tls_gateway import GrpcTlsConfig
from srserve.serving.control.artifacts import ArtifactStoreConfig
from srserve.serving.control.database import JobStoreConfig, resolve_dsn
from srserve.serving.control.load_switch import LoadSwitchConfig
from srserve.serving.control.request_cache import CacheLimits
from srserve.serving.ops.autoscaling import QueueWorkAutoscaling
from srserve.serving.ops.gpu_telemetry import GpuTelemetryConfig


class ReplicaSettings(BaseModel):
    """A pool's Serve `user_config`: settings its replicas apply live (ReplicaOperations.reconfigure)."""

    model_config = ConfigDict(extra="forbid")

    telemetry: GpuTelemetryConfig = GpuTelemetryConfig()


def rank_bundles(actor_options: dict[str, Any], world_size: int) -> list[dict[str, float]]:
    """One placement-group bundle per rank, each what one rank's actor options ask for (Ray's resource names)."""
    bundle: dict[str, float] = {"CPU": float(actor_options.get("num_cpus", 1))}
    if actor_options.get("num_gpus"):
        bundle["GPU"] = float(actor_options["num_gpus"])
    if actor_options.get("accelerator_type"):  # how Ray expresses accelerator_type as a resource demand
        bundle[f"accelerator_type:{actor_options['accelerator_type']}"] = 0.001
    if actor_options.get("memory"):
        bundle["memory"] = float(actor_options["memory"])
    bundle.update({k: float(v) for k, v in (actor_options.get("resources") or {}).items()})
    return [dict(bundle) for _ in range(world_size)]


class PoolConfig(BaseModel):
    """One replica pool (sketch, render or text encoder): its scale and its placement."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(1, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    # Ray actor options: num_gpus / accelerator_type / resources pick the GPU kind for the pool.
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})
    # >1 keeps the next requests queued inside the replica (one runs at a time behind a lock),
    # so the GPU never waits for the router between requests.
    max_ongoing_requests: int = Field(4, ge=1)
    max_queued_requests: int = Field(64, ge=-1)
    # Admission control: jobs waiting for or running in this pool, beyond which new jobs are refused.
    max_backlog: int = Field(32, ge=1)
    # On scale-down or redeploy a replica finishes its ongoing (and locally queued) requests for up
    # to this long; whatever is still running then is re-run elsewhere by the ingress's recovery.
    graceful_shutdown_timeout_s: float = Field(300.0, ge=0)
    # Autoscaling on the pool's queued GPU-seconds (srserve.serving.ops.autoscaling); or Serve's raw
    # autoscaling_config above (e.g. its default request-count policy). At most one of the two.
    queue_autoscaling: QueueWorkAutoscaling | None = None
    attention_backend: AttentionBackend | None = Field(None, description="overrides model.attention_backend here")
    compile: bool | None = Field(
        None, description="overrides model.compile here: regional compile of the transformers' repeated blocks"
    )
    parallel: ParallelSpec = Field(
        ParallelSpec(),
        description="devices per replica (ulysses x ring x cfg; sketch and render pools): each replica reserves "
        "that many bundles of ray_actor_options, STRICT_PACK on one node; docs/parallel.md",
    )
    telemetry: GpuTelemetryConfig = GpuTelemetryConfig()
    cache: CachePolicy = Field(
        CachePolicy(), description="the step cache of this pool's stage (colocated: of both); docs/caching.md"
    )
    cache_limits: CacheLimits = Field(CacheLimits(), description="what a request may choose instead of `cache`")

    @model_validator(mode="after")
    def _scale_one_way(self) -> PoolConfig:
        if self.autoscaling_config is not None and self.queue_autoscaling is not None:
            raise ValueError("set autoscaling_config or queue_autoscaling, not both")
        if self.autoscaling_config is not None or self.queue_autoscaling is not None:
            self.num_replicas = None
        return self

    def replica_floor(self) -> int:
        """Replicas the pool has at least (autoscaled pools: their minimum), for load estimates."""
        if self.num_replicas is not None:
            return self.num_replicas
        if self.queue_autoscaling is not None:
            return max(self.queue_autoscaling.min_replicas, 1)
        return max(int((self.autoscaling_config or {}).get("min_replicas", 1)), 1)

    def model_for(self, pair: ModelPairConfig) -> ModelPairConfig:
        """The model pair as this pool loads it (its attention backend and compile overrides applied)."""
        updates: dict[str, Any] = {}
        if self.attention_backend is not None:
            updates["attention_backend"] = self.attention_backend
        if self.compile is not None:
            updates["compile"] = self.compile
        return pair.model_copy(update=updates) if updates else pair

    def deployment_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "ray_actor_options": dict(self.ray_actor_options),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.queue_autoscaling is not None:
            opts["autoscaling_config"] = self.queue_autoscaling.ray_autoscaling_config()
            opts["graceful_shutdown_timeout_s"] = self.queue_autoscaling.drain_timeout_s
        elif self.autoscaling_config is not None:
            opts["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            opts["num_replicas"] = self.num_replicas
        if self.parallel.enabled:  # rank 0 is the replica (bundle 0), ranks 1.. its actors (serving/pools/ranks.py)
            opts["placement_group_bundles"] = rank_bundles(self.ray_actor_options, self.parallel.world_size)
            opts["placement_group_strategy"] = "STRICT_PACK"
        # Applied live by the replicas' `reconfigure` (srserve.serving.ops.replica_operations).
        opts["user_config"] = ReplicaSettings(telemetry=self.telemetry).model_dump()
        return opts


class IngressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.25})
    max_ongoing_requests: int = Field(256, ge=1)
    default_deadline_s: float | None = Field(None, gt=0, description="per-request deadline unless the client sets one")
    retain_jobs: int = Field(1000, ge=1, description="finished jobs (and their videos) kept for retrieval")
    retain_age_s: float | None = Field(
        7 * 86400.0, gt=0, description="finished jobs older than this are deleted with their videos; None: no limit"
    )
    max_request_bytes: int = Field(1 << 20, ge=1024, description="largest request (HTTP body or gRPC message)")
    max_handoff_bytes: int = Field(1 << 30, ge=1024, description="largest uploaded handoff state")
    max_attempts: int = Field(3, ge=1, description="tries per stage when a replica dies mid-request")
    stall_timeout_s: float = Field(600.0, gt=0, description="a running job with no progress this long fails")
    graceful_shutdown_timeout_s: float = Field(
        900.0, ge=0, description="a replaced ingress keeps driving its running jobs this long before it stops"
    )
    lease_ttl_s: float = Field(
        15.0, gt=0, description="a job whose driver stops heartbeating is taken over after this long"
    )
    claim_interval_s: float = Field(
        1.0, gt=0, description="how often each ingress looks for jobs nobody drives, sweeps and expires"
    )
    load_switch: LoadSwitchConfig = Field(
        LoadSwitchConfig(), description="the `load` switch policy's floor and SLO (docs/caching.md)"
    )


class ServingConfig(BaseModel):
    """Everything `srserve serve` needs; loaded from YAML (see deploy/tiny.yaml)."""

    model_config = ConfigDict(extra="forbid")

    app_name: str = "srserve"
    model: ModelPairConfig | Literal["tiny"] = "tiny"
    text_encoder_placement: Literal["sketch", "pool"] = "sketch"
    # disaggregated: sketch and render pools; colocated: colocated_pool replicas hold both models
    # and run whole requests (the WanPipeline-with-transformer_2 baseline, see serving/pools/colocated.py).
    layout: Literal["disaggregated", "colocated"] = "disaggregated"
    sketch_pool: PoolConfig = PoolConfig()
    render_pool: PoolConfig = PoolConfig()
    text_pool: PoolConfig = PoolConfig()
    colocated_pool: PoolConfig = PoolConfig()
    ingress: IngressConfig = IngressConfig()
    auth: AuthConfig = AuthConfig()
    grpc_tls: GrpcTlsConfig | None = None
    job_store: JobStoreConfig = JobStoreConfig()
    artifacts: ArtifactStoreConfig = ArtifactStoreConfig()

    @model_validator(mode="after")
    def _parallel_on_stage_pools_only(self) -> ServingConfig:
        """Multi-device replicas run the sketch or the render loop SPMD; a text or colocated replica is one device."""
        for name in ("text_pool", "colocated_pool"):
            if getattr(self, name).parallel.enabled:
                raise ValueError(f"{name}.parallel: only sketch_pool and render_pool take a parallel degree")
        for name in ("sketch_pool", "render_pool"):
            pool = getattr(self, name)
            if pool.parallel.context_degree > 1 and "first_block" in (pool.cache.kind, *pool.cache_limits.kinds):
                # Its skip decision would be taken per token slice: the ranks would diverge (docs/parallel.md).
                raise ValueError(f"{name}: a first_block cache cannot run with ulysses/ring; use taylorseer or mag")
        return self

    def resolved(self) -> ServingConfig:
        """The config the replicas get: the embedded server started and its DSN filled in (no DSN is
        ever copied from `dsn_env` into the config), the local artifact folder made absolute."""
        updates: dict[str, Any] = {}
        if not self.job_store.dsn_env and not self.job_store.embedded_dsn:
            dsn = resolve_dsn(self.job_store, self.app_name)
            updates["job_store"] = self.job_store.model_copy(update={"embedded_dsn": dsn})
        if self.artifacts.kind == "local":
            from srserve.engine.config import srserve_home

            path = Path(self.artifacts.path) if self.artifacts.path else srserve_home() / "artifacts"
            updates["artifacts"] = self.artifacts.model_copy(update={"path": str(path.absolute())})
        return self.model_copy(update=updates)

    def model_pair(self, write_tiny: bool = True) -> ModelPairConfig:
        """The pair to load; `tiny` is written on first use unless `write_tiny` is off."""
        if self.model == "tiny":
            return ModelPairConfig.tiny(write=write_tiny, num_threads=1)
        return self.model


APP_IMPORT_PATH = "srserve.serving.app:app_builder"
# Serve's gRPC proxy registers these; named as strings so a config can be written without importing them.
GRPC_SERVICER_FUNCTIONS = [
    "srserve.serving.api.grpc_servicers.add_VideoGenerationServicer_to_server",
    "srserve.serving.api.grpc_servicers.add_HealthServicer_to_server",
]


class DeployFile(BaseModel):
    """A Ray Serve config file whose application runs srserve: the same file works with
    `serve run FILE` and `srserve serve FILE`."""

    model_config = ConfigDict(extra="allow")

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 9000
    route_prefix: str = "/"
    # Serve's logging_config (the application's, else the file's): e.g. {encoding: JSON}.
    logging_config: dict[str, Any] | None = None
    serving: ServingConfig

    @classmethod
    def from_yaml(cls, path: str | Path) -> DeployFile:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if "applications" not in data:  # a bare srserve config
            return cls(serving=ServingConfig.model_validate(data))
        apps = [a for a in data["applications"] if a.get("import_path") == APP_IMPORT_PATH]
        if len(apps) != 1:
            raise ValueError(f"{path}: expected exactly one application with import_path {APP_IMPORT_PATH}")
        app = apps[0]
        serving = ServingConfig.model_validate({"app_name": app.get("name", "srserve"), **(app.get("args") or {})})
        http = data.get("http_options") or {}
        grpc = data.get("grpc_options") or {}
        return cls(
            http_host=http.get("host", "127.0.0.1"),
            http_port=http.get("port", 8000),
            grpc_port=grpc.get("port", 9000),
            route_prefix=app.get("route_prefix", "/"),
            logging_config=app.get("logging_config") or data.get("logging_config"),
            serving=serving,
        )
