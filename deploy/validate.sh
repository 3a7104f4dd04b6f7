#!/usr/bin/env bash
# Static validation of deploy/ with real tools, offline (ctest runs it as deploy_validate):
#   1. `kubectl kustomize` renders every overlay, and the base with each component;
#   2. promtool: the scrape config, the rules, and the rule unit tests;
#   3. deploy/tools/check_deploy.py checks the rendered objects against the Kubernetes schemas
#      (kubernetes-validate, offline), the binaries' --help, and a live `tandem serve` (router +
#      prefill + decode on loopback, the default model): the probes' gRPC health services answer
#      SERVING, and every metric name that a rule, ScaledObject, HPA or the dashboard names is on
#      a live /metrics or recorded by a rule (see its docstring for the whole list).
#
# Usage: deploy/validate.sh [--bin-dir DIR] [--model DIR]
#   --bin-dir  the built binaries (default: $TANDEM_BUILD_DIR/bin, else <repo>/build/bin)
#   --model    the model for the live processes (default: $TANDEM_MODEL_DIR, else
#              <repo>/models/SmolLM2-135M-Instruct)
# Needs: kubectl with its built-in kustomize (v5 or later: components), promtool (Debian
# `prometheus`), and <repo>/.venv with kubernetes-validate and grpcio-health-checking
# (tools/setup.sh installs the last two). A missing tool is a failure, not a skip.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$DEPLOY/.." && pwd)"
BIN_DIR="${TANDEM_BUILD_DIR:-$REPO/build}/bin"
MODEL="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
while (($#)); do
  case "$1" in
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    *) echo "validate: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY="$REPO/.venv/bin/python"

say() { printf '[validate] %s\n' "$*"; }
die() { printf '[validate] FAILED: %s\n' "$*" >&2; exit 1; }
SECONDS=0

command -v kubectl >/dev/null || die "kubectl not found (it renders the kustomizations)"
kver="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
[[ -n "$kver" && "$kver" -ge 5 ]] \
  || die "kubectl's built-in kustomize is not v5 or later: $(kubectl version --client 2>&1 | tr '\n' ' ')"
command -v promtool >/dev/null || die "promtool not found (Debian package prometheus)"
[[ -x "$PY" ]] || die "$PY not found (run tools/setup.sh)"
"$PY" -c 'import kubernetes_validate, grpc_health' 2>/dev/null \
  || die "kubernetes-validate or grpcio-health-checking missing from $PY (run tools/setup.sh)"
for b in tandem tandem-router tandem-prefill tandem-decode tandem-planner; do
  [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b not built"
done
[[ -f "$MODEL/config.json" ]] || die "no model at $MODEL"

WORK="$(mktemp -d /tmp/tandem-validate.XXXXXX)"
serve_pid=""
cleanup() {
  if [[ -n "$serve_pid" ]] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$serve_pid" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Start the live processes first: they load while the renders and promtool run.
say "starting tandem serve ($MODEL)"
setsid "$BIN_DIR/tandem" serve --model "$MODEL" --threads 1 --kv-cache-mb 16 --drain-ms 2000 \
  --log-level warn >"$WORK/serve.out" 2>"$WORK/serve.err" </dev/null &
serve_pid=$!

# ------------------------------------------------------------------ 1. render
renders=()
render() {  # NAME DIR
  local out="$WORK/render-$1.yaml"
  kubectl kustomize "$2" >"$out" 2>"$WORK/render-$1.err" \
    || { cat "$WORK/render-$1.err" >&2; die "kubectl kustomize $2"; }
  renders+=(--render "$1=$out")
  say "rendered $1: $(grep -c '^kind:' "$out") objects"
}
for o in "$DEPLOY"/overlays/*/; do
  render "overlay-$(basename "$o")" "$o"
done
# Every component on the base alone, so that one no overlay uses is rendered too.
for comp in "$DEPLOY"/components/*/; do
  name="$(basename "$comp")"
  dir="$WORK/with-$name"
  mkdir -p "$dir"
  cat >"$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$dir" "$DEPLOY/base")
components:
  - $(realpath --relative-to="$dir" "$comp")
EOF
  render "base+$name" "$dir"
done

# ------------------------------------------------------------------ 2. promtool
promtool check config "$DEPLOY/prometheus/prometheus.yml" >"$WORK/promtool.log" 2>&1 \
  || { cat "$WORK/promtool.log" >&2; die "promtool check config"; }
promtool test rules "$DEPLOY/prometheus/tests/"*.yml >"$WORK/promtool.log" 2>&1 \
  || { cat "$WORK/promtool.log" >&2; die "promtool test rules"; }
say "promtool: config and rules valid, rule unit tests pass"

# ------------------------------------------------------------------ 3. live processes
# The limit only guards against a hang (the default model loads in seconds).
for _ in $(seq 1 3000); do
  grep -q '^decode grpc ' "$WORK/serve.out" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$WORK/serve.err" >&2; die "tandem serve exited"; }
  sleep 0.1
done
grep -q '^decode grpc ' "$WORK/serve.out" \
  || { cat "$WORK/serve.err" >&2; die "tandem serve did not start in 300 s"; }
"$PY" "$DEPLOY/tools/check_deploy.py" --bin-dir "$BIN_DIR" --serve-out "$WORK/serve.out" \
  "${renders[@]}" || die "check_deploy.py"
say "ok (${SECONDS}s)"
