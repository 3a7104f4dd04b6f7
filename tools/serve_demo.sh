#!/usr/bin/env bash
# The README's run command after setup: answers "What is the capital of France?" with the
# single-process engine (`tandem generate --chat`), then starts `tandem serve` (router + 1
# prefill + 1 decode worker as separate processes on 127.0.0.1, the default model), prints its
# endpoints, asks the same through the router over gRPC (`tandem generate --server`) and over
# the OpenAI-compatible HTTP API (curl), then stops every process.
#   --keep        leave the server running (Ctrl-C stops it)
#   --model DIR   another checkpoint folder
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TANDEM_BUILD_DIR:-$REPO/build}/bin"
MODEL="${TANDEM_MODEL_DIR:-$REPO/models/SmolLM2-135M-Instruct}"
KEEP=0
while (($#)); do
  case "$1" in
    --keep) KEEP=1 ;;
    --model) MODEL="$2"; shift ;;
    *) echo "usage: $0 [--keep] [--model DIR]" >&2; exit 2 ;;
  esac
  shift
done
QUESTION="What is the capital of France?"

echo "\$ tandem generate --chat \"$QUESTION\"      (the engine in this process)"
"$BIN/tandem" generate --model "$MODEL" --chat --max-tokens 48 "$QUESTION"
echo

out="$(mktemp /tmp/tandem-serve.XXXXXX.out)"
"$BIN/tandem" serve --model "$MODEL" --log-level warn >"$out" &
pid=$!
stop() { kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -f "$out"; }
trap stop EXIT
for _ in $(seq 1200); do
  grep -q '^decode grpc ' "$out" && break
  kill -0 "$pid" 2>/dev/null || { echo "tandem serve failed to start" >&2; exit 1; }
  sleep 0.1
done
cat "$out"
grpc="$(awk '/^router grpc /{print $3}' "$out")"
http="$(awk '/^router http /{print $3}' "$out")"

echo
echo "\$ tandem generate --server $grpc --chat \"$QUESTION\"      (through the router)"
"$BIN/tandem" generate --server "$grpc" --chat --max-tokens 48 "$QUESTION"

echo
echo "\$ curl http://$http/v1/chat/completions ..."
curl -sS "http://$http/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"messages\": [{\"role\": \"user\", \"content\": \"$QUESTION\"}], \"max_tokens\": 48, \"temperature\": 0}"
echo

if ((KEEP)); then
  echo "serving; Ctrl-C stops every process"
  wait "$pid"
fi
