"""The router's OpenAI-compatible HTTP API against a real `tandem serve` (router + 1 prefill +
1 decode on loopback), through the official `openai` package and raw HTTP.

The module's server requires an API key, so every call here also proves the key is accepted;
the key tests prove it is required, on HTTP and on gRPC. Greedy outputs are compared with the
single-process engine (`tandem generate`).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlparse

import openai
import pytest

import tandem_client as tc
from serve_util import START_TIMEOUT_S, WAIT_TIMEOUT_S, Serve, reference_text, wait_for_log

KEY = f"tk-{uuid.uuid4().hex}"
MODEL = "SmolLM2-135M-Instruct"
FRANCE_Q = "What is the capital of France?"


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def serve(model_dir, tmp_path_factory):
    s = Serve(model_dir, tmp_path_factory.mktemp("openai-serve"), "--api-key", KEY)
    try:
        s.wait_for_router()
        assert s.http, f"tandem serve printed no router http line: {s.endpoints}"
        end = time.monotonic() + START_TIMEOUT_S
        while raw(s, "GET", "/health")[0] != 200:
            assert time.monotonic() < end, "GET /health never answered 200"
            time.sleep(0.1)
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(serve) -> openai.OpenAI:
    c = openai.OpenAI(base_url=serve.http + "/v1", api_key=KEY, max_retries=0,
                      timeout=WAIT_TIMEOUT_S)
    yield c
    c.close()


def raw(serve: Serve, method: str, path: str, body=None, headers=None, key: str | None = KEY):
    """One HTTP request; returns (status, headers dict, body bytes)."""
    u = urlparse(serve.http)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=WAIT_TIMEOUT_S)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    out = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    conn.close()
    return out


def error_of(body: bytes) -> dict:
    j = json.loads(body)
    assert set(j) == {"error"}, j
    assert {"message", "type", "param", "code"} <= set(j["error"]), j
    assert j["error"]["message"], j
    return j["error"]


# ---------------------------------------------------------------- generation
@pytest.mark.timeout(900)
def test_chat_and_completions_match_tandem_generate(client, model_dir):
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE_Q}], max_tokens=24,
        temperature=0)
    assert chat.object == "chat.completion" and chat.model == MODEL
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == reference_text(model_dir, FRANCE_Q, True, 24)
    assert "Paris" in chat.choices[0].message.content

    done = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=12, temperature=0)
    assert done.object == "text_completion"
    assert done.choices[0].text == reference_text(model_dir, "The capital of France is", False, 12)
    assert done.choices[0].finish_reason == "length"


@pytest.mark.timeout(900)
def test_chat_without_max_tokens_gets_the_rest_of_what_fits(client):
    # No max_tokens: the rest of the context, or of the decode worker's KV pool where that is
    # smaller (the default pool here holds fewer tokens than the model's 8192-token context, and
    # a request longer than every pool would be refused).
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE_Q}], temperature=0)
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert "Paris" in chat.choices[0].message.content
    assert chat.usage.completion_tokens >= 1


def test_max_tokens_beyond_every_decode_pool_is_400_naming_it(serve):
    # 6,000 tokens: under the model's 8,192-token context, over the 5,824 the default decode
    # pool holds. No worker could ever finish it: the request's error, not a 429 to retry.
    status, _, data = raw(serve, "POST", "/v1/completions",
                          {"prompt": "hi", "max_tokens": 6000})
    assert status == 400, data
    err = error_of(data)
    assert err["param"] == "max_tokens" and "KV cache" in err["message"], err


@pytest.mark.timeout(900)
def test_usage_counts_prompt_and_generated_tokens(client, serve):
    with tc.Client(serve.address, api_key=KEY, timeout=WAIT_TIMEOUT_S) as g:
        prompt_ids = g.tokenize("The capital of France is", add_special_tokens=True)
    done = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=9, temperature=0, logprobs=1)
    u = done.usage
    assert u.prompt_tokens == len(prompt_ids)
    assert u.completion_tokens == 9 == len(done.choices[0].logprobs.tokens)
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    # Token ids in, exact counts out; n multiplies completion tokens, not prompt tokens.
    ids = client.completions.create(model=MODEL, prompt=[1000, 2000, 3000, 4000], max_tokens=5,
                                    temperature=0, n=2, extra_body={"ignore_eos": True})
    assert ids.usage.prompt_tokens == 4 and ids.usage.completion_tokens == 10
    assert [c.index for c in ids.choices] == [0, 1]
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE_Q}], max_tokens=24,
        temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert chat.usage.completion_tokens == len(content) > 0
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert bytes(entry.bytes).decode(errors="replace") == entry.token


@pytest.mark.timeout(900)
def test_streams_carry_the_same_text_and_usage(client):
    whole = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE_Q}], max_tokens=24,
        temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE_Q}], max_tokens=24,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1

    plain = client.completions.create(model=MODEL, prompt="def fibonacci(n):", max_tokens=16,
                                      temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="def fibonacci(n):", max_tokens=16, temperature=0, stream=True)
        if c.choices)
    assert streamed == plain.choices[0].text


@pytest.mark.timeout(900)
def test_stop_strings_are_honoured(client):
    full = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE_Q}], max_tokens=24,
        temperature=0).choices[0].message.content
    assert "Paris" in full
    cut = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE_Q}], max_tokens=24,
        temperature=0, stop=["Paris", "never-there"])
    assert cut.choices[0].message.content == full[: full.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE_Q}], max_tokens=24,
        temperature=0, stop="Paris", stream=True) if c.choices)
    assert streamed == cut.choices[0].message.content


@pytest.mark.timeout(900)
def test_seed_reproduces_samples(client):
    def sample(seed, n=1):
        return client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16,
                                          temperature=1.0, top_p=0.95, seed=seed, n=n)

    a, b, c = sample(7), sample(7), sample(8)
    assert a.choices[0].text == b.choices[0].text and a.choices[0].text.strip()
    assert c.choices[0].text != a.choices[0].text
    # n samples use seed, seed + 1, ...: choice 1 of seed 7 is choice 0 of seed 8.
    two = sample(7, n=2)
    assert two.choices[0].text == a.choices[0].text
    assert two.choices[1].text == c.choices[0].text


# ---------------------------------------------------------------- framing
@pytest.mark.timeout(900)
def test_sse_framing_byte_for_byte(serve):
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, data = raw(serve, "POST", "/v1/completions", body)
    assert status == 200, data
    assert headers["content-type"].startswith("text/event-stream")
    text = data.decode()
    # Nothing but "data: <one-line JSON>\n\n" events, ending with exactly one "data: [DONE]\n\n".
    assert re.fullmatch(r"(data: \{[^\n]*\}\n\n)+data: \[DONE\]\n\n", text), text
    events = [json.loads(e[len("data: "):]) for e in text.split("\n\n")[:-2]]
    for e in events:
        assert set(e) == {"id", "object", "created", "model", "choices", "usage"}, e
        assert e["object"] == "text_completion" and e["model"] == MODEL
    *tokens, finish, usage = events
    assert all(len(e["choices"]) == 1 and e["choices"][0]["finish_reason"] is None and
               e["usage"] is None for e in tokens)
    assert finish["choices"] == [{"index": 0, "text": "", "logprobs": None,
                                  "finish_reason": "length"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    streamed = "".join(e["choices"][0]["text"] for e in tokens)
    status, _, whole = raw(serve, "POST", "/v1/completions", {**body, "stream": False,
                                                              "stream_options": None})
    assert status == 200
    assert json.loads(whole)["choices"][0]["text"] == streamed
    # Each event is exactly what re-serialising its JSON compactly gives (one line, no spaces
    # between tokens of the JSON), so any client's line-based SSE parser reads it.
    for line in text.split("\n\n")[:-2]:
        payload = line[len("data: "):]
        assert payload == json.dumps(json.loads(payload), separators=(",", ":"),
                                     ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------- errors
@pytest.mark.timeout(900)
def test_bad_requests_get_openai_errors(client, serve):
    status, headers, data = raw(serve, "POST", "/v1/chat/completions", b'{"messages": [')
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert error_of(data)["code"] == "invalid_json"

    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "gpt-4o" in e.value.message

    cases = [({"temperature": 5}, "temperature"), ({"top_p": 0}, "top_p"),
             ({"max_tokens": 0}, "max_tokens"), ({"n": 0}, "n"),
             ({"presence_penalty": -3}, "presence_penalty"), ({"top_logprobs": 2}, "top_logprobs"),
             ({"max_tokens": 100000}, "max_tokens")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                           **extra)
        assert e.value.status_code == 400
        assert e.value.body["param"] == param, (extra, e.value.body)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="")
    assert e.value.body["param"] == "prompt"
    status, _, data = raw(serve, "POST", "/v1/chat/completions",
                          {"messages": [{"role": "wizard", "content": "x"}]})
    assert status == 400 and error_of(data)["param"] == "messages[0].role"
    status, _, data = raw(serve, "GET", "/v1/nothing-here")
    assert status == 404 and error_of(data)["type"] == "not_found_error"


@pytest.mark.timeout(900)
def test_full_queue_is_429_and_draining_is_503(model_dir, tmp_path):
    # A drain budget far beyond any stream here: the stream in flight must finish, not be cut
    # (cuts are test_drain.py's subject).
    s = Serve(model_dir, tmp_path / "serve", "--max-queue", "1", "--drain-ms", "600000")
    try:
        s.wait_for_router()
        first = http.client.HTTPConnection(urlparse(s.http).hostname, urlparse(s.http).port,
                                           timeout=600)
        first.request("POST", "/v1/completions", json.dumps(
            {"prompt": "Once upon a time", "max_tokens": 100, "ignore_eos": True,
             "stream": True}), {"Content-Type": "application/json"})
        resp = first.getresponse()
        assert resp.status == 200
        head = resp.read1(64)  # streaming: the one queue slot is taken
        status, _, data = raw(s, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                              key=None)
        assert status == 429, data
        assert error_of(data)["type"] == "rate_limit_error"
        # The decode worker frozen, the stream cannot end while /health is polled below, however
        # fast this machine decodes.
        decode = s.child_pid("tandem-decode")
        os.kill(decode, signal.SIGSTOP)
        try:
            # SIGTERM drains the router: /health says 503 while the stream in flight finishes.
            os.kill(s.child_pid("tandem-router"), signal.SIGTERM)
            end = time.monotonic() + 120
            while raw(s, "GET", "/health", key=None)[0] != 503:
                assert time.monotonic() < end, "/health never answered 503 while draining"
                time.sleep(0.02)
            assert json.loads(raw(s, "GET", "/health", key=None)[2])["status"] == "draining"
            status, _, data = raw(s, "POST", "/v1/completions",
                                  {"prompt": "hi", "max_tokens": 2}, key=None)
            assert status == 503 and "draining" in error_of(data)["message"], data
        finally:
            os.kill(decode, signal.SIGCONT)
        body = (head + resp.read()).decode()
        events = [e for e in body.split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "data: [DONE]", events[-3:]
        assert '"error"' not in body, body[-600:]
        assert json.loads(events[-2][len("data: "):])["choices"][0]["finish_reason"] == "length"
        first.close()
    finally:
        s.stop()


# ---------------------------------------------------------------- API keys
@pytest.mark.timeout(900)
def test_api_key_is_required_on_http_and_grpc(serve):
    for key in (None, "wrong-key"):
        status, _, data = raw(serve, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                              key=key)
        assert status == 401, data
        assert error_of(data)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=serve.http + "/v1", api_key="wrong-key", max_retries=0) \
            .models.list()
    # Probes and scrapers need no key.
    assert raw(serve, "GET", "/health", key=None)[0] == 200
    status, _, metrics = raw(serve, "GET", "/metrics", key=None)
    assert status == 200 and b"tandem_request_errors_total" in metrics
    models = openai.OpenAI(base_url=serve.http + "/v1", api_key=KEY).models.list()
    assert [m.id for m in models.data] == [MODEL]

    for key in ("", "wrong-key"):
        with tc.Client(serve.address, api_key=key, timeout=WAIT_TIMEOUT_S, retries=0) as g:
            with pytest.raises(tc.UnauthenticatedError):
                g.generate("hi", max_tokens=2)
            with pytest.raises(tc.UnauthenticatedError):
                g.tokenize("hi")
            assert g.health() is tc.HealthStatus.SERVING  # health stays open
    with tc.Client(serve.address, api_key=KEY, timeout=WAIT_TIMEOUT_S) as g:
        assert g.generate("The capital of France is", max_tokens=3).usage.completion_tokens == 3


# ---------------------------------------------------------------- disconnects
def send_raw(serve: Serve, body: dict) -> socket.socket:
    """POSTs /v1/completions on a raw socket (closing it is a client hanging up)."""
    u = urlparse(serve.http)
    payload = json.dumps(body).encode()
    s = socket.create_connection((u.hostname, u.port), timeout=WAIT_TIMEOUT_S)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              b"\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    return s


@pytest.mark.timeout(900)
def test_client_disconnect_cancels_and_frees_pages(serve):
    long = {"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True}
    # Mid-stream: a few tokens arrive, then the client goes away.
    with send_raw(serve, {**long, "stream": True}) as s:
        got = b""
        while len(got) < 600:
            part = s.recv(4096)
            assert part, "the server closed first"
            got += part
    assert serve.wait_metric("decode", "tandem_kv_pages_used", 0) == 0
    # Seen by the connection watch or by the next failed write, whichever comes first.
    assert wait_for_log(serve, r"cmpl-\w+: (the client disconnected|a write to the client failed)"), \
        serve.stderr_tail()
    # Non-streaming: the client leaves while the whole answer is still being computed.
    def disconnects() -> int:
        return serve.stderr_path.read_text().count("the client disconnected")

    before = disconnects()
    with send_raw(serve, long):
        end = time.monotonic() + WAIT_TIMEOUT_S
        while serve.metric("decode", "tandem_kv_pages_used") == 0:
            assert time.monotonic() < end, "the request never reached the decode worker"
            time.sleep(0.05)
    assert serve.wait_metric("decode", "tandem_kv_pages_used", 0) == 0
    end = time.monotonic() + WAIT_TIMEOUT_S
    while disconnects() <= before:  # logged as it is seen, around when the pages go back
        assert time.monotonic() < end, serve.stderr_tail()
        time.sleep(0.05)
    assert serve.wait_metric("prefill", "tandem_kv_pages_used", 0) == 0


@pytest.mark.timeout(900)
def test_models_and_health(serve):
    status, _, data = raw(serve, "GET", "/v1/models")
    assert status == 200
    models = json.loads(data)
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    assert models["data"][0]["max_model_len"] == 8192
    status, _, data = raw(serve, "GET", f"/v1/models/{MODEL}")
    assert status == 200 and json.loads(data)["id"] == MODEL
    assert raw(serve, "GET", "/v1/models/other")[0] == 404
    try:
        urllib.request.urlopen(serve.http + "/health", timeout=WAIT_TIMEOUT_S)
    except urllib.error.HTTPError as e:  # pragma: no cover - the assertion below explains
        pytest.fail(f"/health answered {e.code}")
