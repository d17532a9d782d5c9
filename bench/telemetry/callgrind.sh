#!/usr/bin/env bash
# Telemetry overhead in instructions per request (load-independent, unlike run.sh's req/s):
# each variant runs under `valgrind --tool=callgrind`, counters zeroed after start-up and a
# warm-up, dumped after REQUESTS sequential requests on one keep-alive connection plus 2 s, so
# the batch exporter's encoding and HTTP requests (every second) are counted: all threads.
#   base: BASE_DIR's gateway / vault-proxy (a build of BASELINE_REF, before tracing existed);
#   off:  this tree, no endpoint;  on: this tree, exporting to a local OTLP/HTTP sink.
# gateway: POST /v1/chat/completions with a traceparent (run.sh's setup: memory DB, master key);
# vault:   one swap per request through a traced grant (vault-proxy/examples/telemetry_bench.rs).
# Env: REQUESTS (default 2000), OUT (default ./callgrind-out), BIN_DIR (gateway, vault-proxy,
# mock_upstream, latency_probe, telemetry_bench, otlp_sink of this tree; default the target dir's release
# binaries), BASE_DIR (gateway, vault-proxy of BASELINE_REF; unset or empty: no baseline).
# For symbols build with CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REQUESTS="${REQUESTS:-2000}"
OUT="${OUT:-$PWD/callgrind-out}"
if [[ -z "${BIN_DIR:-}" ]]; then
  BIN_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release"
  [[ -x "$BIN_DIR/examples/mock_upstream" ]] && EX_DIR="$BIN_DIR/examples"
fi
EX_DIR="${EX_DIR:-$BIN_DIR}"
BASE_DIR="${BASE_DIR:-}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_line() { for _ in $(seq 1 1200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; cat "$1" >&2; return 1; }
total() { awk '/^(summary|totals):/{print $2; exit}' "$1"; }
# Instructions executed in telemetry source (the airlock-telemetry crate and the vault's
# telemetry.rs, inlined code included: callgrind attributes by debug line info) in a callgrind
# file: with tracing off, what the span code costs a request. Needs a build with line tables.
# (callgrind_annotate prints paths under the working directory relative to it.)
telemetry_ir() {
  callgrind_annotate --auto=no --threshold=100 --inclusive=no "$1" 2>/dev/null | awk '
    /^ *[0-9,]+ +\( *[0-9.]+%\) +[^ ]+:/ { n = $1; gsub(",", "", n); split($0, a, /%\) +/); path = a[2]; sub(/:.*/, "", path)
      if (path ~ /gateway\/telemetry\/src|vault-proxy\/src\/telemetry\.rs/) s += n }
    END { print s + 0 }'
}

echo "## gateway (POST /v1/chat/completions, traceparent on every request)"
MOCK_ADDR=127.0.0.1:9130; GW_ADDR=127.0.0.1:9230; SINK_PORT=9430
TP="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
"$EX_DIR/otlp_sink" "$SINK_PORT" > "$WORK/sink.log" 2>&1 & SINK_PID=$!; PIDS+=($SINK_PID)
wait_line "$WORK/sink.log" "listening on"
"$EX_DIR/mock_upstream" "$MOCK_ADDR" > "$WORK/mock.log" 2>&1 & PIDS+=($!)
wait_line "$WORK/mock.log" "listening on"
sed "s/@MOCK@/$MOCK_ADDR/g" "$ROOT/bench/gateway/config.yaml.in" > "$WORK/config.yaml"
VARIANTS=(off on); [[ -n "$BASE_DIR" ]] && VARIANTS=(base off on)
declare -A IR=()
for v in "${VARIANTS[@]}"; do
  bin="$BIN_DIR/gateway"; [[ "$v" == base ]] && bin="$BASE_DIR/gateway"
  if [[ "$v" == on ]]; then otel=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"); else otel=(); fi
  rm -f "$OUT/gateway.$v.out"*
  env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT RUST_LOG=warn GATEWAY_WORKER_THREADS=2 "${otel[@]}" \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/gateway.$v.out" \
    "$bin" --config "$WORK/config.yaml" --listen "$GW_ADDR" --database-url memory > "$WORK/gw.log" 2>&1 & GW_PID=$!
  wait_line "$WORK/gw.log" "listening on"
  TRACEPARENT="$TP" "$EX_DIR/latency_probe" "http://$GW_ADDR/v1/chat/completions" "$ROOT/bench/gateway/openai_body.json" sk-bench-master 200 > /dev/null
  sleep 1.5   # the warm-up's last export batch lands before the counters are zeroed
  callgrind_control -z "$GW_PID" > /dev/null
  r="$(TRACEPARENT="$TP" "$EX_DIR/latency_probe" "http://$GW_ADDR/v1/chat/completions" "$ROOT/bench/gateway/openai_body.json" sk-bench-master "$REQUESTS")"
  grep -q "non2xx=0" <<<"$r" || { echo "gateway $v errors: $r" >&2; exit 1; }
  sleep 2     # the last batch (exported every second) is counted
  callgrind_control -d "$GW_PID" > /dev/null
  kill -INT "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
  t="$(total "$OUT/gateway.$v.out.1")"; n=$(( REQUESTS + REQUESTS / 10 ))
  IR[$v]=$(( t / n ))
  echo "gateway $v: $t instructions for $n requests = ${IR[$v]} per request"
  [[ $v == base ]] || echo "  of which in telemetry source: $(telemetry_ir "$OUT/gateway.$v.out.1") (all requests)"
done
python3 - "${IR[base]:-}" "${IR[off]}" "${IR[on]}" <<'PY'
import sys
base, off, on = (float(x) if x else None for x in sys.argv[1:])
print(f"gateway instructions on/off {on/off:.3f} (+{(on/off-1)*100:.1f}%)")
if base:
    print(f"gateway instructions off/base {off/base:.3f} (+{(off/base-1)*100:.1f}%)")
PY
kill "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true; cat "$WORK/sink.log"

echo "## vault proxy (a swap and a scrub per request, traced grant)"
BASE_ARG=(); [[ -n "$BASE_DIR" ]] && BASE_ARG=(--baseline-bin "$BASE_DIR/vault-proxy")
"$EX_DIR/telemetry_bench" --proxy-bin "$BIN_DIR/vault-proxy" "${BASE_ARG[@]}" --callgrind "$REQUESTS" --callgrind-out "$OUT"
for v in off on; do
  [[ -f "$OUT/vault.$v.out.1" ]] && echo "vault $v: of which in telemetry source: $(telemetry_ir "$OUT/vault.$v.out.1") (all requests)"
done
