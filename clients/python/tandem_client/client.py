"""Synchronous client (grpcio)."""
from __future__ import annotations

import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typing_extensions import Unpack

from . import _common
from ._common import (HEALTH_STATUS, READINESS_SERVICE, CompletionBuilder, Deadline,
                      GenerateOptions, Metadata, RetryPolicy, pb, pb_grpc)
from .errors import InternalError, TandemError, UnavailableError, from_rpc_error
from .types import Chunk, Completion, Final, HealthStatus, ModelInfo

T = TypeVar("T")
#: What `Client(interceptors=...)` accepts.
Interceptor = Union[grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor]


class GenerateStream:
    """A running Generate call: iterate it for `Chunk`s; `final` is set once it has ended.

    The RPC starts when the stream is created. Iterating yields every chunk and stops after the
    server's final message, which is then available as `final`. Leaving the iteration early
    (``break``, an exception, ``close()``, or the ``with`` block) cancels the RPC, and the
    server stops generating. UNAVAILABLE before the first response is retried with backoff;
    once anything has been received the call is never replayed. Errors raise `TandemError`
    subclasses. Not thread-safe: consume a stream from one thread.
    """

    def __init__(self, start: Callable[[Optional[float]], grpc.Call], deadline: Deadline,
                 policy: RetryPolicy) -> None:
        self._start = start
        self._deadline = deadline
        self._policy = policy
        self._attempt = 0
        self._received = False
        self._finished = False
        self._final: Optional[Final] = None
        self._call = start(deadline.remaining())

    @property
    def final(self) -> Optional[Final]:
        """The final message (finish reason, usage, timings), or None until the stream ends."""
        return self._final

    def __iter__(self) -> Iterator[Chunk]:
        try:
            while not self._finished:
                msg = self._next_message()
                if msg is None:
                    self._finished = True
                    if self._final is None:
                        raise InternalError(grpc.StatusCode.INTERNAL,
                                            "Generate stream ended without a final message")
                    return
                kind = msg.WhichOneof("kind")
                if kind == "chunk":
                    yield _common.chunk_from_pb(msg.chunk)
                elif kind == "final":
                    self._final = _common.final_from_pb(msg.final)
        finally:
            if not self._finished:
                self.cancel()

    def _next_message(self) -> Optional[pb.GenerateResponse]:
        while True:
            try:
                msg = next(self._call)
            except StopIteration:
                return None
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if self._should_retry(err):
                    self._call = self._start(self._deadline.remaining())
                    continue
                self._finished = True
                raise err from None
            self._received = True
            return msg

    def _should_retry(self, err: TandemError) -> bool:
        """Sleeps the backoff and returns True when err may be retried."""
        if self._received or not isinstance(err, UnavailableError):
            return False
        if self._attempt >= self._policy.retries:
            return False
        wait = self._policy.backoff(self._attempt)
        if not self._deadline.allows_wait(wait):
            return False
        self._attempt += 1
        time.sleep(wait)
        return True

    def cancel(self) -> None:
        """Cancels the RPC (no-op once it has ended)."""
        if not self._finished:
            self._finished = True
            self._call.cancel()

    close = cancel

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client:
    """Synchronous client of a Tandem router (``tandem.v1.Tandem`` over gRPC).

    Args:
        address: ``host:port`` of the router, e.g. ``"127.0.0.1:50051"``.
        timeout: default deadline in seconds for every call (None: no deadline). For a
            streaming call it covers the whole stream; a call's own ``timeout`` replaces it.
        retries: how many times a call that failed with UNAVAILABLE before receiving anything
            is retried, with exponential backoff from 0.1 s (0: never retry).
        api_key: sent as ``authorization: Bearer <key>`` with every call, for a router started
            with ``--api-key``; None reads ``$TANDEM_API_KEY`` (unset: no key).
        metadata: gRPC metadata (key, value) pairs sent with every call.
        credentials: channel credentials for TLS (default: an insecure channel).
        options: extra gRPC channel options, e.g. ``[("grpc.max_receive_message_length", n)]``.
        interceptors: grpc client interceptors (tracing, auth, ...) applied to every call,
            retries included (each attempt is a call).

    The client is thread-safe and can be shared; close it (or use ``with``) when done.
    """

    def __init__(self, address: str, *, timeout: Optional[float] = None, retries: int = 3,
                 api_key: Optional[str] = None, metadata: Optional[Metadata] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 options: Optional[Sequence[Tuple[str, object]]] = None,
                 interceptors: Sequence[Interceptor] = ()) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.address = address
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries=retries)
        self.metadata: List[Tuple[str, Union[str, bytes]]] = list(metadata or ())
        self.metadata += _common.api_key_metadata(api_key)
        opts = _common.channel_options(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=opts)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=opts)
        channel = grpc.intercept_channel(self._channel, *interceptors)
        self._stub = pb_grpc.TandemStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Closes the channel; running calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ generation
    def generate_stream(self, prompt: Optional[str] = None,
                        **options: Unpack[GenerateOptions]) -> GenerateStream:
        """Starts generating and returns a `GenerateStream` of `Chunk`s.

        ``prompt`` is raw text; give ``messages=`` or ``token_ids=`` instead for chat turns or
        token ids. See `GenerateOptions` for every keyword argument (sampling, stopping,
        logprobs, ``timeout``, ``metadata``)::

            with client.generate_stream("Once upon a time", max_tokens=32) as stream:
                for chunk in stream:
                    print(chunk.text, end="", flush=True)
            print(stream.final.finish_reason, stream.final.usage)

        Raises:
            InvalidArgumentError: at once when not exactly one of prompt, messages and
                token_ids is given. Server errors (INVALID_ARGUMENT naming the field,
                RESOURCE_EXHAUSTED, ...) raise while iterating.
        """
        request = _common.build_generate_request(prompt, options)
        md = _common.merge_metadata(self.metadata, options.get("metadata"))
        timeout = options.get("timeout")
        deadline = Deadline(self.timeout if timeout is None else timeout)

        def start(remaining: Optional[float]) -> grpc.Call:
            return self._stub.Generate(request, timeout=remaining, metadata=md)

        return GenerateStream(start, deadline, self.retry_policy)

    def generate(self, prompt: Optional[str] = None,
                 **options: Unpack[GenerateOptions]) -> Completion:
        """Generates to the end and returns the whole `Completion`.

        Takes the same arguments as `generate_stream`; ``timeout`` covers the whole call.
        """
        builder = CompletionBuilder()
        with self.generate_stream(prompt, **options) as stream:
            for chunk in stream:
                builder.add(chunk)
        assert stream.final is not None  # the stream raises otherwise
        return builder.build(stream.final)

    # ------------------------------------------------------------------ unary calls
    def tokenize(self, text: str, *, add_special_tokens: bool = False,
                 timeout: Optional[float] = None,
                 metadata: Optional[Metadata] = None) -> List[int]:
        """Token ids of ``text`` with the served model's tokenizer.

        Args:
            add_special_tokens: add the tokenizer's special tokens (e.g. BOS), as a
                ``prompt`` passed to `generate` gets.
        """
        req = pb.TokenizeRequest(text=text, add_special_tokens=add_special_tokens)
        resp = self._unary(self._stub.Tokenize, req, timeout, metadata)
        return list(resp.token_ids)

    def model_info(self, *, timeout: Optional[float] = None,
                   metadata: Optional[Metadata] = None) -> ModelInfo:
        """The served model, its limits and how many workers are ready."""
        resp = self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout, metadata)
        return _common.model_info_from_pb(resp)

    def health(self, service: str = READINESS_SERVICE, *, timeout: Optional[float] = None,
               metadata: Optional[Metadata] = None) -> HealthStatus:
        """The grpc.health.v1 status of ``service``.

        The default service name reports readiness (SERVING once the model is loaded,
        NOT_SERVING while loading or draining); ``""`` (`LIVENESS_SERVICE`) reports liveness.
        A name the server does not know gives `HealthStatus.SERVICE_UNKNOWN`.

        Raises:
            UnavailableError: the server cannot be reached (after retries).
        """
        req = health_pb2.HealthCheckRequest(service=service)
        try:
            resp = self._unary(self._health.Check, req, timeout, metadata)
        except TandemError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return HealthStatus.SERVICE_UNKNOWN
            raise
        return HEALTH_STATUS.get(resp.status, HealthStatus.UNKNOWN)

    def _unary(self, method: Callable[..., T], request: object, timeout: Optional[float],
               metadata: Optional[Metadata]) -> T:
        deadline = Deadline(self.timeout if timeout is None else timeout)
        md = _common.merge_metadata(self.metadata, metadata)
        attempt = 0
        while True:
            try:
                return method(request, timeout=deadline.remaining(), metadata=md)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            if not isinstance(err, UnavailableError) or attempt >= self.retry_policy.retries:
                raise err
            wait = self.retry_policy.backoff(attempt)
            if not deadline.allows_wait(wait):
                raise err
            attempt += 1
            time.sleep(wait)
