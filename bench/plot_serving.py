#!/usr/bin/env python3
"""Tables and plots from `tandem bench --json` files (bench/run_serving_bench.sh writes them).

Reads from DIR (any that exist):
  ttft_engine_<len>.json / ttft_serve_<len>.json   TTFT, one request at a time
  concurrency_engine.json / concurrency_serve.json  tokens/s at fixed concurrencies
  http_rates.json                                   Poisson request rates over HTTP
Writes DIR/summary.md (printed too), DIR/latency_cdf.png and DIR/goodput_vs_rate.png.

    python bench/plot_serving.py bench/results
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def ttft_table(d: Path) -> List[str]:
    rows = ["| prompt tokens | engine TTFT p50 (ms) | tandem serve TTFT p50 (ms) | overhead (ms) "
            "| ratio |", "|---|---|---|---|---|"]
    for f in sorted(d.glob("ttft_engine_*.json"), key=lambda p: int(p.stem.split("_")[-1])):
        n = f.stem.split("_")[-1]
        e, s = load(f), load(d / f"ttft_serve_{n}.json")
        if not e or not s:
            continue
        a, b = e["runs"][0]["ttft_ms"]["p50"], s["runs"][0]["ttft_ms"]["p50"]
        rows.append(f"| {n} | {a:.1f} | {b:.1f} | {b - a:+.1f} | {b / a:.3f}× |")
    return rows if len(rows) > 2 else []


def concurrency_table(d: Path) -> List[str]:
    e, s = load(d / "concurrency_engine.json"), load(d / "concurrency_serve.json")
    if not e or not s:
        return []
    rows = ["| concurrent streams | engine output tok/s | tandem serve output tok/s | ratio "
            "| serve TTFT p50 / p99 (ms) | serve TPOT p50 / p99 (ms) |",
            "|---|---|---|---|---|---|"]
    for re_, rs in zip(e["runs"], s["runs"]):
        a, b = re_["output_throughput"], rs["output_throughput"]
        rows.append(f"| {rs['concurrency']} | {a:.1f} | {b:.1f} | {b / a:.2f}× | "
                    f"{rs['ttft_ms']['p50']:.0f} / {rs['ttft_ms']['p99']:.0f} | "
                    f"{rs['tpot_ms']['p50']:.1f} / {rs['tpot_ms']['p99']:.1f} |")
    return rows


def rate_table(h: dict) -> List[str]:
    rows = ["| request rate (req/s) | throughput (req/s) | output tok/s | TTFT p50 / p90 / p99 (ms) "
            "| TPOT p50 / p90 / p99 (ms) | goodput (req/s) |", "|---|---|---|---|---|---|"]
    for r in h["runs"]:
        t, p = r["ttft_ms"], r["tpot_ms"]
        rows.append(f"| {r['request_rate']:g} | {r['request_throughput']:.2f} | "
                    f"{r['output_throughput']:.1f} | {t['p50']:.0f} / {t['p90']:.0f} / "
                    f"{t['p99']:.0f} | {p['p50']:.1f} / {p['p90']:.1f} / {p['p99']:.1f} | "
                    f"{r['goodput']['requests_per_s']:.2f} |")
    g = h["runs"][0]["goodput"]
    rows.append("")
    rows.append(f"Goodput counts requests with TTFT ≤ {g['ttft_slo_ms']:g} ms and TPOT ≤ "
                f"{g['tpot_slo_ms']:g} ms.")
    return rows


def cdf(ax, values: List[float], label: str) -> None:
    v = sorted(values)
    if not v:
        return
    ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=label)


def plot_cdfs(h: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in h["runs"]:
        ok = [q for q in r["requests"] if q["ok"]]
        label = f"{r['request_rate']:g} req/s"
        cdf(axes[0], [q["ttft_ms"] for q in ok], label)
        cdf(axes[1], [q["tpot_ms"] for q in ok if q["output_tokens"] > 1], label)
        cdf(axes[2], [q["e2e_ms"] for q in ok], label)
    for ax, title in zip(axes, ("time to first token", "time per output token",
                                "end-to-end latency")):
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"tandem serve, OpenAI HTTP API, Poisson arrivals — {h['machine']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_goodput(h: dict, out: Path) -> None:
    rates = [r["request_rate"] for r in h["runs"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(rates, rates, "--", color="gray", label="offered load")
    ax.plot(rates, [r["request_throughput"] for r in h["runs"]], "o-", label="throughput")
    g = h["runs"][0]["goodput"]
    ax.plot(rates, [r["goodput"]["requests_per_s"] for r in h["runs"]], "s-",
            label=f"goodput (TTFT ≤ {g['ttft_slo_ms']:g} ms, TPOT ≤ {g['tpot_slo_ms']:g} ms)")
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("requests/s")
    ax.set_title("goodput against request rate")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    lines: List[str] = []
    machine = None
    for name in ("http_rates.json", "concurrency_serve.json", "ttft_serve_128.json"):
        j = load(d / name)
        if j:
            machine = j["machine"]
            break
    if machine:
        lines += [f"Machine: {machine}", ""]
    for title, table in (("Time to first token, one request at a time", ttft_table(d)),
                         ("Output tokens/s at fixed concurrency", concurrency_table(d))):
        if table:
            lines += [f"### {title}", ""] + table + [""]
    h = load(d / "http_rates.json")
    if h:
        lines += ["### OpenAI HTTP API, Poisson arrivals", ""] + rate_table(h) + [""]
        plot_cdfs(h, d / "latency_cdf.png")
        plot_goodput(h, d / "goodput_vs_rate.png")
        lines += [f"Plots: {d / 'latency_cdf.png'}, {d / 'goodput_vs_rate.png'}", ""]
    if not lines:
        print(f"no tandem bench JSON files in {d}", file=sys.stderr)
        return 1
    text = "\n".join(lines)
    (d / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
