"""Start (and stop) srserve on a Ray cluster: the shared path of `srserve serve`, the demo, bench and tests.

`prepare` checks, before Ray starts, everything that would otherwise fail after it (the file, the
ports or the Ray address, the job store's DSN and server, the model folders) and raises a
StartupError whose one-line message names the file, field or variable at fault.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import ray

from srserve.engine.config import srserve_home
from srserve.serving.config import (
    GRPC_SERVICER_FUNCTIONS,
    ConfigError,
    DeployFile,
    ServingConfig,
    StartupError,
)
from srserve.serving.control.errors import StoreUnavailable
from srserve.serving.control.store.database import (
    DatabaseUnconfigured,
    EmbeddedPostgres,
    EmbeddedPostgresFailed,
    check_reachable,
    migrate_store,
    resolve_dsn,
)

logger = logging.getLogger("srserve")


@dataclass
class Startup:
    """A deploy file that passed every check before Ray starts, its job store ready."""

    spec: DeployFile  # resolved: the embedded server's DSN filled in, the artifact folder absolute
    started_database: EmbeddedPostgres | None = None  # the embedded server this start launched

    def stop_database(self) -> None:
        """Stop the embedded server if this start launched it (one already running is left alone)."""
        if self.started_database is not None:
            self.started_database.stop()


def prepare(path: str | Path, address: str | None = None, port_wait_s: float = 60.0) -> Startup:
    """Read `path` and check it for a start on the Ray cluster at `address` (None: a local one).

    In order: the file; the job store's DSN variable; the Ray address, or for a local cluster the
    HTTP and gRPC ports; the model folders (a local cluster must see them; a remote one is checked
    where its head sees them, else by each replica at load); the job store (the embedded server
    started, the server reached within the store's timeout, the schema migrated).
    """
    spec = DeployFile.from_yaml(path)
    serving = spec.serving
    if serving.job_store.dsn_env:
        try:
            resolve_dsn(serving.job_store)
        except DatabaseUnconfigured as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if address:
        check_ray_address(address)
    else:
        _check_ports(spec, path, port_wait_s)
    check_model(serving, path, local=not address)
    database = embedded_database(serving)
    started = database if database is not None and not database.running() else None
    try:
        resolved = serving.resolved()
        check_reachable(resolved.job_store)
        migrate_store(resolved.job_store)
    except DatabaseUnconfigured as exc:
        raise ConfigError(f"{path}: job_store.dsn_env: {exc}") from None
    except StoreUnavailable as exc:
        var = serving.job_store.dsn_env
        fix = f"start it, or point ${var} at a running server" if var else f"see {database.root / 'postgres.log'}"
        raise StartupError(f"{path}: {exc}; {fix}") from None
    except EmbeddedPostgresFailed as exc:
        raise StartupError(f"{path}: job_store: {exc}") from None
    return Startup(spec.model_copy(update={"serving": resolved}), started)


def check_model(serving: ServingConfig, path: str | Path, local: bool = True) -> None:
    """The pair's folders fit together, its LoRA adapter files fit their models, and each parallel pool's
    degree can run on them."""
    if not serving.tiny:  # a tiny pair is written at deploy, right by construction
        pair = serving.model
        if local or all(Path(p).exists() for p in (pair.sketch_path, pair.render_path)):
            from srserve.engine.families import IncompatiblePairError, check_pair

            try:
                check_pair(pair)
            except IncompatiblePairError as exc:
                raise ConfigError(f"{path}: model: {exc}") from None
            if pair.adapters:  # each LoRA file against its model, from the headers (no weights)
                from srserve.engine.adapters.loading import AdapterMisfitError, check_adapters

                try:
                    check_adapters(pair)
                except AdapterMisfitError as exc:
                    raise ConfigError(f"{path}: model.adapters: {exc}") from None
    for name, pool in serving.pool_layout().pools.items():
        if pool.parallel.enabled:
            from srserve.engine.parallel import ParallelUnsupported
            from srserve.serving.pools.ranks import check_pool_parallel

            model = pool.model_for(serving.model_pair(write_tiny=False))
            try:
                check_pool_parallel(pool.parallel, model, pool.ray_actor_options)
            except ParallelUnsupported as exc:
                raise ConfigError(f"{path}: {name}_pool.parallel: {exc}") from None


def check_ray_address(address: str) -> None:
    """Something listens at a `host:port` or `ray://host:port` address (ray.init would retry for a minute)."""
    if address in ("auto", "local"):
        return
    try:
        target = urlsplit(address if "://" in address else f"//{address}")
        host, port = target.hostname, target.port
    except ValueError:
        return  # not host:port: ray.init judges it
    if host is None or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as exc:
        raise StartupError(
            f"Ray address {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); start the cluster "
            "there (ray start --head) or give the address of a running one"
        ) from None


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
        try:
            ray.init(address=address, namespace="srserve", log_to_driver=False)
        except ConnectionError as exc:
            reason = " ".join(str(exc).split())
            raise StartupError(f"Ray address {address}: {reason}; give the address of a running cluster") from None
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


def wait_for_free_ports(addresses: list[tuple[str, int]], timeout_s: float = 60.0) -> list[tuple[str, int]]:
    """Wait until nothing listens on the (host, port) pairs; returns those still taken after `timeout_s`.
    Serve's proxies bind with SO_REUSEPORT, so a proxy left by a killed earlier run would silently share
    the port (and answer 404s): srserve refuses to start beside one, after giving it time to go."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = [(host, port) for host, port in addresses if not _port_free(host, port)]
        if not busy or time.monotonic() >= deadline:
            return busy
        logger.info("waiting for port(s) %s to be free", [port for _, port in busy])
        time.sleep(0.5)


def _check_ports(spec: DeployFile, path: str | Path, wait_s: float) -> None:
    fields = {spec.http_port: "http_options.port", spec.grpc_port: "grpc_options.port"}
    busy = wait_for_free_ports([(spec.http_host, spec.http_port), ("0.0.0.0", spec.grpc_port)], wait_s)
    if busy:
        host, port = busy[0]
        raise StartupError(
            f"{path}: {fields[port]} {port} is in use on {host}: another server (perhaps what is left of an "
            "earlier srserve run) listens there; stop it or pick another port"
        )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle; a listener is
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def deploy(spec: DeployFile, timeout_s: float = 300.0) -> None:
    """Start Serve's proxies on the spec's ports and run the application; blocks until healthy.
    What `prepare` checks fails here too (as StartupError) for callers that did not call it."""
    from ray import serve

    from srserve.engine.families import IncompatiblePairError
    from srserve.engine.parallel import ParallelUnsupported
    from srserve.serving.app import build_app

    try:
        app = build_app(spec.serving)
    except (
        DatabaseUnconfigured,
        StoreUnavailable,
        EmbeddedPostgresFailed,
        IncompatiblePairError,
        ParallelUnsupported,
    ) as exc:
        raise StartupError(f"srserve cannot start: {' '.join(str(exc).split())}") from exc
    serve.start(
        http_options={"host": spec.http_host, "port": spec.http_port},
        grpc_options={"port": spec.grpc_port, "grpc_servicer_functions": GRPC_SERVICER_FUNCTIONS},
    )
    serve.run(
        app,
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
    from ray import serve

    try:
        left = asyncio.run(_drain(config, timeout_s))
    except Exception as exc:  # the store may already be gone
        logger.warning("drain skipped: %s", exc)
        left = 0
    serve.shutdown()
    return left


async def _drain(config: ServingConfig, timeout_s: float) -> int:
    """Live jobs left after waiting up to `timeout_s` for them to end (one store connection throughout)."""
    from srserve.serving.control.jobs import TERMINAL
    from srserve.serving.control.store.database import open_store

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


def embedded_database(config: ServingConfig) -> EmbeddedPostgres | None:
    """The embedded PostgreSQL server the config uses, or None when it names a DSN."""
    if config.job_store.dsn_env:
        return None
    return EmbeddedPostgres(srserve_home() / "postgres", config.job_store.embedded_port)
