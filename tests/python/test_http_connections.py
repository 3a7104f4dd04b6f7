"""The router's HTTP listener under idle, slow and excess connections, against a real
`tandem serve`: over --http-max-connections a new connection gets 503 in OpenAI's error shape
naming the limit; headers not complete within --http-header-timeout-ms get 408, bodies not
complete within --http-body-timeout-ms too (slow bodies hold no thread); with many idle
and slow-header connections open, GET /health and a completion still answer, and the router
holds no thread per idle connection. Waits end on events (a response, a close, a metric value):
no timing assertions. Latency figures: bench/http_idle_connections.py.
"""
from __future__ import annotations

import json
import socket
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlparse

import pytest

from raw_http import read_all, read_response
from serve_util import START_TIMEOUT_S, WAIT_TIMEOUT_S, Serve

CAP = 64


def start(model_dir: Path, logs: Path, *router_args: str) -> Serve:
    s = Serve(model_dir, logs, *(f"--router-arg={a}" for a in router_args))
    s.wait_for_router()
    assert s.http, f"tandem serve printed no router http line: {s.endpoints}"
    end = time.monotonic() + START_TIMEOUT_S
    while get(s, "/health")[0] != 200:
        assert time.monotonic() < end, "GET /health never answered 200"
        time.sleep(0.1)
    return s


@pytest.fixture(scope="module")
def capped(model_dir, tmp_path_factory):
    # Long header timeout: idle connections stay open for as long as a test holds them.
    s = start(model_dir, tmp_path_factory.mktemp("capped"), f"--http-max-connections={CAP}",
              "--http-header-timeout-ms=600000")
    try:
        yield s
    finally:
        s.stop()


def connect(serve: Serve) -> socket.socket:
    u = urlparse(serve.http)
    return socket.create_connection((u.hostname, u.port), timeout=WAIT_TIMEOUT_S)


def get(serve: Serve, path: str) -> tuple[int, bytes]:
    with connect(serve) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        status, _, body = read_response(s)
        return status, body


def complete(serve: Serve) -> dict:
    body = json.dumps({"prompt": "The capital of France is", "max_tokens": 2}).encode()
    req = urllib.request.Request(serve.http + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=WAIT_TIMEOUT_S) as r:
        assert r.status == 200
        return json.loads(r.read())


def open_connections(serve: Serve) -> float:
    return serve.metric("router", "tandem_http_connections")


def closed(serve: Serve, reason: str) -> float:
    url = serve.endpoints["router metrics"][0]
    text = urllib.request.urlopen(url, timeout=60).read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("tandem_http_connections_closed_total{")
               and f'reason="{reason}"' in ln)


def wait_closed(serve: Serve, reason: str, want: float) -> float:
    """Polls the counter until it reaches `want` (or the hang guard); the last value."""
    end = time.monotonic() + WAIT_TIMEOUT_S
    value = closed(serve, reason)
    while value < want and time.monotonic() < end:
        time.sleep(0.05)
        value = closed(serve, reason)
    return value


def router_threads(serve: Serve) -> int:
    status = Path(f"/proc/{serve.child_pid('tandem-router')}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("Threads:")).split()[1])


def test_health_and_a_completion_answer_with_idle_and_slow_connections_open(capped):
    base = open_connections(capped)
    threads_before = router_threads(capped)
    with ExitStack() as stack:
        conns = [stack.enter_context(connect(capped)) for _ in range(40)]  # idle
        for _ in range(10):  # slow: a header line, never the end of the headers
            s = stack.enter_context(connect(capped))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nX-Slow: 1")
            conns.append(s)
        assert capped.wait_metric("router", "tandem_http_connections", base + 50) == base + 50
        for _ in range(5):
            status, body = get(capped, "/health")
            assert status == 200, body
            assert json.loads(body) == {"status": "ok"}
        assert complete(capped)["usage"]["completion_tokens"] == 2
        # None of the 50 holds a thread (the old listener kept 256 threads for connections).
        threads_during = router_threads(capped)
        assert threads_during < threads_before + 20, (threads_before, threads_during)
    assert capped.wait_metric("router", "tandem_http_connections", base) == base


def test_a_connection_over_the_cap_gets_503_naming_the_limit(capped):
    base = int(open_connections(capped))
    with ExitStack() as stack:
        for _ in range(CAP - base):
            stack.enter_context(connect(capped))
        assert capped.wait_metric("router", "tandem_http_connections", CAP) == CAP
        refused_before = closed(capped, "over_limit")
        with connect(capped) as extra:
            try:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = read_all(extra)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        err = json.loads(body)["error"]
        assert err["code"] == "too_many_connections", err
        assert str(CAP) in err["message"] and "--http-max-connections" in err["message"], err
        assert wait_closed(capped, "over_limit", refused_before + 1) == refused_before + 1
    # Room again once they close.
    assert capped.wait_metric("router", "tandem_http_connections", base) == base
    assert complete(capped)["usage"]["completion_tokens"] == 2


def test_keep_alive_and_streaming_still_work(capped):
    with connect(capped) as s:
        for _ in range(3):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(s)[0] == 200
        body = json.dumps({"prompt": "The capital of France is", "max_tokens": 3,
                           "stream": True}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                  b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"data: [DONE]" in answer, answer[-300:]


def test_slow_headers_get_408_and_the_server_keeps_serving(model_dir, tmp_path):
    s = start(model_dir, tmp_path / "slow", "--http-header-timeout-ms=1000")
    try:
        with connect(s) as slow:
            slow.sendall(b"POST /v1/completions HTTP/1.1\r\n")
            answer = b""
            # Slowloris: one header byte at a time until the server answers and closes.
            for i in range(int(WAIT_TIMEOUT_S * 10)):
                try:
                    slow.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    break
                slow.settimeout(0.1)
                try:
                    d = slow.recv(65536)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    break
                answer += d
                if not d or b"\r\n\r\n" in answer:
                    break
            slow.settimeout(WAIT_TIMEOUT_S)
            answer += read_all(slow)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        err = json.loads(body)["error"]
        assert err["code"] == "request_timeout" and "--http-header-timeout-ms" in err["message"]
        assert wait_closed(s, "header_timeout", 1) == 1
        assert get(s, "/health")[0] == 200
        assert complete(s)["usage"]["completion_tokens"] == 2
    finally:
        s.stop()


def test_slow_bodies_hold_no_thread_and_get_408(model_dir, tmp_path):
    # More slow bodies than --http-threads (4, its minimum): the router reads bodies without a
    # thread, so a completion and /health are still served; each slow body then gets 408 naming
    # --http-body-timeout-ms and is closed (reason body_timeout).
    s = start(model_dir, tmp_path / "bodies", "--http-threads=4", "--http-body-timeout-ms=2000")
    try:
        with ExitStack() as stack:
            slow = [stack.enter_context(connect(s)) for _ in range(6)]
            for c in slow:
                c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n"
                          b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                          b"Content-Length: 1000\r\n\r\n")
                got = b""
                while b"\r\n\r\n" not in got:  # the server has read the headers
                    d = c.recv(65536)
                    assert d, got
                    got += d
                assert got == b"HTTP/1.1 100 Continue\r\n\r\n", got
                c.sendall(b'{"prompt": ')
            assert get(s, "/health")[0] == 200
            assert complete(s)["usage"]["completion_tokens"] == 2
            for c in slow:
                head, _, body = read_all(c).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), head
                err = json.loads(body)["error"]
                assert err["code"] == "request_timeout"
                assert "--http-body-timeout-ms" in err["message"]
        assert wait_closed(s, "body_timeout", 6) == 6
    finally:
        s.stop()
