"""The zero-configuration defaults that work on one machine only, and their refusal on a Ray cluster.

With no `job_store` and no `artifacts` set, srserve runs an embedded PostgreSQL that listens on
127.0.0.1 and keeps artifacts in a local folder: right for one machine, silently wrong on several
(a replica on another node cannot reach the database or read a handoff written on the first). So a
deployment on a cluster of more than one node is refused when it uses either, naming the field and
what to set instead, and every replica checks that it runs on the node those defaults live on (an
autoscaling cluster that starts with one node and grows gets the same refusal from the new node's
replicas, at their start, instead of failed jobs).
"""

from __future__ import annotations

from srserve.serving.config.errors import ConfigError
from srserve.serving.control.artifacts import ArtifactStoreConfig
from srserve.serving.control.store.database import JobStoreConfig

DOCS = "docs/operations.md, 'On a multi-node cluster'"


def single_node_problems(job_store: JobStoreConfig, artifacts: ArtifactStoreConfig) -> list[str]:
    """What of these settings only one node can use, each naming its field and what to set instead."""
    problems = []
    if not job_store.dsn_env:
        problems.append(
            "job_store: the embedded PostgreSQL listens on 127.0.0.1 of one node; set job_store.dsn_env to "
            "an environment variable holding the DSN of a PostgreSQL server every node reaches"
        )
    if artifacts.kind == "local" and not artifacts.shared:
        problems.append(
            f"artifacts: the local folder {artifacts.path or '$SRSERVE_HOME/artifacts'} is one node's; set "
            "artifacts.kind: s3 (bucket, endpoint_url) or, for a folder every node mounts at that path (NFS, "
            "a shared volume), artifacts.shared: true"
        )
    return problems


def check_cluster(job_store: JobStoreConfig, artifacts: ArtifactStoreConfig, nodes: int) -> None:
    """ConfigError naming each single-node setting when the Ray cluster has more than one node."""
    problems = single_node_problems(job_store, artifacts)
    if nodes > 1 and problems:
        raise ConfigError(f"this Ray cluster has {nodes} nodes: " + "; ".join(problems) + f" ({DOCS})")


def check_replica_node(job_store: JobStoreConfig, artifacts: ArtifactStoreConfig, node_id: str) -> None:
    """ConfigError when a replica starts on another node than the one its single-node settings live on
    (`home_node`, recorded when the application was built)."""
    for config in (job_store, artifacts):
        home = config.home_node
        if home is not None and home != node_id:
            problems = single_node_problems(job_store, artifacts)
            raise ConfigError(
                f"this replica runs on node {node_id}, not on node {home} where this deployment's single-node "
                "settings live: " + "; ".join(problems) + f" ({DOCS})"
            )
