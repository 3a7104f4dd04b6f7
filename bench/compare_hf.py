#!/usr/bin/env python3
"""Runs the engine benchmark's shapes through Hugging Face transformers (CPU torch, same threads)
and prints both side by side with ratios.

  python bench/compare_hf.py --engine-json build/engine_bench.json --model models/SmolLM2-135M-Instruct

Prefill: one forward over a random prompt of 128 / 1,024 tokens. Decode: `batch` sequences with
a `context`-token prompt in a DynamicCache, then timed single-token steps. Medians of --runs.
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def median_time(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    ap.add_argument("--engine-json", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--decode-context", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    with open(args.engine_json) as f:
        eng = json.load(f)

    hf = {"prefill": {}, "decode": {}}
    with torch.inference_mode():
        for n in (128, 1024):
            ids = torch.randint(0, vocab, (1, n))
            t = median_time(lambda: model(ids, use_cache=False), args.runs)
            hf["prefill"][str(n)] = n / t
        for b in (1, 8, 32):
            ctx = torch.randint(0, vocab, (b, args.decode_context))
            steps = torch.randint(0, vocab, (b, args.decode_steps))

            def decode():
                out = model(ctx, use_cache=True)
                past = out.past_key_values
                t0 = time.perf_counter()
                for s in range(args.decode_steps):
                    out = model(steps[:, s:s + 1], past_key_values=past, use_cache=True)
                    past = out.past_key_values
                return time.perf_counter() - t0

            decode()
            per_step = statistics.median(decode() / args.decode_steps for _ in range(args.runs))
            hf["decode"][str(b)] = b / per_step

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; torch {torch.__version__}; median of {args.runs} runs")
    print(f"{'workload':<28}{'tandem tok/s':>14}{'HF tok/s':>12}{'ratio':>8}")
    rows = []
    for n in ("128", "1024"):
        rows.append((f"prefill {n} tokens", eng["prefill"][n]["tokens_per_s"], hf["prefill"][n]))
    for b in ("1", "8", "32"):
        rows.append((f"decode batch {b}", eng["decode"][b]["tokens_per_s"], hf["decode"][b]))
    for name, t, h in rows:
        print(f"{name:<28}{t:>14.1f}{h:>12.1f}{t / h:>7.2f}x")
    print(f"tandem peak RSS {eng['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
