#!/usr/bin/env bash
# Serving benchmarks (issue figures): `tandem serve` (router + 1 prefill + 1 decode worker, real
# processes on loopback) against the single-process engine in the same run, with `tandem bench`.
#
#   1. time to first token, prompts of 128 and 1,024 tokens, one request at a time: the engine
#      with the prefill worker's thread count against tandem serve over gRPC (overhead in ms);
#   2. output tokens/s at 1, 8 and 32 concurrent streams: tandem serve over gRPC against the
#      engine using every core (the same hardware);
#   3. the OpenAI HTTP API at several Poisson request rates: throughput, TTFT / TPOT
#      percentiles, goodput under TTFT / TPOT targets;
# then bench/plot_serving.py writes summary.md and the PNG plots.
#
# Usage: bash bench/run_serving_bench.sh [OUT_DIR]      (default bench/results; $OUT when set)
# Knobs: THREADS (per worker, default 1), RATES (default 0.5,1,2,4), N (requests per run,
#        default 32), TTFT_SLO_MS (default 2000), TPOT_SLO_MS (default 150), PARTS (which of
#        the three to run, default "1 2 3"; the tables and plots cover what the folder holds).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TANDEM_BUILD_DIR:-$REPO/build}/bin"
MODEL="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
OUT_DIR="${1:-${OUT:-$REPO/bench/results}}"
THREADS="${THREADS:-1}"
RATES="${RATES:-0.5,1,2,4}"
PARTS="${PARTS:-1 2 3}"
N="${N:-32}"
TTFT_SLO_MS="${TTFT_SLO_MS:-2000}"
TPOT_SLO_MS="${TPOT_SLO_MS:-150}"
PY="$REPO/.venv/bin/python"
mkdir -p "$OUT_DIR"
say() { printf '[serving-bench] %s\n' "$*" >&2; }

[[ -x "$BIN/tandem" ]] || { say "build first: bash tools/setup.sh"; exit 1; }
ALL_CORES="$(nproc)"

serve_log="$OUT_DIR/serve.log"
"$BIN/tandem" serve --model "$MODEL" --threads "$THREADS" --log-level warn \
  >"$OUT_DIR/serve.out" 2>"$serve_log" &
serve_pid=$!
trap 'kill -INT $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q '^decode grpc ' "$OUT_DIR/serve.out" 2>/dev/null && break
  kill -0 $serve_pid 2>/dev/null || { cat "$serve_log" >&2; exit 1; }
  sleep 0.1
done
GRPC="$(awk '/^router grpc /{print $3}' "$OUT_DIR/serve.out")"
HTTP="$(awk '/^router http /{print $3}' "$OUT_DIR/serve.out")"
[[ -n "$GRPC" && -n "$HTTP" ]] || { say "tandem serve printed no endpoints"; exit 1; }
say "tandem serve: grpc $GRPC, http $HTTP ($THREADS thread(s) per worker, $ALL_CORES cores)"

bench() { "$BIN/tandem" bench --model "$MODEL" --log-level warn "$@"; }

part() { [[ " $PARTS " == *" $1 "* ]]; }

if part 1; then
say "1/3 time to first token (5 requests each, one at a time)"
for len in 128 1024; do
  bench --target engine --threads "$THREADS" --input-len "$len" --output-len 2 --num-requests 5 \
    --concurrency 1 --warmup 1 --json "$OUT_DIR/ttft_engine_$len.json"
  bench --target "grpc://$GRPC" --input-len "$len" --output-len 2 --num-requests 5 \
    --concurrency 1 --warmup 1 --json "$OUT_DIR/ttft_serve_$len.json"
done
fi

if part 2; then
say "2/3 output tokens/s at 1, 8 and 32 concurrent streams ($N requests, 128 in / 32 out)"
bench --target engine --threads "$ALL_CORES" --input-len 128 --output-len 32 --num-requests "$N" \
  --concurrency 1,8,32 --json "$OUT_DIR/concurrency_engine.json"
bench --target "grpc://$GRPC" --input-len 128 --output-len 32 --num-requests "$N" \
  --concurrency 1,8,32 --json "$OUT_DIR/concurrency_serve.json"
fi

if part 3; then
say "3/3 OpenAI HTTP API at request rates $RATES ($N requests, 128 ± 50% in / 32 ± 50% out)"
bench --target "http://$HTTP" --input-len 128 --output-len 32 --range-ratio 0.5 \
  --num-requests "$N" --request-rate "$RATES" --ttft-slo-ms "$TTFT_SLO_MS" \
  --tpot-slo-ms "$TPOT_SLO_MS" --json "$OUT_DIR/http_rates.json"
fi

"$PY" "$REPO/bench/plot_serving.py" "$OUT_DIR"
