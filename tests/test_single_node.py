"""The single-node defaults (embedded PostgreSQL, a local artifact folder) refused on a multi-node cluster,
naming the field and what to set instead; one machine keeps them with no configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from srserve.serving.config import ConfigError, ServingConfig
from srserve.serving.config.single_node import check_cluster, check_replica_node, single_node_problems
from srserve.serving.control.artifacts import ArtifactStoreConfig
from srserve.serving.control.store.database import JobStoreConfig

EMBEDDED = JobStoreConfig()
EXTERNAL = JobStoreConfig(dsn_env="SRSERVE_DATABASE_URL")
LOCAL = ArtifactStoreConfig()
SHARED = ArtifactStoreConfig(path="/mnt/shared/srserve", shared=True)
S3 = ArtifactStoreConfig(kind="s3", bucket="videos", endpoint_url="https://s3.example.com")


def test_one_node_keeps_the_zero_configuration_defaults() -> None:
    check_cluster(EMBEDDED, LOCAL, nodes=1)


@pytest.mark.parametrize(
    ("job_store", "artifacts", "named"),
    [
        (EMBEDDED, LOCAL, ["job_store.dsn_env", "artifacts.shared: true", "artifacts.kind: s3"]),
        (EMBEDDED, S3, ["job_store.dsn_env"]),
        (EXTERNAL, LOCAL, ["artifacts.shared: true", "$SRSERVE_HOME/artifacts"]),
    ],
)
def test_a_cluster_refuses_each_single_node_default_naming_what_to_set(job_store, artifacts, named) -> None:
    with pytest.raises(ConfigError) as err:
        check_cluster(job_store, artifacts, nodes=3)
    message = str(err.value)
    assert message.startswith("this Ray cluster has 3 nodes: ")
    for text in named:
        assert text in message
    if job_store is EXTERNAL:
        assert "job_store" not in message
    if artifacts is S3:
        assert "artifacts" not in message


@pytest.mark.parametrize("artifacts", [SHARED, S3])
def test_a_shared_store_and_a_dsn_run_on_any_number_of_nodes(artifacts) -> None:
    assert single_node_problems(EXTERNAL, artifacts) == []
    check_cluster(EXTERNAL, artifacts, nodes=16)


def test_shared_applies_to_a_local_folder_only() -> None:
    with pytest.raises(ValidationError, match="path and shared only apply to kind 'local'"):
        ArtifactStoreConfig(kind="s3", bucket="videos", shared=True)


def test_a_replica_on_another_node_than_the_defaults_home_refuses_to_start() -> None:
    """The config records the node it was resolved on; an autoscaled node's replica refuses, naming both."""
    config = ServingConfig(
        job_store=JobStoreConfig(embedded_dsn="postgresql://postgres@127.0.0.1:5432/srserve")
    ).resolved(node_id="node-a")
    assert config.job_store.home_node == "node-a" and config.artifacts.home_node == "node-a"
    check_replica_node(config.job_store, config.artifacts, "node-a")
    with pytest.raises(ConfigError) as err:
        check_replica_node(config.job_store, config.artifacts, "node-b")
    message = str(err.value)
    assert "runs on node node-b, not on node node-a" in message and "job_store.dsn_env" in message


def test_shared_settings_have_no_home_node() -> None:
    config = ServingConfig(job_store=EXTERNAL, artifacts=SHARED).resolved(node_id="node-a")
    assert config.job_store.home_node is None and config.artifacts.home_node is None
    check_replica_node(config.job_store, config.artifacts, "node-b")
