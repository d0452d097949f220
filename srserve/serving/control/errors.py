"""Domain errors of the serving system: what went wrong, never how an API says it.

Each kind has a stable `code` shared by both APIs; `srserve.serving.api.errors` holds the one
table that maps a kind to its HTTP status and gRPC status code.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base: `code` is stable across APIs; `param` names the request field at fault; `headers` are
    hints for the HTTP answer (e.g. Content-Range)."""

    code = "internal"

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


class InvalidRequest(ServingError):
    code = "invalid_argument"


class Overloaded(ServingError):
    code = "resource_exhausted"


class QuotaExceeded(Overloaded):
    """A tenant's quota is used up; `quota` (also the error's `param`) names it, e.g. `max_live_jobs`."""

    def __init__(self, quota: str, message: str) -> None:
        super().__init__(message, param=quota)
        self.quota = quota


class JobNotFound(ServingError):
    code = "not_found"


class NotReady(ServingError):
    code = "failed_precondition"


class RequestTooLarge(ServingError):
    code = "request_too_large"


class Unauthenticated(ServingError):
    code = "unauthenticated"


class StoreUnavailable(ServingError):
    """The job store cannot be reached; the caller may retry."""

    code = "unavailable"
