#!/usr/bin/env bash
# Added latency at one connection: the same sequential POSTs (one keep-alive
# connection, gateway/examples/latency_probe.rs) straight to the mock upstream and
# through the gateway (virtual key: auth, rpm/tpm limits, spend recording on),
# alternating ROUNDS times; medians of the per-round p50s and p99s, and their differences.
# Plus the gateway's RSS (VmHWM) after the run. Env: REQUESTS (per round, default
# 5000), ROUNDS (default 5), SKIP_BUILD=1.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REQUESTS="${REQUESTS:-5000}"
ROUNDS="${ROUNDS:-5}"
if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$ROOT" && cargo build --release --workspace --bins --examples)
fi
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/release/gateway"; MOCK="$TARGET_DIR/release/examples/mock_upstream"; PROBE="$TARGET_DIR/release/examples/latency_probe"
WORK="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
MOCK_ADDR=127.0.0.1:9110; GW_ADDR=127.0.0.1:9210
"$MOCK" "$MOCK_ADDR" > "$WORK/mock.log" 2>&1 & PIDS+=($!)
sleep 0.5
sed "s/@MOCK@/$MOCK_ADDR/g" "$HERE/config.yaml.in" > "$WORK/config.yaml"
RUST_LOG=warn "$BIN" --config "$WORK/config.yaml" --listen "$GW_ADDR" --database-url "sqlite://$WORK/gw.db" > "$WORK/gw.log" 2>&1 & GW_PID=$!; PIDS+=($GW_PID)
for _ in $(seq 100); do grep -q "listening on" "$WORK/gw.log" && break; sleep 0.1; done
VKEY="$(curl -fsS "http://$GW_ADDR/key/generate" -H 'Authorization: Bearer sk-bench-master' -H 'Content-Type: application/json' \
  -d '{"max_budget": 1000000, "rpm_limit": 100000000, "tpm_limit": 100000000000, "models": ["bench-gpt", "bench-claude"]}' \
  | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')"
echo "# $(date -u +%FT%TZ) requests=$REQUESTS x $ROUNDS rounds, one connection  cores=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
median() { python3 -c 'import sys,statistics;print(f"{statistics.median(float(x) for x in sys.argv[1:]):.1f}")' "$@"; }
p() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
for route in chat messages; do
  if [[ $route == chat ]]; then path=/v1/chat/completions; body="$HERE/openai_body.json"; else path=/v1/messages; body="$HERE/anthropic_body.json"; fi
  D=(); G=(); D99=(); G99=()
  for _ in $(seq "$ROUNDS"); do
    r="$("$PROBE" "http://$MOCK_ADDR$path" "$body" - "$REQUESTS")"
    D+=("$(p p50_us "$r")"); D99+=("$(p p99_us "$r")")
    r="$("$PROBE" "http://$GW_ADDR$path" "$body" "$VKEY" "$REQUESTS")"
    grep -q "non2xx=0" <<<"$r" || { echo "gateway errors: $r" >&2; tail -5 "$WORK/gw.log" >&2; exit 1; }
    G+=("$(p p50_us "$r")"); G99+=("$(p p99_us "$r")")
  done
  d=$(median "${D[@]}"); g=$(median "${G[@]}"); d99=$(median "${D99[@]}"); g99=$(median "${G99[@]}")
  echo "$route  p50: direct ${d} us, gateway ${g} us, added $(python3 -c "print(f'{$g-$d:.1f}')") us   p99: direct ${d99} us, gateway ${g99} us, added $(python3 -c "print(f'{$g99-$d99:.1f}')") us   (p50 rounds direct: ${D[*]}; gateway: ${G[*]})"
done
echo "gateway RSS: $(awk '/VmRSS/{print $2}' /proc/$GW_PID/status) kB now, $(awk '/VmHWM/{print $2}' /proc/$GW_PID/status) kB peak"
