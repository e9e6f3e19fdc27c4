"""The runtime's error vocabulary.

Errors are raised where the fact is known, carrying the name of what was wrong; each protocol
adapter turns them into its own status (gRPC code, HTTP status, C API 500) in one place.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class: a request or operation the runtime refused, with a message for the caller."""

    #: gRPC status code name (grpc.StatusCode member) and HTTP status for this kind of failure.
    grpc_code = "INTERNAL"
    http_status = 500


class InvalidArgument(ServingError):
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(ServingError):
    grpc_code = "NOT_FOUND"
    http_status = 404


class Unavailable(ServingError):
    grpc_code = "UNAVAILABLE"
    http_status = 503


class ResourceExhausted(ServingError):
    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 429


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the work started: nobody waits for the answer."""

    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


class Unauthenticated(ServingError):
    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class ConfigError(ValueError):
    """Invalid model_config: raised at start-up, names the field and the allowed values."""

    def __init__(self, field: str, message: str):
        super().__init__(f"model_config field '{field}': {message}")
        self.field = field


class VersionLoadError(Exception):
    """A version could not be loaded or applied; the previous version keeps serving."""
