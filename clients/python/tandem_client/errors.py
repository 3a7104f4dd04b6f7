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
        field: the request field the error is about, as a tandem.v1 path ("sampling.top_p",
            "stopping.max_tokens"), read from the status details (tandem.v1.ErrorDetail);
            empty when the server named none.
    """

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field


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


def error_for(code: grpc.StatusCode, message: str, field: str = "") -> TandemError:
    """The TandemError subclass instance for a status code (TandemError itself for others)."""
    return _BY_CODE.get(code, TandemError)(code, message, field)


_DETAILS_KEY = "grpc-status-details-bin"


def _field_of(err: grpc.RpcError) -> str:
    """ErrorDetail.field from the status details (a google.rpc.Status-shaped RpcStatus)."""
    try:
        trailers = err.trailing_metadata() or ()
    except Exception:  # an RpcError without trailers (client-side failures)
        return ""
    from ._proto import generate_pb2 as pb  # the generated stubs; imported late (import cycle)

    for key, value in trailers:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = pb.RpcStatus()
        try:
            status.ParseFromString(value)
        except Exception:  # not ours: no field
            return ""
        for any_detail in status.details:
            detail = pb.ErrorDetail()
            if any_detail.Unpack(detail):
                return detail.field
    return ""


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
    return error_for(code, details or str(err) or code.name, _field_of(err))
