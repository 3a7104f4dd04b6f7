"""Python client for a Tandem router (``tandem.v1.Tandem`` over gRPC).

Synchronous::

    from tandem_client import Client

    with Client("127.0.0.1:50051") as client:
        print(client.generate("The capital of France is", max_tokens=8).text)

asyncio: `AsyncClient` has the same methods, awaitable, and streams with ``async for``.
Failed calls raise `TandemError` subclasses chosen by the gRPC status code.
"""
from ._common import (DEFAULT_MAX_TOKENS, LIVENESS_SERVICE, READINESS_SERVICE, GenerateOptions,
                      RetryPolicy)
from .aio import AsyncClient, AsyncGenerateStream
from .client import Client, GenerateStream
from .errors import (CancelledError, DeadlineExceededError, FailedPreconditionError,
                     InternalError, InvalidArgumentError, NotFoundError, ResourceExhaustedError,
                     TandemError, UnauthenticatedError, UnavailableError)
from .types import (Chunk, Completion, Final, FinishReason, HealthStatus, Message, ModelInfo,
                    Timings, TokenLogprob, TokenLogprobs, Usage)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AsyncGenerateStream", "CancelledError", "Chunk", "Client", "Completion",
    "DEFAULT_MAX_TOKENS", "DeadlineExceededError", "FailedPreconditionError", "Final",
    "FinishReason", "GenerateOptions", "GenerateStream", "HealthStatus", "InternalError",
    "InvalidArgumentError", "LIVENESS_SERVICE", "Message", "ModelInfo", "NotFoundError",
    "READINESS_SERVICE", "ResourceExhaustedError", "RetryPolicy", "TandemError", "Timings",
    "TokenLogprob", "TokenLogprobs", "UnauthenticatedError", "UnavailableError", "Usage",
]
