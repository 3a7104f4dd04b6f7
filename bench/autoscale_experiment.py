#!/usr/bin/env python3
"""Autoscaling end to end (issue 13): a real Prometheus (the Debian binary, its own config, a free
loopback port, a temporary storage folder) scrapes `tandem serve --autoscale --prometheus ...`,
whose workers simulate their forward pass from a compute profile (--simulate-compute), so many
workers fit on a small machine; a load generator drives a step load and records every request.

Phases (seconds at the default --time-scale 1):
  low 40 · high (2.5x requests/s) 80 · low 60 · decode-heavy (long outputs) 70 · low 300, with
  Prometheus stopped for 30 s at the start of that last low phase (the planner falls back to the
  router's /metrics, a partial view on which it never scales down). Flapping is counted over the
  constant load of the first low phase and the last one after its first 40 s (300 s together).
  The low load is a fifth of one prefill worker's profiled capacity: with a TTFT SLO of 2.5x the
  prompt's compute time, Poisson bursts make one worker miss it at about a third.
Then a sweep of static allocations (no planner) over the high and decode-heavy loads finds the
cheapest fixed (prefill, decode) that meets the SLOs, for the replica-seconds ratio.

Writes <out>/autoscale_timeseries.csv (per second: load, replicas per pool, attainment),
<out>/autoscale_requests.csv, <out>/autoscale_actions.jsonl (every change and its reason), <out>/autoscale_summary.json and, with matplotlib,
<out>/autoscale.png; prints the acceptance figures. A bench, not a test: nothing is asserted.

  python3 bench/autoscale_experiment.py [--build-dir build] [--out bench/figures]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
import tandem_client as tc  # the Python SDK (pip install ./clients/python; tools/setup.sh does)

ENDPOINT = re.compile(r"^(router|prefill|decode) (metrics) (\S+)$", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> Optional[str]:
    try:
        return urllib.request.urlopen(url, timeout=timeout).read().decode()
    except OSError:
        return None


def metric_sum(body: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in body.splitlines():
        if (line.startswith(name + "{") and labels in line.split("}")[0]) or \
                (not labels and line.startswith(name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------ load

@dataclass
class Phase:
    name: str
    seconds: float
    rate: float  # requests/s
    prompt_tokens: int
    output_tokens: int


@dataclass
class Req:
    phase: str
    start: float
    prompt_tokens: int
    output_tokens: int
    ttft: Optional[float] = None
    itls: List[float] = field(default_factory=list)
    end: Optional[float] = None
    tokens: int = 0
    error: str = ""

    def tpot(self) -> Optional[float]:
        return sum(self.itls) / len(self.itls) if self.itls else None


class LoadGenerator:
    """Open-loop Poisson arrivals (seeded) following `phases`; one thread per request."""

    def __init__(self, address: str, phases: List[Phase], vocab: int, seed: int = 1) -> None:
        self.address = address
        self.phases = phases
        self.vocab = vocab
        self.rng = random.Random(seed)
        self.requests: List[Req] = []
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=256)
        self.t0 = 0.0

    def run_one(self, r: Req, tokens: List[int]) -> None:
        try:
            with tc.Client(self.address, timeout=600, retries=0) as c:
                last = None
                for chunk in c.generate_stream(token_ids=tokens, max_tokens=r.output_tokens,
                                               ignore_eos=True, seed=self.rng.randrange(1 << 30)):
                    now = time.monotonic()
                    n = len(chunk.token_ids)
                    if n == 0:
                        continue
                    if r.ttft is None:
                        r.ttft = now - r.start
                    elif last is not None:
                        r.itls.extend([(now - last) / n] * n)
                    last = now
                    r.tokens += n
        except Exception as e:  # noqa: BLE001 - recorded
            r.error = type(e).__name__ + ": " + str(e)[:200]
        r.end = time.monotonic()

    def phase_at(self, t: float) -> Tuple[Optional[Phase], float]:
        acc = 0.0
        for p in self.phases:
            if t < acc + p.seconds:
                return p, acc
            acc += p.seconds
        return None, acc

    def run(self, stop: threading.Event) -> None:
        self.t0 = time.monotonic()
        next_at = self.t0
        while not stop.is_set():
            p, _ = self.phase_at(next_at - self.t0)
            if p is None:
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            tokens = [self.rng.randrange(1000, self.vocab) for _ in range(p.prompt_tokens)]
            r = Req(p.name, time.monotonic(), p.prompt_tokens, p.output_tokens)
            with self.lock:
                self.requests.append(r)
            self.pool.submit(self.run_one, r, tokens)
            next_at += self.rng.expovariate(p.rate)

    def wait(self) -> None:
        self.pool.shutdown(wait=True)


# ------------------------------------------------------------------ processes

class Prometheus:
    def __init__(self, work: Path, rules: List[Path], interval: str) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = work / "targets" / "tandem.yml"
        self.targets.parent.mkdir(parents=True, exist_ok=True)
        self.targets.write_text("[]\n")
        cfg = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(r) for r in rules],
            "scrape_configs": [{"job_name": "tandem", "metrics_path": "/metrics",
                                "file_sd_configs": [{"files": [str(self.targets)],
                                                     "refresh_interval": "1s"}]}],
        }
        self.config = work / "prometheus.yml"
        self.config.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        log = open(self.work / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}",
             f"--storage.tsdb.path={self.work / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if http_get(self.url + "/-/ready") is not None:
                return
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready; see " + str(self.work))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def write_targets(self, urls: Dict[str, List[str]]) -> None:
        groups = []
        for pool, us in sorted(urls.items()):
            hosts = [u.split("//", 1)[1].split("/", 1)[0] for u in us]
            if hosts:
                groups.append({"targets": hosts, "labels": {"pool": pool}})
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.targets)


class Serve:
    def __init__(self, build: Path, model: Path, work: Path, args: List[str]) -> None:
        self.out = work / "serve.out"
        self.err = work / "serve.err"
        cmd = [str(build / "bin" / "tandem"), "serve", "--model", str(model), "--threads", "1",
               "--log-level", "info", *args]
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def endpoints(self) -> Dict[str, List[str]]:
        found: Dict[str, List[str]] = {}
        for role, _, url in ENDPOINT.findall(self.out.read_text(errors="replace")):
            found.setdefault(role, []).append(url)
        return found

    def router_address(self, timeout: float = 300) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(r"^router grpc (\S+)$", self.out.read_text(errors="replace"), re.M)
            if m and "decode grpc" in self.out.read_text(errors="replace"):
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("tandem serve did not start:\n" +
                           self.err.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ------------------------------------------------------------------ one run

@dataclass
class Sample:
    t: float
    phase: str
    rate: float
    prefill_ready: float
    decode_ready: float
    running: float
    prom_up: bool


def monitor(serve: Serve, prom: Optional[Prometheus], load: LoadGenerator,
            stop: threading.Event, samples: List[Sample], prom_down: threading.Event) -> None:
    """Every 0.5 s: keeps Prometheus's file_sd targets to the live processes; every 1 s: a
    sample of load and replicas from the router's tandem_workers gauge."""
    last_sample = 0.0
    while not stop.is_set():
        eps = serve.endpoints()
        live: Dict[str, List[str]] = {}
        router_body = None
        for role, urls in eps.items():
            for u in dict.fromkeys(urls):
                body = http_get(u, timeout=1.0)
                if body is not None:
                    live.setdefault(role, []).append(u)
                    if role == "router":
                        router_body = body
        if prom is not None:
            prom.write_targets(live)
        now = time.monotonic()
        if now - last_sample >= 1.0 and router_body is not None and load.t0 > 0:
            last_sample = now
            p, _ = load.phase_at(now - load.t0)
            samples.append(Sample(
                now - load.t0, p.name if p else "end", p.rate if p else 0.0,
                metric_sum(router_body, "tandem_workers", 'kind="prefill"'),
                metric_sum(router_body, "tandem_workers", 'kind="decode"'),
                metric_sum(router_body, "tandem_requests_running"),
                not prom_down.is_set()))
        time.sleep(0.5)


@dataclass
class RunResult:
    requests: List[Req]
    samples: List[Sample]
    decisions: List[dict]
    t0_wall: float
    t0_mono: float
    extra: Dict[str, float]


def run(build: Path, model: Path, profile: Path, work: Path, phases: List[Phase],
        serve_args: List[str], vocab: int, prometheus: bool, prom_stop: Optional[Tuple[float, float]],
        rules: List[Path], scrape: str, seed: int = 1) -> RunResult:
    work.mkdir(parents=True, exist_ok=True)
    prom = Prometheus(work, rules, scrape) if prometheus else None
    if prom:
        prom.start()
        serve_args = serve_args + ["--prometheus", prom.url]
    decision_log = work / "decisions.jsonl"
    if "--autoscale" in serve_args:
        serve_args = serve_args + ["--decision-log", str(decision_log)]
    serve = Serve(build, model, work, ["--simulate-compute", str(profile), *serve_args])
    stop = threading.Event()
    prom_down = threading.Event()
    samples: List[Sample] = []
    extra: Dict[str, float] = {}
    try:
        address = serve.router_address()
        load = LoadGenerator(address, phases, vocab, seed)
        mon = threading.Thread(target=monitor, args=(serve, prom, load, stop, samples, prom_down),
                               daemon=True)
        mon.start()
        time.sleep(3)  # first scrapes of every process
        t0_wall = time.time()
        gen = threading.Thread(target=load.run, args=(stop,), daemon=True)
        gen.start()
        if prom and prom_stop:
            at, secs = prom_stop
            while load.t0 == 0 or time.monotonic() - load.t0 < at:
                time.sleep(0.2)
            prom.stop()
            prom_down.set()
            extra["prom_stopped_at"] = time.monotonic() - load.t0
            time.sleep(secs)
            prom.start()
            prom_down.clear()
            extra["prom_started_at"] = time.monotonic() - load.t0
        gen.join()
        load.wait()
        stop.set()
        mon.join(timeout=10)
    finally:
        stop.set()
        serve.stop()
        if prom:
            prom.stop()
    decisions = []
    if decision_log.exists():
        for line in decision_log.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            ts = datetime.fromisoformat(d["time"].replace("Z", "+00:00")).timestamp()
            d["t"] = ts - t0_wall
            decisions.append(d)
    return RunResult(load.requests, samples, decisions, t0_wall, load.t0, extra)


# ------------------------------------------------------------------ figures

def attainment(reqs: List[Req], ttft_slo: float, itl_slo: float) -> Tuple[float, float, int]:
    done = [r for r in reqs if r.end is not None]
    if not done:
        return float("nan"), float("nan"), 0
    ttft = sum(1 for r in done if not r.error and r.ttft is not None and r.ttft <= ttft_slo)
    itl = sum(1 for r in done if not r.error and (r.tpot() is None or r.tpot() <= itl_slo))
    return ttft / len(done), itl / len(done), len(done)


def phase_bounds(phases: List[Phase]) -> Dict[str, Tuple[float, float]]:
    out, acc = {}, 0.0
    for i, p in enumerate(phases):
        out[f"{i}:{p.name}"] = (acc, acc + p.seconds)
        acc += p.seconds
    return out


def replicas_at(samples: List[Sample], t: float) -> Tuple[float, float]:
    best = None
    for s in samples:
        if s.t <= t:
            best = s
    return (best.prefill_ready, best.decode_ready) if best else (float("nan"), float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--profile", default=str(REPO / "bench" / "profiles" /
                                              "smollm2-135m-cpu-2core.json"))
    ap.add_argument("--out", default=str(REPO / "bench" / "figures"))
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiplies every phase length")
    ap.add_argument("--low-rate", type=float, default=0.0,
                    help="requests/s of the low phase (0 = a fifth of one prefill worker's capacity)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=48)
    ap.add_argument("--heavy-output-tokens", type=int, default=256)
    ap.add_argument("--heavy-prompt-tokens", type=int, default=32)
    ap.add_argument("--interval-s", type=float, default=10.0)
    ap.add_argument("--scale-down-window-s", type=float, default=40.0)
    ap.add_argument("--ttft-slo-s", type=float, default=1.0)
    ap.add_argument("--itl-slo-s", type=float, default=0.15)
    ap.add_argument("--max-workers", type=int, default=6, help="per pool")
    ap.add_argument("--planner-arg", action="append", default=[],
                    help="extra flag for tandem serve --autoscale (repeatable), e.g. "
                         "--planner-arg=--prefill-queue-s-per-worker=2")
    ap.add_argument("--seed", type=int, default=1, help="seeds the arrivals and the prompts")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()

    build, model, profile, out = (Path(a.build_dir), Path(a.model), Path(a.profile),
                                  Path(a.out))
    out.mkdir(parents=True, exist_ok=True)
    prof = json.loads(profile.read_text())
    cfg = json.loads((model / "config.json").read_text())
    vocab = int(cfg["vocab_size"])

    # Capacities from the profile, given to the planner (its own measurement of prefill capacity,
    # prompt tokens over prefill compute seconds, reads low while prompts share a batch): prefill
    # tokens/s at the prompt size; decode tokens/s of the largest batch whose step stays within
    # 80% of the ITL SLO.
    def interp(xs, ys, v):
        if v <= xs[0]:
            return ys[0]
        for i in range(1, len(xs)):
            if v <= xs[i] or i == len(xs) - 1:
                return ys[i - 1] + (ys[i] - ys[i - 1]) * (v - xs[i - 1]) / (xs[i] - xs[i - 1])
        return ys[-1]
    pre_s = interp(prof["prefill"]["tokens"], prof["prefill"]["seconds"], a.prompt_tokens)
    prefill_tps = a.prompt_tokens / pre_s
    ctx = a.prompt_tokens + a.output_tokens // 2
    attn = prof.get("attention_seconds_per_position", 0.0)
    decode_cap = 0.0
    for b in range(1, 129):
        step = interp(prof["decode"]["batch"], prof["decode"]["seconds"], b) + \
            attn * b * (ctx - prof["decode"].get("context", ctx))
        if step <= 0.8 * a.itl_slo_s:
            decode_cap = b / step
    low = a.low_rate or round(0.2 * prefill_tps / a.prompt_tokens, 2)
    ts = a.time_scale
    phases = [
        Phase("low", 40 * ts, low, a.prompt_tokens, a.output_tokens),
        Phase("high", 80 * ts, 2.5 * low, a.prompt_tokens, a.output_tokens),
        Phase("low", 60 * ts, low, a.prompt_tokens, a.output_tokens),
        Phase("decode-heavy", 70 * ts, low, a.heavy_prompt_tokens, a.heavy_output_tokens),
        Phase("low", 300 * ts, low, a.prompt_tokens, a.output_tokens),
    ]
    bounds = phase_bounds(phases)
    print(f"[autoscale] profile {profile.name} ({prof.get('machine', '?')})")
    print(f"[autoscale] one prefill worker: {prefill_tps:.0f} prompt tokens/s at "
          f"{a.prompt_tokens}; one decode worker: {decode_cap:.0f} tokens/s within 80% of the "
          f"ITL SLO; low load {low} req/s, high {2.5 * low:.2f} req/s")

    rules = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
    common = ["--kv-cache-mb", "256"]
    work_root = Path(tempfile.mkdtemp(prefix="tandem-autoscale-"))
    t_start = time.monotonic()
    try:
        auto_args = ["--autoscale", "--prefill", "1", "--decode", "1", "--min-prefill", "1",
                     "--max-prefill", str(a.max_workers), "--min-decode", "1", "--max-decode",
                     str(a.max_workers), "--interval-s", str(a.interval_s),
                     "--scale-down-window-s", str(a.scale_down_window_s), "--rate-window",
                     f"{max(4, int(3 * a.interval_s))}s",
                     "--prefill-capacity-tokens-per-s", f"{prefill_tps:.1f}",
                     "--decode-capacity-tokens-per-s", f"{decode_cap:.1f}", "--ttft-slo-s",
                     str(a.ttft_slo_s), "--itl-slo-s", str(a.itl_slo_s),
                     # Every prompt of a phase has one size: prompt compute times barely vary.
                     "--prefill-service-scv", "0", *common,
                     *a.planner_arg]
        last_low = list(bounds.values())[-1]
        res = run(build, model, profile, work_root / "autoscale", phases, auto_args, vocab,
                  True, (last_low[0], 30.0), rules, "1s", a.seed)
        sweep: List[tuple] = []
        best_static = None
        if not a.no_sweep:
            # The cheapest static allocation meeting both SLOs for >= 95% of requests (after each
            # run's first 10 s) under the high load and under the decode-heavy load: the fewest
            # prefill workers that pass the high load (decode generous), then the fewest decode
            # workers that pass the decode-heavy load (which needs more decode than the high one).
            hi, heavy = phases[1], phases[3]

            def static_run(p: int, d: int, ph: Phase) -> Tuple[float, float]:
                sp = [Phase(ph.name, 35 * ts, ph.rate, ph.prompt_tokens, ph.output_tokens)]
                r = run(build, model, profile, work_root / f"static-{p}-{d}-{ph.name}", sp,
                        ["--prefill", str(p), "--decode", str(d), *common], vocab, False, None,
                        rules, "1s")
                rs_ = [q for q in r.requests if q.start - r.t0_mono >= 10 * ts]
                ta_, ia_, _ = attainment(rs_, a.ttft_slo_s, a.itl_slo_s)
                sweep.append((p, d, ph.name, ta_, ia_))
                print(f"[sweep] static P={p} D={d}, {ph.name} load: TTFT {ta_:.1%} ITL {ia_:.1%}")
                return ta_, ia_

            p_star = d_star = None
            try:
                for p in range(1, a.max_workers + 1):
                    if min(static_run(p, a.max_workers, hi)) >= 0.95:
                        p_star = p
                        break
                if p_star is not None:
                    for d in range(1, a.max_workers + 1):
                        if min(static_run(p_star, d, heavy)) >= 0.95:
                            d_star = d
                            break
            except Exception as e:  # noqa: BLE001 - the autoscaled run's figures still count
                print(f"[sweep] failed: {e}")
            if p_star is not None and d_star is not None:
                best_static = (p_star, d_star)
    finally:
        if not a.keep:
            shutil.rmtree(work_root, ignore_errors=True)
        else:
            print(f"[autoscale] work folder kept: {work_root}")

    # ---------------------------------------------------------------- figures
    ttft_slo, itl_slo = a.ttft_slo_s, a.itl_slo_s
    reqs, samples, decisions = res.requests, res.samples, res.decisions
    failed = [r for r in reqs if r.error]
    (lo1, hi_b), (hi_s, hi_e) = list(bounds.values())[0], list(bounds.values())[1]
    high_reqs = [r for r in reqs if hi_s + 25 * ts <= r.start - res.t0_mono < hi_e]
    t_att, i_att, n_high = attainment(high_reqs, ttft_slo, itl_slo)

    def pool_series(pool: str) -> List[Tuple[float, int, int, str]]:
        s = []
        for d in decisions:
            for p in d["pools"]:
                if p["pool"] == pool:
                    s.append((d["t"], p["current"], p["desired"], p["action"]))
        return s

    # Time to target after the up-step: the largest size each pool reaches in the high phase;
    # decision time (in intervals) and the time its workers are all in rotation.
    up = {}
    for pool, idx in (("prefill", 0), ("decode", 1)):
        hs = [s for s in samples if hi_s <= s.t < hi_e]
        target = max((s.prefill_ready if idx == 0 else s.decode_ready) for s in hs) if hs else 0
        decided = next((t for t, cur, des, act in pool_series(pool)
                        if hi_s <= t < hi_e and des >= target and act == "up"), None)
        ready = next((s.t for s in hs
                      if (s.prefill_ready if idx == 0 else s.decode_ready) >= target), None)
        if replicas_at(samples, hi_s)[idx] >= target:  # already there when the step came
            decided = ready = hi_s
        up[pool] = {"target": target,
                    "decided_after_s": None if decided is None else decided - hi_s,
                    "decided_after_intervals": None if decided is None
                    else (decided - hi_s) / a.interval_s,
                    "ready_after_s": None if ready is None else ready - hi_s}

    # Replica-seconds (workers in rotation, sampled each second) vs the best static allocation.
    rs = 0.0
    for i in range(1, len(samples)):
        dt = samples[i].t - samples[i - 1].t
        rs += dt * (samples[i - 1].prefill_ready + samples[i - 1].decode_ready)
    covered = samples[-1].t - samples[0].t if len(samples) > 1 else 0
    static_rs = (best_static[0] + best_static[1]) * covered if best_static else None

    # Decode-heavy step: prefill growth.
    (hv_s, hv_e) = list(bounds.values())[3]
    pre_before = replicas_at(samples, hv_s)[0]
    pre_max = max((s.prefill_ready for s in samples if hv_s <= s.t < hv_e), default=float("nan"))
    dec_before = replicas_at(samples, hv_s)[1]
    dec_max = max((s.decode_ready for s in samples if hv_s <= s.t < hv_e), default=float("nan"))

    # Prometheus stopped: no scale-down between the stop and a scrape after the restart.
    ps, pe = res.extra.get("prom_stopped_at"), res.extra.get("prom_started_at")
    downs_while_stopped = []
    sources_while_stopped = set()
    if ps is not None:
        for d in decisions:
            if ps <= d["t"] <= pe:
                sources_while_stopped.add(d["source"])
                for p in d["pools"]:
                    if p["action"] == "down":
                        downs_while_stopped.append((round(d["t"], 1), p["pool"]))
    # Flapping: changes per pool while the load stays constant — the last low phase after its
    # first 40 s (Prometheus back, the decode-heavy pool settled), and the low phase before the
    # up-step.
    changes = []
    for (s0, s1) in ((lo1, hi_b), (list(bounds.values())[-1][0] + 40 * ts,
                                   list(bounds.values())[-1][1])):
        for d in decisions:
            if s0 <= d["t"] < s1:
                changes += [(round(d["t"], 1), p["pool"], p["action"]) for p in d["pools"]
                            if p["action"] != "hold"]
    constant_s = (hi_b - lo1) + (list(bounds.values())[-1][1] -
                                 list(bounds.values())[-1][0] - 40 * ts)

    # ---------------------------------------------------------------- files
    with open(out / "autoscale_timeseries.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "phase", "offered_req_per_s", "prefill_ready", "decode_ready",
                    "router_running", "prometheus_up", "ttft_attainment_10s",
                    "itl_attainment_10s", "completed_10s"])
        for s in samples:
            window = [r for r in reqs if r.end is not None and
                      s.t - 10 <= r.end - res.t0_mono < s.t]
            ta, ia, n = attainment(window, ttft_slo, itl_slo)
            w.writerow([f"{s.t:.1f}", s.phase, s.rate, s.prefill_ready, s.decode_ready,
                        s.running, int(s.prom_up), f"{ta:.3f}", f"{ia:.3f}", n])
    with open(out / "autoscale_actions.jsonl", "w") as f:  # every change, with its reason
        for d in decisions:
            for p in d["pools"]:
                if p["action"] != "hold":
                    f.write(json.dumps({"t_s": round(d["t"], 1), "source": d["source"], **p}) + "\n")
    with open(out / "autoscale_requests.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["start_s", "phase", "prompt_tokens", "output_tokens", "tokens", "ttft_s",
                    "tpot_s", "end_s", "error"])
        for r in reqs:
            w.writerow([f"{r.start - res.t0_mono:.3f}", r.phase, r.prompt_tokens,
                        r.output_tokens, r.tokens, "" if r.ttft is None else f"{r.ttft:.4f}",
                        "" if r.tpot() is None else f"{r.tpot():.4f}",
                        "" if r.end is None else f"{r.end - res.t0_mono:.3f}", r.error])
    summary = {
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end",
        "profile": profile.name, "profile_machine": prof.get("machine"),
        "phases": [p.__dict__ for p in phases], "slo": {"ttft_s": ttft_slo, "itl_s": itl_slo},
        "interval_s": a.interval_s, "seed": a.seed, "requests": len(reqs), "failed": len(failed),
        "failed_examples": [r.error for r in failed[:5]],
        "up_step": up,
        "high_phase_after_25s": {"requests": n_high, "ttft_attainment": t_att,
                                 "itl_attainment": i_att},
        "replica_seconds": rs, "best_static": best_static, "static_replica_seconds": static_rs,
        "replica_seconds_ratio": (rs / static_rs) if static_rs else None, "sweep": sweep,
        "decode_heavy": {"prefill_before": pre_before, "prefill_max": pre_max,
                         "decode_before": dec_before, "decode_max": dec_max},
        "prometheus_stop": {"stopped_at_s": ps, "restarted_at_s": pe,
                            "scale_downs_while_stopped": downs_while_stopped,
                            "sources_while_stopped": sorted(sources_while_stopped)},
        "constant_load": {"seconds": constant_s, "changes": changes},
        "wall_s": time.monotonic() - t_start,
    }
    (out / "autoscale_summary.json").write_text(json.dumps(summary, indent=2, default=str))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
        t = [s.t for s in samples]
        ax[0].step(t, [s.rate for s in samples], where="post", label="offered req/s")
        heavy = [s.rate if s.phase == "decode-heavy" else float("nan") for s in samples]
        ax[0].step(t, heavy, where="post", color="tab:red", label="decode-heavy")
        ax[0].set_ylabel("requests/s")
        ax[0].legend(loc="upper right")
        ax[1].step(t, [s.prefill_ready for s in samples], where="post", label="prefill")
        ax[1].step(t, [s.decode_ready for s in samples], where="post", label="decode")
        if best_static:
            ax[1].axhline(best_static[0], ls=":", color="tab:blue", label="best static P")
            ax[1].axhline(best_static[1], ls=":", color="tab:orange", label="best static D")
        ax[1].set_ylabel("workers in rotation")
        ax[1].legend(loc="upper right")
        win = []
        for s in samples:
            window = [r for r in reqs if r.end is not None and s.t - 10 <= r.end - res.t0_mono < s.t]
            win.append(attainment(window, ttft_slo, itl_slo))
        ax[2].plot(t, [w[0] for w in win], label=f"TTFT <= {ttft_slo} s")
        ax[2].plot(t, [w[1] for w in win], label=f"mean ITL <= {itl_slo} s")
        ax[2].axhline(0.95, ls=":", color="gray")
        ax[2].set_ylabel("attainment (10 s window)")
        ax[2].set_ylim(0, 1.05)
        ax[2].legend(loc="lower right")
        ax[3].scatter([r.start - res.t0_mono for r in reqs if r.ttft],
                      [r.ttft for r in reqs if r.ttft], s=4, label="TTFT (s)")
        ax[3].scatter([r.start - res.t0_mono for r in reqs if r.tpot()],
                      [r.tpot() for r in reqs if r.tpot()], s=4, label="mean ITL (s)")
        ax[3].set_yscale("log")
        ax[3].set_xlabel("seconds")
        ax[3].legend(loc="upper right")
        for a_ in ax:
            for name, (s0, s1) in bounds.items():
                if "high" in name or "heavy" in name:
                    a_.axvspan(s0, s1, color="gray", alpha=0.08)
            if ps is not None:
                a_.axvspan(ps, pe, color="red", alpha=0.08)
        ax[0].set_title("tandem serve --autoscale, simulated compute, real Prometheus "
                        "(red band: Prometheus stopped)")
        fig.tight_layout()
        fig.savefig(out / "autoscale.png", dpi=90)
    except ImportError:
        print("[autoscale] matplotlib missing: CSV only")

    # ---------------------------------------------------------------- report
    print(f"[autoscale] {len(reqs)} requests, {len(failed)} failed")
    for pool in ("prefill", "decode"):
        u = up[pool]
        print(f"[autoscale] up-step, {pool}: target {u['target']:.0f} decided after "
              f"{u['decided_after_intervals'] if u['decided_after_intervals'] is None else round(u['decided_after_intervals'], 1)} "
              f"intervals, all in rotation after {u['ready_after_s'] if u['ready_after_s'] is None else round(u['ready_after_s'], 1)} s")
    print(f"[autoscale] high phase after 25 s: {n_high} requests, TTFT attainment {t_att:.1%}, "
          f"ITL attainment {i_att:.1%}")
    if static_rs:
        print(f"[autoscale] replica-seconds {rs:.0f} vs best static P={best_static[0]} "
              f"D={best_static[1]}: {static_rs:.0f} (ratio {rs / static_rs:.2f})")
    else:
        print(f"[autoscale] replica-seconds {rs:.0f}; no static allocation in the sweep met the "
              f"SLOs" if not a.no_sweep else f"[autoscale] replica-seconds {rs:.0f}")
    print(f"[autoscale] decode-heavy step: prefill {pre_before:.0f} -> max {pre_max:.0f} "
          f"(growth {pre_max - pre_before:.0f}); decode {dec_before:.0f} -> max {dec_max:.0f}")
    print(f"[autoscale] Prometheus stopped {ps and round(ps)}..{pe and round(pe)} s: "
          f"scale-downs meanwhile {downs_while_stopped or 'none'}; sources "
          f"{sorted(sources_while_stopped)}")
    print(f"[autoscale] constant load {constant_s:.0f} s: {len(changes)} changes {changes}")
    print(f"[autoscale] wrote {out}/autoscale_timeseries.csv, autoscale_requests.csv, "
          f"autoscale_summary.json{', autoscale.png' if (out / 'autoscale.png').exists() else ''}"
          f" ({summary['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
