"""Registering generated gRPC services with no request deserializer: the grpcio and Ray Serve internals
this relies on, in one place (used by api/grpc_servicers.py).

Relied on, as of grpcio 1.85 and Ray 2.60 (pyproject: grpcio>=1.85.1,<2; ray[serve]>=2.60,<2.61):

- grpcio: a generated `add_*_to_server(servicer, server)` passes `server.add_generic_rpc_handlers` one
  handler made by `grpc.method_handlers_generic_handler`, whose private `_method_handlers` maps
  "/package.Service/Method" to each method's handler; newer generated code also calls
  `server.add_registered_method_handlers(service, {method: handler})`.
- grpcio: a method handler (`grpc._utilities.RpcMethodHandler`) is a namedtuple with a
  `request_deserializer` field, so `_replace(request_deserializer=None)` gives the same handler taking
  the raw request bytes, and the server then hands the bytes to the behaviour undecoded.
- Ray Serve: its gRPC proxy (`gRPCGenericServer` in ray/serve/_private/grpc_util.py) reads the same
  `_method_handlers` and swaps each handler's behaviour for its routing function with `_replace`, keeping
  our `request_deserializer=None`, so the raw bytes go to the ingress replica.

tests/test_private_apis.py checks each of these and fails, naming it, if an upgrade changes one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc


def raw_requests(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same method handler, taking the request as bytes."""
    return handler._replace(request_deserializer=None)  # grpcio's RpcMethodHandler is a namedtuple


def method_handlers(generic: grpc.GenericRpcHandler) -> Mapping[str, grpc.RpcMethodHandler]:
    """'/package.Service/Method' -> handler, of a handler from grpc.method_handlers_generic_handler."""
    return generic._method_handlers


class RawRequestsServer:
    """Stands in for the server while a generated `add_*_to_server` registers its handlers, and
    registers them on the real server with no request deserializer."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        rebuilt = []
        for generic in generic_handlers:
            by_method = method_handlers(generic)
            service = next(iter(by_method)).split("/")[1]
            methods = {path.split("/")[2]: raw_requests(handler) for path, handler in by_method.items()}
            rebuilt.append(grpc.method_handlers_generic_handler(service, methods))
        self._server.add_generic_rpc_handlers(tuple(rebuilt))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        add = getattr(self._server, "add_registered_method_handlers", None)
        if add is not None:  # older grpcio servers register generic handlers only
            add(service, {name: raw_requests(handler) for name, handler in handlers.items()})


def with_raw_requests(add_to_server: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """A generated `add_*_to_server` that registers the service with requests left as bytes."""

    def add(servicer: Any, server: Any) -> None:
        add_to_server(servicer, RawRequestsServer(server))

    add.__doc__ = f"{add_to_server.__name__}, with requests left as bytes for the ingress to decode."
    return add
