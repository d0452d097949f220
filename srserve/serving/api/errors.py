"""Errors the APIs turn into HTTP statuses and gRPC status codes."""

from __future__ import annotations


class ServingError(Exception):
    """Base: `code` is stable and shared by both APIs."""

    code = "internal"
    http_status = 500
    grpc_status = "INTERNAL"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ServingError):
    code, http_status, grpc_status = "invalid_argument", 400, "INVALID_ARGUMENT"


class Overloaded(ServingError):
    code, http_status, grpc_status = "resource_exhausted", 429, "RESOURCE_EXHAUSTED"


class JobNotFound(ServingError):
    code, http_status, grpc_status = "not_found", 404, "NOT_FOUND"


class NotReady(ServingError):
    code, http_status, grpc_status = "failed_precondition", 409, "FAILED_PRECONDITION"


class RequestTooLarge(ServingError):
    code, http_status, grpc_status = "request_too_large", 413, "RESOURCE_EXHAUSTED"


class Unauthenticated(ServingError):
    code, http_status, grpc_status = "unauthenticated", 401, "UNAUTHENTICATED"
