"""Hostile clients against a real `tandem serve`: request bodies over the router's bound in
every framing (chunked, gzip-compressed), and requests over its RequestLimits (stop strings,
stop ids, prompts x n, prompt bytes, request ids) on HTTP and gRPC. Each gets a clear error (HTTP
400/413 in OpenAI's shape naming the parameter, gRPC INVALID_ARGUMENT naming the field), and the
server keeps serving normal requests afterwards. Defaults of the bounds: README "Request limits".
"""
from __future__ import annotations

import gzip
import json
import socket
import time
from urllib.parse import urlparse

import pytest

import tandem_client as tc
from raw_http import read_all, read_response
from serve_util import START_TIMEOUT_S, WAIT_TIMEOUT_S, Serve

MAX_BODY = 16 << 20  # RequestLimits defaults
MAX_STOPS = 16
MAX_STOP_BYTES = 256
MAX_CHOICES = 128


@pytest.fixture(scope="module")
def serve(model_dir, tmp_path_factory):
    s = Serve(model_dir, tmp_path_factory.mktemp("bounds-serve"))
    try:
        s.wait_for_router()
        assert s.http, f"tandem serve printed no router http line: {s.endpoints}"
        end = time.monotonic() + START_TIMEOUT_S
        while exchange(s, request(s, "GET", "/health"))[0] != 200:
            assert time.monotonic() < end, "GET /health never answered 200"
            time.sleep(0.1)
        yield s
    finally:
        s.stop()


def request(serve: Serve, method: str, path: str, body: bytes = b"", headers=None) -> bytes:
    u = urlparse(serve.http)
    h = {"Host": f"{u.hostname}:{u.port}", "Content-Type": "application/json"}
    if method != "GET":
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode() + b"\r\n" + body


def exchange(serve: Serve, *parts: bytes) -> tuple[int, dict, bytes]:
    """Sends `parts` on a new connection (errors sending are the server refusing the rest: it
    answers first) and reads one response."""
    u = urlparse(serve.http)
    with socket.create_connection((u.hostname, u.port), timeout=WAIT_TIMEOUT_S) as s:
        try:
            for p in parts:
                s.sendall(p)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_response(s)


def api_error(body: bytes) -> dict:
    j = json.loads(body)
    assert set(j) == {"error"}, j
    assert j["error"]["message"], j
    return j["error"]


def completion(**fields) -> bytes:
    return json.dumps({"prompt": "The capital of France is", "max_tokens": 2, **fields}).encode()


def assert_still_serving(serve: Serve) -> None:
    status, _, body = exchange(serve, request(serve, "POST", "/v1/completions", completion()))
    assert status == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] == 2
    with tc.Client(serve.address, timeout=WAIT_TIMEOUT_S, retries=0) as g:
        assert g.generate("The capital of France is", max_tokens=2).usage.completion_tokens == 2


def grpc_invalid(serve: Serve, prompt="The capital of France is", **options) -> str:
    with tc.Client(serve.address, timeout=WAIT_TIMEOUT_S, retries=0) as g:
        with pytest.raises(tc.InvalidArgumentError) as e:
            g.generate(prompt, max_tokens=2, **options)
    return str(e.value)


# ---------------------------------------------------------------- bodies
@pytest.mark.timeout(600)
def test_chunked_body_over_the_limit_is_413_and_the_connection_stays_usable(serve):
    """cpp-httplib bounds only Content-Length bodies; a chunked one is bounded as it is read.
    A body a little over the bound is read past, so the keep-alive connection still works."""
    body = completion() + b" " * (MAX_BODY + (1 << 20))  # valid JSON, over the bound
    head = request(serve, "POST", "/v1/completions",
                   headers={"Content-Length": None, "Transfer-Encoding": "chunked"})
    step = 1 << 16
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                      for i in range(0, len(body), step)) + b"0\r\n\r\n"
    u = urlparse(serve.http)
    with socket.create_connection((u.hostname, u.port), timeout=WAIT_TIMEOUT_S) as s:
        s.sendall(head + chunks)
        status, _, data = read_response(s)
        assert status == 413, data[:300]
        err = api_error(data)
        assert err["code"] == "request_too_large" and str(MAX_BODY) in err["message"], err
        # Same connection, next request.
        s.sendall(request(serve, "POST", "/v1/completions", completion()))
        status, _, data = read_response(s)
        assert status == 200, data
    assert_still_serving(serve)


@pytest.mark.timeout(600)
def test_content_length_over_the_limit_is_413_unread_and_closed(serve):
    """The declared length alone is refused: the client sends the head and no body byte, and
    gets 413 naming the bound and its flag at once (the HTTP reactor answers it, no worker
    thread reads the body), then the connection closes."""
    head = request(serve, "POST", "/v1/completions",
                   headers={"Content-Length": str(MAX_BODY + 1)})
    u = urlparse(serve.http)
    with socket.create_connection((u.hostname, u.port), timeout=WAIT_TIMEOUT_S) as s:
        s.sendall(head)
        status, headers, data = read_response(s)
        assert status == 413, data[:300]
        assert headers.get("connection") == "close", headers
        err = api_error(data)
        assert err["code"] == "request_too_large", err
        assert str(MAX_BODY) in err["message"] and "--max-body-bytes" in err["message"], err
        assert read_all(s) == b"", "the connection stayed open"
    assert_still_serving(serve)


@pytest.mark.timeout(600)
def test_gzip_bomb_is_413_without_inflating_it(serve):
    """200 MiB of JSON whitespace compressed to ~200 KB: refused once the inflated bytes pass
    the bound (a whole inflation would hold 200 MiB)."""
    bomb = gzip.compress(completion() + b" " * (200 << 20), compresslevel=9)
    assert len(bomb) < MAX_BODY
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(bomb), bomb)
    for framing, payload in (({"Content-Length": str(len(bomb))}, bomb),
                             ({"Content-Length": None, "Transfer-Encoding": "chunked"}, chunked)):
        head = request(serve, "POST", "/v1/completions",
                       headers={"Content-Encoding": "gzip", **framing})
        status, _, data = exchange(serve, head, payload)
        assert status == 413, data[:300]
        assert api_error(data)["code"] == "request_too_large"
    # A small gzip body is fine.
    small = gzip.compress(completion())
    status, _, data = exchange(serve, request(serve, "POST", "/v1/completions", small,
                                              headers={"Content-Encoding": "gzip"}))
    assert status == 200, data
    assert_still_serving(serve)


@pytest.mark.timeout(600)
def test_other_routes_answer_unframed_bodies_without_reading_them(serve):
    """Outside the completion routes cpp-httplib would read a chunked body, or one without a
    Content-Length (until the client closes), into memory before routing: the router answers
    404 at once, while the client is still sending."""
    u = urlparse(serve.http)
    cases = [
        ("POST", "/v1/nothing", {"Content-Length": None, "Transfer-Encoding": "chunked"},
         b"100000\r\n" + b"x" * 4096),
        ("PUT", "/v1/completions", {"Content-Length": None, "Transfer-Encoding": "chunked"},
         b"100000\r\n" + b"x" * 4096),
        ("POST", "/health", {"Content-Length": None}, b"y" * 4096),
        ("DELETE", "/v1/models", {"Content-Length": "10", "Content-Encoding": "gzip"}, b""),
    ]
    for method, path, headers, start in cases:
        with socket.create_connection((u.hostname, u.port), timeout=30) as s:
            s.sendall(request(serve, method, path, headers=headers) + start)
            status, _, data = read_response(s)  # the body is far from complete
            assert status == 404, (method, path, data)
            assert api_error(data)["type"] == "not_found_error"
    assert_still_serving(serve)


# ---------------------------------------------------------------- request shape
@pytest.mark.timeout(600)
def test_too_many_stop_strings(serve):
    stops = [f"s{i}" for i in range(MAX_STOPS + 1)]
    status, _, data = exchange(serve, request(serve, "POST", "/v1/completions",
                                              completion(stop=stops)))
    assert status == 400 and api_error(data)["param"] == "stop", data
    msg = grpc_invalid(serve, stop=stops)
    assert "stopping.stop" in msg and str(MAX_STOPS) in msg, msg
    assert_still_serving(serve)


@pytest.mark.timeout(600)
def test_too_long_stop_string(serve):
    stop = "x" * (MAX_STOP_BYTES + 1)
    status, _, data = exchange(serve, request(serve, "POST", "/v1/completions",
                                              completion(stop=[stop])))
    assert status == 400, data
    err = api_error(data)
    assert err["param"] == "stop" and str(MAX_STOP_BYTES) in err["message"], err
    msg = grpc_invalid(serve, stop=[stop])
    assert "stopping.stop" in msg and "bytes" in msg, msg
    assert_still_serving(serve)


@pytest.mark.timeout(600)
def test_too_many_stop_token_ids(serve):
    ids = list(range(3, 3 + 65))
    status, _, data = exchange(serve, request(serve, "POST", "/v1/completions",
                                              completion(stop_token_ids=ids)))
    assert status == 400 and api_error(data)["param"] == "stop_token_ids", data
    msg = grpc_invalid(serve, stop_token_ids=ids)
    assert "stopping.stop_token_ids" in msg, msg
    assert_still_serving(serve)


@pytest.mark.timeout(600)
def test_too_many_prompts_times_n(serve):
    """Each of 10 prompts and n = 20 is within its own range; 200 calls together are not."""
    body = completion(prompt=[f"p{i}" for i in range(10)], n=20, max_tokens=1)
    status, _, data = exchange(serve, request(serve, "POST", "/v1/completions", body))
    assert status == 400, data[:300]
    err = api_error(data)
    assert err["param"] == "n" and str(MAX_CHOICES) in err["message"], err
    assert_still_serving(serve)


@pytest.mark.timeout(600)
def test_prompt_bytes_are_bounded_before_tokenization(serve):
    text = "word " * ((1 << 20) // 5 + 1)
    msg = grpc_invalid(serve, prompt=None, messages=[{"role": "user", "content": text}])
    assert msg.find("chat.messages") >= 0 and "bytes" in msg, msg
    with tc.Client(serve.address, timeout=WAIT_TIMEOUT_S, retries=0) as g:
        with pytest.raises(tc.InvalidArgumentError, match="bytes"):
            g.tokenize(text)
    status, _, data = exchange(serve, request(serve, "POST", "/v1/completions",
                                              completion(prompt=text)))
    assert status == 400, data[:300]
    err = api_error(data)
    assert err["param"] == "prompt" and "bytes" in err["message"], err
    assert_still_serving(serve)


@pytest.mark.timeout(600)
def test_overlong_or_unprintable_request_id(serve):
    for rid in ("r" * 129, "line\nbreak"):
        msg = grpc_invalid(serve, request_id=rid)
        assert "request_id" in msg, msg
    with tc.Client(serve.address, timeout=WAIT_TIMEOUT_S, retries=0) as g:
        done = g.generate("The capital of France is", max_tokens=2, request_id="r" * 128)
        assert done.request_id == "r" * 128
    assert_still_serving(serve)


# ---------------------------------------------------------------- tandem serve passthrough
@pytest.mark.timeout(600)
def test_serve_passes_router_and_worker_flags_through(model_dir, tmp_path):
    """`tandem serve` mirrors only common flags; --router-arg / --prefill-arg / --decode-arg carry
    the rest (here a tighter stop-string bound) to each binary, and a flag a binary does not
    know stops `tandem serve` with that binary's error naming it."""
    s = Serve(model_dir, tmp_path / "tight", "--router-arg=--max-stop-strings=2",
              "--prefill-arg=--max-batch-tokens=256", "--decode-arg=--lease-ms=20000")
    try:
        s.wait_for_router()
        msg = grpc_invalid(s, stop=["#1#", "#2#", "#3#"])
        assert "stopping.stop" in msg and "2" in msg, msg
        with tc.Client(s.address, timeout=WAIT_TIMEOUT_S, retries=0) as g:
            done = g.generate("The capital of France is", max_tokens=2, stop=["#1#", "#2#"])
            assert len(done.token_ids) == 2, done
    finally:
        s.stop()
    for role in ("router", "prefill", "decode"):
        bad = Serve(model_dir, tmp_path / f"bad-{role}", f"--{role}-arg=--no-such-flag")
        try:
            rc = bad.proc.wait(timeout=START_TIMEOUT_S)
        finally:
            bad.stop()
        err = bad.stderr_path.read_text(errors="replace")
        assert rc != 0 and "--no-such-flag" in err, (role, rc, err[-2000:])
