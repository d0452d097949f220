"""Errors the APIs turn into HTTP statuses and gRPC status codes."""

from __future__ import annotations


class ServingError(Exception):
    """Base: `code` is stable and shared by both APIs; `headers` go on the HTTP answer."""

    code = "internal"
    http_status = 500
    grpc_status = "INTERNAL"

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


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


class UnsupportedMediaType(ServingError):
    """HTTP only: a body in a content type the route does not read."""

    code, http_status, grpc_status = "unsupported_media_type", 415, "INVALID_ARGUMENT"


class RangeUnsatisfiable(ServingError):
    """HTTP only: a Range header that names no bytes of the video (Content-Range says its size)."""

    code, http_status, grpc_status = "range_not_satisfiable", 416, "OUT_OF_RANGE"


class RouteNotFound(ServingError):
    """HTTP only: no route at this path."""

    code, http_status, grpc_status = "not_found", 404, "UNIMPLEMENTED"


class MethodNotAllowed(ServingError):
    """HTTP only: the path exists, the method does not (the `Allow` header lists those that do)."""

    code, http_status, grpc_status = "method_not_allowed", 405, "UNIMPLEMENTED"
