"""GET /health on the workers' metrics ports: the HTTP probe for clusters whose gRPC ports speak
mTLS (Kubernetes' gRPC probes cannot). 200 {"status": "ok"} while a worker serves, 503
{"status": "draining"} from the moment SIGTERM starts its drain, before it exits.

What keeps each worker draining long enough to be asked is an event, not a duration:
- decode: a reservation whose KV cannot come (the prefill worker is frozen with SIGSTOP, the
  lease is long), so its drain waits for it;
- prefill: the router is frozen, so the drain waits for the router to acknowledge it (the one
  bound here: 5 s, PrefillServer::Shutdown, in which a GET on loopback must be answered).
"""
from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request

import pytest

import tandem_client as tc
from cluster_util import Cluster, Proc


def health(p: Proc) -> tuple:
    """(status, JSON body) of GET /health on the metrics port of `p`."""
    url = p.endpoints["metrics"].rsplit("/", 1)[0] + "/health"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


DRAINING = (503, {"status": "draining"})


@pytest.mark.timeout(900)
def test_decode_health_is_ok_then_503_draining_before_exit(model_dir, tmp_path):
    c = Cluster(model_dir, tmp_path, decode_args=["--lease-ms", "600000"])
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
