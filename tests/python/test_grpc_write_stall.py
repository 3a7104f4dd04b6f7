"""A gRPC client that opens Generate and never reads (its HTTP/2 flow-control window stays
shut, so the router's first response message never leaves) against a real `tandem serve` whose
router admits one request at a time (--max-queue 1). With --grpc-write-stall-timeout-ms the
router cancels that stream once its write has waited that long: the decode worker frees the
pages, the admission slot is given back and the next request is served. Without it (0 = off) the
stalled call keeps the slot for good: every other request is refused while the client, which
still answers keepalive pings, stays connected.
"""
from __future__ import annotations

import urllib.request

import pytest

import tandem_client as tc
from raw_grpc import NeverReadingCall
from serve_util import WAIT_TIMEOUT_S, Serve
from tandem_client._common import build_generate_request

GENERATE = "/tandem.v1.Tandem/Generate"
STALL_MS = 1000
STALL_SERIES = "tandem_grpc_write_stalls_total{"


def start(model_dir, logs, stall_ms: int) -> Serve:
    s = Serve(model_dir, logs, "--max-queue", "1",
              f"--router-arg=--grpc-write-stall-timeout-ms={stall_ms}")
    s.wait_for_router()
    return s


def stalled_call(s: Serve, max_tokens: int) -> NeverReadingCall:
    req = build_generate_request("Once upon a time", {"max_tokens": max_tokens,
                                                      "ignore_eos": True})
    return NeverReadingCall(s.address, GENERATE, req.SerializeToString(), WAIT_TIMEOUT_S)


def write_stalls(s: Serve) -> float:
    """tandem_grpc_write_stalls_total of the router."""
    body = urllib.request.urlopen(s.endpoints["router metrics"][0], timeout=60).read().decode()
    for line in body.splitlines():
        if line.startswith(STALL_SERIES):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def normal_request(s: Serve) -> str:
    """"ok", or the error a short normal Generate got."""
    with tc.Client(s.address, timeout=WAIT_TIMEOUT_S, retries=0) as g:
        try:
            assert g.generate("The capital of France is", max_tokens=2).usage \
                .completion_tokens == 2
            return "ok"
        except tc.TandemError as e:
            return f"{type(e).__name__}: {e}"


@pytest.mark.timeout(900)
def test_client_that_never_reads_is_cancelled_and_frees_its_slot(model_dir, tmp_path):
    s = start(model_dir, tmp_path / "serve", STALL_MS)
    call = None
    try:
        # Far more tokens than the decode worker makes before the stall is seen: without the
        # cancel it would hold its pages for minutes.
        call = stalled_call(s, max_tokens=4000)
        if not call.ended.wait(WAIT_TIMEOUT_S):
            pytest.fail("the router never ended the stream of a client that does not read; a "
                        f"normal request meanwhile got: {normal_request(s)}")
        assert call.how.startswith("RST_STREAM") or call.how == "trailers", call.how
        assert call.data_bytes == 0, "the client's window was shut: no response byte can pass"
        assert s.wait_metric("router", "tandem_requests_running", 0) == 0
        assert write_stalls(s) == 1
        # The slot is back: the one-request router serves the next request.
        assert normal_request(s) == "ok"
        assert s.wait_metric("decode", "tandem_kv_pages_used", 0) == 0
        assert "did not read the response stream for 1000 ms" in s.stderr_tail(1 << 20)
    finally:
        if call is not None:
            call.close()
        s.stop()


@pytest.mark.timeout(900)
def test_without_the_timeout_a_client_that_never_reads_keeps_its_slot(model_dir, tmp_path):
    s = start(model_dir, tmp_path / "serve", 0)
    call = None
    try:
        max_tokens = 8
        call = stalled_call(s, max_tokens)
        # Every token made and accepted by the router: all that is left is writing them.
        assert s.wait_metric("router", "tandem_generation_tokens_total", max_tokens) == max_tokens
        assert s.wait_metric("decode", "tandem_kv_pages_used", 0) == 0
        got = normal_request(s)
        assert got.startswith("ResourceExhaustedError") and "admission" in got, got
        assert not call.ended.is_set() and call.data_bytes == 0, call.how
        assert write_stalls(s) == 0
        # The client going away is what frees the slot.
        call.close()
        call = None
        assert s.wait_metric("router", "tandem_requests_running", 0) == 0
        assert normal_request(s) == "ok"
    finally:
        if call is not None:
            call.close()
        s.stop()
