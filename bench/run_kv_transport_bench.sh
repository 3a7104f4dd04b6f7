#!/usr/bin/env bash
# KV transports side by side (issue 12 figures):
#   1. kv_transfer_bench: the KV of 1k / 4k-token prompts through the Transceiver over tcp
#      (against a raw loopback socket copy) and over shm (against one memcpy of the same bytes);
#   2. time to first token through `tandem serve` (router + 1 prefill + 1 decode, real
#      processes) with --kv-transport tcp and then shm, prompts of 1,024 and 4,096 tokens, one
#      request at a time, and the prefill worker's own KV transfer time per prompt
#      (tandem_kv_transfer_seconds{transport}: last chunk computed -> every layer acknowledged).
# Prints a Markdown table; the raw JSON stays in the output folder.
#
# Usage: bash bench/run_kv_transport_bench.sh [OUT_DIR]   (default bench/results/kv_transport)
# Knobs: THREADS (per worker, default 1), N (requests per prompt length, default 3),
#        LENS (default "1024 4096"), TRANSPORTS (order of the serve runs, default "tcp shm").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TANDEM_BUILD_DIR:-$REPO/build}/bin"
MODEL="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
OUT_DIR="${1:-${OUT:-$REPO/bench/results/kv_transport}}"
THREADS="${THREADS:-1}"
N="${N:-3}"
LENS="${LENS:-1024 4096}"
TRANSPORTS="${TRANSPORTS:-tcp shm}"
PY="$REPO/.venv/bin/python"
mkdir -p "$OUT_DIR"
say() { printf '[kv-transport-bench] %s\n' "$*" >&2; }
[[ -x "$BIN/tandem" && -x "$BIN/kv_transfer_bench" ]] || { say "build first: bash tools/setup.sh"; exit 1; }

say "1/2 kv_transfer_bench (tcp vs raw socket, shm vs memcpy)"
"$BIN/kv_transfer_bench" --runs 5 --json "$OUT_DIR/kv_transfer_bench.json" | tee "$OUT_DIR/kv_transfer_bench.txt"

serve_pid=""
stop_serve() {
  if [[ -n "$serve_pid" ]]; then
    kill -INT "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=""
  fi
}
trap stop_serve EXIT

say "2/2 TTFT through tandem serve, $N request(s) per prompt length, one at a time"
for transport in $TRANSPORTS; do
  "$BIN/tandem" serve --model "$MODEL" --threads "$THREADS" --kv-transport "$transport" \
    --kv-cache-mb 512 --prefill-timeout-ms 600000 --log-level warn >"$OUT_DIR/serve_$transport.out" 2>"$OUT_DIR/serve_$transport.log" &
  serve_pid=$!
  for _ in $(seq 1200); do
    grep -q '^decode grpc ' "$OUT_DIR/serve_$transport.out" 2>/dev/null && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$OUT_DIR/serve_$transport.log" >&2; exit 1; }
    sleep 0.1
  done
  GRPC="$(awk '/^router grpc /{print $3}' "$OUT_DIR/serve_$transport.out")"
  PREFILL_METRICS="$(awk '/^prefill metrics /{print $3}' "$OUT_DIR/serve_$transport.out")"
  [[ -n "$GRPC" && -n "$PREFILL_METRICS" ]] || { say "tandem serve printed no endpoints"; exit 1; }
  for len in $LENS; do
    before="$(curl -s "$PREFILL_METRICS" | grep "^tandem_kv_transfer_seconds_sum{.*transport=\"$transport\"" | awk '{print $2}')"
    nbefore="$(curl -s "$PREFILL_METRICS" | grep "^tandem_kv_transfer_seconds_count{.*transport=\"$transport\"" | awk '{print $2}')"
    "$BIN/tandem" bench --target "grpc://$GRPC" --input-len "$len" --output-len 2 \
      --num-requests "$N" --concurrency 1 --warmup 1 --log-level warn \
      --json "$OUT_DIR/ttft_${transport}_$len.json" >/dev/null
    after="$(curl -s "$PREFILL_METRICS" | grep "^tandem_kv_transfer_seconds_sum{.*transport=\"$transport\"" | awk '{print $2}')"
    nafter="$(curl -s "$PREFILL_METRICS" | grep "^tandem_kv_transfer_seconds_count{.*transport=\"$transport\"" | awk '{print $2}')"
    echo "{\"sum_before\": $before, \"sum_after\": $after, \"n_before\": $nbefore, \"n_after\": $nafter}" \
      >"$OUT_DIR/transfer_${transport}_$len.json"
  done
  stop_serve
done

"$PY" - "$OUT_DIR" "$LENS" <<'EOF'
import json, sys
from pathlib import Path
d, lens = Path(sys.argv[1]), sys.argv[2].split()
print("| prompt | TTFT p50 tcp (ms) | TTFT p50 shm (ms) | shm/tcp | KV transfer tcp (ms) | KV transfer shm (ms) | shm/tcp |")
print("|---|---|---|---|---|---|---|")
for n in lens:
    t = {k: json.load(open(d / f"ttft_{k}_{n}.json"))["runs"][0]["ttft_ms"]["p50"] for k in ("tcp", "shm")}
    x = {}
    for k in ("tcp", "shm"):
        m = json.load(open(d / f"transfer_{k}_{n}.json"))
        x[k] = 1e3 * (m["sum_after"] - m["sum_before"]) / max(1, m["n_after"] - m["n_before"])
    print(f"| {int(n):,} tokens | {t['tcp']:.0f} | {t['shm']:.0f} | {t['shm']/t['tcp']:.2f}x | "
          f"{x['tcp']:.1f} | {x['shm']:.1f} | {x['shm']/x['tcp']:.2f}x |")
EOF
