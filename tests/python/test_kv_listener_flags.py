"""The decode worker's KV listener bounds through a real `tandem serve` (its flags reach the
process): strangers that connect to the KV port and send nothing hold the pending slots
(`--kv-max-pending-connections`) only until a newer connection needs one — the longest waiting is
closed (`evicted_pending`) — so transfers keep working; with a short `--kv-handshake-timeout-ms`
they are closed on their own. Waits end on events (a socket closed, a counter reached)."""
from __future__ import annotations

import json
import re
import socket
import time
import urllib.request

from serve_util import WAIT_TIMEOUT_S, Serve

PENDING = 2


def kv_address(serve: Serve) -> tuple[str, int]:
    """The decode worker's KV TCP endpoint, from its ready line."""
    end = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < end:
        m = re.search(r"decode worker \S+ ready: gRPC \S+, KV (\d+\.\d+\.\d+\.\d+):(\d+)",
                      serve.stderr_path.read_text(errors="replace"))
        if m:
            return m.group(1), int(m.group(2))
        time.sleep(0.05)
    raise AssertionError(f"no decode ready line: {serve.stderr_tail()}")


def decode_metric(serve: Serve, name: str, label: str) -> float:
    """Sum over the decode workers of `name`'s series that carry `label` (e.g. 'state="x"')."""
    total = 0.0
    for url in serve.endpoints["decode metrics"]:
        text = urllib.request.urlopen(url, timeout=60).read().decode()
        total += sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                     if ln.startswith(name + "{") and label in ln)
    return total


def closed(serve: Serve, reason: str) -> float:
    return decode_metric(serve, "tandem_kv_connections_closed_total", f'reason="{reason}"')


def pending(serve: Serve) -> float:
    return decode_metric(serve, "tandem_kv_connections", 'state="handshake"')


def wait_for(pred, what: str) -> None:
    end = time.monotonic() + WAIT_TIMEOUT_S
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(WAIT_TIMEOUT_S)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def complete(serve: Serve) -> dict:
    body = json.dumps({"prompt": "The capital of France is", "max_tokens": 4}).encode()
    req = urllib.request.Request(serve.http + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=WAIT_TIMEOUT_S) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_strangers_on_the_kv_port_cannot_lock_transfers_out(model_dir, tmp_path):
    serve = Serve(model_dir, tmp_path, "--kv-transport", "tcp",
                  f"--decode-arg=--kv-max-pending-connections={PENDING}",
                  "--decode-arg=--kv-handshake-timeout-ms=600000")
    strangers = []
    try:
        serve.wait_for_router()
        host, port = kv_address(serve)
        for _ in range(PENDING):
            strangers.append(socket.create_connection((host, port), timeout=WAIT_TIMEOUT_S))
            want = len(strangers)
            wait_for(lambda: pending(serve) == want, f"{want} pending KV connections")
        # One more stranger: the first one makes room.
        strangers.append(socket.create_connection((host, port), timeout=WAIT_TIMEOUT_S))
        assert closed_by_peer(strangers[0])
        wait_for(lambda: closed(serve, "evicted_pending") >= 1, "evicted_pending counted")
        # A transfer needs a pending slot too: it gets one, and the request completes.
        out = complete(serve)
        assert out["choices"][0]["text"], out
        assert closed_by_peer(strangers[1])
        assert closed(serve, "evicted_pending") == 2
        assert closed(serve, "over_pending_limit") == 0
        assert serve.wait_metric("decode", "tandem_kv_pages_used", 0) == 0
    finally:
        for s in strangers:
            s.close()
        serve.stop()


def test_a_stranger_is_closed_after_the_handshake_timeout(model_dir, tmp_path):
    serve = Serve(model_dir, tmp_path, "--decode-arg=--kv-handshake-timeout-ms=2000")
    try:
        serve.wait_for_router()
        host, port = kv_address(serve)
        with socket.create_connection((host, port), timeout=WAIT_TIMEOUT_S) as s:
            assert closed_by_peer(s)
        wait_for(lambda: closed(serve, "handshake_timeout") >= 1, "handshake_timeout counted")
        assert complete(serve)["choices"][0]["text"]
    finally:
        serve.stop()
