"""The srserve application's config: the model pair, its pools, the ingress, auth or tenants, the job store,
artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from srserve.engine.config import TINY_ALIASES, TINY_PAIRS, ModelPairConfig, srserve_home
from srserve.engine.request import MAX_FRAMES, MAX_REFERENCE_IMAGES
from srserve.serving.config.auth import AuthConfig
from srserve.serving.config.grpc_tls import GrpcTlsConfig
from srserve.serving.config.layout import PoolLayout
from srserve.serving.config.pools import PoolConfig
from srserve.serving.config.tenants import TenantConfig, TenantName, TenantTokens, resolve_tokens
from srserve.serving.control.artifacts import ArtifactStoreConfig
from srserve.serving.control.edit_uploads import EditLimits
from srserve.serving.control.pricing.load_switch import LoadSwitchConfig
from srserve.serving.control.pricing.request_limits import RequestLimits, default_problems
from srserve.serving.control.store.database import JobStoreConfig, resolve_dsn

TinyPairName = Literal[tuple([*TINY_ALIASES, *TINY_PAIRS])]  # type: ignore[valid-type]
# How the ingress picks the replica for a stage whose models switch the job's LoRA adapter per job.
AdapterRouting = Literal["multiplexed", "none"]


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
    max_image_bytes: int = Field(
        16 << 20, ge=1024, description="largest input image (image-to-video), on top of max_request_bytes"
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=64 * 64, description="most pixels in an input image, read from its header before decoding"
    )
    max_video_bytes: int = Field(
        64 << 20,
        ge=1024,
        description="largest input video or mask (video editing), each on top of max_request_bytes; an 81-frame "
        "1280x720 H.264 mp4 is typically 5-30 MiB",
    )
    max_video_frames: int = Field(
        MAX_FRAMES,
        ge=1,
        le=MAX_FRAMES,
        description="most frames in an input video or mask; decoding stops one frame past it (the engine's limit "
        f"is {MAX_FRAMES})",
    )
    max_video_pixels: int = Field(
        1280 * 720,
        ge=16 * 16,
        description="most pixels in a frame of an input video or mask, read from the stream's metadata before "
        "decoding (1280x720 by default: Wan2.1 VACE's largest size)",
    )
    max_reference_images: int = Field(
        MAX_REFERENCE_IMAGES,
        ge=0,
        le=MAX_REFERENCE_IMAGES,
        description="most reference images of a video-editing request (0: none accepted); each within "
        f"max_image_bytes and max_image_pixels (the engine's limit is {MAX_REFERENCE_IMAGES})",
    )
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
    limits: RequestLimits = Field(
        RequestLimits(), description="what one request may ask for: sizes, frames, steps, guidance, GPU-seconds"
    )
    adapter_routing: AdapterRouting = Field(
        "multiplexed",
        description="a stage with a per-job LoRA adapter: `multiplexed` routes by the adapter (Serve's model "
        "multiplexing prefers a replica that holds it); `none` balances load ignoring it, and the replica loads "
        "the adapter when it lacks it. `none` exists as the baseline benchmarks/adapter_routing_burst.py "
        "measures multiplexing against, and for operators who prefer plain load balancing (few adapters, "
        "cheap loads)",
    )

    def edit_limits(self) -> EditLimits:
        """The limits a video-editing request's inputs are decoded within (srserve.serving.control.edit_uploads)."""
        return EditLimits(
            max_video_bytes=self.max_video_bytes,
            max_video_frames=self.max_video_frames,
            max_video_pixels=self.max_video_pixels,
            max_image_bytes=self.max_image_bytes,
            max_image_pixels=self.max_image_pixels,
            max_reference_images=self.max_reference_images,
        )

    def edit_upload_bytes(self) -> int:
        """The most bytes a video-editing request's files may add to a request: its video and mask, its
        reference images and its input_reference."""
        return 2 * self.max_video_bytes + (self.max_reference_images + 1) * self.max_image_bytes


class ServingConfig(BaseModel):
    """Everything `srserve serve` needs; loaded from YAML (see deploy/tiny.yaml)."""

    model_config = ConfigDict(extra="forbid")

    app_name: str = "srserve"
    # A model pair, or an embedded tiny one by name (`tiny` is tiny-wan2.1), written at deploy.
    model: ModelPairConfig | TinyPairName = "tiny"
    text_encoder_placement: Literal["sketch", "pool"] = "sketch"
    # disaggregated: sketch and render pools; colocated: colocated_pool replicas hold both models
    # and run whole requests (the WanPipeline-with-transformer_2 baseline). pool_layout() says what each means.
    layout: Literal["disaggregated", "colocated"] = "disaggregated"
    sketch_pool: PoolConfig = PoolConfig()
    render_pool: PoolConfig = PoolConfig()
    text_pool: PoolConfig = PoolConfig()
    colocated_pool: PoolConfig = PoolConfig()
    ingress: IngressConfig = IngressConfig()
    auth: AuthConfig = AuthConfig()
    # Tenants by name (srserve.serving.config.tenants); `auth` is the one-tenant case, not set with them.
    tenants: dict[TenantName, TenantConfig] = Field(default_factory=dict)
    grpc_tls: GrpcTlsConfig | None = None
    job_store: JobStoreConfig = JobStoreConfig()
    artifacts: ArtifactStoreConfig = ArtifactStoreConfig()

    @model_validator(mode="after")
    def _auth_or_tenants(self) -> ServingConfig:
        if self.tenants and self.auth.configured:
            raise ValueError(
                "auth and tenants: set one, not both (`auth` is one token for one tenant; with `tenants`, give "
                "that token its own tenant)"
            )
        return self

    def tenant_tokens(self) -> TenantTokens:
        """Who each bearer token names, read from this process's environment (the ingress replica's)."""
        return resolve_tokens(self.auth, self.tenants)

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
        if isinstance(self.model, ModelPairConfig):
            switched = sorted(name for name, adapter in self.model.adapters.items() if not adapter.fuse)
            for name, pool in self.pool_layout().pools.items():
                if name != "text" and pool.compile and switched:  # the pair's own check, for a pool's override
                    raise ValueError(
                        f"{name}_pool.compile: adapters {', '.join(switched)} are switched per job, which changes "
                        "the compiled blocks' modules; fuse them (fuse: true) or leave compile off"
                    )
        return self

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ServingConfig:
        """A request that sets nothing gets the pair's defaults: they must be what a request may ask for."""
        limits = self.ingress.limits
        if limits != RequestLimits():
            problems = default_problems(limits, self.model_pair(write_tiny=False).defaults)
            if problems:
                raise ValueError(f"ingress.limits: {'; '.join(problems)}")
        return self

    def pool_layout(self) -> PoolLayout:
        """The pools this config deploys and where each stage goes (srserve.serving.config.layout)."""
        text = self.text_pool if self.text_encoder_placement == "pool" else None
        if self.layout == "colocated":
            return PoolLayout.colocated(self.colocated_pool, text)
        return PoolLayout.disaggregated(self.sketch_pool, self.render_pool, text)

    def resolved(self, node_id: str | None = None) -> ServingConfig:
        """The config the replicas get: the embedded server started and its DSN filled in (no DSN is
        ever copied from `dsn_env` into the config), the local artifact folder made absolute, and, given
        the Ray node this runs on (`node_id`), that node recorded as the home of each single-node default
        (srserve.serving.config.single_node: replicas elsewhere refuse to start)."""
        updates: dict[str, Any] = {}
        if not self.job_store.dsn_env:
            store: dict[str, Any] = {"home_node": node_id}
            if not self.job_store.embedded_dsn:
                store["embedded_dsn"] = resolve_dsn(self.job_store, self.app_name)
            updates["job_store"] = self.job_store.model_copy(update=store)
        if self.artifacts.kind == "local":
            path = Path(self.artifacts.path) if self.artifacts.path else srserve_home() / "artifacts"
            home = None if self.artifacts.shared else node_id
            updates["artifacts"] = self.artifacts.model_copy(update={"path": str(path.absolute()), "home_node": home})
        return self.model_copy(update=updates)

    @property
    def tiny(self) -> bool:
        """Whether the model is an embedded tiny pair (named, written at deploy: right by construction)."""
        return isinstance(self.model, str)

    def model_pair(self, write_tiny: bool = True) -> ModelPairConfig:
        """The pair to load; a tiny one is written on first use unless `write_tiny` is off."""
        if isinstance(self.model, str):
            return ModelPairConfig.tiny_pair(self.model, write=write_tiny, num_threads=1)
        return self.model
