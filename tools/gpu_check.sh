#!/usr/bin/env bash
# The whole GPU check in one run of at most 8 minutes, from the package tools/package_gpu.sh
# makes (no build, no network, no gRPC/protobuf libraries needed on the GPU host):
#   info       nvidia-smi -L, driver / CUDA / NCCL / compute-sanitizer / PyTorch versions
#   kernels    kernels_gpu_test: every CUDA kernel against its CPU reference (gtest XML)
#   parity     cuda_runner_test: the CUDA ModelRunner against the CPU one (gtest XML)
#   bench      cuda_runner_bench --shape 8b --deterministic both: batch-1 decode vs the HBM
#              roofline, prefill 2k MFU, decode batch 8/32/64, deterministic mode's cost
#   nccl       nccl_transfer_check with the host's libnccl: the nccl KV data plane between two
#              processes on one GPU (each its own NCCL_HOSTID, socket transport on loopback),
#              device pages checked byte for byte, GB/s (functional: that path is slow)
#   nccl_self  nccl_transfer_check --self: a one-rank communicator sending to itself (the API,
#              stream and memory plumbing of the real library)
#   cuda_ipc   cuda_ipc_transfer_check: the cuda_ipc KV data plane between two processes on one
#              GPU (the receiver's pool exported with the CUDA virtual memory API), every byte
#              checked, GB/s beside one device-to-device cudaMemcpy of the same bytes
#   memcheck   compute-sanitizer memcheck | racecheck | synccheck on the small kernel cases
#   racecheck
#   synccheck
# Every step runs under a hard `timeout` clipped to what is left of the total budget, and the
# next step runs whatever happened. The bench runs before the sanitizers so that a slow sanitizer
# never costs the figures. Writes ONE report to $OUT (else PKG/report): gpu_check.md,
# gpu_check.json and logs/. Exit status: 0 when every step passed, 1 otherwise, 2 on bad usage.
#
# Usage: gpu_check.sh [--dry-run] [--pkg DIR] [--out DIR] [--budget SECONDS]
#   --dry-run (or TANDEM_GPU_CHECK_DRY=1): no GPU needed; checks the package is complete (every
#       binary present and executable, its shared libraries resolvable here or provided by the
#       GPU host's CUDA, size under 48 MiB), prints the plan and writes a report of it.
#   --pkg DIR: the package (default: the folder holding this script when it is the package's
#       copy, else $TANDEM_GPU_PKG, else .gpu-pkg at the repository root).
#   --budget SECONDS: total time for all steps (default 470, TANDEM_GPU_CHECK_BUDGET_S).
# Environment: TANDEM_GPU_ALLOW_MISSING=1 turns a binary missing from the package into a skipped
#   step instead of a failure; TANDEM_GPU_BENCH_ARGS adds flags to the bench (e.g. "--layers 8");
#   TANDEM_COMPUTE_SANITIZER names the compute-sanitizer binary; TANDEM_GPU_SANITIZER_FILTER,
#   TANDEM_GPU_RACECHECK_FILTER and TANDEM_GPU_PARITY_FILTER override gtest filters. A test that
#   skips on the GPU host fails its step (the GPU tests skip only when they find no usable GPU).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DRY="${TANDEM_GPU_CHECK_DRY:-0}"
PKG=""
REPORT_DIR="${OUT:-}"
BUDGET="${TANDEM_GPU_CHECK_BUDGET_S:-470}"
ALLOW_MISSING="${TANDEM_GPU_ALLOW_MISSING:-0}"
MAX_PKG_KIB=$((48 * 1024))

usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --pkg) PKG="${2:?--pkg needs a folder}"; shift ;;
    --out) REPORT_DIR="${2:?--out needs a folder}"; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget must be whole seconds" >&2; exit 2; }

if [[ -z "$PKG" ]]; then
  if [[ -f "$HERE/MANIFEST" ]]; then
    PKG="$HERE"
  elif [[ -n "${TANDEM_GPU_PKG:-}" ]]; then
    PKG="$TANDEM_GPU_PKG"
  else
    PKG="$HERE/../.gpu-pkg"
  fi
fi
if [[ ! -d "$PKG" ]]; then
  echo "gpu_check: no package at $PKG (make one with tools/package_gpu.sh)" >&2
  exit 1
fi
PKG="$(cd "$PKG" && pwd)"
REPORT_DIR="${REPORT_DIR:-$PKG/report}"
LOGS="$REPORT_DIR/logs"
mkdir -p "$LOGS" || { echo "gpu_check: cannot create $LOGS" >&2; exit 1; }
STEPS_TSV="$LOGS/steps.tsv"
: > "$STEPS_TSV"

# Libraries the package holds gzip'd (tools/package_gpu.sh) are unpacked for this run.
UNPACKED="$(mktemp -d "${TMPDIR:-/tmp}/tandem-gpu-lib.XXXXXX")"
trap 'rm -rf "$UNPACKED"' EXIT
for f in "$PKG"/lib/*.gz; do
  [[ -f "$f" ]] || continue
  gzip -dc "$f" > "$UNPACKED/$(basename "${f%.gz}")" || echo "gpu_check: cannot unpack $f" >&2
done
export LD_LIBRARY_PATH="$PKG/lib:$UNPACKED:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
START_EPOCH="$(date +%s)"
DEADLINE=$((START_EPOCH + BUDGET))
RESERVE=8    # seconds kept for the report after the last step
MIN_STEP=10  # a step with less time than this left is not started

# gtest filters: the sanitizers are 10-100x slower, so they take the small cases (bf16 only for
# the shared-memory checkers; the batch-invariance sweeps are left to the plain run).
SANITIZER_FILTER="${TANDEM_GPU_SANITIZER_FILTER:--*BatchInvariant*}"
RACECHECK_FILTER="${TANDEM_GPU_RACECHECK_FILTER:-ElementwiseTest/2.*:AttentionTest/2.PrefillMatchesReference:AttentionTest/2.DecodeMatchesReference:SamplingTest.*}"
# The engine parity test's no-device case skips wherever a GPU is present: left out, so that any
# skip left means "no usable GPU" (a failure here).
PARITY_FILTER="${TANDEM_GPU_PARITY_FILTER:--*WithoutAGpu*}"
BENCH_ARGS="${TANDEM_GPU_BENCH_ARGS:-}"

find_sanitizer() {
  local c
  for c in "${TANDEM_COMPUTE_SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
    /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [[ -n "$c" && -x "$c" ]]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}
SANITIZER="$(find_sanitizer || true)"

# libnccl.so.2 of the host: the CUDA toolkit's, the system's, or the one PyTorch's wheel brings;
# "" (the loader's search path) when none of those exists.
find_nccl() {
  local c
  for c in /usr/local/cuda/lib64/libnccl.so.2 /usr/local/cuda/lib/libnccl.so.2 \
    /usr/lib/x86_64-linux-gnu/libnccl.so.2; do
    [[ -f "$c" ]] && { echo "$c"; return; }
  done
  c="$(python3 -c 'import glob, os, nvidia.nccl as n
print((glob.glob(os.path.join(list(n.__path__)[0], "lib", "libnccl.so*")) or [""])[0])' 2>/dev/null)"
  echo "$c"
}

# step name | budget seconds | binary | kind | description
PLAN=(
  "info|30||info|GPU, driver, CUDA, NCCL, tool versions"
  "kernels|45|kernels_gpu_test|gtest|CUDA kernels vs CPU references"
  "parity|60|cuda_runner_test|gtest|CUDA ModelRunner vs CPU runner"
  "bench|160|cuda_runner_bench|bench|Llama-3-8B shapes, random bf16, deterministic off/on"
  "nccl|25|nccl_transfer_check|check|nccl KV data plane, two processes on one GPU, real libnccl"
  "nccl_self|10|nccl_transfer_check|check|one-rank NCCL communicator, self send/recv"
  "cuda_ipc|20|cuda_ipc_transfer_check|check|cuda_ipc KV data plane, two processes on one GPU"
  "memcheck|45|kernels_gpu_test|sanitizer|compute-sanitizer memcheck, filter $SANITIZER_FILTER"
  "racecheck|45|kernels_gpu_test|sanitizer|compute-sanitizer racecheck, filter $RACECHECK_FILTER"
  "synccheck|30|kernels_gpu_test|sanitizer|compute-sanitizer synccheck, filter $RACECHECK_FILTER"
)

# record NAME STATUS RC SECONDS TIMEOUT NOTE: one line of steps.tsv (no tabs or newlines in NOTE).
record() {
  local note="${6//$'\t'/ }"
  note="${note//$'\n'/ }"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$note" >> "$STEPS_TSV"
  printf '== %-10s %-8s %s\n' "$1" "$2" "$note"
}

# The command line of a step, one word per line (for the plan and for running it).
step_command() {
  local name="$1" bin="$PKG/bin/$2"
  case "$name" in
    kernels) printf '%s\n' "$bin" "--gtest_output=xml:$LOGS/kernels.xml" ;;
    parity) printf '%s\n' "$bin" "--gtest_filter=$PARITY_FILTER" "--gtest_output=xml:$LOGS/parity.xml" ;;
    bench)
      printf '%s\n' "$bin" --shape 8b --deterministic both --out "$LOGS/bench.json"
      if [[ -n "$BENCH_ARGS" ]]; then
        # shellcheck disable=SC2086  # word splitting wanted: several flags
        printf '%s\n' $BENCH_ARGS
      fi
      ;;
    nccl) printf '%s\n' "$bin" --nccl-library "$(find_nccl)" --tokens 1024 --runs 3 \
      --json "$LOGS/nccl.json" ;;
    nccl_self) printf '%s\n' "$bin" --self --nccl-library "$(find_nccl)" ;;
    cuda_ipc) printf '%s\n' "$bin" --tokens 4096 --runs 5 --json "$LOGS/cuda_ipc.json" ;;
    memcheck)
      printf '%s\n' "${SANITIZER:-compute-sanitizer}" --tool memcheck --error-exitcode 86 \
        --print-limit 50 "$bin" "--gtest_filter=$SANITIZER_FILTER" \
        "--gtest_output=xml:$LOGS/memcheck.xml"
      ;;
    racecheck | synccheck)
      printf '%s\n' "${SANITIZER:-compute-sanitizer}" --tool "$name" --error-exitcode 86 \
        --print-limit 50 "$bin" "--gtest_filter=$RACECHECK_FILTER" \
        "--gtest_output=xml:$LOGS/$name.xml"
      ;;
  esac
}

# "N tests, P passed, F failed, S skipped" from a gtest log; sets G_RAN G_FAILED G_SKIPPED.
gtest_counts() {
  local log="$1"
  G_RAN="$(grep -Eo '^\[==========\] [0-9]+ tests? from .* ran' "$log" | tail -n 1 |
    grep -Eo '[0-9]+' | head -n 1)"
  G_FAILED="$(grep -Eo '^\[  FAILED  \] [0-9]+ tests?,' "$log" | tail -n 1 | grep -Eo '[0-9]+')"
  G_SKIPPED="$(grep -Eo '^\[  SKIPPED \] [0-9]+ tests?,' "$log" | tail -n 1 | grep -Eo '[0-9]+')"
  G_RAN="${G_RAN:-0}"
  G_FAILED="${G_FAILED:-0}"
  G_SKIPPED="${G_SKIPPED:-0}"
}

run_info() {
  local log="$LOGS/info.log" t="$1" gpus=0
  {
    echo "### nvidia-smi -L"
    timeout 10 nvidia-smi -L 2>&1 || echo "(nvidia-smi -L failed)"
    echo "### nvidia-smi --query-gpu"
    timeout 10 nvidia-smi --query-gpu=index,name,driver_version,memory.total,pci.bus_id,clocks.max.memory \
      --format=csv 2>&1 || true
    echo "### driver's CUDA version"
    timeout 10 nvidia-smi 2>/dev/null | grep -Eo 'CUDA Version: *[0-9.]+' || echo "(unknown)"
    echo "### CUDA toolkit"
    if [[ -x /usr/local/cuda/bin/nvcc ]]; then
      /usr/local/cuda/bin/nvcc --version 2>&1 | tail -n 2
    fi
    find /usr/local/cuda/lib64/ -maxdepth 1 \( -name 'libcudart.so*' -o -name 'libcublasLt.so*' \) \
      2>&1 | sort | head -n 6
    echo "### NCCL"
    local h
    for h in /usr/local/cuda/include/nccl.h /usr/include/nccl.h; do
      [[ -f "$h" ]] && { echo "$h:"; grep -E '^#define NCCL_(MAJOR|MINOR|PATCH)\b' "$h"; }
    done
    local libs
    libs="$(find /usr/local/cuda/lib64/ /usr/lib/x86_64-linux-gnu/ -maxdepth 1 -name 'libnccl*' \
      2>/dev/null | sort)"
    echo "${libs:-(no libnccl in /usr/local/cuda/lib64 or /usr/lib/x86_64-linux-gnu)}"
    echo "### compute-sanitizer"
    if [[ -n "$SANITIZER" ]]; then
      echo "$SANITIZER"
      timeout 10 "$SANITIZER" --version 2>&1 | tail -n 2
    else
      echo "(not found)"
    fi
    echo "### PyTorch"
    timeout $((t > 17 ? t - 12 : 5)) python3 -c 'import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("nccl", ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "-")
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' 2>&1 | tail -n 3
    echo "### package"
    cat "$PKG/MANIFEST" 2>/dev/null
  } > "$log" 2>&1
  gpus="$(grep -c '^GPU [0-9]' "$log")"
  GPU_NAME="$(timeout 10 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
  GPU_NAME="${GPU_NAME:-no GPU}"
  local drv
  drv="$(timeout 10 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
  if ((gpus > 0)); then
    INFO_STATUS=pass
    INFO_NOTE="$gpus GPU(s): $GPU_NAME, driver ${drv:-?}"
  else
    INFO_STATUS=fail
    INFO_NOTE="no GPU listed by nvidia-smi -L"
  fi
}

# A binary the package should have; sets MISSING_NOTE when it is absent.
have_bin() {
  MISSING_NOTE=""
  [[ -z "$1" || -x "$PKG/bin/$1" ]] && return 0
  if grep -qx "missing $1" "$PKG/MANIFEST" 2>/dev/null; then
    MISSING_NOTE="$1 is not in the package (its build has no such target)"
  else
    MISSING_NOTE="$1 is not in the package"
  fi
  return 1
}

check_package() {
  local ok=0 line name kib lib path seen=" "
  echo "package: $PKG"
  if [[ -f "$PKG/MANIFEST" ]]; then
    head -n 1 "$PKG/MANIFEST"
  else
    echo "  MISSING: MANIFEST (not made by tools/package_gpu.sh?)"
    ok=1
  fi
  for line in "${PLAN[@]}"; do
    IFS='|' read -r name _ bin _ _ <<< "$line"
    [[ -z "$bin" || "$seen" == *" $bin "* ]] && continue
    seen+="$bin "
    if have_bin "$bin"; then
      echo "  ok: bin/$bin"
      # Every library must come from the package unless the GPU host provides it (its C/C++
      # runtime, the driver, the CUDA runtime and cuBLAS: the list tools/package_gpu.sh leaves out).
      while read -r lib path; do
        case "$lib" in
          "" | ld-linux* | libc.so* | libm.so* | libdl.so* | \
            libpthread.so* | librt.so* | libgcc_s.so* | libstdc++.so* | libcuda.so* | \
            libnvidia-* | libcudart.so* | libcublas.so* | libcublasLt.so*) continue ;;
        esac
        if [[ "$path" == "$PKG/lib/"* || "$path" == "$UNPACKED/"* ]]; then
          continue
        fi
        echo "  MISSING: $lib, needed by bin/$bin, is not in the package (here: ${path:-?})"
        ok=1
      done < <(ldd "$PKG/bin/$bin" 2>/dev/null | awk '/ => / {print $1, $3}')
    elif [[ "$ALLOW_MISSING" == 1 ]]; then
      echo "  allowed missing: $MISSING_NOTE"
    else
      echo "  MISSING: $MISSING_NOTE"
      ok=1
    fi
  done
  kib="$(du -sk "$PKG" --exclude=report | cut -f1)"
  if ((kib > MAX_PKG_KIB)); then
    echo "  TOO BIG: ${kib} KiB > 48 MiB"
    ok=1
  else
    echo "  size: ${kib} KiB (limit 48 MiB)"
  fi
  return $ok
}

print_plan() {
  local line name budget bin kind desc cum=0
  echo "plan (total budget ${BUDGET}s; each step under \`timeout\`, clipped to what is left):"
  for line in "${PLAN[@]}"; do
    IFS='|' read -r name budget bin kind desc <<< "$line"
    cum=$((cum + budget))
    printf '  %-10s %4ss (by %4ss)  %s\n' "$name" "$budget" "$cum" "$desc"
    if [[ -n "$bin" ]]; then
      printf '             %s\n' "$(step_command "$name" "$bin" | tr '\n' ' ')"
    fi
  done
  echo "host: nvidia-smi $(command -v nvidia-smi >/dev/null && echo found || echo 'not found')," \
    "compute-sanitizer ${SANITIZER:-not found}, python3 $(command -v python3 >/dev/null && echo found || echo 'not found')"
  echo "report: $REPORT_DIR/gpu_check.md, gpu_check.json, logs/"
}

write_report() {
  local mode="$1"
  if ! command -v python3 >/dev/null 2>&1; then
    # Without python: the step table alone.
    {
      echo "# GPU check ($mode) on ${GPU_NAME:-?}"
      echo
      echo "| step | status | rc | s | timeout | note |"
      echo "|---|---|---|---|---|---|"
      sed 's/\t/ | /g; s/^/| /; s/$/ |/' "$STEPS_TSV"
    } > "$REPORT_DIR/gpu_check.md"
    echo '{"error": "python3 not found: see gpu_check.md"}' > "$REPORT_DIR/gpu_check.json"
    return
  fi
  python3 - "$mode" "$REPORT_DIR" "$STEPS_TSV" "${GPU_NAME:-unknown}" "$PKG" "$BUDGET" \
    "$(($(date +%s) - START_EPOCH))" <<'PY'
import json, os, sys
mode, report_dir, steps_tsv, gpu, pkg, budget, wall = sys.argv[1:8]
logs = os.path.join(report_dir, "logs")
steps = []
for line in open(steps_tsv, encoding="utf-8", errors="replace"):
    f = line.rstrip("\n").split("\t")
    if len(f) < 6:
        continue
    steps.append({"step": f[0], "status": f[1], "rc": int(f[2]) if f[2].lstrip("-").isdigit() else None,
                  "seconds": float(f[3] or 0), "timeout_s": int(f[4] or 0), "note": f[5],
                  "log": f"logs/{f[0]}.log", "device": gpu})
manifest = ""
try:
    manifest = open(os.path.join(pkg, "MANIFEST")).readline().strip("# \n")
except OSError:
    pass
bench = None
try:
    bench = json.load(open(os.path.join(logs, "bench.json")))
except (OSError, ValueError):
    pass
failed = [s["step"] for s in steps if s["status"] not in ("pass", "skip", "planned")]
summary = {"mode": mode, "device": gpu, "package": manifest, "budget_s": int(budget),
           "wall_s": int(wall), "ok": not failed, "failed_steps": failed, "steps": steps}
md = [f"# Tandem GPU check ({mode}) on {gpu}", "",
      f"Package: {manifest or pkg}. Budget {budget} s, took {wall} s. "
      f"Result: **{'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}**.", "",
      "| step | status | seconds (timeout) | device | note | log |", "|---|---|---|---|---|---|"]
for s in steps:
    md.append(f"| {s['step']} | {s['status']} | {s['seconds']:.0f} ({s['timeout_s']}) | {gpu} | "
              f"{s['note'].replace('|', '/')} | {s['log']} |")
if bench is not None:
    dev = bench.get("device", {})
    name = dev.get("name", gpu)
    summary["bench"] = {"device": dev, "complete": bench.get("complete"), "results": [],
                        "deterministic_cost": bench.get("deterministic_cost", [])}
    md += ["", f"## Benchmark: Llama-3-8B shapes, random bf16 weights, on {name}", "",
           f"HBM {dev.get('hbm_gbs', 0):.0f} GB/s ({dev.get('hbm_source', '?')}); measured "
           f"device copy {dev.get('copy_gbs', 0):.0f} GB/s; bf16 peak "
           f"{dev.get('peak_bf16_tflops', 0):.0f} TFLOP/s ({dev.get('peak_source', '?')}). "
           f"Weights streamed per decode step: "
           f"{bench.get('model', {}).get('weight_bytes_streamed_per_step', 0) / 1e9:.2f} GB. "
           f"{'' if bench.get('complete') else '**Incomplete run (timed out or failed).**'}", "",
           "| measure | deterministic | tokens/s | median ms | against the limit | vs batch 1 | device |",
           "|---|---|---|---|---|---|---|"]
    for m, run in bench.get("modes", {}).items():
        if "error" in run and not run.get("results"):
            md.append(f"| runner | {m} | FAILED | | {run['error'][:120]} | | {name} |")
        for r in run.get("results", []):
            summary["bench"]["results"].append(r)
            if "error" in r:
                md.append(f"| {r['name']} | {m} | FAILED | | {r['error'][:120]} | | {r['device']} |")
                continue
            if r["kind"] == "decode":
                lim = f"{r.get('pct_of_hbm_roofline', 0):.1f}% of roofline " \
                      f"({r.get('roofline_tokens_per_s', 0):.1f} tok/s); " \
                      f"{r.get('pct_of_measured_copy', 0):.1f}% of copy"
            else:
                lim = f"MFU {r.get('mfu_pct', 0):.1f}%"
            vs = f"{r['vs_batch1']:.2f}x" if r.get("vs_batch1") else ""
            md.append(f"| {r['name']} | {m} | {r['tokens_per_s']:.1f} | {r['median_s'] * 1e3:.2f} | "
                      f"{lim} | {vs} | {r['device']} |")
    cost = bench.get("deterministic_cost", [])
    if cost:
        md += ["", "Deterministic mode's cost (time on / time off):", "",
               "| measure | on / off | tokens/s off | tokens/s on | device |", "|---|---|---|---|---|"]
        for c in cost:
            md.append(f"| {c['name']} | {c['time_on_over_off']:.3f}x | {c['tokens_per_s_off']:.1f} | "
                      f"{c['tokens_per_s_on']:.1f} | {c['device']} |")
    md += ["", "Targets (TARGETS.md): batch-1 decode >= 80 % of the HBM roofline; prefill 2k >= 60 % MFU."]
md += ["", "## Logs", ""]
for s in steps:
    path = os.path.join(report_dir, s["log"])
    if not os.path.exists(path):
        continue
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    tail = lines[:80] if s["step"] == "info" else lines[-25:]
    which = "first" if s["step"] == "info" else "last"
    md += [f"### {s['step']}: {s['status']} ({which} {len(tail)} lines of {s['log']})", "", "```",
           *tail, "```", ""]
open(os.path.join(report_dir, "gpu_check.md"), "w").write("\n".join(md) + "\n")
json.dump(summary, open(os.path.join(report_dir, "gpu_check.json"), "w"), indent=2)
PY
}

# ---------------------------------------------------------------------------------------------
if [[ "$DRY" == 1 ]]; then
  echo "gpu_check: dry run (no GPU used)"
  pkg_rc=0
  check_package || pkg_rc=1
  print_plan
  GPU_NAME="dry run: $(command -v nvidia-smi >/dev/null && timeout 10 nvidia-smi -L 2>/dev/null | head -n 1 || echo 'no GPU here')"
  for line in "${PLAN[@]}"; do
    IFS='|' read -r name budget bin kind desc <<< "$line"
    if [[ -n "$bin" ]] && ! have_bin "$bin"; then
      if [[ "$ALLOW_MISSING" == 1 ]]; then
        record "$name" skip 0 0 "$budget" "$MISSING_NOTE"
      else
        record "$name" missing 0 0 "$budget" "$MISSING_NOTE"
      fi
    else
      record "$name" planned 0 0 "$budget" "$desc" > /dev/null
    fi
  done
  write_report dry-run
  if ((pkg_rc)); then
    echo "gpu_check: dry run: the package is INCOMPLETE (see above)"
  else
    echo "gpu_check: dry run: the package is complete"
  fi
  echo "gpu_check: report in $REPORT_DIR"
  exit $pkg_rc
fi

echo "gpu_check: package $PKG, report $REPORT_DIR, budget ${BUDGET}s"
GPU_NAME="unknown"
for line in "${PLAN[@]}"; do
  IFS='|' read -r name budget bin kind desc <<< "$line"
  left=$((DEADLINE - $(date +%s) - RESERVE))
  t=$((budget < left ? budget : left))
  if ((t < MIN_STEP)); then
    record "$name" fail -1 0 0 "not run: the total budget of ${BUDGET}s is spent"
    continue
  fi
  if ! have_bin "$bin"; then
    if [[ "$ALLOW_MISSING" == 1 ]]; then
      record "$name" skip 0 0 "$t" "$MISSING_NOTE"
    else
      record "$name" fail -1 0 "$t" "$MISSING_NOTE"
    fi
    continue
  fi
  if [[ "$kind" == sanitizer && -z "$SANITIZER" ]]; then
    record "$name" fail -1 0 "$t" "compute-sanitizer not found (PATH, /usr/local/cuda)"
    continue
  fi
  t0="$(date +%s%N)"
  if [[ "$kind" == info ]]; then
    run_info "$t"
    secs="$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')"
    record info "$INFO_STATUS" 0 "$secs" "$t" "$INFO_NOTE"
    continue
  fi
  mapfile -t cmd < <(step_command "$name" "$bin")
  log="$LOGS/$name.log"
  echo "-- $name (timeout ${t}s): ${cmd[*]}"
  timeout -k 5 "$t" "${cmd[@]}" > "$log" 2>&1
  rc=$?
  secs="$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')"
  status=fail
  note=""
  if ((rc == 124 || rc == 137)); then
    status=timeout
    note="killed after ${t}s; "
  fi
  case "$kind" in
    gtest | sanitizer)
      gtest_counts "$log"
      note+="$G_RAN tests, $G_FAILED failed, $G_SKIPPED skipped"
      if [[ "$kind" == sanitizer ]]; then
        errs="$(grep -Eo 'ERROR SUMMARY: [0-9]+ errors?' "$log" | tail -n 1)"
        note+="; ${errs:-no sanitizer summary}"
      fi
      # On a GPU host nothing may skip: the GPU tests skip only when they find no usable GPU.
      if ((rc == 0 && G_RAN > 0 && G_SKIPPED == 0)); then
        status=pass
      elif ((rc == 0 && G_RAN == 0)); then
        note+=" (no test ran: filter or binary broken)"
      elif ((rc == 0)); then
        note+=" (skipped tests found no usable GPU)"
      fi
      ;;
    bench)
      if [[ -f "$LOGS/bench.json" ]] && command -v python3 >/dev/null 2>&1; then
        note+="$(python3 - "$LOGS/bench.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
parts = []
for mode, run in b.get("modes", {}).items():
    for r in run.get("results", []):
        if "error" in r:
            parts.append(f"{r['name']} det {mode}: FAILED")
        elif r["name"].startswith("decode b=1 "):
            parts.append(f"b=1 det {mode}: {r['tokens_per_s']:.1f} tok/s = "
                         f"{r.get('pct_of_hbm_roofline', 0):.1f}% of roofline")
        elif r["kind"] == "prefill":
            parts.append(f"prefill det {mode}: MFU {r.get('mfu_pct', 0):.1f}%")
print("; ".join(parts) + ("" if b.get("complete") else " (incomplete)"), end="")
PY
)"
        ok="$(python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); print(int(bool(b.get("complete") and b.get("ok"))))' "$LOGS/bench.json" 2>/dev/null)"
        [[ $rc -eq 0 && "$ok" == 1 ]] && status=pass
      else
        note+="no bench.json; $(tail -n 1 "$log" | cut -c1-200)"
      fi
      ;;
    check)
      # The check's own summary line (exit 0 only when every byte arrived).
      note+="$(grep -E '^(nccl|cuda_ipc) \(' "$log" | tail -n 1 | cut -c1-200)"
      [[ -z "$note" ]] && note="$(tail -n 1 "$log" | cut -c1-200)"
      ((rc == 0)) && status=pass
      ;;
  esac
  record "$name" "$status" "$rc" "$secs" "$t" "$note"
done

write_report gpu
failed="$(awk -F'\t' '$2 != "pass" && $2 != "skip"' "$STEPS_TSV" | cut -f1 | tr '\n' ' ')"
echo "gpu_check: report $REPORT_DIR/gpu_check.md; $(($(date +%s) - START_EPOCH))s"
if [[ -n "$failed" ]]; then
  echo "gpu_check: FAILED: $failed"
  exit 1
fi
echo "gpu_check: all steps passed on $GPU_NAME"
exit 0
