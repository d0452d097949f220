"""Shared fixtures: one tiny model pair and one engine per test session, the embedded job store."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Every test session gets its own SRSERVE_HOME (embedded PostgreSQL data, artifacts, tiny models),
# set before any Ray cluster starts so its workers inherit it; removed when the session ends.
TEST_HOME = Path(tempfile.mkdtemp(prefix="srserve-tests-"))
os.environ["SRSERVE_HOME"] = str(TEST_HOME)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Stop the embedded PostgreSQL server any test started, and remove the session's home."""
    from srserve.serving.control.store.database import EmbeddedPostgres

    EmbeddedPostgres(TEST_HOME / "postgres").stop(mode="immediate")
    shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_db():
    """The session's embedded PostgreSQL server (started on first use)."""
    from srserve.serving.control.store.database import EmbeddedPostgres

    server = EmbeddedPostgres(TEST_HOME / "postgres")
    server.ensure_running()
    return server


@pytest.fixture
def store_dsn(embedded_db) -> str:
    """A fresh, empty database on the embedded server for one test."""
    return embedded_db.ensure_running(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from srserve.engine.tiny import write_tiny_wan_pair

    root = tmp_path_factory.mktemp("tiny-wan")
    write_tiny_wan_pair(root)
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny_root: Path):
    from srserve.engine import ModelPairConfig

    return ModelPairConfig.tiny(tiny_root)


@pytest.fixture(scope="session")
def engine(tiny_config):
    from srserve.engine import SRDiffusionEngine

    torch.set_num_threads(1)
    return SRDiffusionEngine(tiny_config)


@pytest.fixture(scope="session")
def wan_pipe(tiny_config, engine):
    """diffusers' own WanPipeline over the same folders: the parity reference."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_config.sketch_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """A running srserve on the session's Ray cluster."""

    def __init__(self, spec) -> None:
        self.spec = spec
        self.app_name = spec.serving.app_name
        self.http = f"http://127.0.0.1:{spec.http_port}"
        self.grpc = f"127.0.0.1:{spec.grpc_port}"


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """The session cluster's Prometheus export port: GET http://127.0.0.1:PORT/metrics."""
    return _free_port()


@pytest.fixture(scope="session")
def ray_cluster(metrics_port):
    """One local Ray cluster per test session, with two fake GPUs (CPU-only machine)."""
    import ray

    ray.init(
        num_cpus=8,
        num_gpus=2,
        namespace="srserve-tests",
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serving(ray_cluster, tiny_config) -> Deployment:
    """srserve on fake GPUs: sketch pool 1 replica on a whole GPU, render pool 2 replicas sharing the other."""
    from srserve.serving.config import DeployFile, PoolConfig, ServingConfig
    from srserve.serving.launcher import deploy

    model = tiny_config.model_copy(update={"num_threads": 1})
    serving_config = ServingConfig(
        model=model,
        sketch_pool=PoolConfig(num_replicas=1, max_backlog=4, ray_actor_options={"num_cpus": 0.5, "num_gpus": 1}),
        render_pool=PoolConfig(num_replicas=2, max_backlog=8, ray_actor_options={"num_cpus": 0.5, "num_gpus": 0.5}),
    )
    spec = DeployFile(http_port=_free_port(), grpc_port=_free_port(), serving=serving_config)
    deploy(spec)
    return Deployment(spec)
