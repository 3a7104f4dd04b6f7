#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang with ASan + UBSan, in their own build folder) and
# runs each for a bounded time from the seed corpora in fuzz/corpus/<target>/, then prints per
# target the seconds run, executions, corpus size and whether it crashed, leaked or tripped a
# sanitizer. Exit status 1 when any target failed (its reproducer is under <build>/artifacts/).
#
#   tools/fuzz.sh [--seconds N] [--build-only] [target...]      (targets: fuzz_gguf, … ; default all)
#
# Environment knobs:
#   TANDEM_FUZZ_BUILD_DIR  build folder (default <repo>/build-fuzz)
#   TANDEM_JOBS            parallel build jobs (default: number of cores)
#   TANDEM_BUILD_LOCK      a lock file to hold (flock) while building, on machines shared by builds
#   FUZZ_RSS_LIMIT_MB      libFuzzer -rss_limit_mb (default 2048)
#
# The longer run the fuzzers get before a release (>= 10 minutes per target, one or two at a time
# under `nice -n 19`): tools/fuzz.sh --seconds 600. Findings of the last long run: fuzz/README.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${TANDEM_FUZZ_BUILD_DIR:-$REPO/build-fuzz}"
JOBS="${TANDEM_JOBS:-$(nproc)}"
SECONDS_PER_TARGET=60
BUILD_ONLY=0
TARGETS=()
while (($#)); do
  case "$1" in
    --seconds) SECONDS_PER_TARGET="$2"; shift 2 ;;
    --build-only) BUILD_ONLY=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
ALL=(fuzz_openai_request fuzz_safetensors fuzz_gguf fuzz_tokenizer fuzz_chat_template fuzz_kv_wire
     fuzz_internal_proto fuzz_body_framing fuzz_kv_receiver fuzz_kv_tls)
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")

say() { printf '[fuzz] %s\n' "$*"; }
command -v clang++ >/dev/null || { say "clang++ not found (tools/setup.sh installs it)"; exit 2; }

locked() {
  if [[ -n "${TANDEM_BUILD_LOCK:-}" ]]; then flock "$TANDEM_BUILD_LOCK" "$@"; else "$@"; fi
}

export CCACHE_BASEDIR="$REPO" CCACHE_NOHASHDIR=1
if [[ ! -f "$BUILD/build.ninja" ]]; then
  say "configuring $BUILD (clang, ASan + UBSan)"
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache
                                           -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  mkdir -p "$BUILD"
  cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g" "-DCMAKE_C_FLAGS_DEBUG=-O1 -g" \
    -DTANDEM_FUZZ=ON -DTANDEM_CUDA=OFF -DTANDEM_CUDA_INTERP=OFF "${launcher[@]}" \
    >"$BUILD/fuzz-configure.log" 2>&1 || { tail -n 40 "$BUILD/fuzz-configure.log"; exit 2; }
fi
say "building ${TARGETS[*]}"
if ! locked cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}" >"$BUILD/fuzz-build.log" 2>&1
then
  grep -E 'error|FAILED' "$BUILD/fuzz-build.log" | head -n 30
  exit 2
fi
((BUILD_ONLY)) && exit 0

mkdir -p "$BUILD/corpus" "$BUILD/artifacts" "$BUILD/logs"
failed=0
printf '%-22s %8s %12s %8s  %s\n' target seconds execs corpus result
for t in "${TARGETS[@]}"; do
  name="${t#fuzz_}"
  work="$BUILD/corpus/$name"
  mkdir -p "$work"
  log="$BUILD/logs/$t.log"
  # Runs grow the corpus in the build folder; the repository's seeds stay as they are.
  dict=()
  [[ -f "$REPO/fuzz/$name.dict" ]] && dict=(-dict="$REPO/fuzz/$name.dict")
  rc=0
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
  "$BUILD/fuzz/$t" "${dict[@]}" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=20 \
    -rss_limit_mb="${FUZZ_RSS_LIMIT_MB:-2048}" -max_len=65536 -artifact_prefix="$BUILD/artifacts/$t-" \
    "$work" "$REPO/fuzz/corpus/$name" >"$log" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  units="$(find "$work" -type f | wc -l)"
  result=ok
  if ((rc != 0)); then
    result="FAILED (exit $rc): $(grep -m1 -E 'ERROR: |runtime error|SUMMARY' "$log" || echo 'see log')"
    failed=1
  fi
  printf '%-22s %8s %12s %8s  %s\n' "$t" "$SECONDS_PER_TARGET" "${execs:-?}" "$units" "$result"
done
((failed)) && say "logs in $BUILD/logs, reproducers in $BUILD/artifacts"
exit "$failed"
