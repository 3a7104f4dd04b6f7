"""What the sync and async clients share: request building, conversions, deadlines, retries."""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
from grpc_health.v1 import health_pb2
from typing_extensions import TypedDict

try:
    from ._proto import generate_pb2 as pb
    from ._proto import generate_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - only when run from a source tree never built
    raise ImportError(
        "tandem_client's gRPC stubs are missing: they are generated from "
        "proto/tandem/v1/generate.proto when the package is built. Install it with "
        "`pip install ./clients/python` from the Tandem repository.") from e

from .errors import InvalidArgumentError
from .types import (Chunk, Completion, Final, FinishReason, HealthStatus, Message, ModelInfo,
                    Timings, TokenLogprob, TokenLogprobs, Usage)

__all__ = ["pb", "pb_grpc"]

#: grpc.health.v1 service name whose status is the router's readiness.
READINESS_SERVICE = "tandem.v1.Tandem"
#: grpc.health.v1 service name whose status is the process's liveness.
LIVENESS_SERVICE = ""
#: max_tokens when a call does not give one (the server requires >= 1).
DEFAULT_MAX_TOKENS = 256

Metadata = Sequence[Tuple[str, Union[str, bytes]]]
MessageLike = Union[Message, Mapping[str, str]]

# Reconnect quickly after a refused connection, so that retries (and a server that is just
# starting) are not held back by gRPC's default 1 s..120 s reconnect backoff. (Not
# grpc.min_reconnect_backoff_ms: gRPC core uses it as the minimum connect timeout.)
DEFAULT_CHANNEL_OPTIONS: Tuple[Tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def channel_options(extra: Optional[Sequence[Tuple[str, object]]]) -> List[Tuple[str, object]]:
    """The default channel options overridden by the caller's."""
    merged: dict = dict(DEFAULT_CHANNEL_OPTIONS)
    merged.update(dict(extra or ()))
    return list(merged.items())


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for UNAVAILABLE before any response arrived.

    Attempt n (0-based) waits min(max_backoff, initial_backoff * multiplier**n), less up to 20%
    jitter, before retry n + 1. A retry never starts past the call's deadline.
    """

    retries: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** attempt)
        return base * random.uniform(0.8, 1.0)


class Deadline:
    """An absolute deadline for a call and its retries (None: no deadline)."""

    def __init__(self, timeout: Optional[float]) -> None:
        if timeout is not None and timeout < 0:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"timeout must be >= 0, got {timeout}")
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> Optional[float]:
        """Seconds left (never negative), or None without a deadline."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def allows_wait(self, seconds: float) -> bool:
        """Whether waiting `seconds` still leaves time for another attempt."""
        left = self.remaining()
        return left is None or left > seconds


def merge_metadata(base: Optional[Metadata],
                   extra: Optional[Metadata]) -> Optional[List[Tuple[str, Union[str, bytes]]]]:
    """Client-wide metadata followed by the call's own; None when both are empty."""
    merged = list(base or ()) + list(extra or ())
    return merged or None


def _message_pb(m: MessageLike) -> pb.ChatMessage:
    if isinstance(m, Message):
        return pb.ChatMessage(role=m.role, content=m.content)
    try:
        return pb.ChatMessage(role=m["role"], content=m["content"])
    except (KeyError, TypeError) as e:
        raise InvalidArgumentError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"messages: each message must be a Message or a mapping with 'role' and "
            f"'content', got {m!r}") from e


class GenerateOptions(TypedDict, total=False):
    """Keyword arguments of ``generate`` and ``generate_stream`` (sync and async).

    Give exactly one input: the positional ``prompt`` (raw text; the tokenizer adds its special
    tokens), ``messages`` or ``token_ids``. Values are checked by the server, whose
    INVALID_ARGUMENT message names the field.

    Keys:
        messages: chat turns as `Message` or ``{"role": ..., "content": ...}``, rendered with
            the model's chat template.
        token_ids: token ids used as they are.
        max_tokens: tokens to generate at most (>= 1; prompt + max_tokens must fit in the
            context). Default 256.
        temperature: 0 or None = greedy (the default).
        top_p: nucleus mass in (0, 1]; None = off.
        top_k: keep the k most probable tokens; None or 0 = off.
        min_p: drop tokens below min_p x the top probability; None or 0 = off.
        repetition_penalty: Hugging Face style, > 0; None = 1 = off.
        presence_penalty, frequency_penalty: OpenAI style, in [-2, 2]; None = off.
        seed: sampling seed; the same seed gives the same tokens whatever the server layout
            and batch. None lets the router pick a random one (returned as the final
            result's seed), so unseeded samples differ from run to run.
        stop: stop string(s); generation ends where the text contains one, which is not
            returned.
        stop_token_ids: token ids that end generation besides EOS.
        ignore_eos: continue past EOS.
        logprobs: report each generated token's log-probability (`Chunk.logprobs`).
        top_logprobs: also report this many most probable alternatives per token (0-20);
            needs logprobs=True (the server refuses it otherwise, as OpenAI does).
        request_id: id echoed in server logs and `Final.request_id` (the server picks one
            when None).
        timeout: deadline in seconds for the whole call, stream and retries included
            (None: the client's default).
        metadata: gRPC metadata (key, value) pairs for this call, sent after the client's.
    """

    messages: Optional[Iterable[MessageLike]]
    token_ids: Optional[Iterable[int]]
    max_tokens: int
    temperature: Optional[float]
    top_p: Optional[float]
    top_k: Optional[int]
    min_p: Optional[float]
    repetition_penalty: Optional[float]
    presence_penalty: Optional[float]
    frequency_penalty: Optional[float]
    seed: Optional[int]
    stop: Union[str, Sequence[str], None]
    stop_token_ids: Optional[Iterable[int]]
    ignore_eos: bool
    logprobs: bool
    top_logprobs: Optional[int]
    request_id: Optional[str]
    timeout: Optional[float]
    metadata: Optional[Metadata]


_OPTION_NAMES = frozenset(GenerateOptions.__annotations__)


def build_generate_request(prompt: Optional[str],
                           options: Mapping[str, Any]) -> pb.GenerateRequest:
    """The GenerateRequest for a prompt and `GenerateOptions` (timeout and metadata ignored).

    Raises:
        TypeError: an unknown option.
        InvalidArgumentError: not exactly one of prompt, messages and token_ids.
    """
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    o = options
    messages = o.get("messages")
    token_ids = o.get("token_ids")
    given = [name for name, v in (("prompt", prompt), ("messages", messages),
                                  ("token_ids", token_ids)) if v is not None]
    if len(given) != 1:
        raise InvalidArgumentError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly one of prompt, messages and token_ids must be given"
            + (f", got {' and '.join(given)}" if given else ""))
    req = pb.GenerateRequest(request_id=o.get("request_id") or "")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"prompt must be a str, got {type(prompt).__name__} "
                                       "(pass token ids as token_ids=)")
        req.text = prompt
    elif messages is not None:
        req.chat.SetInParent()
        req.chat.messages.extend(_message_pb(m) for m in messages)
    else:
        req.token_ids.SetInParent()
        req.token_ids.ids.extend(int(t) for t in token_ids)  # type: ignore[union-attr]
    s = req.sampling
    s.temperature = o.get("temperature") or 0.0
    s.top_p = o.get("top_p") or 0.0
    s.top_k = o.get("top_k") or 0
    s.min_p = o.get("min_p") or 0.0
    s.repetition_penalty = o.get("repetition_penalty") or 0.0
    s.presence_penalty = o.get("presence_penalty") or 0.0
    s.frequency_penalty = o.get("frequency_penalty") or 0.0
    if o.get("seed") is not None:
        s.seed = o["seed"]
    st = req.stopping
    max_tokens = o.get("max_tokens")
    st.max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    stop = o.get("stop")
    st.stop.extend([stop] if isinstance(stop, str) else (stop or ()))
    st.stop_token_ids.extend(int(t) for t in (o.get("stop_token_ids") or ()))
    st.ignore_eos = bool(o.get("ignore_eos", False))
    req.logprobs = bool(o.get("logprobs", False))
    req.top_logprobs = o.get("top_logprobs") or 0
    return req


_FINISH = {
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_STOP: FinishReason.STOP,
}


HEALTH_STATUS = {
    health_pb2.HealthCheckResponse.UNKNOWN: HealthStatus.UNKNOWN,
    health_pb2.HealthCheckResponse.SERVING: HealthStatus.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING: HealthStatus.NOT_SERVING,
    health_pb2.HealthCheckResponse.SERVICE_UNKNOWN: HealthStatus.SERVICE_UNKNOWN,
}


def chunk_from_pb(c: pb.GenerateChunk) -> Chunk:
    return Chunk(
        token_ids=tuple(c.token_ids),
        text=c.text,
        logprobs=tuple(
            TokenLogprobs(logprob=lp.logprob,
                          top=tuple(TokenLogprob(t.token_id, t.logprob) for t in lp.top))
            for lp in c.logprobs),
    )


def final_from_pb(f: pb.GenerateFinal) -> Final:
    t = f.timings
    return Final(
        finish_reason=_FINISH.get(f.finish_reason, FinishReason.UNSPECIFIED),
        usage=Usage(prompt_tokens=f.usage.prompt_tokens,
                    completion_tokens=f.usage.completion_tokens),
        timings=Timings(queue_seconds=t.queue_seconds, prefill_seconds=t.prefill_seconds,
                        transfer_seconds=t.transfer_seconds,
                        first_token_seconds=t.first_token_seconds,
                        decode_seconds=t.decode_seconds, total_seconds=t.total_seconds),
        request_id=f.request_id,
        prefill_worker=f.prefill_worker,
        decode_worker=f.decode_worker,
        seed=f.seed,
    )


def model_info_from_pb(m: pb.ModelInfoResponse) -> ModelInfo:
    return ModelInfo(model=m.model, architecture=m.architecture,
                     max_context_tokens=m.max_context_tokens, vocab_size=m.vocab_size,
                     prefill_workers=m.prefill_workers, decode_workers=m.decode_workers)


class CompletionBuilder:
    """Joins a stream's chunks and final message into a Completion."""

    def __init__(self) -> None:
        self._text: List[str] = []
        self._ids: List[int] = []
        self._logprobs: List[TokenLogprobs] = []

    def add(self, chunk: Chunk) -> None:
        self._text.append(chunk.text)
        self._ids.extend(chunk.token_ids)
        self._logprobs.extend(chunk.logprobs)

    def build(self, final: Final) -> Completion:
        return Completion(text="".join(self._text), token_ids=tuple(self._ids),
                          finish_reason=final.finish_reason, usage=final.usage,
                          timings=final.timings, request_id=final.request_id,
                          prefill_worker=final.prefill_worker,
                          decode_worker=final.decode_worker, logprobs=tuple(self._logprobs),
                          seed=final.seed)


def api_key_metadata(api_key: Optional[str]) -> List[Tuple[str, str]]:
    """The authorization metadata for `api_key` (None: $TANDEM_API_KEY; empty: none)."""
    if api_key is None:
        api_key = os.environ.get("TANDEM_API_KEY", "")
    return [("authorization", f"Bearer {api_key}")] if api_key else []
