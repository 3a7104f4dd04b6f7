#!/usr/bin/env python3
"""HTTP listener under idle and slow connections (issue 14): against a real `tandem serve`,
opens --idle connections that never send (500) and --slow ones that trickle request-header
bytes, one a second (20), then probes GET /health --probes times (200), each on a fresh
connection as a liveness probe would, and runs one normal completion. Prints /health latency
p50 / p99 / max, the completion's latency and the router's thread count (/proc/<pid>/status).

Figures (README "Connection limits") came from --idle 500 --slow 20 and from --idle 200 --slow 300
(--probe-timeout 10), against this build and the one before the bounded listener.
Run it against two builds to compare (e.g. the code before the bounded listener):
  python3 bench/http_idle_connections.py --bin-dir build/bin --model models/SmolLM2-135M-Instruct
A bench, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

ENDPOINT = re.compile(r"^(router|prefill|decode) (grpc|http|metrics) (\S+)$", re.M)


def start(bin_dir: str, model: str, extra: list[str], log: str):
    out = open(log, "wb")
    p = subprocess.Popen([os.path.join(bin_dir, "tandem"), "serve", "--model", model,
                          "--threads", "1", *extra], stdout=subprocess.PIPE, stderr=out,
                         start_new_session=True, text=True)
    seen = {}
    while "router http" not in seen or "decode grpc" not in seen:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"tandem serve exited; see {log}")
        m = ENDPOINT.match(line.strip())
        if m:
            seen[f"{m[1]} {m[2]}"] = m[3]
    host, port = seen["router http"].rsplit(":", 1)
    return p, (host, int(port))


def router_pid(serve_pid: int) -> int:
    children = open(f"/proc/{serve_pid}/task/{serve_pid}/children").read().split()
    for pid in children:
        argv0 = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0]
        if os.path.basename(argv0.decode()) == "tandem-router":
            return int(pid)
    raise RuntimeError("no tandem-router child")


def threads(pid: int) -> int:
    for ln in open(f"/proc/{pid}/status"):
        if ln.startswith("Threads:"):
            return int(ln.split()[1])
    return -1


def health(addr, timeout: float) -> tuple[float, int]:
    t0 = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                d = s.recv(4096)
                if not d:
                    break
                data += d
        status = int(data.split(b" ", 2)[1]) if data else 0
    except OSError:
        status = 0
    return time.monotonic() - t0, status


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", default="build/bin")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--slow", type=int, default=20)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--probe-timeout", type=float, default=30.0)
    ap.add_argument("--router-arg", action="append", default=[])
    ap.add_argument("--log", default="/tmp/http_idle_connections.serve.log")
    args = ap.parse_args()

    extra = [f"--router-arg={a}" for a in args.router_arg]
    serve, addr = start(args.bin_dir, args.model, extra, args.log)
    conns = []
    stop = threading.Event()
    try:
        while health(addr, 60)[1] != 200:
            time.sleep(0.2)
        rpid = router_pid(serve.pid)
        threads_idle_server = threads(rpid)
        for _ in range(args.idle):
            conns.append(socket.create_connection(addr, timeout=60))
        slow = []
        for _ in range(args.slow):
            s = socket.create_connection(addr, timeout=60)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: b\r\n")
            slow.append(s)
        conns += slow

        def trickle():
            while not stop.wait(1.0):
                for s in slow:
                    try:
                        s.sendall(b"X")
                    except OSError:
                        pass
        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1.0)  # let the server take them in
        threads_loaded = threads(rpid)

        lat, failed = [], 0
        for _ in range(args.probes):
            dt, status = health(addr, args.probe_timeout)
            lat.append(dt)
            failed += status != 200
        body = json.dumps({"prompt": "The capital of France is", "max_tokens": 8}).encode()
        req = urllib.request.Request(f"http://{addr[0]}:{addr[1]}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                comp = json.loads(r.read())
                comp_status = f"200, {comp['usage']['completion_tokens']} tokens"
        except Exception as e:  # a bench: report, do not stop
            comp_status = f"failed: {e}"
        comp_s = time.monotonic() - t0
        threads_end = threads(rpid)
        print(json.dumps({
            "bin_dir": args.bin_dir, "idle": args.idle, "slow": args.slow,
            "probes": args.probes, "probe_failures_or_timeouts": failed,
            "health_first_ms": round(lat[0] * 1e3, 2),
            "health_p50_ms": round(pct(lat, 0.50) * 1e3, 2),
            "health_p99_ms": round(pct(lat, 0.99) * 1e3, 2),
            "health_max_ms": round(max(lat) * 1e3, 2),
            "completion": comp_status, "completion_s": round(comp_s, 3),
            "router_threads_before_connections": threads_idle_server,
            "router_threads_with_connections": threads_loaded,
            "router_threads_at_end": threads_end,
        }, indent=1))
    finally:
        stop.set()
        for s in conns:
            s.close()
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
