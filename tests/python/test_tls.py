"""TLS on every port of a real `tandem serve` (router + prefill + decode), with certificates made
at test time by tests/rpc/make_test_certs.sh: gRPC with the right CA serves a generation (the
workers registered and the router reached them over mTLS); plaintext, a wrong CA, and a worker
call without a client certificate are refused; the Registry wants a client certificate. The KV
transfer (forced to tcp) runs over mTLS too: its port completes a TLS handshake only for a client
certificate the CA signed, and a plaintext frame moves nothing. HTTPS:
/health and a completion with the CA; a plaintext request gets 400 and the server goes on (no
connection or descriptor left behind); a stalled handshake is closed by the header timeout.
`tandem serve --metrics-tls`: every process's metrics port (/metrics and /health) serves HTTPS
with the certificate and refuses plaintext.
Bad TLS flags stop a process with a message naming the problem. Waits end on events.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tandem_client as tc
from conftest import REPO, tandem_binary
from raw_http import read_all
from serve_util import START_TIMEOUT_S, WAIT_TIMEOUT_S, Serve, wait_for_log

HEADER_TIMEOUT_MS = 3000


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    subprocess.run([str(REPO / "tests" / "rpc" / "make_test_certs.sh"), str(d)], check=True,
                   capture_output=True)
    return d


@pytest.fixture(scope="module")
def serve(model_dir, certs, tmp_path_factory):
    s = Serve(model_dir, tmp_path_factory.mktemp("tls"), "--tls-cert", str(certs / "server.pem"),
              "--tls-key", str(certs / "server.key"), "--tls-ca", str(certs / "ca.pem"),
              "--kv-transport", "tcp", f"--router-arg=--http-header-timeout-ms={HEADER_TIMEOUT_MS}",
              "--metrics-tls")
    s.wait_for_router()
    assert s.http, f"no router http line: {s.endpoints}"
    s.https = s.http.replace("http://", "https://")
    s.metrics_context = https_context(certs)
    try:
        yield s
    finally:
        s.stop()


def creds(certs: Path, ca: str = "ca.pem", client: bool = False) -> grpc.ChannelCredentials:
    kw = {}
    if client:
        kw = dict(private_key=(certs / "client.key").read_bytes(),
                  certificate_chain=(certs / "client.pem").read_bytes())
    return grpc.ssl_channel_credentials(root_certificates=(certs / ca).read_bytes(), **kw)


def health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_TIMEOUT_S).status


def https_context(certs: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs / "ca.pem"))


def https(serve: Serve, certs: Path, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(serve.https + path, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=WAIT_TIMEOUT_S, context=https_context(certs)) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(serve: Serve, certs: Path) -> None:
    end = time.monotonic() + START_TIMEOUT_S
    while https(serve, certs, "/health")[0] != 200:
        assert time.monotonic() < end, "GET /health over HTTPS never answered 200"
        time.sleep(0.1)


def test_grpc_generation_over_tls_on_every_port(serve, certs):
    with tc.Client(serve.address, credentials=creds(certs), timeout=WAIT_TIMEOUT_S) as c:
        out = c.generate("The capital of France is", max_tokens=8)
    assert out.text.strip(), out
    # The same through the C++ client: tandem generate --server --tls-ca.
    proc = subprocess.run([str(tandem_binary("tandem")), "generate", "--server", serve.address,
                           "--tls-ca", str(certs / "ca.pem"), "--max-tokens", "8",
                           "The capital of France is"],
                          capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), proc.stderr


def kv_address(serve: Serve):
    """The decode worker's KV listener, from its ready line."""
    pattern = r"decode worker \S+ ready: gRPC \S+, KV ([0-9.]+):([0-9]+)"
    assert wait_for_log(serve, pattern)
    m = re.search(pattern, serve.stderr_path.read_text(errors="replace"))
    return m.group(1), int(m.group(2))


def tcp_transfers(serve: Serve) -> float:
    """Prompts whose KV the prefill worker sent over tcp."""
    total = 0.0
    for url in serve.endpoints.get("prefill metrics", []):
        body = urllib.request.urlopen(url, timeout=60, context=serve.metrics_context).read()
        for line in body.decode().splitlines():
            if line.startswith("tandem_kv_transfer_bytes_count{") and 'transport="tcp"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_kv_transfer_runs_over_mutual_tls(serve, certs):
    before = tcp_transfers(serve)
    with tc.Client(serve.address, credentials=creds(certs), timeout=WAIT_TIMEOUT_S) as c:
        out = c.generate("The capital of France is", max_tokens=4)
    assert out.text.strip(), out
    assert tcp_transfers(serve) == before + 1
    host, port = kv_address(serve)
    # The port speaks TLS, and only to a client certificate the CA signed.
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    with socket.create_connection((host, port), timeout=WAIT_TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    no_cert = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with socket.create_connection((host, port), timeout=WAIT_TIMEOUT_S) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with no_cert.wrap_socket(raw, server_hostname=host) as tls:
                # TLS 1.3: the refusal arrives with the first read after the handshake.
                tls.sendall(b"x" * 32)
                if not tls.recv(1):
                    raise ConnectionError("closed")
    # A plaintext KV frame is not TLS: the connection is closed, nothing answered.
    with socket.create_connection((host, port), timeout=WAIT_TIMEOUT_S) as raw:
        raw.sendall(b"\x00" * 32)
        assert read_all(raw) == b""


@pytest.mark.parametrize("role", ["router", "decode", "prefill"])
def test_plaintext_and_wrong_ca_are_refused(serve, certs, role):
    address = serve.endpoints[f"{role} grpc"][0]
    for channel in (grpc.insecure_channel(address),
                    grpc.secure_channel(address, creds(certs, "other_ca.pem", client=False))):
        with channel, pytest.raises(grpc.RpcError) as e:
            health(channel)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value


@pytest.mark.parametrize("role", ["decode", "prefill"])
def test_workers_require_a_client_certificate(serve, certs, role):
    address = serve.endpoints[f"{role} grpc"][0]
    with grpc.secure_channel(address, creds(certs)) as channel, pytest.raises(grpc.RpcError) as e:
        health(channel)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    with grpc.secure_channel(address, creds(certs, client=True)) as channel:
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_router_port_is_public_and_its_registry_wants_a_client_certificate(serve, certs):
    register = lambda ch: ch.unary_unary("/tandem.v1.Registry/Register",  # noqa: E731
                                         request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)(
        b"", timeout=WAIT_TIMEOUT_S)
    with grpc.secure_channel(serve.address, creds(certs)) as channel:
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            register(channel)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate" in e.value.details()
    # With one, the next guard speaks: the cluster key (tandem serve made one for its children).
    with grpc.secure_channel(serve.address, creds(certs, client=True)) as channel:
        with pytest.raises(grpc.RpcError) as e:
            register(channel)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "cluster key" in e.value.details()


def test_https_health_and_completion(serve, certs, model_dir):
    wait_ready(serve, certs)
    status, body = https(serve, certs, "/v1/completions",
                         {"model": model_dir.name, "prompt": "The capital of France is", "max_tokens": 8})
    assert status == 200, body
    assert json.loads(body)["choices"][0]["text"].strip()
    # A client that does not trust the CA fails its handshake.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(serve.https + "/health", timeout=WAIT_TIMEOUT_S,
                               context=ssl.create_default_context(
                                   cafile=str(certs / "other_ca.pem")))


def test_serve_metrics_tls_serves_every_metrics_port_over_https(serve, certs):
    wait_ready(serve, certs)
    for role in ("router", "prefill", "decode"):
        urls = serve.endpoints.get(f"{role} metrics", [])
        assert urls, f"no {role} metrics line: {serve.endpoints}"
        for url in urls:
            assert url.startswith("https://127.0.0.1:"), (role, url)
            with urllib.request.urlopen(url, timeout=WAIT_TIMEOUT_S,
                                        context=https_context(certs)) as r:
                assert r.status == 200 and "tandem_" in r.read().decode(), (role, url)
            # /health, the probe of TLS deployments, is on every metrics port.
            health_url = url.rsplit("/", 1)[0] + "/health"
            with urllib.request.urlopen(health_url, timeout=WAIT_TIMEOUT_S,
                                        context=https_context(certs)) as r:
                assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}, role
            # Plaintext on the same port is not served.
            with pytest.raises((urllib.error.URLError, ConnectionError,
                                http.client.HTTPException)):
                urllib.request.urlopen(url.replace("https://", "http://"), timeout=WAIT_TIMEOUT_S)
            # Nor is a client that does not trust the CA.
            with pytest.raises(urllib.error.URLError):
                urllib.request.urlopen(url, timeout=WAIT_TIMEOUT_S,
                                       context=ssl.create_default_context(
                                           cafile=str(certs / "other_ca.pem")))


def test_serve_metrics_tls_needs_a_certificate_and_a_metrics_port(model_dir, certs):
    def run(*args):
        return subprocess.run([str(tandem_binary("tandem")), "serve", "--model", str(model_dir),
                               "--metrics-tls", *args],
                              capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    p = run()
    assert p.returncode != 0 and "--metrics-tls needs --tls-cert and --tls-key" in p.stderr, p.stderr
    cert = ("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"))
    p = run(*cert, "--metrics-port", "-1")
    assert p.returncode != 0 and "no metrics port to serve" in p.stderr, p.stderr
    p = run(*cert, "--autoscale")
    assert p.returncode != 0 and "--autoscale with --metrics-tls needs --tls-ca" in p.stderr, \
        p.stderr


def test_serve_autoscale_reads_https_metrics_with_the_ca(model_dir, certs, tmp_path):
    """The planner in `tandem serve --autoscale --metrics-tls` scrapes every process over HTTPS,
    trusting --tls-ca: a decision reads the router and both workers with nothing missing."""
    decisions = tmp_path / "decisions.jsonl"
    s = Serve(model_dir, tmp_path / "serve", "--tls-cert", str(certs / "server.pem"),
              "--tls-key", str(certs / "server.key"), "--tls-ca", str(certs / "ca.pem"),
              "--metrics-tls", "--autoscale", "--prefill", "1", "--decode", "1",
              "--min-prefill", "1", "--max-prefill", "1", "--min-decode", "1", "--max-decode", "1",
              "--interval-s", "0.25", "--decision-log", str(decisions))
    try:
        s.wait_for_router()
        end = time.monotonic() + WAIT_TIMEOUT_S
        read = []
        while not read:
            assert time.monotonic() < end, (decisions.read_text() if decisions.exists() else "",
                                            s.stderr_tail())
            time.sleep(0.1)
            lines = decisions.read_text().splitlines() if decisions.exists() else []
            read = [d for d in map(json.loads, lines) if d["source"] == "processes"
                    and not d["inputs"]["missing"] and d["inputs"]["decode_kv_occupancy"] is not None]
        assert read[0]["read_error"] is None, read[0]
        assert read[0]["inputs"]["prefill_workers"] == 1, read[0]
    finally:
        s.stop()


def router_fds(serve: Serve) -> int:
    return len(os.listdir(f"/proc/{serve.child_pid('tandem-router')}/fd"))


def connect(serve: Serve) -> socket.socket:
    host, port = serve.endpoints["router http"][0].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=WAIT_TIMEOUT_S)


def test_plaintext_http_is_refused_and_nothing_leaks(serve, certs):
    wait_ready(serve, certs)
    assert serve.wait_metric("router", "tandem_http_connections", 0) == 0
    before = router_fds(serve)
    for _ in range(20):
        with connect(serve) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"https" in answer
    for _ in range(10):  # handshakes the client gives up (it does not trust the CA)
        with connect(serve) as s, pytest.raises(ssl.SSLError):
            ssl.create_default_context(cafile=str(certs / "other_ca.pem")).wrap_socket(
                s, server_hostname="127.0.0.1")
    # The server still serves TLS, and holds no connection or descriptor from those.
    assert https(serve, certs, "/health")[0] == 200
    assert serve.wait_metric("router", "tandem_http_connections", 0) == 0
    end = time.monotonic() + WAIT_TIMEOUT_S
    while router_fds(serve) > before and time.monotonic() < end:
        time.sleep(0.05)
    assert router_fds(serve) <= before


def test_a_stalled_handshake_is_closed_by_the_header_timeout(serve, certs):
    wait_ready(serve, certs)
    def timeouts() -> float:
        total = 0.0
        for url in serve.endpoints["router metrics"]:
            body = urllib.request.urlopen(url, timeout=60, context=serve.metrics_context).read()
            for line in body.decode().splitlines():
                if (line.startswith("tandem_http_connections_closed_total{")
                        and 'reason="header_timeout"' in line):
                    total += float(line.rsplit(" ", 1)[1])
        return total
    was = timeouts()
    with connect(serve) as s:
        s.sendall(b"\x16\x03\x01")  # the start of a TLS record, then nothing
        assert read_all(s) == b""  # the server closes it (after the header timeout)
    assert timeouts() == was + 1
    assert https(serve, certs, "/health")[0] == 200


@pytest.mark.parametrize("binary", ["tandem-router", "tandem-prefill", "tandem-decode"])
def test_bad_tls_flags_stop_the_process(model_dir, certs, binary, tmp_path):
    def run(*args):
        return subprocess.run([str(tandem_binary(binary)), "--model", str(model_dir), *args],
                              capture_output=True,
                              text=True, timeout=WAIT_TIMEOUT_S)
    p = run("--tls-cert", str(certs / "server.pem"))
    assert p.returncode != 0 and "--tls-cert needs --tls-key" in p.stderr, p.stderr
    missing = tmp_path / "missing.pem"
    p = run("--tls-cert", str(certs / "server.pem"), "--tls-key", str(missing))
    assert p.returncode != 0 and f"--tls-key {missing}" in p.stderr, p.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("not pem\n")
    p = run("--tls-ca", str(junk))
    assert p.returncode != 0 and f"--tls-ca {junk}: not a PEM file" in p.stderr, p.stderr


def test_serve_checks_the_tls_files_before_starting(model_dir, certs, tmp_path):
    p = subprocess.run([str(tandem_binary("tandem")), "serve", "--model", str(model_dir),
                        "--tls-key", str(certs / "server.key")],
                       capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    assert p.returncode != 0 and "--tls-key needs --tls-cert" in p.stderr, p.stderr


@pytest.mark.parametrize("scheme", ["grpc", "https"])
def test_bench_reaches_a_tls_router(serve, certs, model_dir, tmp_path, scheme):
    wait_ready(serve, certs)
    where = serve.address if scheme == "grpc" else serve.endpoints["router http"][0]
    out = tmp_path / "bench.json"
    p = subprocess.run([str(tandem_binary("tandem")), "bench", "--target", f"{scheme}://{where}",
                        "--tls-ca", str(certs / "ca.pem"), "--model", str(model_dir),
                        "--num-requests", "2", "--input-len", "8", "--output-len", "4",
                        "--concurrency", "1", "--warmup", "0", "--json", str(out)],
                       capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    assert p.returncode == 0, p.stdout + p.stderr
    run = json.loads(out.read_text())["runs"][0]
    assert run["completed"] == 2 and run["failed"] == 0, run
