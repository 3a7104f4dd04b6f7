"""GET /health on the workers' metrics ports: the HTTP probe for clusters whose gRPC ports speak
mTLS (Kubernetes' gRPC probes cannot). 200 {"status": "ok"} while a worker serves, 503
{"status": "draining"} from the moment SIGTERM starts its drain, before it exits.

What keeps each worker draining long enough to be asked is an event, not a duration:
- decode: a reservation whose KV cannot come (the prefill worker is frozen with SIGSTOP, the
  lease is long), so its drain waits for it;
- prefill: the router is frozen, so the drain waits for the router to acknowledge it (the one
  bound here: 5 s, PrefillServer::Shutdown, in which a GET on loopback must be answered).

With --metrics-tls the port speaks HTTPS with the process's --tls-cert (certificates made at
test time by tests/rpc/make_test_certs.sh); without a certificate the flag stops the process.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest

import tandem_client as tc
from cluster_util import Cluster, Proc
from conftest import REPO, tandem_binary


def health(p: Proc, context=None) -> tuple:
    """(status, JSON body) of GET /health on the metrics port of `p`."""
    url = p.endpoints["metrics"].rsplit("/", 1)[0] + "/health"
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


DRAINING = (503, {"status": "draining"})


@pytest.mark.timeout(900)
def test_decode_health_is_ok_then_503_draining_before_exit(model_dir, tmp_path):
    # Long lease and lost-worker bound: nothing ends the reservation while prefill is frozen.
    c = Cluster(model_dir, tmp_path, decode_args=["--lease-ms", "600000"],
                router_args=["--worker-lost-ms", "600000"])
    try:
        assert health(c.decode) == (200, {"status": "ok"})
        assert health(c.prefill) == (200, {"status": "ok"})
        os.kill(c.prefill.pid, signal.SIGSTOP)
        with tc.Client(c.grpc, timeout=600, retries=0) as g:
            stream = g.generate_stream("Once upon a time", max_tokens=4)
            # Reserved on the decode worker; its KV cannot come while prefill is frozen.
            c.decode.wait_metric("tandem_requests_waiting", 1)
            os.kill(c.decode.pid, signal.SIGTERM)
            c.decode.wait_until(lambda p: health(p) == DRAINING, "/health 503 draining")
            assert c.decode.proc.poll() is None, "exited before its reservation ended"
            os.kill(c.prefill.pid, signal.SIGCONT)
            # A live reservation may finish while draining: the request completes.
            assert len(list(stream)) > 0
        assert c.decode.wait_exit() == 0, c.decode.log()[-3000:]
    finally:
        c.stop()


@pytest.mark.timeout(900)
def test_prefill_health_is_ok_then_503_draining_before_exit(model_dir, tmp_path):
    c = Cluster(model_dir, tmp_path)
    try:
        assert health(c.prefill) == (200, {"status": "ok"})
        os.kill(c.router.pid, signal.SIGSTOP)
        os.kill(c.prefill.pid, signal.SIGTERM)
        c.prefill.wait_until(lambda p: health(p) == DRAINING, "/health 503 draining")
        os.kill(c.router.pid, signal.SIGCONT)
        assert c.prefill.wait_exit() == 0, c.prefill.log()[-3000:]
    finally:
        c.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    subprocess.run([str(REPO / "tests" / "rpc" / "make_test_certs.sh"), str(d)], check=True,
                   capture_output=True)
    return d


@pytest.mark.timeout(600)
def test_metrics_tls_serves_health_and_metrics_over_https(model_dir, tmp_path, certs):
    p = Proc("prefill", [str(tandem_binary("tandem-prefill")), "--model", str(model_dir),
                         "--port", "0", "--metrics-port", "0", "--threads", "1",
                         "--tls-cert", str(certs / "server.pem"),
                         "--tls-key", str(certs / "server.key"), "--metrics-tls"], tmp_path)
    try:
        p.wait_ready()
        url = p.endpoints["metrics"]
        assert url.startswith("https://127.0.0.1:"), url
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        assert health(p, ctx) == (200, {"status": "ok"})
        with urllib.request.urlopen(url, timeout=30, context=ctx) as r:
            assert "tandem_kv_pages_total" in r.read().decode()
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(url.replace("https://", "http://"), timeout=30)
    finally:
        p.kill()


def test_metrics_tls_without_a_certificate_stops_the_process(model_dir):
    for binary in ("tandem-prefill", "tandem-decode", "tandem-router"):
        r = subprocess.run([str(tandem_binary(binary)), "--model", str(model_dir),
                            "--metrics-tls"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, (binary, r.stderr[-2000:])
        assert "--metrics-tls needs --tls-cert and --tls-key" in r.stderr, (binary, r.stderr)
