"""How each error reaches a client: the one table from error kind to HTTP status and gRPC code.

Domain errors live in `srserve.serving.control.errors`; the kinds defined here exist only at the
HTTP edge (routing, media types, ranges).
"""

from __future__ import annotations

from srserve.serving.control.errors import (
    InvalidRequest,
    JobNotFound,
    NotReady,
    Overloaded,
    RequestTooLarge,
    ServingError,
    StoreUnavailable,
    Unauthenticated,
)


class UnsupportedMediaType(ServingError):
    """HTTP only: a body in a content type the route does not read."""

    code = "unsupported_media_type"


class RangeUnsatisfiable(ServingError):
    """HTTP only: a Range header that names no bytes of the video (Content-Range says its size)."""

    code = "range_not_satisfiable"


class RouteNotFound(ServingError):
    """HTTP only: no route at this path."""

    code = "not_found"


class MethodNotAllowed(ServingError):
    """HTTP only: the path exists, the method does not (the `Allow` header lists those that do)."""

    code = "method_not_allowed"


class HttpStatusError(ServingError):
    """HTTP only: an answer routing gave with its own status (kept as it was given)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# error kind -> (HTTP status, gRPC status code name); the most specific kind in the MRO wins.
STATUS: dict[type[ServingError], tuple[int, str]] = {
    ServingError: (500, "INTERNAL"),
    InvalidRequest: (400, "INVALID_ARGUMENT"),
    Overloaded: (429, "RESOURCE_EXHAUSTED"),
    JobNotFound: (404, "NOT_FOUND"),
    NotReady: (409, "FAILED_PRECONDITION"),
    RequestTooLarge: (413, "RESOURCE_EXHAUSTED"),
    Unauthenticated: (401, "UNAUTHENTICATED"),
    StoreUnavailable: (503, "UNAVAILABLE"),
    UnsupportedMediaType: (415, "INVALID_ARGUMENT"),
    RangeUnsatisfiable: (416, "OUT_OF_RANGE"),
    RouteNotFound: (404, "UNIMPLEMENTED"),
    MethodNotAllowed: (405, "UNIMPLEMENTED"),
}


def _status(exc: ServingError) -> tuple[int, str]:
    return next(STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS)


def http_status(exc: ServingError) -> int:
    if isinstance(exc, HttpStatusError):
        return exc.status
    return _status(exc)[0]


def grpc_status(exc: ServingError) -> str:
    return _status(exc)[1]


__all__ = [
    "STATUS",
    "HttpStatusError",
    "InvalidRequest",
    "JobNotFound",
    "MethodNotAllowed",
    "NotReady",
    "Overloaded",
    "RangeUnsatisfiable",
    "RequestTooLarge",
    "RouteNotFound",
    "ServingError",
    "StoreUnavailable",
    "Unauthenticated",
    "UnsupportedMediaType",
    "grpc_status",
    "http_status",
]
