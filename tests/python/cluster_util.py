"""tandem-router, tandem-prefill and tandem-decode as separate processes on loopback (not
through `tandem serve`, which stops every process once one exits), so a test can signal each one
and keep watching the others."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict

import pytest

from conftest import tandem_binary

# Guards against hangs only: every wait returns as soon as its event happens.
START_TIMEOUT_S = 300.0
EVENT_TIMEOUT_S = 300.0
ENDPOINT_LINE = re.compile(r"^(router|prefill|decode) (grpc|http|metrics) (\S+)$", re.M)


class Proc:
    """One process; stdout and stderr go to files, its endpoint lines are read from stdout."""

    def __init__(self, role: str, argv: list, logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.role = role
        self.stdout_path = logs / f"{role}.out"
        self.stderr_path = logs / f"{role}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.endpoints: Dict[str, str] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> Dict[str, str]:
        """Waits for the "<role> grpc" line (printed last, once serving and registered)."""
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            found = {kind: where for role, kind, where in
                     ENDPOINT_LINE.findall(self.stdout_path.read_text(errors="replace"))
                     if role == self.role}
            if "grpc" in found:
                self.endpoints = found
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"{self.role} did not start (rc={self.proc.poll()}):\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_log(self, pattern: str) -> re.Match:
        end = time.monotonic() + EVENT_TIMEOUT_S
        while time.monotonic() < end:
            m = re.search(pattern, self.log())
            if m:
                return m
            time.sleep(0.05)
        pytest.fail(f"{self.role} never logged /{pattern}/:\n{self.log()[-4000:]}")

    def metric(self, name: str) -> float:
        body = urllib.request.urlopen(self.endpoints["metrics"], timeout=30).read().decode()
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_metric(self, name: str, want: float) -> None:
        self.wait_until(lambda p: p.metric(name) == want, f"{name} == {want}")

    def wait_until(self, check, what: str) -> None:
        """Polls check(self) until it is true."""
        end = time.monotonic() + EVENT_TIMEOUT_S
        while not check(self):
            assert time.monotonic() < end, f"{self.role}: never {what}"
            time.sleep(0.05)

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(timeout=EVENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.role} did not exit:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


class Cluster:
    """A router, one prefill and one decode worker (one compute thread each)."""

    def __init__(self, model_dir: Path, logs: Path, *, router_args=(), prefill_args=(),
                 decode_args=()) -> None:
        common = ["--model", str(model_dir), "--log-level", "info", "--metrics-port", "0"]
        self.procs = []
        self.router = self._start("router", [str(tandem_binary("tandem-router")), *common,
                                             "--port", "0", "--http-port", "0", *router_args],
                                  logs)
        addr = self.router.endpoints["grpc"]
        self.grpc = addr
        self.http = "http://" + self.router.endpoints["http"]
        worker = [*common, "--port", "0", "--threads", "1", "--router", addr]
        self.prefill = self._start("prefill", [str(tandem_binary("tandem-prefill")), *worker,
                                               "--worker-id", "prefill-0", *prefill_args], logs)
        self.decode = self._start("decode", [str(tandem_binary("tandem-decode")), *worker,
                                             "--worker-id", "decode-0", "--kv-port", "0",
                                             *decode_args], logs)
        end = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            assert time.monotonic() < end, "the router's /health never answered 200"
            time.sleep(0.05)

    def _start(self, role: str, argv: list, logs: Path) -> Proc:
        p = Proc(role, argv, logs)
        self.procs.append(p)
        p.wait_ready()
        return p

    def _healthy(self) -> bool:
        try:
            return urllib.request.urlopen(self.http + "/health", timeout=30).status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        for p in self.procs:
            p.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {p.role}\n{p.log()[-3000:]}" for p in self.procs)


def sse_events(body: str) -> list:
    """The `data:` payloads of a server-sent-event body, in order."""
    return [block[len("data: "):] for block in body.split("\n\n") if block.startswith("data: ")]

