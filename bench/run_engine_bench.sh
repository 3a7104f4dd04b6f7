#!/usr/bin/env bash
# Engine benchmark on this machine, beside Hugging Face transformers on the same shapes.
#   bash bench/run_engine_bench.sh [--runs 5]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${TANDEM_BUILD_DIR:-$REPO/build}"
MODEL="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
"$BUILD/bin/engine_bench" --model "$MODEL" --json "$BUILD/engine_bench.json" "$@"
"$REPO/.venv/bin/python" "$REPO/bench/compare_hf.py" --model "$MODEL" \
  --engine-json "$BUILD/engine_bench.json" "$@"
