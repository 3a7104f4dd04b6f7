#!/usr/bin/env bash
# Full test run: setup (packages, venv, build, model), C++ tests via ctest, Python tests via pytest.
# Exits non-zero if any stage fails. GPU-labelled tests run too and skip without a GPU.
# Extra pytest arguments can be passed through PYTEST_ARGS (e.g. PYTEST_ARGS="-k parity -x").
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TANDEM_BUILD_DIR="${TANDEM_BUILD_DIR:-$REPO/build}"
export TANDEM_MODEL_DIR="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
cd "$REPO"

say() { printf '[test] %s\n' "$*"; }

bash "$REPO/tools/setup.sh" || { say "FAILED: setup"; exit 1; }

failed=()
say "ctest (gpu-labelled tests skip themselves without a GPU)"
ctest --test-dir "$TANDEM_BUILD_DIR" --output-on-failure -j2 || failed+=(ctest)

if [[ -d "$REPO/tests/python" ]]; then
  say "pytest tests/python"
  # shellcheck disable=SC2086
  "$REPO/.venv/bin/python" -m pytest -q --timeout "${PYTEST_TIMEOUT:-900}" tests/python ${PYTEST_ARGS:-}
  rc=$?
  # 5 = no tests collected: not a failure of anything.
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then failed+=(pytest); fi
fi

if ((${#failed[@]})); then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "all passed"
