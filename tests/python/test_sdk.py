"""The Python SDK (clients/python, package tandem_client) against a real `tandem serve`.

A module-scoped `tandem serve` (router + 1 prefill + 1 decode, real processes on loopback)
serves every test but the fault-injection one, which starts its own. Greedy outputs are checked
against the single-process engine (`tandem generate`).
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

import grpc
import pytest

import tandem_client as tc
from serve_util import START_TIMEOUT_S, WAIT_TIMEOUT_S, Serve, free_port, reference_text, \
    wait_for_log

# Greedy cases compared with `tandem generate`: (prompt, chat, max_tokens).
FRANCE = ("The capital of France is", False, 12)
FIB = ("def fibonacci(n):", False, 10)
MATH = ("What is 2+2?", True, 10)
REFERENCE_CASES = (FRANCE, FIB, MATH)



class CallCounter(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Counts the RPC attempts the SDK makes, per method."""

    def __init__(self) -> None:
        self.calls: Dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, details: grpc.ClientCallDetails) -> None:
        with self._lock:
            self.calls[details.method] = self.calls.get(details.method, 0) + 1

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self._count(client_call_details)
        return continuation(client_call_details, request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        self._count(client_call_details)
        return continuation(client_call_details, request)

    def generates(self) -> int:
        return self.calls.get("/tandem.v1.Tandem/Generate", 0)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def serve(model_dir, tmp_path_factory):
    s = Serve(model_dir, tmp_path_factory.mktemp("serve"))
    try:
        s.wait_for_router()
        with tc.Client(s.address, timeout=WAIT_TIMEOUT_S) as c:
            end = time.monotonic() + START_TIMEOUT_S
            while c.health() is not tc.HealthStatus.SERVING:
                assert time.monotonic() < end, "router never became ready"
                time.sleep(0.1)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def references(model_dir) -> Dict[Tuple[str, bool, int], str]:
    with ThreadPoolExecutor(len(REFERENCE_CASES)) as pool:
        texts = pool.map(lambda c: reference_text(model_dir, *c), REFERENCE_CASES)
        return dict(zip(REFERENCE_CASES, texts))


@pytest.fixture
def client(serve):
    with tc.Client(serve.address, timeout=WAIT_TIMEOUT_S) as c:
        yield c


def case_input(case: Tuple[str, bool, int]) -> dict:
    prompt, chat, max_tokens = case
    if chat:
        return {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    return {"prompt": prompt, "max_tokens": max_tokens}


# ---------------------------------------------------------------- generation
@pytest.mark.timeout(900)
def test_stream_matches_tandem_generate(client, references):
    stream = client.generate_stream(FRANCE[0], max_tokens=FRANCE[2])
    chunks: List[tc.Chunk] = []
    assert stream.final is None
    for chunk in stream:
        assert isinstance(chunk, tc.Chunk)
        chunks.append(chunk)
    text = "".join(c.text for c in chunks)
    assert text == references[FRANCE]
    ids = [t for c in chunks for t in c.token_ids]
    assert len(chunks) > 1, "tokens should stream in several chunks"
    final = stream.final
    assert isinstance(final, tc.Final)
    assert final.usage.completion_tokens == len(ids) == FRANCE[2]
    assert final.finish_reason is tc.FinishReason.LENGTH
    assert all(c.logprobs == () for c in chunks)


@pytest.mark.timeout(900)
def test_generate_returns_completion_with_usage(client):
    prompt = "The capital of France is"
    c = client.generate(prompt, max_tokens=6, request_id="sdk-usage-1")
    assert isinstance(c, tc.Completion)
    assert c.usage.prompt_tokens == len(client.tokenize(prompt, add_special_tokens=True))
    assert c.usage.completion_tokens == len(c.token_ids) == 6
    assert c.usage.total_tokens == c.usage.prompt_tokens + 6
    assert c.finish_reason is tc.FinishReason.LENGTH
    assert c.request_id == "sdk-usage-1"
    assert c.prefill_worker and c.decode_worker
    t = c.timings
    assert 0 < t.first_token_seconds <= t.total_seconds
    assert 0 < t.prefill_seconds <= t.total_seconds and t.queue_seconds >= 0
    # Chat input is templated: more prompt tokens than the bare text.
    chat = client.generate(messages=[tc.Message("user", prompt)], max_tokens=1)
    assert chat.usage.prompt_tokens > c.usage.prompt_tokens
    assert chat.usage.completion_tokens == len(chat.token_ids) == 1
    # Token-id input gives the same greedy tokens as the text it came from.
    ids = client.tokenize(prompt, add_special_tokens=True)
    by_ids = client.generate(token_ids=ids, max_tokens=6)
    assert by_ids.token_ids == c.token_ids and by_ids.text == c.text


@pytest.mark.timeout(900)
def test_seeded_sampling_is_reproducible(client):
    def sample(seed: int) -> tc.Completion:
        story = [{"role": "user", "content": "Tell me a story about a fox."}]
        return client.generate(messages=story, max_tokens=16, temperature=0.9, top_p=0.95,
                               seed=seed)

    # Concurrently: the same seed gives the same tokens whatever else shares the batch.
    with ThreadPoolExecutor(3) as pool:
        a, b, c = pool.map(sample, (7, 7, 8))
    assert a.token_ids == b.token_ids and a.text == b.text and a.text.strip()
    assert c.token_ids != a.token_ids, "a different seed should give a different sample"
    assert a.seed == 7 and c.seed == 8


@pytest.mark.timeout(900)
def test_unseeded_sampling_varies_and_its_seed_reproduces_it(client):
    story = [{"role": "user", "content": "Tell me a story about a fox."}]

    def sample(seed=None) -> tc.Completion:
        return client.generate(messages=story, max_tokens=16, temperature=1.0, seed=seed)

    a, b = sample(), sample()
    assert a.seed != b.seed, "the router picks a fresh seed for each unseeded request"
    assert a.token_ids != b.token_ids
    again = sample(a.seed)
    assert again.token_ids == a.token_ids and again.seed == a.seed


@pytest.mark.timeout(900)
def test_async_concurrent_streams(serve, references):
    async def stream_one(client: tc.AsyncClient, case) -> Tuple[str, int, tc.Final]:
        stream = client.generate_stream(**case_input(case))
        text, chunks = "", 0
        async for chunk in stream:
            text += chunk.text
            chunks += 1
        return text, chunks, stream.final

    async def main():
        async with tc.AsyncClient(serve.address, timeout=WAIT_TIMEOUT_S) as client:
            cases = [FRANCE, FIB, MATH, FRANCE]
            results = await asyncio.gather(*(stream_one(client, c) for c in cases))
            completion = await client.generate(FIB[0], max_tokens=FIB[2])
            info = await client.model_info()
            ids = await client.tokenize("Hello world")
            health = await client.health()
            return cases, results, completion, info, ids, health

    cases, results, completion, info, ids, health = asyncio.run(main())
    for case, (text, chunks, final) in zip(cases, results):
        assert text == references[case], case
        assert chunks > 1
        assert final is not None and final.usage.completion_tokens <= case[2]
    assert completion.text == references[FIB]
    assert info.model == "SmolLM2-135M-Instruct" and ids and health is tc.HealthStatus.SERVING


@pytest.mark.timeout(900)
def test_stop_strings(client, references):
    full = references[FRANCE]
    assert "." in full
    cut = client.generate(FRANCE[0], max_tokens=FRANCE[2], stop=["."])
    assert cut.text == full[: full.index(".")]
    assert cut.finish_reason is tc.FinishReason.STOP
    assert cut.usage.completion_tokens == len(cut.token_ids) < FRANCE[2]
    # A single string works too, and a stop string that never appears changes nothing.
    assert client.generate(FRANCE[0], max_tokens=FRANCE[2], stop="\n").text == \
        full[: full.index("\n")]
    assert client.generate(FRANCE[0], max_tokens=FRANCE[2], stop=["@@@"]).text == full


@pytest.mark.timeout(900)
def test_logprobs_when_asked(client):
    c = client.generate(FRANCE[0], max_tokens=5, logprobs=True, top_logprobs=3)
    assert len(c.logprobs) == len(c.token_ids) == 5
    for token, lp in zip(c.token_ids, c.logprobs):
        assert lp.logprob <= 0
        assert len(lp.top) == 3
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        # Greedy: the chosen token is the most probable one.
        assert lp.top[0].token_id == token
        assert lp.top[0].logprob == pytest.approx(lp.logprob)
    only = client.generate(FRANCE[0], max_tokens=3, logprobs=True)
    assert len(only.logprobs) == 3 and all(lp.top == () for lp in only.logprobs)
    assert only.token_ids == c.token_ids[:3]
    assert client.generate(FRANCE[0], max_tokens=2).logprobs == ()


@pytest.mark.timeout(900)
def test_tokenize_model_info_health(client):
    info = client.model_info()
    assert info == tc.ModelInfo(model="SmolLM2-135M-Instruct", architecture="LlamaForCausalLM",
                                max_context_tokens=8192, vocab_size=49152, prefill_workers=1,
                                decode_workers=1)
    ids = client.tokenize("Hello world")
    assert ids and all(isinstance(i, int) and 0 <= i < info.vocab_size for i in ids)
    assert client.tokenize("Hello world Hello world")[: len(ids)] == ids
    assert client.health() is tc.HealthStatus.SERVING
    assert client.health(tc.LIVENESS_SERVICE) is tc.HealthStatus.SERVING
    assert client.health("no.such.Service") is tc.HealthStatus.SERVICE_UNKNOWN


# ---------------------------------------------------------------- errors
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kwargs, field", [
    ({"prompt": ""}, "text"),
    ({"prompt": "Hi", "max_tokens": 0}, "stopping.max_tokens"),
    ({"prompt": "Hi", "max_tokens": 9000}, "stopping.max_tokens"),
    ({"prompt": "Hi", "temperature": -1.0}, "sampling.temperature"),
    ({"prompt": "Hi", "top_p": 1.5}, "sampling.top_p"),
    ({"prompt": "Hi", "top_logprobs": 21}, "top_logprobs"),
    ({"messages": []}, "chat.messages"),
    ({"token_ids": [1 << 20]}, "token_ids.ids"),
])
def test_invalid_arguments_name_the_field(client, kwargs, field):
    kwargs = {"max_tokens": 4, **kwargs}
    stream = client.generate_stream(**kwargs)
    chunks = []
    with pytest.raises(tc.InvalidArgumentError) as info:
        for chunk in stream:
            chunks.append(chunk)
    err = info.value
    assert isinstance(err, tc.TandemError) and isinstance(err, ValueError)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.message, err.message
    assert err.field == field, err.field  # from the status details, not the message
    assert chunks == [] and stream.final is None
    with pytest.raises(tc.InvalidArgumentError, match=re.escape(field)):
        client.generate(**kwargs)


@pytest.mark.timeout(900)
def test_client_side_argument_errors(client):
    with pytest.raises(tc.InvalidArgumentError, match="exactly one of"):
        client.generate("Hi", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(tc.InvalidArgumentError, match="exactly one of"):
        client.generate()
    with pytest.raises(tc.InvalidArgumentError, match="role"):
        client.generate(messages=[{"text": "Hi"}])
    with pytest.raises(TypeError, match="max_token"):
        client.generate("Hi", max_token=3)


@pytest.mark.timeout(900)
def test_deadlines(serve, client):
    for timeout in (0.001, 0.3):
        with pytest.raises(tc.DeadlineExceededError) as info:
            client.generate("Tell me a long story.", max_tokens=200, ignore_eos=True,
                            timeout=timeout)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert isinstance(info.value, TimeoutError)
    # The client-wide default applies when a call gives none.
    with tc.Client(serve.address, timeout=0.3) as short:
        with pytest.raises(tc.DeadlineExceededError):
            short.generate("Tell me a long story.", max_tokens=200, ignore_eos=True)
        assert short.generate("Hi", max_tokens=2,
                              timeout=WAIT_TIMEOUT_S).usage.completion_tokens == 2

    async def async_deadline():
        async with tc.AsyncClient(serve.address) as c:
            with pytest.raises(tc.DeadlineExceededError):
                async for _ in c.generate_stream("Tell me a long story.", max_tokens=200,
                                                 ignore_eos=True, timeout=0.3):
                    pass

    asyncio.run(async_deadline())
    assert client.generate("Hi", max_tokens=2).usage.completion_tokens == 2


@pytest.mark.timeout(900)
def test_closed_port_is_unavailable_after_retries():
    address = f"127.0.0.1:{free_port()}"
    counter = CallCounter()
    with tc.Client(address, retries=2, interceptors=[counter]) as c:
        start = time.monotonic()
        with pytest.raises(tc.UnavailableError) as info:
            c.model_info()
        elapsed = time.monotonic() - start
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        # Two retries after 0.1 s and 0.2 s backoffs (less up to 20% jitter): never sooner.
        assert counter.calls["/tandem.v1.Tandem/ModelInfo"] == 3
        assert elapsed >= 0.24
        with pytest.raises(tc.UnavailableError):
            for _ in c.generate_stream("Hi", max_tokens=2):
                pass
        assert counter.generates() == 3
        with pytest.raises(tc.UnavailableError):
            c.health()
    with tc.Client(address, retries=0) as c:
        with pytest.raises(tc.UnavailableError):
            c.generate("Hi", max_tokens=2)

    async def async_unavailable():
        async with tc.AsyncClient(address, retries=1) as c:
            with pytest.raises(tc.UnavailableError):
                await c.generate("Hi", max_tokens=2)
            with pytest.raises(tc.UnavailableError):
                await c.tokenize("Hi")

    asyncio.run(async_unavailable())


# ---------------------------------------------------------------- cancellation
@pytest.mark.timeout(900)
def test_break_cancels_the_stream_and_the_server_keeps_serving(serve, client, references):
    rid = f"sdk-cancel-{uuid.uuid4().hex[:8]}"
    chunks = 0
    for _ in client.generate_stream("Tell me a long story about a dragon.", max_tokens=200,
                                    ignore_eos=True, request_id=rid):
        chunks += 1
        if chunks == 3:
            break
    # The router saw the cancellation (it logs it at info level; a stream that ran to its 200
    # tokens would not be logged as cancelled).
    assert wait_for_log(serve, rf"req={rid} cancelled"), serve.stderr_tail()

    # Closing a stream explicitly cancels it too.
    rid2 = rid + "-close"
    with client.generate_stream("Tell me a long story about a dragon.", max_tokens=200,
                                ignore_eos=True, request_id=rid2) as stream:
        next(iter(stream))
    assert wait_for_log(serve, rf"req={rid2} cancelled"), serve.stderr_tail()

    async def async_break():
        async with tc.AsyncClient(serve.address, timeout=WAIT_TIMEOUT_S) as c:
            n = 0
            async for _ in c.generate_stream("Tell me a long story about a dragon.",
                                             max_tokens=200, ignore_eos=True,
                                             request_id=rid + "-async"):
                n += 1
                if n == 2:
                    break
            # asyncio closes the abandoned async generator shortly; give it a turn.
            for _ in range(100):
                await asyncio.sleep(0.01)
                if re.search(rf"req={rid}-async cancelled", serve.stderr_path.read_text()):
                    break
            return await c.generate(FIB[0], max_tokens=FIB[2])

    assert asyncio.run(async_break()).text == references[FIB]
    assert wait_for_log(serve, rf"req={rid}-async cancelled"), serve.stderr_tail()
    # The server keeps serving, with the same greedy output as before.
    assert client.generate(FRANCE[0], max_tokens=FRANCE[2]).text == references[FRANCE]


# ---------------------------------------------------------------- retries against a real fault
@pytest.mark.timeout(900)
def test_retries_before_output_and_never_replays_after(model_dir, tmp_path):
    """UNAVAILABLE before any output is retried (the server is still starting); a failure after
    tokens streamed (the decode worker is killed) is raised, never replayed."""
    port = free_port()
    counter = CallCounter()
    # However long the server takes to start here, the first call keeps retrying until then:
    # more retries than fit in the call's deadline (a hang guard), since the backoff never grows
    # past 2 s; so the call succeeds soon after the workers are in rotation.
    starting = tc.Client(f"127.0.0.1:{port}", retries=500, timeout=START_TIMEOUT_S,
                         interceptors=[counter])
    with starting, tc.Client(f"127.0.0.1:{port}", retries=10, timeout=WAIT_TIMEOUT_S,
                             interceptors=[counter]) as c:
        serve = Serve(model_dir, tmp_path, "--port", str(port))
        try:
            # Sent at once: refused until the router listens and has its workers.
            first = starting.generate(FRANCE[0], max_tokens=2)
            assert first.usage.completion_tokens == 2
            assert counter.generates() > 1, "the first attempt should have found no server"

            before = counter.generates()
            received = 0
            with pytest.raises(tc.TandemError) as info:
                for _ in c.generate_stream("Tell me a long story.", max_tokens=200,
                                           ignore_eos=True):
                    received += 1
                    if received == 2:
                        os.kill(serve.child_pid("tandem-decode"), signal.SIGKILL)
            assert received >= 2
            assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                       grpc.StatusCode.CANCELLED), info.value
            assert counter.generates() == before + 1, "a stream that produced output was replayed"
        finally:
            serve.stop()


@pytest.mark.timeout(900)
def test_quickstart_example_runs(serve, repo_root):
    example = repo_root / "clients" / "python" / "examples" / "quickstart.py"
    proc = subprocess.run([sys.executable, str(example), serve.address], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout and "refused: text must not be empty" in proc.stdout


# ---------------------------------------------------------------- reflection
@pytest.mark.timeout(900)
def test_server_reflection_describes_and_calls_the_api_without_stubs(serve):
    """What grpcurl does: list services, resolve descriptors, call with dynamic messages."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
        ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(serve.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"tandem.v1.Tandem", "grpc.health.v1.Health"} <= services, services
        pool = descriptor_pool.DescriptorPool(db)
        tandem = pool.FindServiceByName("tandem.v1.Tandem")
        assert {m.name for m in tandem.methods} == {"Generate", "Tokenize", "ModelInfo"}
        request_desc = pool.FindMessageTypeByName("tandem.v1.TokenizeRequest")
        Request = message_factory.GetMessageClass(request_desc)
        Response = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("tandem.v1.TokenizeResponse"))
        tokenize = channel.unary_unary("/tandem.v1.Tandem/Tokenize",
                                       request_serializer=Request.SerializeToString,
                                       response_deserializer=Response.FromString)
        got = tokenize(Request(text="Hello world"), timeout=WAIT_TIMEOUT_S)
        with tc.Client(serve.address, timeout=WAIT_TIMEOUT_S) as c:
            assert list(got.token_ids) == c.tokenize("Hello world") and got.token_ids
