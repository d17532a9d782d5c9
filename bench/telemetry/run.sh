#!/usr/bin/env bash
# Telemetry overhead in one run on one machine (release builds), three variants each:
#   base: the same component built from BASELINE_REF, the last commit before tracing existed
#         (metrics were there already; no span code, no trace context, no telemetry crate);
#   off:  this tree, tracing off (no endpoint configured);
#   on:   this tree, exporting to a local OTLP/HTTP sink.
# gateway: three gateways on the same mock upstream; every request carries a traceparent, so
#          "on" makes a gateway.request span per request, joined to it.
# vault:   three proxies (vault-proxy/examples/telemetry_bench.rs); "on" has a traced grant:
#          every audited decision is a vault.egress span: two a request (the swap, and the
#          scrub of the credential the upstream echoes), ~380 bytes each on the wire.
# Rounds rotate base/off/on; medians and the ratios on/off, off/base are printed. The OTLP sink
# (gateway/telemetry/examples/otlp_sink.rs: one thread, reads and discards each request body,
# answers 200; a process of its own for each half, `telemetry_bench --sink` for the vault) runs
# on the same cores at the same priority, so its CPU still counts against "on", but it is only a
# stand-in for a collector that runs elsewhere: the figures are Airlock's cost, not a sink's
# (an earlier Python sink cost more CPU per span than the spans themselves).
# Env: DURATION (s per phase, default 5), CONNS (default 32), ROUNDS (default 3), SKIP_BUILD=1,
# PROFILE (release, the default and the only one whose figures count; debug for a quick look),
# BIN_DIR (prebuilt gateway, vault-proxy, mock_upstream, telemetry_bench, otlp_sink of this tree),
# BASE_DIR (prebuilt gateway, vault-proxy of BASELINE_REF; empty string: no baseline).
# Instructions per request instead of req/s (load-independent): bench/telemetry/callgrind.sh.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${DURATION:-5}"
CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-3}"
PROFILE="${PROFILE:-release}"
BASELINE_REF="${BASELINE_REF:-73b3d07^}"
if [[ "$PROFILE" == release ]]; then PFLAG=--release; else PFLAG=; fi
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])' || echo "$ROOT/target")}"
REL="$TARGET_DIR/$PROFILE"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
# The target dir may be shared (other builds overwrite its binaries): copy them out at once.
if [[ -z "${BIN_DIR:-}" ]]; then
  BIN_DIR="$WORK/bin"; mkdir -p "$BIN_DIR"
  if [[ -z "${SKIP_BUILD:-}" ]]; then
    # --workspace: one feature resolution with the other builds of this workspace.
    cargo build $PFLAG --workspace --bin gateway --bin vault-proxy --example mock_upstream --example telemetry_bench --example otlp_sink
  fi
  cp "$REL/gateway" "$REL/vault-proxy" "$REL/examples/mock_upstream" "$REL/examples/telemetry_bench" "$REL/examples/otlp_sink" "$BIN_DIR/"
fi
if [[ -z "${BASE_DIR+x}" ]]; then
  BASE_DIR="$WORK/base"; mkdir -p "$BASE_DIR" "$WORK/base-src"
  git -C "$ROOT" archive "$BASELINE_REF" | tar -x -C "$WORK/base-src"
  (cd "$WORK/base-src" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build $PFLAG --workspace --bin gateway --bin vault-proxy)
  cp "$REL/gateway" "$REL/vault-proxy" "$BASE_DIR/"
fi
echo "# profile: $PROFILE; baseline: ${BASE_DIR:+$BASELINE_REF}${BASE_DIR:-none}; $(uptime)"

wait_line() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; cat "$1" >&2; return 1; }

echo "## gateway"
MOCK_ADDR=127.0.0.1:9110; SINK_PORT=9410
declare -A ADDR=([base]=127.0.0.1:9212 [off]=127.0.0.1:9210 [on]=127.0.0.1:9211)
VARIANTS=(off on); [[ -n "$BASE_DIR" ]] && VARIANTS=(base off on)
# The OTLP sink: a fresh one per half; it prints its counts when stopped.
start_sink() {
  "$BIN_DIR/otlp_sink" "$SINK_PORT" > "$WORK/sink.log" 2>&1 & SINK_PID=$!; PIDS+=($SINK_PID)
  wait_line "$WORK/sink.log" "listening on"
}
stop_sink() { sleep 1.5; kill "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true; cat "$WORK/sink.log"; }
start_sink
"$BIN_DIR/mock_upstream" "$MOCK_ADDR" > "$WORK/mock.log" 2>&1 & PIDS+=($!)
wait_line "$WORK/mock.log" "listening on"
sed "s/@MOCK@/$MOCK_ADDR/g" "$ROOT/bench/gateway/config.yaml.in" > "$WORK/config.yaml"
for v in "${VARIANTS[@]}"; do
  bin="$BIN_DIR/gateway"; [[ "$v" == base ]] && bin="$BASE_DIR/gateway"
  if [[ "$v" == on ]]; then otel=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"); else otel=(); fi
  env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT RUST_LOG=warn "${otel[@]}" \
    "$bin" --config "$WORK/config.yaml" --listen "${ADDR[$v]}" --database-url memory > "$WORK/$v.log" 2>&1 & PIDS+=($!)
done
for v in "${VARIANTS[@]}"; do wait_line "$WORK/$v.log" "listening on"; done
TP="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
run_wrk() { # url -> RESULT line
  BODY_FILE="$ROOT/bench/gateway/openai_body.json" AUTH=sk-bench-master TRACEPARENT="$TP" \
    wrk -t1 -c"$CONNS" -d"$DURATION"s --latency -s "$HERE/post.lua" "$1" 2>"$WORK/wrk.err" | grep '^RESULT' || { cat "$WORK/wrk.err" >&2; echo "RESULT rps=0"; }
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
# Warm-up.
for v in "${VARIANTS[@]}"; do DURATION=1 run_wrk "http://${ADDR[$v]}/v1/chat/completions" >/dev/null; done
declare -A RPS=([base]="" [off]="" [on]="")
for r in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round, so no variant always runs first or last.
  n=${#VARIANTS[@]}
  for i in $(seq 0 $((n - 1))); do
    v="${VARIANTS[$(( (i + r) % n ))]}"
    o="$(run_wrk "http://${ADDR[$v]}/v1/chat/completions")"; printf 'round %s %-4s %s\n' "$r" "$v:" "$o"
    RPS[$v]+="$(field rps "$o") "
  done
done
python3 - "${RPS[base]}" "${RPS[off]}" "${RPS[on]}" <<'PY'
import statistics, sys
med = {k: statistics.median([float(x) for x in v.split()]) for k, v in zip(("base", "off", "on"), sys.argv[1:]) if v.strip()}
print("gateway median req/s: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()))
print(f"gateway on/off throughput {med['on']/med['off']:.3f} (cost {(1-med['on']/med['off'])*100:.1f}%)")
if "base" in med:
    print(f"gateway off/base throughput {med['off']/med['base']:.3f} (cost {(1-med['off']/med['base'])*100:.1f}%)")
PY
stop_sink
start_sink

echo "## vault proxy"
BASE_ARG=(); [[ -n "$BASE_DIR" ]] && BASE_ARG=(--baseline-bin "$BASE_DIR/vault-proxy")
"$BIN_DIR/telemetry_bench" --proxy-bin "$BIN_DIR/vault-proxy" "${BASE_ARG[@]}" --duration "$DURATION" --concurrency "$CONNS" --rounds "$ROUNDS" \
  --sink "127.0.0.1:$SINK_PORT"
stop_sink
