"""The service's errors and the one table that maps every error to an HTTP status.

Whatever goes wrong, a client gets ``{"error": {"code": ..., "message": ...}}``: the
stable code of an :class:`~edgemed.errors.EdgemedError` (the core's, or one of the
service's own below) and its message, which never holds a value read from an input.
Never a traceback.
"""

from __future__ import annotations

from typing import Any

from edgemed.errors import (
    BackendError,
    BundleError,
    EdgemedError,
    InputError,
    MissingDependencyError,
    OutputError,
    UsageError,
)

__all__ = [
    "STATUS",
    "Busy",
    "NotFound",
    "NotReady",
    "RequestError",
    "RequestTimeout",
    "TooLarge",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_body",
    "status_of",
]


class RequestError(EdgemedError):
    """The request itself is malformed (``REQUEST_*``): a bad multipart body, an
    unknown field, a query option the service cannot honour."""

    exit_code = 2
    default_code = "REQUEST_INVALID"


class TooLarge(RequestError):
    """The body is over ``--max-upload-mb`` (refused while it is read)."""

    default_code = "REQUEST_TOO_LARGE"


class UnsupportedMediaType(RequestError):
    """The Content-Type is not an image upload nor ``multipart/form-data``."""

    default_code = "REQUEST_CONTENT_TYPE"


class RequestTimeout(RequestError):
    """The client did not send its body in time (a slow or stalled upload)."""

    default_code = "REQUEST_TIMEOUT"


class Unauthorized(EdgemedError):
    """No bearer token, or a wrong one (``AUTH_REQUIRED``, ``AUTH_INVALID``)."""

    default_code = "AUTH_REQUIRED"


class NotFound(EdgemedError):
    """No such route, or a result id that is not (or no longer) in the store."""

    default_code = "NOT_FOUND"


class Busy(EdgemedError):
    """The bounded queue is full; ``retry_after`` seconds is a fair wait."""

    default_code = "QUEUE_FULL"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class NotReady(EdgemedError):
    """The service cannot take work: warming up, failed its golden check, draining for
    shutdown, or its pipeline refuses work after a fatal GPU error."""

    default_code = "SERVICE_NOT_READY"


#: Error class -> HTTP status; the most specific class in an error's MRO wins.
STATUS: dict[type[EdgemedError], int] = {
    TooLarge: 413,
    UnsupportedMediaType: 415,
    RequestTimeout: 408,
    RequestError: 400,
    InputError: 400,
    UsageError: 400,
    Unauthorized: 401,
    NotFound: 404,
    Busy: 429,
    NotReady: 503,
    MissingDependencyError: 503,
    BundleError: 503,
    BackendError: 500,
    OutputError: 500,
    EdgemedError: 500,
}

#: Backend codes after which the pipeline refuses all work: the service is not ready.
_FATAL_CODES = frozenset({"GPU_FATAL"})


def status_of(exc: EdgemedError) -> int:
    """The HTTP status for ``exc`` (:data:`STATUS`, by its class's MRO); a fatal GPU
    error is 503: the service is no longer ready."""
    if exc.code in _FATAL_CODES:
        return 503
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON every error answer carries."""
    return {"error": {"code": code, "message": message}}
