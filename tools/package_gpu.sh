#!/usr/bin/env bash
# Builds the GPU test/benchmark binaries and packs them, with the shared libraries they need
# that a GPU host may lack, into a folder small enough to carry to that host.
#
# Usage: tools/package_gpu.sh [BUILD_DIR (default build-gpu)] [PKG_DIR (default .gpu-pkg)]
#   TANDEM_GPU_TARGETS="kernels_gpu_test ..." overrides the binaries to build and pack. Default:
#     kernels_gpu_test   CUDA kernels against their CPU references (gtest)
#     cuda_runner_test   the CUDA ModelRunner against the CPU one (gtest)
#     cuda_runner_bench  the CUDA ModelRunner on Llama-3-8B shapes (bench/cuda_runner_bench.cc)
#     nccl_transfer_check  the nccl KV data plane between two processes (real libnccl there)
#     cuda_ipc_transfer_check  the cuda_ipc KV data plane between two processes on one GPU
#   TANDEM_GPU_ALLOW_MISSING=1 packs what exists and names each target this build does not
#     define (e.g. before the CUDA backend lands); without it a missing target is an error.
# The package holds bin/, lib/, MANIFEST (commit, targets, what is missing), gpu_check.sh (the
# full check: README.md "Checking a GPU host") and run_gpu_tests.sh (just the *_test binaries).
# On the GPU host, from anywhere: .gpu-pkg/gpu_check.sh   (or .gpu-pkg/run_gpu_tests.sh)
#   Logs go to $OUT (if set) else into the package. Exit status: nonzero if anything failed.
#
# Which libraries travel (from `ldd` of each binary):
#  - left out, the C/C++ runtime the host OS has: ld-linux, libc, libm, libdl, libpthread,
#    librt, libgcc_s, libstdc++ (the GPU image is newer than Debian 12, so its libstdc++ is a
#    superset; shipping ours could shadow it for the CUDA libraries);
#  - left out, the driver (libcuda, libnvidia-*) and the CUDA 13 runtime libraries
#    (libcudart, libcublas, libcublasLt: hundreds of MiB) that the GPU host's CUDA 13 toolkit
#    provides; run_gpu_tests.sh puts /usr/local/cuda/lib64 on LD_LIBRARY_PATH for them;
#  - copied into lib/: everything else that resolves (e.g. spdlog/fmt if linked shared); those
#    over 8 MiB (ICU's data) gzip'd, unpacked by gpu_check.sh / run_gpu_tests.sh when they run.
# The package must stay well under 64 MiB; the script fails if it is over 48 MiB.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${1:-build-gpu}"
PKG_DIR="${2:-.gpu-pkg}"
TARGETS="${TANDEM_GPU_TARGETS:-kernels_gpu_test cuda_runner_test cuda_runner_bench nccl_transfer_check cuda_ipc_transfer_check}"
ALLOW_MISSING="${TANDEM_GPU_ALLOW_MISSING:-0}"
MAX_KIB=$((48 * 1024))
cd "$ROOT"

cmake -S . -B "$BUILD_DIR" -G Ninja -DTANDEM_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null

# Targets this build defines (the CUDA backend's binaries exist only once it has landed).
present=()
missing=()
for t in $TARGETS; do
  if ninja -C "$BUILD_DIR" -t query "$t" >/dev/null 2>&1; then
    present+=("$t")
  else
    missing+=("$t")
  fi
done
if ((${#missing[@]})); then
  if [[ "$ALLOW_MISSING" != 1 ]]; then
    echo "package_gpu: no such target in $BUILD_DIR: ${missing[*]} (set TANDEM_GPU_ALLOW_MISSING=1" \
      "to pack the others)" >&2
    exit 1
  fi
  echo "package_gpu: WARNING: not packed, this build has no target: ${missing[*]}" >&2
fi
if ((${#present[@]} == 0)); then
  echo "package_gpu: nothing to pack" >&2
  exit 1
fi
ninja -C "$BUILD_DIR" "${present[@]}"

rm -rf "$PKG_DIR"
mkdir -p "$PKG_DIR/bin" "$PKG_DIR/lib"

skip_lib() {
  case "$1" in
    ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libgcc_s.so*|libstdc++.so*|\
    linux-vdso*) return 0 ;;
    libcuda.so*|libnvidia-*|libcudart.so*|libcublas.so*|libcublasLt.so*) return 0 ;;
  esac
  return 1
}

for t in "${present[@]}"; do
  bin="$(find "$BUILD_DIR" -type f -name "$t" -perm -u+x | head -n 1)"
  if [[ -z "$bin" ]]; then
    echo "package_gpu: binary $t not found under $BUILD_DIR" >&2
    exit 1
  fi
  cp "$bin" "$PKG_DIR/bin/"
  strip --strip-debug "$PKG_DIR/bin/$t" 2>/dev/null || true
  while read -r name _ path _; do
    [[ -z "${name:-}" ]] && continue
    skip_lib "$name" && continue
    if [[ "${path:-}" == /* && -f "$path" ]]; then
      cp -L "$path" "$PKG_DIR/lib/$name"
    elif [[ "${path:-}" == "not" ]]; then
      echo "package_gpu: $t needs $name, which is not found here" >&2
      exit 1
    fi
  done < <(ldd "$bin" | sed 's/^[[:space:]]*//')
done

# Big libraries (ICU's data alone is 31 MiB) travel gzip'd; the run scripts unpack them into a
# temporary folder for the run.
for f in "$PKG_DIR"/lib/*; do
  [[ -f "$f" && "$f" != *.gz ]] || continue
  if (($(stat -c %s "$f") > 8 * 1024 * 1024)); then
    gzip -9 "$f"
  fi
done

cat > "$PKG_DIR/run_gpu_tests.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every packed GPU test binary; logs to $OUT if set, else logs/ beside this script.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
UNPACKED="$(mktemp -d "${TMPDIR:-/tmp}/tandem-gpu-lib.XXXXXX")"
trap 'rm -rf "$UNPACKED"' EXIT
for f in "$HERE"/lib/*.gz; do
  [[ -f "$f" ]] && gzip -dc "$f" > "$UNPACKED/$(basename "${f%.gz}")"
done
export LD_LIBRARY_PATH="$HERE/lib:$UNPACKED:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
LOG_DIR="${OUT:-$HERE/logs}"
mkdir -p "$LOG_DIR"
nvidia-smi -L > "$LOG_DIR/nvidia-smi.txt" 2>&1 || true
status=0
for bin in "$HERE"/bin/*_test; do
  [[ -x "$bin" ]] || continue
  name="$(basename "$bin")"
  echo "== $name"
  "$bin" --gtest_output="xml:$LOG_DIR/$name.xml" "$@" > "$LOG_DIR/$name.log" 2>&1
  rc=$?
  tail -n 5 "$LOG_DIR/$name.log"
  echo "== $name exit $rc"
  [[ $rc -eq 0 ]] || status=1
done
exit $status
RUN
chmod +x "$PKG_DIR/run_gpu_tests.sh"

cp "$ROOT/tools/gpu_check.sh" "$PKG_DIR/gpu_check.sh"
chmod +x "$PKG_DIR/gpu_check.sh"

# MANIFEST: what gpu_check.sh expects to find ("bin NAME") and what this build lacked.
{
  commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  dirty=""
  git -C "$ROOT" diff --quiet HEAD 2>/dev/null || dirty="+dirty"
  echo "# tandem GPU package: commit ${commit}${dirty}, built $(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "from $BUILD_DIR on $(hostname)"
  for t in "${present[@]}"; do echo "bin $t"; done
  for t in "${missing[@]}"; do echo "missing $t"; done
} > "$PKG_DIR/MANIFEST"

size_kib="$(du -sk "$PKG_DIR" | cut -f1)"
if ((size_kib > MAX_KIB)); then
  # Debug info is gone already; the symbol tables go too (backtraces lose host function names).
  echo "package_gpu: ${size_kib} KiB with symbols; stripping them" >&2
  strip --strip-all "$PKG_DIR"/bin/* 2>/dev/null || true
  size_kib="$(du -sk "$PKG_DIR" | cut -f1)"
fi
echo "package_gpu: $PKG_DIR is ${size_kib} KiB: ${present[*]}"
if ((size_kib > MAX_KIB)); then
  echo "package_gpu: package over 48 MiB" >&2
  exit 1
fi
