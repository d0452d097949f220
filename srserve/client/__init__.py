"""Python client for srserve's gRPC API."""

from srserve.client.grpc_client import GenerationFailed, SrserveClient

__all__ = ["GenerationFailed", "SrserveClient"]
