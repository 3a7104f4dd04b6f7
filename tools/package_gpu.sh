#!/usr/bin/env bash
# Builds the GPU test/benchmark binaries and packs them, with the shared libraries they need
# that a GPU host may lack, into a folder small enough to carry to that host.
#
# Usage: tools/package_gpu.sh [BUILD_DIR (default build-gpu)] [PKG_DIR (default .gpu-pkg)]
#   TANDEM_GPU_TARGETS="kernels_gpu_test ..." overrides the binaries to build and pack.
# On the GPU host, from the repository root (or anywhere): .gpu-pkg/run_gpu_tests.sh
#   Logs go to $OUT (if set) else .gpu-pkg/logs. Exit status: nonzero if any binary failed.
#
# Which libraries travel (from `ldd` of each binary):
#  - left out, the C/C++ runtime the host OS has: ld-linux, libc, libm, libdl, libpthread,
#    librt, libgcc_s, libstdc++ (the GPU image is newer than Debian 12, so its libstdc++ is a
#    superset; shipping ours could shadow it for the CUDA libraries);
#  - left out, the driver (libcuda, libnvidia-*) and the CUDA 13 runtime libraries
#    (libcudart, libcublas, libcublasLt: hundreds of MiB) that the GPU host's CUDA 13 toolkit
#    provides; run_gpu_tests.sh puts /usr/local/cuda/lib64 on LD_LIBRARY_PATH for them;
#  - copied into lib/: everything else that resolves (e.g. spdlog/fmt if linked shared).
# The package must stay well under 64 MiB; the script fails if it is over 48 MiB.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${1:-build-gpu}"
PKG_DIR="${2:-.gpu-pkg}"
TARGETS="${TANDEM_GPU_TARGETS:-kernels_gpu_test}"
cd "$ROOT"

cmake -S . -B "$BUILD_DIR" -G Ninja -DTANDEM_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
# shellcheck disable=SC2086
ninja -C "$BUILD_DIR" $TARGETS

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

for t in $TARGETS; do
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

cat > "$PKG_DIR/run_gpu_tests.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every packed GPU test binary; logs to $OUT if set, else logs/ beside this script.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LD_LIBRARY_PATH="$HERE/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
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

size_kib="$(du -sk "$PKG_DIR" | cut -f1)"
echo "package_gpu: $PKG_DIR is ${size_kib} KiB"
if (( size_kib > 48 * 1024 )); then
  echo "package_gpu: package over 48 MiB" >&2
  exit 1
fi
