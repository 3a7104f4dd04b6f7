#!/usr/bin/env bash
# The long chaos run of issue 15 (the CI runs 3 rounds): 1 router, 2 prefill and 3 decode worker
# processes on loopback, 64 concurrent seeded streams; each round, once the streams have made
# 1/(ROUNDS+1) of their progress, a random worker is SIGKILLed and restarted (same worker id,
# new ports). Every stream must complete with the single-process engine's tokens and every
# worker's pages must return to zero (the test asserts both); the report line gives the kills,
# failed and moved streams, the worst stall per stream (p50 / p99 / max) and the failovers by
# phase. Repeats the whole run RUNS times.
#
# Usage: bash bench/run_chaos.sh [OUT_DIR]   (default bench/results/chaos)
# Knobs: ROUNDS (kills per run, default 12), RUNS (default 3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${TANDEM_BUILD_DIR:-$REPO/build}"
export TANDEM_MODEL_DIR="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
OUT_DIR="${1:-$REPO/bench/results/chaos}"
ROUNDS="${ROUNDS:-12}"
RUNS="${RUNS:-3}"
mkdir -p "$OUT_DIR"
say() { printf '[chaos] %s\n' "$*" >&2; }
[[ -x "$BUILD/tests/cluster_test" ]] || { say "build first: bash tools/setup.sh"; exit 1; }

status=0
for run in $(seq 1 "$RUNS"); do
  say "run $run/$RUNS: $ROUNDS kills"
  log="$OUT_DIR/run-$run.log"
  if TANDEM_CHAOS_ROUNDS="$ROUNDS" "$BUILD/tests/cluster_test" \
      --gtest_filter='FailoverTest.ChaosWorkersKilledAndRestartedUnder64Streams' >"$log" 2>&1; then
    result=passed
  else
    result=FAILED
    status=1
  fi
  printf 'run %d (%s): %s\n' "$run" "$result" "$(grep -m1 '^chaos:' "$log" || echo 'no report line')" |
    tee -a "$OUT_DIR/report.txt"
done
exit "$status"
