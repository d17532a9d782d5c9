#!/usr/bin/env bash
# Telemetry overhead, tracing off vs on, in one run on one machine (release builds):
#   gateway: two gateways on the same mock upstream, "on" exporting to a local OTLP sink;
#            every request carries a traceparent, so "on" makes two spans per request
#            (gateway.request, gateway.chat) and joins them to the caller's trace.
#   vault:   two proxies (vault-proxy/examples/telemetry_bench.rs), "on" with a traced grant:
#            every audited decision (a swap per request) is a vault.egress span.
# Rounds alternate off/on; medians and the on/off throughput ratio are printed. The sink runs
# on the same cores, so its CPU counts against "on" (a real collector runs elsewhere).
# Env: DURATION (s per phase, default 5), CONNS (default 32), ROUNDS (default 3), SKIP_BUILD=1,
# PROFILE (release, the default and the only one whose figures count; debug for a quick look).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${DURATION:-5}"
CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-3}"
PROFILE="${PROFILE:-release}"
if [[ "$PROFILE" == release ]]; then PFLAG=--release; else PFLAG=; fi
cd "$ROOT"
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build $PFLAG -p gateway --bin gateway --example mock_upstream
  cargo build $PFLAG -p vault-proxy --bin vault-proxy --example telemetry_bench
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])' || echo "$ROOT/target")"
REL="$TARGET_DIR/$PROFILE"
echo "# profile: $PROFILE"

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_line() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; cat "$1" >&2; return 1; }

echo "## gateway"
MOCK_ADDR=127.0.0.1:9110; OFF_ADDR=127.0.0.1:9210; ON_ADDR=127.0.0.1:9211; SINK_PORT=9410
python3 "$HERE/otlp_sink.py" "$SINK_PORT" > "$WORK/sink.log" 2>&1 & SINK_PID=$!; PIDS+=($SINK_PID)
"$REL/examples/mock_upstream" "$MOCK_ADDR" > "$WORK/mock.log" 2>&1 & PIDS+=($!)
wait_line "$WORK/mock.log" "listening on"
sed "s/@MOCK@/$MOCK_ADDR/g" "$ROOT/bench/gateway/config.yaml.in" > "$WORK/config.yaml"
env -u OTEL_EXPORTER_OTLP_ENDPOINT RUST_LOG=warn "$REL/gateway" --config "$WORK/config.yaml" --listen "$OFF_ADDR" --database-url memory > "$WORK/off.log" 2>&1 & PIDS+=($!)
RUST_LOG=warn OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" "$REL/gateway" --config "$WORK/config.yaml" --listen "$ON_ADDR" --database-url memory > "$WORK/on.log" 2>&1 & PIDS+=($!)
wait_line "$WORK/off.log" "listening on"; wait_line "$WORK/on.log" "listening on"
TP="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
run_wrk() { # url -> RESULT line
  BODY_FILE="$ROOT/bench/gateway/openai_body.json" AUTH=sk-bench-master TRACEPARENT="$TP" \
    wrk -t1 -c"$CONNS" -d"$DURATION"s --latency -s "$HERE/post.lua" "$1" 2>"$WORK/wrk.err" | grep '^RESULT' || { cat "$WORK/wrk.err" >&2; echo "RESULT rps=0"; }
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
# Warm-up.
DURATION=1 run_wrk "http://$OFF_ADDR/v1/chat/completions" >/dev/null
DURATION=1 run_wrk "http://$ON_ADDR/v1/chat/completions" >/dev/null
OFFS=(); ONS=()
for r in $(seq 1 "$ROUNDS"); do
  o="$(run_wrk "http://$OFF_ADDR/v1/chat/completions")"; echo "round $r off: $o"; OFFS+=("$(field rps "$o")")
  n="$(run_wrk "http://$ON_ADDR/v1/chat/completions")"; echo "round $r on:  $n"; ONS+=("$(field rps "$n")")
done
python3 - "${OFFS[*]}" "${ONS[*]}" <<'PY'
import statistics, sys
off = [float(x) for x in sys.argv[1].split()]; on = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(off), statistics.median(on)
print(f"gateway median: off {mo:.0f} req/s, on {mn:.0f} req/s; on/off throughput {mn/mo:.3f} (cost {(1-mn/mo)*100:.1f}%)")
PY
sleep 1.5
kill "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true; cat "$WORK/sink.log"

echo "## vault proxy"
"$REL/examples/telemetry_bench" --proxy-bin "$REL/vault-proxy" --duration "$DURATION" --concurrency "$CONNS" --rounds "$ROUNDS"
