"""Asynchronous client (grpc.aio): the same API as `tandem_client.Client`, awaitable."""
from __future__ import annotations

import asyncio
from typing import (Any, AsyncIterator, Awaitable, Callable, List, Optional, Sequence, Tuple,
                    Union)

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typing_extensions import Unpack

from . import _common
from ._common import (HEALTH_STATUS, READINESS_SERVICE, CompletionBuilder, Deadline,
                      GenerateOptions, Metadata, RetryPolicy, pb, pb_grpc)
from .errors import InternalError, TandemError, UnavailableError, from_rpc_error
from .types import Chunk, Completion, Final, HealthStatus, ModelInfo


class AsyncGenerateStream:
    """A running Generate call: ``async for`` it for `Chunk`s; `final` is set once it ended.

    The RPC starts when the stream is created. Leaving the iteration early (``break``, an
    exception, task cancellation, ``await stream.aclose()`` or the ``async with`` block)
    cancels the RPC. UNAVAILABLE before the first response is retried with backoff; once
    anything has been received the call is never replayed. Errors raise `TandemError`
    subclasses. Consume a stream from one task.
    """

    def __init__(self, start: Callable[[Optional[float]], grpc.aio.UnaryStreamCall],
                 deadline: Deadline, policy: RetryPolicy) -> None:
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

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        # An async generator: when a `break` drops it, asyncio closes it (running the finally
        # below) right after, which cancels the RPC.
        try:
            while not self._finished:
                msg = await self._next_message()
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

    async def _next_message(self) -> Optional[pb.GenerateResponse]:
        while True:
            try:
                msg = await self._call.read()
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if await self._should_retry(err):
                    self._call = self._start(self._deadline.remaining())
                    continue
                self._finished = True
                raise err from None
            if msg is grpc.aio.EOF:
                return None
            self._received = True
            return msg

    async def _should_retry(self, err: TandemError) -> bool:
        if self._received or not isinstance(err, UnavailableError):
            return False
        if self._attempt >= self._policy.retries:
            return False
        wait = self._policy.backoff(self._attempt)
        if not self._deadline.allows_wait(wait):
            return False
        self._attempt += 1
        await asyncio.sleep(wait)
        return True

    def cancel(self) -> None:
        """Cancels the RPC (no-op once it has ended)."""
        if not self._finished:
            self._finished = True
            self._call.cancel()

    async def aclose(self) -> None:
        """Cancels the RPC (no-op once it has ended)."""
        self.cancel()

    async def __aenter__(self) -> "AsyncGenerateStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class AsyncClient:
    """asyncio client of a Tandem router; the same arguments and methods as `Client`.

    Create and use it inside a running event loop (the gRPC channel binds to it), and close
    it with ``await client.close()`` or ``async with``::

        async with AsyncClient("127.0.0.1:50051") as client:
            stream = client.generate_stream("Hello", max_tokens=16)
            async for chunk in stream:
                print(chunk.text, end="")
    """

    def __init__(self, address: str, *, timeout: Optional[float] = None, retries: int = 3,
                 api_key: Optional[str] = None, metadata: Optional[Metadata] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 options: Optional[Sequence[Tuple[str, object]]] = None,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.address = address
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries=retries)
        self.metadata: List[Tuple[str, Union[str, bytes]]] = list(metadata or ())
        self.metadata += _common.api_key_metadata(api_key)
        opts = _common.channel_options(options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=opts,
                                                      interceptors=list(interceptors) or None)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=opts,
                                                    interceptors=list(interceptors) or None)
        self._stub = pb_grpc.TandemStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """Closes the channel; running calls are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ generation
    def generate_stream(self, prompt: Optional[str] = None,
                        **options: Unpack[GenerateOptions]) -> AsyncGenerateStream:
        """Starts generating and returns an `AsyncGenerateStream` of `Chunk`s.

        Arguments as `Client.generate_stream` (see `GenerateOptions`). Not a coroutine: the
        stream is iterated with ``async for``.
        """
        request = _common.build_generate_request(prompt, options)
        md = _common.merge_metadata(self.metadata, options.get("metadata"))
        timeout = options.get("timeout")
        deadline = Deadline(self.timeout if timeout is None else timeout)

        def start(remaining: Optional[float]) -> grpc.aio.UnaryStreamCall:
            return self._stub.Generate(request, timeout=remaining, metadata=md)

        return AsyncGenerateStream(start, deadline, self.retry_policy)

    async def generate(self, prompt: Optional[str] = None,
                       **options: Unpack[GenerateOptions]) -> Completion:
        """Generates to the end and returns the whole `Completion` (see `Client.generate`)."""
        builder = CompletionBuilder()
        async with self.generate_stream(prompt, **options) as stream:
            async for chunk in stream:
                builder.add(chunk)
        assert stream.final is not None  # the stream raises otherwise
        return builder.build(stream.final)

    # ------------------------------------------------------------------ unary calls
    async def tokenize(self, text: str, *, add_special_tokens: bool = False,
                       timeout: Optional[float] = None,
                       metadata: Optional[Metadata] = None) -> List[int]:
        """Token ids of ``text`` with the served model's tokenizer (see `Client.tokenize`)."""
        req = pb.TokenizeRequest(text=text, add_special_tokens=add_special_tokens)
        resp = await self._unary(self._stub.Tokenize, req, timeout, metadata)
        return list(resp.token_ids)

    async def model_info(self, *, timeout: Optional[float] = None,
                         metadata: Optional[Metadata] = None) -> ModelInfo:
        """The served model, its limits and how many workers are ready."""
        resp = await self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout, metadata)
        return _common.model_info_from_pb(resp)

    async def health(self, service: str = READINESS_SERVICE, *,
                     timeout: Optional[float] = None,
                     metadata: Optional[Metadata] = None) -> HealthStatus:
        """The grpc.health.v1 status of ``service`` (see `Client.health`)."""
        req = health_pb2.HealthCheckRequest(service=service)
        try:
            resp = await self._unary(self._health.Check, req, timeout, metadata)
        except TandemError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return HealthStatus.SERVICE_UNKNOWN
            raise
        return HEALTH_STATUS.get(resp.status, HealthStatus.UNKNOWN)

    async def _unary(self, method: Callable[..., Awaitable[Any]], request: object,
                     timeout: Optional[float], metadata: Optional[Metadata]) -> Any:
        deadline = Deadline(self.timeout if timeout is None else timeout)
        md = _common.merge_metadata(self.metadata, metadata)
        attempt = 0
        while True:
            try:
                return await method(request, timeout=deadline.remaining(), metadata=md)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            if not isinstance(err, UnavailableError) or attempt >= self.retry_policy.retries:
                raise err
            wait = self.retry_policy.backoff(attempt)
            if not deadline.allows_wait(wait):
                raise err
            attempt += 1
            await asyncio.sleep(wait)
