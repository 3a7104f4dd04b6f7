#!/usr/bin/env python3
"""Multi-turn chat benchmark: `tandem bench --conversations` through `tandem serve`, with the
prefill worker's prefix cache on and off.

Starts `tandem serve` (router + 1 prefill + 1 decode worker, real processes on loopback) once
with --prefix-cache true and once with false, and runs the same workload on each:
CONVERSATIONS chats at once, TURNS turns each (in lockstep), every prompt the chat so far: a
shared SYSTEM-token system prompt, then the user turns (USER tokens each) and the model's own
answers (ANSWER tokens each, EOS ignored). Prompts are token ids, answers greedy, so both runs
send the same prompts. `tandem bench --metrics` scrapes the workers' /metrics around each turn.

Prints, per turn and on/off: TTFT p50, prefill tokens computed, prefix-cache hit tokens, KV
pages and bytes shipped; and TTFT p50 over turns >= 2 with the on/off ratio.

Usage: TANDEM_BUILD_DIR=build python bench/multi_turn_bench.py [--conversations 4]
       [--turns 4] [--system-len 512] [--user-len 64] [--answer-len 32] [--threads 1]
       [--json OUT.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from serve_process import Serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, prefix_cache):
    serve = Serve(args.bin_dir, args.model, args.threads, prefix_cache, args.kv_cache_mb)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "bench.json")
            cmd = [os.path.join(args.bin_dir, "tandem"), "bench", "--target",
                   f"grpc://{serve.grpc}", "--conversations", str(args.conversations),
                   "--turns", str(args.turns), "--system-len", str(args.system_len),
                   "--user-len", str(args.user_len), "--output-len", str(args.answer_len),
                   "--warmup", "1", "--seed", str(args.seed), "--metrics",
                   ",".join(serve.metrics), "--json", out]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
            sys.stdout.write(f"--- cache {'on' if prefix_cache else 'off'}\n{proc.stdout}")
            if proc.returncode != 0:
                raise RuntimeError(f"tandem bench failed ({proc.returncode}): {proc.stderr}")
            with open(out) as f:
                return json.load(f)["runs"][0]
    finally:
        serve.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--system-len", type=int, default=512)
    ap.add_argument("--user-len", type=int, default=64)
    ap.add_argument("--answer-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="compute threads per worker (0 = all cores; 1 keeps prefill and decode "
                         "off each other's core on a 2-core machine)")
    ap.add_argument("--kv-cache-mb", type=int, default=512)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--json", help="write both runs' summaries here")
    ap.add_argument("--bin-dir", default=os.path.join(
        os.environ.get("TANDEM_BUILD_DIR", os.path.join(REPO, "build")), "bin"))
    ap.add_argument("--model", default=os.environ.get(
        "TANDEM_MODEL_DIR", os.path.join(REPO, "models", "SmolLM2-135M-Instruct")))
    args = ap.parse_args()

    runs = {"on": run(args, True), "off": run(args, False)}
    on, off = runs["on"], runs["off"]
    print(f"multi-turn chat: {args.conversations} conversations x {args.turns} turns, "
          f"{args.system_len}-token shared system prompt, {args.user_len}-token user turns, "
          f"{args.answer_len}-token answers; {os.cpu_count()} cores, "
          f"{args.threads or 'all'} threads/worker")
    print(f"{'turn':<5} {'ttft p50 ms on/off':>22} {'ratio':>6} {'computed on/off':>17} "
          f"{'hit on':>7} {'KV bytes on/off':>23} {'ratio':>6}")
    for t_on, t_off in zip(on["per_turn"], off["per_turn"]):
        s_on, s_off = t_on["server"], t_off["server"]
        a, b = t_on["ttft_ms"]["p50"], t_off["ttft_ms"]["p50"]
        print(f"{t_on['turn']:<5} {a:>10.1f} / {b:>9.1f} {a / b:>6.3f} "
              f"{s_on['computed_tokens']:>7.0f} / {s_off['computed_tokens']:>7.0f} "
              f"{s_on['prefix_hit_tokens']:>7.0f} "
              f"{s_on['kv_bytes_sent']:>11.0f} / {s_off['kv_bytes_sent']:>9.0f} "
              f"{s_on['kv_bytes_sent'] / max(s_off['kv_bytes_sent'], 1):>6.3f}")
    a, b = on["ttft_ms_turns_2_plus"]["p50"], off["ttft_ms_turns_2_plus"]["p50"]
    print(f"turns >= 2: TTFT p50 {a:.1f} ms on, {b:.1f} ms off: {a / b:.3f}x")
    print(f"output tok/s: {on['output_throughput']:.1f} on, {off['output_throughput']:.1f} off")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
