"""Typed serving configuration (YAML): the model pair, the pools, the ingress and every runtime part's settings.

This package imports no runtime module: the parts that run (the APIs, the TLS gateway, GPU telemetry,
the autoscaling policy) import their settings from here.
"""

from srserve.serving.config.auth import AuthConfig, BearerAuth
from srserve.serving.config.autoscaling import POLICY_IMPORT_PATH, QueueWorkAutoscaling
from srserve.serving.config.deploy_file import APP_IMPORT_PATH, GRPC_SERVICER_FUNCTIONS, DeployFile
from srserve.serving.config.errors import ConfigError, StartupError
from srserve.serving.config.grpc_tls import GrpcTlsConfig
from srserve.serving.config.layout import PoolLayout, StageRoute
from srserve.serving.config.pools import PoolConfig, ReplicaSettings, rank_bundles
from srserve.serving.config.serving import AdapterRouting, IngressConfig, ServingConfig
from srserve.serving.config.telemetry import GpuTelemetryConfig

__all__ = [
    "APP_IMPORT_PATH",
    "GRPC_SERVICER_FUNCTIONS",
    "POLICY_IMPORT_PATH",
    "AdapterRouting",
    "AuthConfig",
    "BearerAuth",
    "ConfigError",
    "DeployFile",
    "GpuTelemetryConfig",
    "GrpcTlsConfig",
    "IngressConfig",
    "PoolConfig",
    "PoolLayout",
    "QueueWorkAutoscaling",
    "ReplicaSettings",
    "ServingConfig",
    "StageRoute",
    "StartupError",
    "rank_bundles",
]
