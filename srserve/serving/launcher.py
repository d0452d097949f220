"""Start (and stop) srserve on a Ray cluster: the shared path of `srserve serve`, the demo and tests."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import ray
from ray import serve

from srserve.serving.app import build_app
from srserve.serving.config import GRPC_SERVICER_FUNCTIONS, DeployFile, ServingConfig

logger = logging.getLogger("srserve")


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    metrics_export_port: int | None = None,
) -> None:
    """Connect to `address`, or start a local cluster (fake GPUs allowed on CPU-only machines) that
    exports Prometheus metrics on `metrics_export_port` when given (docs/operations.md)."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace="srserve", log_to_driver=False)
    else:
        extra = {} if metrics_export_port is None else {"_metrics_export_port": metrics_export_port}
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            namespace="srserve",
            log_to_driver=False,
            include_dashboard=False,
            **extra,
        )


def wait_for_free_ports(host: str, ports: list[int], timeout_s: float = 60.0) -> None:
    """Wait until nothing listens on `ports`. Serve's proxies bind with SO_REUSEPORT, so a proxy left
    by a killed earlier run would silently share the port (and answer 404s); refuse to start beside one."""
    deadline = time.monotonic() + timeout_s
    busy = ports
    while True:
        busy = [port for port in ports if not _port_free(host, port)]
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"port(s) {', '.join(map(str, busy))} on {host} are in use: another server (perhaps what is left "
                "of an earlier srserve run) listens there; stop it or pick other ports"
            )
        logger.info("waiting for port(s) %s to be free", busy)
        time.sleep(0.5)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle; a listener is
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def deploy(spec: DeployFile, timeout_s: float = 300.0) -> None:
    """Start Serve's proxies on the spec's ports and run the application; blocks until healthy."""
    serve.start(
        http_options={"host": spec.http_host, "port": spec.http_port},
        grpc_options={"port": spec.grpc_port, "grpc_servicer_functions": GRPC_SERVICER_FUNCTIONS},
    )
    serve.run(
        build_app(spec.serving),
        name=spec.serving.app_name,
        route_prefix=spec.route_prefix,
        logging_config=spec.logging_config,
        blocking=False,
        _local_testing_mode=False,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(spec.serving.app_name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"srserve failed to deploy: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"srserve did not become healthy within {timeout_s:.0f}s")


def drain_and_shutdown(config: ServingConfig, timeout_s: float = 60.0) -> int:
    """Wait for live jobs to finish (up to `timeout_s`), then shut Serve down. Returns jobs left:
    they stay in the store and resume when srserve next starts on it."""
    try:
        left = asyncio.run(_drain(config, timeout_s))
    except Exception as exc:  # the store may already be gone
        logger.warning("drain skipped: %s", exc)
        left = 0
    serve.shutdown()
    return left


async def _drain(config: ServingConfig, timeout_s: float) -> int:
    """Live jobs left after waiting up to `timeout_s` for them to end (one store connection throughout)."""
    from srserve.serving.control.database import open_store
    from srserve.serving.control.jobs import TERMINAL

    store = open_store(config.resolved().job_store)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            counts = await store.counts()
            left = sum(v for k, v in counts.items() if k not in TERMINAL)
            if not left or time.monotonic() >= deadline:
                return left
            logger.info("draining: %d job(s) still running", left)
            await asyncio.sleep(0.5)
    finally:
        await store.close()


def embedded_database(config: ServingConfig):
    """The embedded PostgreSQL server the config uses, or None when it names a DSN."""
    from srserve.engine.config import srserve_home
    from srserve.serving.control.database import EmbeddedPostgres

    if config.job_store.dsn_env:
        return None
    return EmbeddedPostgres(srserve_home() / "postgres", config.job_store.embedded_port)
