"""A drain that runs out of budget ends every request properly, never by cutting a connection:
an HTTP stream gets an error event in OpenAI's shape, then `data: [DONE]` and a clean chunked
end; a whole HTTP response is a 503; a gRPC stream ends with UNAVAILABLE saying the server was
draining. The cut requests are logged, and every page comes back.

No test here depends on the machine's speed: each waits for the event it needs (requests in the
decode batch), and where a request must still be running when the budget ends, the process that
would finish it is frozen with SIGSTOP (or the budget is 0: cut what is in flight now).
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import threading
from urllib.parse import urlparse

import pytest

import tandem_client as tc
from cluster_util import Cluster, sse_events

# Far more tokens than any machine decodes between two events of these tests.
LONG = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}


def http_conn(cluster: Cluster) -> http.client.HTTPConnection:
    u = urlparse(cluster.http)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600)


class Requests:
    """One HTTP stream, one whole HTTP response (on a thread) and one gRPC stream, all in the
    decode batch once started."""

    def __init__(self, cluster: Cluster, body: dict) -> None:
        self.sse = http_conn(cluster)
        self.sse.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                         {"Content-Type": "application/json"})
        self.sse_resp = self.sse.getresponse()
        assert self.sse_resp.status == 200, self.sse_resp.read()
        self.sse_head = self.sse_resp.read1(65536).decode()  # the first event(s)

        self.whole: dict = {}

        def whole() -> None:
            conn = http_conn(cluster)
            conn.request("POST", "/v1/completions", json.dumps(body),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            self.whole["status"], self.whole["body"] = r.status, r.read()
            conn.close()

        self.whole_thread = threading.Thread(target=whole, daemon=True)
        self.whole_thread.start()

        self.client = tc.Client(cluster.grpc, timeout=600, retries=0)
        self.stream = self.client.generate_stream(body["prompt"], max_tokens=body["max_tokens"],
                                                  ignore_eos=body.get("ignore_eos", False))
        self.grpc_iter = iter(self.stream)
        self.grpc_first = next(self.grpc_iter)

    def sse_rest(self) -> str:
        rest = self.sse_resp.read().decode()  # IncompleteRead here = a cut connection
        self.sse.close()
        return self.sse_head + rest

    def grpc_error(self) -> tc.TandemError:
        with pytest.raises(tc.TandemError) as e:
            for _ in self.grpc_iter:
                pass
        self.client.close()
        return e.value

    def whole_result(self) -> tuple:
        self.whole_thread.join(timeout=600)
        assert not self.whole_thread.is_alive(), "the whole HTTP response never came"
        return self.whole["status"], json.loads(self.whole["body"])


def check_ended_properly(reqs: Requests, who: str) -> None:
    events = sse_events(reqs.sse_rest())
    assert events[-1] == "[DONE]", events[-3:]
    err = json.loads(events[-2])["error"]
    assert who in err["message"] and "draining" in err["message"], err
    assert {"message", "type", "param", "code"} <= set(err), err
    assert any("choices" in json.loads(e) for e in events[:-2]), "no token before the error"

    status, body = reqs.whole_result()
    assert status == 503, body
    assert who in body["error"]["message"] and "draining" in body["error"]["message"], body

    e = reqs.grpc_error()
    assert isinstance(e, tc.UnavailableError), repr(e)
    assert who in str(e) and "draining" in str(e), str(e)


@pytest.mark.timeout(900)
def test_router_drain_out_of_budget_ends_every_request_properly(model_dir, tmp_path):
    c = Cluster(model_dir, tmp_path, router_args=["--drain-ms", "300"])
    try:
        reqs = Requests(c, LONG)
        c.decode.wait_metric("tandem_requests_running", 3)
        # Frozen: no request can finish now, however fast this machine decodes.
        os.kill(c.decode.pid, signal.SIGSTOP)
        os.kill(c.router.pid, signal.SIGTERM)
        check_ended_properly(reqs, "router")
        m = c.router.wait_log(r"drain budget \(300 ms\) ran out; cut (\d+) request\(s\): (.*)")
        assert m.group(1) == "3", m.group(0)
        assert c.router.wait_exit() == 0, c.router.log()[-3000:]
        # The router cancelled the decode streams: once thawed, the worker frees their pages.
        os.kill(c.decode.pid, signal.SIGCONT)
        c.decode.wait_metric("tandem_kv_pages_used", 0)
        c.prefill.wait_metric("tandem_kv_pages_used", 0)
    finally:
        c.stop()


@pytest.mark.timeout(900)
def test_decode_drain_out_of_budget_ends_every_stream_properly(model_dir, tmp_path):
    # Budget 0: SIGTERM cuts whatever is in the batch at once.
    c = Cluster(model_dir, tmp_path, decode_args=["--drain-ms", "0"])
    try:
        reqs = Requests(c, LONG)
        c.decode.wait_metric("tandem_requests_running", 3)
        os.kill(c.decode.pid, signal.SIGTERM)
        check_ended_properly(reqs, "decode worker decode-0")
        m = c.decode.wait_log(r"drain budget \(0 ms\) ran out; cut (\d+) stream\(s\)")
        assert m.group(1) == "3", m.group(0)
        m = c.decode.wait_log(r"drained; (\d+) streams left, pages used (\d+)/(\d+)")
        assert (m.group(1), m.group(2)) == ("0", "0"), m.group(0)
        assert c.decode.wait_exit() == 0, c.decode.log()[-3000:]
    finally:
        c.stop()


@pytest.mark.timeout(900)
def test_prefill_drain_out_of_budget_ends_every_request_properly(model_dir, tmp_path):
    c = Cluster(model_dir, tmp_path, prefill_args=["--drain-ms", "0"])
    try:
        # A long prompt, so its KV (tens of MiB) cannot fit in socket buffers: with the decode
        # worker frozen, the prefill worker's job cannot end by itself.
        body = {"prompt": "word " * 1500, "max_tokens": 8}
        results: list = []

        def whole() -> None:
            conn = http_conn(c)
            conn.request("POST", "/v1/completions", json.dumps(body),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            results.append((r.status, json.loads(r.read())))
            conn.close()

        t = threading.Thread(target=whole, daemon=True)
        t.start()
        with tc.Client(c.grpc, timeout=600, retries=0) as g:
            stream = g.generate_stream(body["prompt"], max_tokens=8)
            # Both reserved on the decode worker and queued or computing on the prefill worker.
            c.prefill.wait_until(lambda p: p.metric("tandem_requests_running") +
                                 p.metric("tandem_requests_waiting") == 2, "both requests")
            os.kill(c.decode.pid, signal.SIGSTOP)
            os.kill(c.prefill.pid, signal.SIGTERM)
            with pytest.raises(tc.UnavailableError) as e:
                list(stream)
            assert "prefill worker prefill-0 was draining" in str(e.value), str(e.value)
        t.join(timeout=600)
        status, err = results[0]
        assert status == 503 and "prefill worker prefill-0 was draining" in \
            err["error"]["message"], err
        c.prefill.wait_log(
            r"req=\S+ cut \((queued|running)\): prefill worker prefill-0 was draining")
        m = c.prefill.wait_log(r"prefill-0: drained; pages used (\d+)/")
        assert m.group(1) == "0", m.group(0)
        assert c.prefill.wait_exit() == 0, c.prefill.log()[-3000:]
        os.kill(c.decode.pid, signal.SIGCONT)  # the router released the reservations
        c.decode.wait_metric("tandem_kv_pages_used", 0)
    finally:
        c.stop()
