"""The servicer functions Serve's gRPC proxy registers (`grpc_servicer_functions` in the Serve config).

Serve's proxy (`gRPCGenericServer` in ray/serve/_private/grpc_util.py) replaces each method
handler's behaviour with its own routing function but keeps the handler's `request_deserializer`,
so grpcio decodes every request in the proxy before any srserve code sees it, and a message that
is not valid protobuf fails there as UNKNOWN "Unexpected <class 'DecodeError'>". These functions
register the same services with no request deserializer (api/grpc_raw_handlers.py): the proxy then
forwards the raw bytes (pickled to the replica like any request), and the ingress decodes them itself
(api/grpc.py), answering INVALID_ARGUMENT for bytes that are not the message. Responses are untouched.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2_grpc

from srserve.serving.api.grpc_raw_handlers import with_raw_requests
from srserve.serving.proto import video_pb2_grpc

add_VideoGenerationServicer_to_server = with_raw_requests(video_pb2_grpc.add_VideoGenerationServicer_to_server)
add_HealthServicer_to_server = with_raw_requests(health_pb2_grpc.add_HealthServicer_to_server)
