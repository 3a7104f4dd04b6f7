"""Typed errors: every failed call raises a TandemError subclass chosen by its gRPC status code.

The server's contract (see the proto): INVALID_ARGUMENT names the offending field,
RESOURCE_EXHAUSTED means the queue or the KV cache is full, UNAVAILABLE means no worker is ready
or the server is draining, FAILED_PRECONDITION means incompatible worker layouts, INTERNAL is a
server bug.
"""
from __future__ import annotations

from typing import Optional

import grpc


class TandemError(Exception):
    """Base class of every error the SDK raises for a failed call.

    Attributes:
        code: the gRPC status code.
        message: the server's status message (or the client's, for client-side failures).
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgumentError(TandemError, ValueError):
    """INVALID_ARGUMENT: the request is malformed; the message names the field."""


class ResourceExhaustedError(TandemError):
    """RESOURCE_EXHAUSTED: the admission queue or the KV cache is full; try again later."""


class UnavailableError(TandemError):
    """UNAVAILABLE: the server cannot be reached, has no ready worker, or is draining."""


class DeadlineExceededError(TandemError, TimeoutError):
    """DEADLINE_EXCEEDED: the call's timeout passed before it finished."""


class CancelledError(TandemError):
    """CANCELLED: the call was cancelled (by this client or by the server)."""


class FailedPreconditionError(TandemError):
    """FAILED_PRECONDITION: e.g. prefill and decode workers with incompatible KV layouts."""


class NotFoundError(TandemError):
    """NOT_FOUND: the requested entity does not exist."""


class UnauthenticatedError(TandemError):
    """UNAUTHENTICATED: missing or invalid credentials."""


class InternalError(TandemError):
    """INTERNAL: a server bug, or a stream that broke the protocol."""


_BY_CODE: dict[grpc.StatusCode, type[TandemError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def error_for(code: grpc.StatusCode, message: str) -> TandemError:
    """The TandemError subclass instance for a status code (TandemError itself for others)."""
    return _BY_CODE.get(code, TandemError)(code, message)


def from_rpc_error(err: grpc.RpcError) -> TandemError:
    """Converts a grpc.RpcError (sync or grpc.aio) into the matching TandemError."""
    code: Optional[grpc.StatusCode] = None
    details: Optional[str] = None
    try:
        code = err.code()
        details = err.details()
    except Exception:  # an RpcError without status accessors
        pass
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for(code, details or str(err) or code.name)
