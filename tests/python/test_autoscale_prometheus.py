"""`tandem serve --autoscale --prometheus`: the planner reads a real Prometheus (the Debian binary,
started here with its own config, a free loopback port and a temporary storage folder) that
scrapes the router and every worker through file_sd targets this test keeps to the live
processes. Workers simulate their compute (--simulate-compute), so the test does not depend on
this machine's speed. One scale-up and one scale-down of the decode pool, both decided from the
"prometheus" source.

As in test_autoscale.py the load is sized in KV pages (decode workers with --kv-reserve=full
take prompt + max_tokens pages up front): one ballast stream fills over --kv-high of a worker;
cancelled, nothing is left and one worker fewer suffices. The waits return on events; their bounds are hang guards only.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import tandem_client as tc
from serve_util import WAIT_TIMEOUT_S, Serve

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "bench" / "profiles" / "smollm2-135m-cpu-2core.json"
PAGE_TOKENS = 16


def _get(url: str) -> Optional[str]:
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None


def _value(body: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and labels in line.split("}")[0]:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(check, what: str, timeout: float = WAIT_TIMEOUT_S):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, work: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = work / "targets.json"
        self.targets.write_text("[]")
        config = work / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "tandem", "file_sd_configs": [
                {"files": [str(self.targets)], "refresh_interval": "1s"}]}]}))
        self.log = open(work / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
            start_new_session=True)
        _wait(lambda: _get(self.url + "/-/ready") is not None, "prometheus ready", 60)

    def set_targets(self, hosts: List[str]) -> None:
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": hosts}]))
        os.replace(tmp, self.targets)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _metrics_urls(serve: Serve) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for line in serve.stdout_path.read_text(errors="replace").splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[1] == "metrics" and parts[0] != "planner":
            found.setdefault(parts[0], [])
            if parts[2] not in found[parts[0]]:
                found[parts[0]].append(parts[2])
    return found


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")
@pytest.mark.timeout(600)
def test_planner_scales_decode_up_and_down_through_prometheus(model_dir, tmp_path):
    prom = Prometheus(tmp_path)
    decision_log = tmp_path / "decisions.jsonl"
    serve = Serve(model_dir, tmp_path / "serve", "--simulate-compute", str(PROFILE),
                  "--autoscale", "--prometheus", prom.url, "--rate-window", "4s",
                  "--prefill", "1", "--decode", "1", "--min-prefill", "1", "--max-prefill", "1",
                  "--min-decode", "1", "--max-decode", "2", "--kv-cache-mb", "48",
                  "--decode-arg=--kv-reserve=full",
                  "--interval-s", "0.5", "--scale-down-window-s", "2", "--kv-high", "0.3",
                  "--kv-target", "0.25", "--slo-attainment", "0",
                  "--decode-capacity-tokens-per-s", "1e9", "--prefill-capacity-tokens-per-s",
                  "1e9", "--decision-log", str(decision_log))
    stop = threading.Event()

    def keep_targets() -> None:  # file_sd: the processes that answer now
        while not stop.is_set():
            live = [u for us in _metrics_urls(serve).values() for u in us
                    if _get(u) is not None]
            prom.set_targets([u.split("//", 1)[1].split("/", 1)[0] for u in live])
            time.sleep(0.3)

    targets = threading.Thread(target=keep_targets, daemon=True)
    try:
        address = serve.wait_for_router()
        targets.start()
        router = _metrics_urls(serve)["router"][0]
        pages = _value(_get(_metrics_urls(serve)["decode"][0]), "tandem_kv_pages_total")

        def decode_workers() -> float:
            return _value(_get(router) or "", "tandem_workers", 'kind="decode"')

        def prom_decode_targets() -> int:
            body = _get(prom.url + "/api/v1/query?query=" + urllib.parse.quote(
                'tandem_kv_pages_total{role="decode"}'))
            return len(json.loads(body or "{}").get("data", {}).get("result", []))

        _wait(lambda: prom_decode_targets() > 0, "Prometheus to scrape the decode worker")
        # Ballast: prompt + max_tokens over a third of the worker's pages.
        ballast_tokens = (math.ceil(0.4 * pages) + 1) * PAGE_TOKENS
        client = tc.Client(address, timeout=600, retries=0)
        stream = client.generate_stream("Once upon a time", max_tokens=ballast_tokens,
                                        ignore_eos=True, seed=3)
        got: List[int] = []

        def read() -> None:
            try:
                for c in stream:
                    got.extend(c.token_ids)
            except tc.TandemError:
                pass  # cancelled below

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        _wait(lambda: decode_workers() == 2, "the planner to add a decode worker")
        _wait(lambda: got, "the ballast's first tokens")
        stream.cancel()
        reader.join(timeout=60)
        _wait(lambda: decode_workers() == 1, "the planner to remove a decode worker")
        client.close()

        decisions = [json.loads(line) for line in decision_log.read_text().splitlines()]
        acted = [(d["source"], p["action"]) for d in decisions for p in d["pools"]
                 if p["pool"] == "decode" and p["action"] != "hold"]
        assert acted == [("prometheus", "up"), ("prometheus", "down")], acted
        assert all(p["action"] == "hold" for d in decisions for p in d["pools"]
                   if p["pool"] == "prefill")
        log = serve.stderr_path.read_text(errors="replace")
        assert "reading prometheus" in log, "the planner did not read through Prometheus"
        # The router drops the worker from its registry when the drain starts; the
        # planner logs the exit once it has reaped the process, a moment later.
        _wait(lambda: "drained and stopped (" in serve.stderr_path.read_text(errors="replace"),
              "the planner to reap the drained decode worker")
        log = serve.stderr_path.read_text(errors="replace")
        assert "drained and stopped (exited with status 0)" in log, serve.stderr_tail()
    finally:
        stop.set()
        serve.stop()
        prom.stop()
    assert serve.proc.returncode == 0, serve.stderr_tail()
