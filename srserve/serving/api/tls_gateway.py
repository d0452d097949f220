"""Optional TLS for the gRPC API.

Ray Serve's gRPC proxy listens without TLS only, so srserve can run a small gateway deployment
that terminates TLS on its own port and forwards every call, bytes unchanged and metadata
included, to the proxy. Methods are forwarded by their kind (unary or server-streaming), taken
from the service descriptors; anything else answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from ray import serve

from srserve.serving.config.grpc_tls import GrpcTlsConfig
from srserve.serving.proto import video_pb2

logger = logging.getLogger("ray.serve")
_DROPPED_METADATA = ("user-agent", "te", "content-type", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout")


def method_kinds() -> dict[str, str]:
    """'/package.Service/Method' -> 'unary' or 'stream' (server-streaming) for the served services."""
    kinds: dict[str, str] = {}
    for service in (
        video_pb2.DESCRIPTOR.services_by_name["VideoGeneration"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    ):
        for method in service.methods:
            if method.client_streaming:
                continue
            kinds[f"/{service.full_name}/{method.name}"] = "stream" if method.server_streaming else "unary"
    return kinds


class _Forwarder(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.kinds = method_kinds()

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
        return tuple(
            (m.key, m.value)
            for m in context.invocation_metadata() or ()
            if m.key not in _DROPPED_METADATA and not m.key.startswith(":")
        )

    def service(self, details: grpc.HandlerCallDetails):
        kind = self.kinds.get(details.method)
        if kind is None:
            return None
        method = details.method
        if kind == "unary":

            async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                try:
                    return await self.channel.unary_unary(method)(
                        request, metadata=self._metadata(context), timeout=context.time_remaining()
                    )
                except grpc.aio.AioRpcError as err:
                    await context.abort(err.code(), err.details() or "")

            return grpc.unary_unary_rpc_method_handler(unary)

        async def stream(request: bytes, context: grpc.aio.ServicerContext):
            call = self.channel.unary_stream(method)(
                request, metadata=self._metadata(context), timeout=context.time_remaining()
            )
            try:
                async for reply in call:
                    yield reply
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details() or "")

        return grpc.unary_stream_rpc_method_handler(stream)


async def run_gateway(config: GrpcTlsConfig, started: threading.Event | None = None) -> None:
    credentials = grpc.ssl_server_credentials(
        [(Path(config.key_file).read_bytes(), Path(config.cert_file).read_bytes())]
    )
    options = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
    async with grpc.aio.insecure_channel(config.upstream, options=options) as channel:
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((_Forwarder(channel),))
        server.add_secure_port(f"[::]:{config.port}", credentials)
        await server.start()
        logger.info("gRPC TLS gateway on :%d -> %s", config.port, config.upstream)
        if started is not None:
            started.set()
        await server.wait_for_termination()


@serve.deployment(name="GrpcTlsGateway", num_replicas=1, ray_actor_options={"num_cpus": 0.1})
class GrpcTlsGateway:
    """Runs the TLS gateway's event loop on a thread of its own inside this replica."""

    def __init__(self, config: GrpcTlsConfig) -> None:
        self.config = config
        started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(run_gateway(config, started)), daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError(f"gRPC TLS gateway did not start on port {config.port}")

    async def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the gRPC TLS gateway thread stopped")
