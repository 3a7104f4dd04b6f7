"""Plain, immutable result types; the SDK never hands out protobuf messages."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Tuple


class FinishReason(str, enum.Enum):
    """Why generation ended."""

    #: The server did not say (should not happen with a conforming server).
    UNSPECIFIED = "unspecified"
    #: max_tokens was reached.
    LENGTH = "length"
    #: EOS, a stop token id or a stop string.
    STOP = "stop"


class HealthStatus(str, enum.Enum):
    """A grpc.health.v1 serving status."""

    UNKNOWN = "unknown"
    SERVING = "serving"
    NOT_SERVING = "not_serving"
    #: The server does not know the service name that was asked about.
    SERVICE_UNKNOWN = "service_unknown"


@dataclass(frozen=True)
class Message:
    """One chat turn, rendered by the server with the model's chat template."""

    #: "system", "user" or "assistant".
    role: str
    #: The turn's text.
    content: str


@dataclass(frozen=True)
class TokenLogprob:
    """A token and its natural-log probability (before sampling transformations)."""

    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities for one generated token."""

    #: The generated token's own log-probability.
    logprob: float
    #: The most probable alternatives, most probable first (top_logprobs of them).
    top: Tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """Tokens generated since the previous chunk of a stream."""

    #: New token ids, in order.
    token_ids: Tuple[int, ...]
    #: Text that became final with these tokens (never part of a UTF-8 character; may be empty
    #: while a character or a possible stop string is incomplete).
    text: str
    #: One entry per token id when logprobs were requested, else empty.
    logprobs: Tuple[TokenLogprobs, ...] = ()


@dataclass(frozen=True)
class Usage:
    """Token counts of one request."""

    #: Tokens in the prompt after templating.
    prompt_tokens: int
    #: Tokens generated.
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """prompt_tokens + completion_tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Where a request's time went, in seconds (measured by the server)."""

    #: Waiting in the router's admission queue.
    queue_seconds: float
    #: Prefill compute on the prefill worker.
    prefill_seconds: float
    #: Moving the KV pages from the prefill to the decode worker.
    transfer_seconds: float
    #: Request arrival to the first token sent.
    first_token_seconds: float
    #: First token to last token.
    decode_seconds: float
    #: Request arrival to the final message.
    total_seconds: float


@dataclass(frozen=True)
class Final:
    """The last message of a generation stream."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    #: The client's request id, or the one the router assigned.
    request_id: str
    #: Names of the workers that served the request.
    prefill_worker: str
    decode_worker: str
    #: The sampling seed used (the router picks one when the request had none).
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    """A whole generation: every chunk joined, plus the final message's fields."""

    #: The generated text (stop strings are not included).
    text: str
    #: Every generated token id.
    token_ids: Tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    request_id: str
    prefill_worker: str
    decode_worker: str
    #: One entry per token id when logprobs were requested, else empty.
    logprobs: Tuple[TokenLogprobs, ...] = field(default=())
    #: The sampling seed used: pass it back to reproduce these tokens.
    seed: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """The served model and its limits."""

    #: Served model name (its folder name unless configured).
    model: str
    #: Architecture as in config.json, e.g. "LlamaForCausalLM".
    architecture: str
    #: Maximum prompt + generated tokens.
    max_context_tokens: int
    vocab_size: int
    #: Prefill and decode workers currently registered and ready.
    prefill_workers: int
    decode_workers: int
