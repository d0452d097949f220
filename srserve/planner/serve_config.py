"""Emit a Ray Serve config file (the format of deploy/tiny.yaml) for a planned cluster layout."""

from __future__ import annotations

from typing import Any

import yaml

from srserve.engine.parallel.config import ParallelSpec
from srserve.planner.profile import Profile
from srserve.planner.simulator import ClusterLayout, PoolSpec
from srserve.serving.config import APP_IMPORT_PATH, GRPC_SERVICER_FUNCTIONS


def _pool(spec: PoolSpec, profile: Profile, backlog: int) -> dict[str, Any]:
    kind = profile.kinds[spec.kind]
    if kind.accelerator_type:
        actor = {"num_cpus": 1, "num_gpus": 1, "accelerator_type": kind.accelerator_type}
    else:
        actor = {"num_cpus": 1}
    out: dict[str, Any] = {
        "num_replicas": spec.replicas,
        "max_ongoing_requests": spec.max_ongoing,
        "max_backlog": backlog,
        "ray_actor_options": actor,  # per rank, for a multi-device replica
    }
    degree = ParallelSpec.parse(spec.parallel)
    if degree.enabled:
        out["parallel"] = degree.model_dump(include={"ulysses", "ring", "cfg"})
    return out


def serve_config(
    cluster: ClusterLayout,
    profile: Profile,
    model: str | dict[str, Any] = "tiny",
    app_name: str = "srserve",
    http_port: int = 8000,
    grpc_port: int = 9000,
    backlog_per_replica: int = 16,
) -> dict[str, Any]:
    args: dict[str, Any] = {"model": model, "layout": cluster.layout, "text_encoder_placement": "sketch"}
    for name, spec in cluster.pools().items():
        args[f"{name}_pool"] = _pool(spec, profile, backlog_per_replica * spec.replicas)
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "0.0.0.0" if profile.host_cores is None else "127.0.0.1", "port": http_port},
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": list(GRPC_SERVICER_FUNCTIONS)},
        "applications": [{"name": app_name, "route_prefix": "/", "import_path": APP_IMPORT_PATH, "args": args}],
    }


def serve_config_yaml(cluster: ClusterLayout, profile: Profile, header: str = "", **kwargs: Any) -> str:
    body = yaml.safe_dump(serve_config(cluster, profile, **kwargs), sort_keys=False)
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + body
