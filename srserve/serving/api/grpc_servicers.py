"""The servicer functions Serve's gRPC proxy registers (`grpc_servicer_functions` in the Serve config).

Serve's proxy (`gRPCGenericServer` in ray/serve/_private/grpc_util.py) replaces each method
handler's behaviour with its own routing function but keeps the handler's `request_deserializer`,
so grpcio decodes every request in the proxy before any srserve code sees it, and a message that
is not valid protobuf fails there as UNKNOWN "Unexpected <class 'DecodeError'>". These functions
register the same services with no request deserializer: the proxy then forwards the raw bytes
(pickled to the replica like any request), and the ingress decodes them itself (api/grpc.py),
answering INVALID_ARGUMENT for bytes that are not the message. Responses are untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from srserve.serving.proto import video_pb2_grpc


def _raw(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    return handler._replace(request_deserializer=None)  # grpcio's RpcMethodHandler is a namedtuple


class _RawRequests:
    """Stands in for the server while a generated `add_*_to_server` registers its handlers."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        rebuilt = []
        for generic in generic_handlers:
            by_method: Mapping[str, grpc.RpcMethodHandler] = generic._method_handlers  # "/pkg.Service/Method"
            service = next(iter(by_method)).split("/")[1]
            methods = {path.split("/")[2]: _raw(handler) for path, handler in by_method.items()}
            rebuilt.append(grpc.method_handlers_generic_handler(service, methods))
        self._server.add_generic_rpc_handlers(tuple(rebuilt))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        add = getattr(self._server, "add_registered_method_handlers", None)
        if add is not None:  # older grpcio servers register generic handlers only
            add(service, {name: _raw(handler) for name, handler in handlers.items()})


def _with_raw_requests(add_to_server: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def add(servicer: Any, server: Any) -> None:
        add_to_server(servicer, _RawRequests(server))

    add.__doc__ = f"{add_to_server.__name__}, with requests left as bytes for the ingress to decode."
    return add


add_VideoGenerationServicer_to_server = _with_raw_requests(video_pb2_grpc.add_VideoGenerationServicer_to_server)
add_HealthServicer_to_server = _with_raw_requests(health_pb2_grpc.add_HealthServicer_to_server)
