"""Typed serving configuration (YAML): the model pair, the pools and the ingress."""

from srserve.serving.config.serving import (
    APP_IMPORT_PATH,
    GRPC_SERVICER_FUNCTIONS,
    DeployFile,
    IngressConfig,
    PoolConfig,
    ReplicaSettings,
    ServingConfig,
    rank_bundles,
)

__all__ = [
    "APP_IMPORT_PATH",
    "GRPC_SERVICER_FUNCTIONS",
    "DeployFile",
    "IngressConfig",
    "PoolConfig",
    "ReplicaSettings",
    "ServingConfig",
    "rank_bundles",
]
