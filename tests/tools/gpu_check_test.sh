#!/usr/bin/env bash
# ctest gpu_check_dry_run: tools/gpu_check.sh on a stand-in package, no GPU and no GPU build needed.
#  1. --dry-run on a complete package: exit 0, the plan printed, the report written;
#  2. --dry-run with a binary missing: exit 1 naming it; with TANDEM_GPU_ALLOW_MISSING=1, exit 0;
#  3. the full run with stand-ins for nvidia-smi, compute-sanitizer and the five binaries (they
#     print what the real ones print): every step passes and the report carries the bench figures
#     with the device name; a failing kernel test makes the exit status 1 while later steps still
#     run; skipped tests (no usable GPU) fail; a spent budget runs nothing and fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PKG="$TMP/pkg"
FAKE="$TMP/fakebin"
mkdir -p "$PKG/bin" "$PKG/lib" "$FAKE"
cp "$ROOT/tools/gpu_check.sh" "$PKG/gpu_check.sh"
printf '# tandem GPU package: commit test\nbin kernels_gpu_test\nbin cuda_runner_test\nbin cuda_runner_bench\nbin nccl_transfer_check\nbin cuda_ipc_transfer_check\n' \
  > "$PKG/MANIFEST"

fail() {
  echo "gpu_check_test: FAILED: $*" >&2
  exit 1
}

# A gtest binary: writes the XML it is asked for, prints gtest's summary lines.
cat > "$PKG/bin/kernels_gpu_test" <<'EOF'
#!/usr/bin/env bash
for a in "$@"; do
  case "$a" in --gtest_output=xml:*) echo '<testsuites tests="3"/>' > "${a#--gtest_output=xml:}" ;; esac
done
echo "[==========] 3 tests from 1 test suite ran. (5 ms total)"
if [[ -n "${FAKE_SKIP_TESTS:-}" ]]; then
  echo "[  PASSED  ] 3 tests."
  echo "[  SKIPPED ] 2 tests, listed below:"
  exit 0
fi
if [[ -n "${FAKE_FAIL_TESTS:-}" ]]; then
  echo "[  PASSED  ] 2 tests."
  echo "[  FAILED  ] 1 test, listed below:"
  exit 1
fi
echo "[  PASSED  ] 3 tests."
EOF
cp "$PKG/bin/kernels_gpu_test" "$PKG/bin/cuda_runner_test"
# The bench: the JSON layout of bench/cuda_runner_bench.cc.
cat > "$PKG/bin/cuda_runner_bench" <<'EOF'
#!/usr/bin/env bash
out=""
while (($#)); do [[ "$1" == --out ]] && out="$2"; shift; done
[[ -n "$out" ]] || exit 3
python3 - "$out" <<'PY'
import json, sys
dev = "NVIDIA H200"
def dec(b, tps, mode):
    return {"name": f"decode b={b} ctx=512", "kind": "decode", "deterministic": mode == "on",
            "batch": b, "context": 512, "device": dev, "median_s": b / tps, "tokens_per_s": tps,
            "roofline_tokens_per_s": 318.0 * b, "pct_of_hbm_roofline": 100 * tps / 318.0 / b,
            "pct_of_measured_copy": 80.0, **({"vs_batch1": tps / 250.0} if b > 1 else {})}
modes = {}
for mode in ("off", "on"):
    modes[mode] = {"describe": "cuda: bf16", "results": [
        dec(1, 250.0, mode),
        {"name": "prefill 2048", "kind": "prefill", "deterministic": mode == "on", "batch": 1,
         "context": 2048, "device": dev, "median_s": 0.05, "tokens_per_s": 40960.0, "mfu_pct": 61.0},
        dec(8, 1800.0, mode)]}
json.dump({"bench": "cuda_runner_bench", "complete": True, "ok": True,
           "device": {"name": dev, "hbm_gbs": 4800, "hbm_source": "spec table (H200)", "copy_gbs": 4200,
                      "peak_bf16_tflops": 989, "peak_source": "spec table (H200)"},
           "model": {"weight_bytes_streamed_per_step": 15.01e9}, "modes": modes,
           "deterministic_cost": [{"name": "decode b=1 ctx=512", "time_on_over_off": 1.05,
                                   "tokens_per_s_off": 250.0, "tokens_per_s_on": 238.0, "device": dev}]},
          open(sys.argv[1], "w"))
PY
echo "decode b=1 ctx=512 off 250.0 tokens/s  NVIDIA H200"
EOF
# The nccl check: its summary line (bench/nccl_transfer_check.cc), exit 0 when every byte arrived.
cat > "$PKG/bin/nccl_transfer_check" <<'EOF'
#!/usr/bin/env bash
echo "run 0: 22.5 MiB in 40.00 ms, 0.59 GB/s, every byte arrived"
echo "nccl (libnccl.so.2 2.28.9): 1024 tokens (22.5 MiB), median 0.59 GB/s over 3 runs; all exact"
EOF
# The cuda_ipc check (bench/cuda_ipc_transfer_check.cc).
cat > "$PKG/bin/cuda_ipc_transfer_check" <<'EOF'
#!/usr/bin/env bash
echo "run 0: 90.0 MiB in 0.50 ms, 188.74 GB/s, every byte arrived"
echo "cuda_ipc (GPU-0000): 4096 tokens (90.0 MiB), median 188.74 GB/s over 5 runs, 0.11x one device-to-device cudaMemcpy of the same bytes (1700.00 GB/s); all exact"
EOF
cat > "$FAKE/nvidia-smi" <<'EOF'
#!/usr/bin/env bash
case "$*" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)" ;;
  *name*--format=csv,noheader*) echo "NVIDIA H200" ;;
  *driver_version*--format=csv,noheader*) echo "580.65.06" ;;
  *--query-gpu*) echo "index, name"; echo "0, NVIDIA H200" ;;
  *) echo "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |" ;;
esac
EOF
# compute-sanitizer: skips its options, runs the program, prints its summary.
cat > "$FAKE/compute-sanitizer" <<'EOF'
#!/usr/bin/env bash
while [[ "$1" == --* ]]; do
  [[ "$1" == --version ]] && { echo "compute-sanitizer fake"; exit 0; }
  shift 2
done
"$@"
rc=$?
echo "========= ERROR SUMMARY: 0 errors"
exit $rc
EOF
chmod +x "$PKG"/bin/* "$FAKE"/*

# 1. dry run, complete package.
out="$("$PKG/gpu_check.sh" --dry-run --out "$TMP/r1" 2>&1)" || fail "dry run of a complete package: $out"
for want in "package is complete" "kernels_gpu_test" "racecheck" "cuda_runner_bench --shape 8b" \
  "nccl_transfer_check --nccl-library" "nccl_transfer_check --self" \
  "cuda_ipc_transfer_check --tokens"; do
  grep -qF -- "$want" <<< "$out" || fail "dry-run output lacks '$want': $out"
done
[[ -s "$TMP/r1/gpu_check.md" && -s "$TMP/r1/gpu_check.json" ]] || fail "dry run wrote no report"
TANDEM_GPU_CHECK_DRY=1 "$PKG/gpu_check.sh" --out "$TMP/r1b" > /dev/null 2>&1 ||
  fail "TANDEM_GPU_CHECK_DRY=1 is not a dry run"

# 2. dry run, a binary missing.
mv "$PKG/bin/cuda_runner_test" "$TMP/cuda_runner_test"
if out="$("$PKG/gpu_check.sh" --dry-run --out "$TMP/r2" 2>&1)"; then
  fail "dry run passed without cuda_runner_test"
fi
grep -q "MISSING: cuda_runner_test" <<< "$out" || fail "missing binary not named: $out"
TANDEM_GPU_ALLOW_MISSING=1 "$PKG/gpu_check.sh" --dry-run --out "$TMP/r2b" > /dev/null 2>&1 ||
  fail "TANDEM_GPU_ALLOW_MISSING=1 did not allow a missing binary"
mv "$TMP/cuda_runner_test" "$PKG/bin/cuda_runner_test"

# 3. the full run with stand-ins.
export PATH="$FAKE:$PATH" TANDEM_COMPUTE_SANITIZER="$FAKE/compute-sanitizer"
out="$(OUT="$TMP/r3" "$PKG/gpu_check.sh" 2>&1)" || fail "full run with stand-ins failed: $out"
md="$TMP/r3/gpu_check.md"
for want in "| bench | pass" "| racecheck | pass" "| info | pass" "of roofline" "MFU 61.0%" \
  "| nccl | pass" "median 0.59 GB/s over 3 runs; all exact" "| cuda_ipc | pass" "| nccl_self | pass" \
  "median 188.74 GB/s over 5 runs" \
  "| decode b=1 ctx=512 | 1.050x" "NVIDIA H200 |"; do
  grep -qF -- "$want" "$md" || fail "report lacks '$want': $(cat "$md")"
done
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["ok"] and len(d["steps"]) == 10, d' \
  "$TMP/r3/gpu_check.json" || fail "bad gpu_check.json"
[[ -f "$TMP/r3/logs/kernels.xml" && -f "$TMP/r3/logs/memcheck.log" ]] || fail "logs missing"

if out="$(FAKE_FAIL_TESTS=1 OUT="$TMP/r4" "$PKG/gpu_check.sh" 2>&1)"; then
  fail "a failing kernel test did not fail the check"
fi
grep -qF "| kernels | fail" "$TMP/r4/gpu_check.md" || fail "kernels not marked failed"
grep -qF "| bench | pass" "$TMP/r4/gpu_check.md" || fail "the bench did not run after a failure"

if FAKE_SKIP_TESTS=1 OUT="$TMP/r6" "$PKG/gpu_check.sh" > /dev/null 2>&1; then
  fail "skipped GPU tests passed the check"
fi
grep -qF "| parity | fail" "$TMP/r6/gpu_check.md" || fail "skipped tests not marked failed"

if OUT="$TMP/r5" "$PKG/gpu_check.sh" --budget 5 > /dev/null 2>&1; then
  fail "a spent budget passed"
fi
grep -qF "budget of 5s is spent" "$TMP/r5/gpu_check.md" || fail "spent budget not reported"
echo "gpu_check_test: ok"
