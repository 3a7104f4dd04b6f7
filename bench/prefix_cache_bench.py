#!/usr/bin/env python3
"""Prefix cache benchmark: a shared system prompt across many requests, cache on vs off.

Starts `tandem serve` (router + 1 prefill + 1 decode worker, real processes on loopback) once
with the prefill worker's prefix cache on and once with it off, and sends the same workload to
each: N requests whose prompts are one shared SYSTEM-token prefix plus a different SUFFIX-token
tail. The first request goes alone (it is the one that fills the cache); the other N - 1 follow
at CONCURRENCY. Prompts are token ids (no tokenizer involved); max_tokens is 1, so the time of a
request is its time to first token.

Prefill tokens computed = the prefill worker's tandem_prompt_tokens_total minus
tandem_prefix_cache_hit_tokens_total (both from its /metrics). Printed against:
  * the unshared parts alone (N x SUFFIX),
  * the ideal with the shared prompt computed once (SYSTEM + N x SUFFIX),
  * the same workload with the cache off;
plus the wall time and median request latency of both runs, and their ratios.

Usage: TANDEM_BUILD_DIR=build python bench/prefix_cache_bench.py [--requests 32]
       [--system-tokens 1000] [--suffix-tokens 32] [--concurrency 4] [--threads 0]
       [--json OUT.json]
"""
import argparse
import json
import os
import random
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import tandem_client as tc
from serve_process import Serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def metric(url, name):
    body = urllib.request.urlopen(url, timeout=60).read().decode()
    for line in body.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run(args, prefix_cache, prompts):
    serve = Serve(args.bin_dir, args.model, args.threads, prefix_cache, args.kv_cache_mb)
    try:
        latencies = []

        def one(client, ids):
            t0 = time.perf_counter()
            client.generate(token_ids=ids, max_tokens=1, temperature=0.0, timeout=3600)
            latencies.append(time.perf_counter() - t0)

        with tc.Client(serve.grpc, timeout=3600) as client:
            one(client, [prompts[0][0]])  # warm-up: a one-token prompt (no page shared)
            latencies.clear()
            base_prompt = metric(serve.prefill_metrics, "tandem_prompt_tokens_total")
            base_hit = metric(serve.prefill_metrics, "tandem_prefix_cache_hit_tokens_total")
            t0 = time.perf_counter()
            one(client, prompts[0])
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda p: one(client, p), prompts[1:]))
            wall = time.perf_counter() - t0
        prompt = metric(serve.prefill_metrics, "tandem_prompt_tokens_total") - base_prompt
        hit = metric(serve.prefill_metrics, "tandem_prefix_cache_hit_tokens_total") - base_hit
        return {"prefix_cache": prefix_cache, "prompt_tokens": prompt, "hit_tokens": hit,
                "computed_tokens": prompt - hit, "wall_s": wall,
                "latency_p50_s": statistics.median(latencies),
                "cached_pages": metric(serve.prefill_metrics, "tandem_kv_pages_cached"),
                "evictions": metric(serve.prefill_metrics, "tandem_prefix_cache_evictions_total")}
    finally:
        serve.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--suffix-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="compute threads per worker (0 = all)")
    ap.add_argument("--kv-cache-mb", type=int, default=512)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--skip-off", action="store_true", help="run the cache-on side only")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--bin-dir", default=os.path.join(
        os.environ.get("TANDEM_BUILD_DIR", os.path.join(REPO, "build")), "bin"))
    ap.add_argument("--model", default=os.environ.get(
        "TANDEM_MODEL_DIR", os.path.join(REPO, "models", "SmolLM2-135M-Instruct")))
    args = ap.parse_args()

    rng = random.Random(args.seed)
    system = [rng.randrange(1000, 20000) for _ in range(args.system_tokens)]
    prompts = [system + [rng.randrange(1000, 20000) for _ in range(args.suffix_tokens)]
               for _ in range(args.requests)]
    unshared = args.requests * args.suffix_tokens
    ideal = args.system_tokens + unshared

    results = {"on": run(args, True, prompts)}
    if not args.skip_off:
        results["off"] = run(args, False, prompts)
    on = results["on"]
    print(f"prefix cache: {args.requests} requests, {args.system_tokens}-token shared prompt + "
          f"{args.suffix_tokens}-token suffixes (first alone, then concurrency "
          f"{args.concurrency}); {os.cpu_count()} cores, {args.threads or 'all'} threads/worker")
    print(f"  unshared parts (N x suffix):             {unshared:8d} tokens")
    print(f"  ideal (shared once + suffixes):          {ideal:8d} tokens")
    for name, r in results.items():
        print(f"  cache {name:3s}: computed {r['computed_tokens']:8.0f} tokens "
              f"(hit {r['hit_tokens']:.0f} of {r['prompt_tokens']:.0f}, "
              f"{r['hit_tokens'] / max(r['prompt_tokens'], 1):.1%}); "
              f"{r['computed_tokens'] / unshared:.2f}x unshared, "
              f"{r['computed_tokens'] / ideal:.2f}x ideal; wall {r['wall_s']:.1f} s, "
              f"p50 latency {r['latency_p50_s']:.2f} s")
    if "off" in results:
        off = results["off"]
        print(f"  on / off: computed tokens {on['computed_tokens'] / off['computed_tokens']:.3f}x, "
              f"wall {on['wall_s'] / off['wall_s']:.3f}x, "
              f"p50 latency {on['latency_p50_s'] / off['latency_p50_s']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "unshared_tokens": unshared, "ideal_tokens": ideal,
                       "runs": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
