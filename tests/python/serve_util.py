"""A real `tandem serve` for Python tests: start, read its endpoint lines, stop; plus helpers
shared by the SDK, CLI and OpenAI-API tests."""
from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Dict, Optional

import pytest

from conftest import tandem_binary

ENDPOINT_LINE = re.compile(r"^(router|prefill|decode) (grpc|http|metrics) (\S+)$", re.M)
# Hang guards. Every wait here returns as soon as what it waits for happens (endpoints printed,
# a metric reached its value, a log line appeared), so these only bound a failing run; they are
# wide because the machine may be slow or shared with other work.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0
WAIT_TIMEOUT_S = 240.0


class Serve:
    """A `tandem serve` process group; stdout and stderr go to files.

    After wait_for_router(): `address` is the router's gRPC HOST:PORT, `http` its HTTP API
    base URL (http://HOST:PORT), and `endpoints` maps e.g. "decode metrics" to every URL.
    `metrics_context`: the SSL context metric() reads https metrics URLs with (--metrics-tls).
    """

    def __init__(self, model_dir: Path, logs: Path, *extra: str,
                 binary: Optional[Path] = None) -> None:
        """`binary`: the `tandem` to run (default <build>/bin/tandem; the CUDA interpreter's
        flavour is <build>/bin/interp/tandem, whose workers are its siblings there)."""
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logs / "serve.out"
        self.stderr_path = logs / "serve.err"
        cmd = [str(binary or tandem_binary("tandem")), "serve", "--model", str(model_dir),
               "--threads", "1", "--log-level", "info", *extra]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # Own session: teardown can kill the whole group if SIGINT is not enough.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.address: Optional[str] = None
        self.http: Optional[str] = None
        self.endpoints: Dict[str, list] = {}
        self.metrics_context: Optional[ssl.SSLContext] = None

    def wait_for_router(self, timeout: float = START_TIMEOUT_S) -> str:
        """Waits until every endpoint line is printed (serve prints them together once the
        workers are in rotation) and returns the router's gRPC address."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.stdout_path.read_text(errors="replace")
            found: Dict[str, list] = {}
            for role, kind, where in ENDPOINT_LINE.findall(text):
                found.setdefault(f"{role} {kind}", []).append(where)
            if "decode grpc" in found and "router grpc" in found:
                self.endpoints = found
                self.address = found["router grpc"][0]
                if "router http" in found:
                    self.http = "http://" + found["router http"][0]
                return self.address
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"tandem serve printed no endpoints (rc={self.proc.returncode}):\n"
                    f"{self.stderr_tail()}")

    def stderr_tail(self, n: int = 4000) -> str:
        return self.stderr_path.read_text(errors="replace")[-n:]

    def child_pid(self, binary: str) -> int:
        """Pid of the serve child running `binary` (e.g. "tandem-decode")."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        for pid in map(int, children.split()):
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except FileNotFoundError:
                continue
            if os.path.basename(argv0.decode()) == binary:
                return pid
        raise AssertionError(f"no {binary} child of tandem serve (children: {children})")

    def metric(self, role: str, name: str) -> float:
        """Sum of an unlabelled-by-us metric over every `role` process's /metrics."""
        total = 0.0
        for url in self.endpoints.get(f"{role} metrics", []):
            body = urllib.request.urlopen(url, timeout=60,
                                          context=self.metrics_context).read().decode()
            for line in body.splitlines():
                if line.startswith(name + "{") or line.startswith(name + " "):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_metric(self, role: str, name: str, want: float,
                    timeout: float = WAIT_TIMEOUT_S) -> float:
        """Polls until the metric equals `want` (or the timeout); returns the last value."""
        end = time.monotonic() + timeout
        value = self.metric(role, name)
        while value != want and time.monotonic() < end:
            time.sleep(0.05)
            value = self.metric(role, name)
        return value

    def stop(self) -> None:
        """SIGINT (serve stops every child), a bounded wait, then SIGKILL to the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of our own group only
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=60)


def reference_text(model_dir: Path, prompt: str, chat: bool, max_tokens: int) -> str:
    """Greedy text of the single-process engine (`tandem generate` prints it plus '\\n')."""
    cmd = [str(tandem_binary("tandem")), "generate", "--model", str(model_dir),
           "--max-tokens", str(max_tokens), "--threads", "1", "--log-level", "warn"]
    if chat:
        cmd.append("--chat")
    cmd.append(prompt)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    return out[:-1] if out.endswith("\n") else out


def free_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_log(serve: Serve, pattern: str, timeout: float = WAIT_TIMEOUT_S) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if re.search(pattern, serve.stderr_path.read_text(errors="replace")):
            return True
        time.sleep(0.05)
    return False
