#!/usr/bin/env bash
# Full test run: setup (packages, venv, build, model), C++ tests via ctest, Python tests via pytest.
# Exits non-zero if any stage fails. GPU-labelled tests run too and skip without a GPU.
# Extra pytest arguments can be passed through PYTEST_ARGS (e.g. PYTEST_ARGS="-k parity -x").
#
#   --under-load   run everything (setup included) with a CPU hog beside it: `stress-ng --cpu N`
#                  on every core (N = nproc; TANDEM_LOAD_CPUS overrides), installed if missing.
#                  No test may assume a speed, so the suite must pass like this too.
set -uo pipefail

under_load=0
for arg in "$@"; do
  case "$arg" in
    --under-load) under_load=1 ;;
    *) printf '[test] unknown argument: %s\n' "$arg" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TANDEM_BUILD_DIR="${TANDEM_BUILD_DIR:-$REPO/build}"
export TANDEM_MODEL_DIR="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
cd "$REPO"

say() { printf '[test] %s\n' "$*"; }

if ((under_load)); then
  if ! command -v stress-ng >/dev/null 2>&1; then
    say "installing stress-ng"
    SUDO=(); [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
    { "${SUDO[@]}" apt-get update -q && \
      DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q stress-ng; } >/dev/null 2>&1 \
      || { say "FAILED: cannot install stress-ng"; exit 1; }
  fi
  cpus="${TANDEM_LOAD_CPUS:-$(nproc)}"
  stress-ng --cpu "$cpus" --quiet &
  hog=$!
  trap 'kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null' EXIT
  say "under load: stress-ng --cpu $cpus (pid $hog) runs beside the whole suite"
fi
SECONDS=0

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
  say "FAILED: ${failed[*]} (${SECONDS}s)"
  exit 1
fi
say "all passed (${SECONDS}s)"
