"""`tandem serve` in the background for the benchmark scripts: started with the given flags, its
endpoint lines read (router gRPC address, every /metrics URL), stopped with SIGINT."""
import os
import re
import signal
import subprocess
import threading
import time

ENDPOINT = re.compile(r"^(router|prefill|decode) (grpc|http|metrics) (\S+)$")


class Serve:
    """`grpc`: the router's address; `metrics`: every process's /metrics URL;
    `prefill_metrics`: the (first) prefill worker's."""

    def __init__(self, bin_dir, model, threads, prefix_cache, kv_cache_mb):
        argv = [os.path.join(bin_dir, "tandem"), "serve", "--model", model, "--threads",
                str(threads), "--kv-cache-mb", str(kv_cache_mb), "--http-port", "-1",
                "--prefix-cache", "true" if prefix_cache else "false", "--log-level", "warn"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.grpc, self.prefill_metrics, self.metrics, lines = None, None, [], []
        deadline = time.time() + 600
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("tandem serve exited: " + "".join(lines))
            lines.append(line)
            m = ENDPOINT.match(line.strip())
            if not m:
                continue
            role, kind, where = m.groups()
            if kind == "metrics":
                self.metrics.append(where)
                if role == "prefill" and self.prefill_metrics is None:
                    self.prefill_metrics = where
            if role == "router" and kind == "grpc":
                self.grpc = where
            if role == "decode" and kind == "grpc":
                break  # serve prints the decode worker's lines last, once all are in rotation
        if self.grpc is None or self.prefill_metrics is None:
            self.close()
            raise RuntimeError("tandem serve printed no router or prefill endpoints: "
                               + "".join(lines))
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def close(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
