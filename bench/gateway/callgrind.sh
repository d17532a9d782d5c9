#!/usr/bin/env bash
# Instructions per request on the gateway's hot path, load-independent:
# the release gateway runs under `valgrind --tool=callgrind` (counters zeroed after
# start-up, key creation and a warm-up; dumped right after the measured requests), then REQUESTS sequential requests on one
# keep-alive connection (gateway/examples/latency_probe.rs) with a virtual key that
# has a budget, rpm/tpm limits and a model list (auth, rate limiting and spend
# recording in SQLite on every request). Prints total instructions (Ir) / REQUESTS
# per route and keeps the callgrind files in OUT for callgrind_annotate.
# Env: REQUESTS (default 2000), OUT (default ./callgrind-out), GATEWAY_BIN, MOCK_BIN,
# PROBE_BIN (default: the target dir's release binaries; build them first), VALGRIND_FLAGS
# (extra callgrind options, e.g. --demangle=no as hot-code.sh uses), COVER_ALL=1 (for
# hot-code.sh: count from right after start-up, key creation and warm-up included, and end
# with 2 s of wrk at 50 connections; the per-request figure is then meaningless).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REQUESTS="${REQUESTS:-2000}"
OUT="${OUT:-$PWD/callgrind-out}"
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')"
BIN="${GATEWAY_BIN:-$TARGET_DIR/release/gateway}"
MOCK="${MOCK_BIN:-$TARGET_DIR/release/examples/mock_upstream}"
PROBE="${PROBE_BIN:-$TARGET_DIR/release/examples/latency_probe}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
MOCK_ADDR=127.0.0.1:9120; GW_ADDR=127.0.0.1:9220
"$MOCK" "$MOCK_ADDR" > "$WORK/mock.log" 2>&1 & PIDS+=($!)
sleep 0.5
sed "s/@MOCK@/$MOCK_ADDR/g" "$HERE/config.yaml.in" > "$WORK/config.yaml"
for route in chat messages; do
  if [[ $route == chat ]]; then path=/v1/chat/completions; body="$HERE/openai_body.json"; else path=/v1/messages; body="$HERE/anthropic_body.json"; fi
  rm -f "$WORK/gw.db"*
  # shellcheck disable=SC2086
  RUST_LOG=warn GATEWAY_WORKER_THREADS=2 valgrind --tool=callgrind ${VALGRIND_FLAGS:-} \
    --callgrind-out-file="$OUT/callgrind.$route.out" "$BIN" --config "$WORK/config.yaml" \
    --listen "$GW_ADDR" --database-url "sqlite://$WORK/gw.db" > "$WORK/gw.log" 2>&1 & GW_PID=$!
  for _ in $(seq 600); do grep -q "listening on" "$WORK/gw.log" && break; sleep 0.1; done
  [[ -z "${COVER_ALL:-}" ]] || callgrind_control -z "$GW_PID" > /dev/null   # start-up excluded
  VKEY="$(curl -fsS --max-time 60 "http://$GW_ADDR/key/generate" -H 'Authorization: Bearer sk-bench-master' -H 'Content-Type: application/json' \
    -d '{"max_budget": 1000000, "rpm_limit": 100000000, "tpm_limit": 100000000000, "models": ["bench-gpt", "bench-claude"]}' \
    | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')"
  "$PROBE" "http://$GW_ADDR$path" "$body" "$VKEY" 200 > /dev/null   # warm-up (pools, caches)
  [[ -n "${COVER_ALL:-}" ]] || callgrind_control -z "$GW_PID" > /dev/null   # zero the counters: start-up, key and warm-up excluded
  r="$("$PROBE" "http://$GW_ADDR$path" "$body" "$VKEY" "$REQUESTS")"
  grep -q "non2xx=0" <<<"$r" || { echo "gateway errors: $r" >&2; exit 1; }
  if [[ -n "${COVER_ALL:-}" ]]; then
    BODY_FILE=$body AUTH=$VKEY wrk -t1 -c50 -d2s -s "$HERE/post.lua" "http://$GW_ADDR$path" > /dev/null
  fi
  sleep 0.6   # let the spend writer's batch (250 ms) land inside the measurement
  callgrind_control -d "$GW_PID" > /dev/null   # dump: callgrind.$route.out.1
  kill -INT "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
  total=$(awk "/^(summary|totals):/{print \$2; exit}" "$OUT/callgrind.$route.out.1")
  n=$(( REQUESTS + REQUESTS / 10 ))
  echo "$route: $total instructions for $n requests = $(( total / n )) per request"
done
