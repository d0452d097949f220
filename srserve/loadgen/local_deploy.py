"""Deploy a ServingConfig on the current Ray cluster for one measurement, and remove it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from srserve.serving.config import DeployFile, ServingConfig

DEFAULT_HTTP_PORT = 8311
DEFAULT_GRPC_PORT = 9311
# Serve's proxies keep the ports of the first `serve.start` on a cluster (later options are
# ignored), so every deployment this process makes uses the ports of its first one.
_proxy_ports: tuple[int, int] | None = None


@contextlib.contextmanager
def deployed(
    config: ServingConfig,
    http_port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    route_prefix: str = "/",
) -> Iterator[DeployFile]:
    """Yields the spec actually served (connect to its `grpc_port` / `http_port`). Several apps can
    run side by side with distinct route prefixes (gRPC picks the app by its name)."""
    global _proxy_ports
    from ray import serve

    from srserve.serving.launcher import deploy

    if _proxy_ports is not None:
        http_port, grpc_port = _proxy_ports
    spec = DeployFile(http_port=http_port, grpc_port=grpc_port, route_prefix=route_prefix, serving=config)
    deploy(spec)
    _proxy_ports = (http_port, grpc_port)
    try:
        yield spec
    finally:
        serve.delete(config.app_name)
