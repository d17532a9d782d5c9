#!/usr/bin/env bash
# Gateway benchmark: one run, 50 concurrent clients, both routes, side by side:
#   direct  = the fast local mock upstream (gateway/examples/mock_upstream.rs)
#   gateway = our gateway in front of it (virtual-key auth, rpm/tpm limits and
#             spend recording on every request)
#   litellm = LiteLLM's Python proxy, same config file, same mock
#   litellm-rust = LiteLLM-Labs/litellm-rust (binary `lite`), same config file,
#             same mock, /v1/messages only (the only inference route it serves
#             besides /v1/responses); master-key auth, as it has no virtual keys
# plus the gateway's RSS under that load, and in the same run the added latency at
# one keep-alive connection (gateway/examples/latency_probe.rs), direct vs gateway
# alternating LAT_ROUNDS times.
#
# Everything runs inside a private network namespace (unshare -rn) when
# possible, so no byte can leave loopback.
#
# Env: DURATION (s, default 10), CONNS (default 50), LITELLM (path to the
# `litellm` CLI; default: litellm on PATH, e.g. from `pip install "litellm[proxy]"` in a venv),
# LITELLM_WORKERS (default 1), ROUNDS (direct/gateway alternations, default 3;
# medians reported), GATEWAY_WORKER_THREADS, SKIP_BUILD=1, SKIP_LITELLM=1,
# LITELLM_RUST (path to litellm-rust's `lite` binary; unset = skipped),
# LAT_REQUESTS (per latency round, default 3000), LAT_ROUNDS (default 5; 0 = skip),
# GATEWAY_BIN / MOCK_BIN / PROBE_BIN (prebuilt binaries instead of the target dir's).
# Builds use the workspace feature set (`--workspace --bins --examples`), honouring
# CARGO_TARGET_DIR.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

if [[ -z "${BENCH_IN_NETNS:-}" && -z "${BENCH_NO_NETNS:-}" ]] && unshare -rn true 2>/dev/null; then
  if [[ -z "${SKIP_BUILD:-}" ]]; then
    (cd "$ROOT" && cargo build --release --workspace --bins --examples)
  fi
  exec unshare -rn env BENCH_IN_NETNS=1 SKIP_BUILD=1 bash -c 'ip link set lo up; exec "$0" "$@"' "$0" "$@"
fi
[[ -n "${BENCH_IN_NETNS:-}" ]] && echo "# running in a private network namespace (loopback only)"

DURATION="${DURATION:-10}"
CONNS="${CONNS:-50}"
LITELLM="${LITELLM:-$(command -v litellm || echo litellm)}"
LITELLM_WORKERS="${LITELLM_WORKERS:-1}"
ROUNDS="${ROUNDS:-3}"
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])' || echo "$ROOT/target")"
BIN="${GATEWAY_BIN:-$TARGET_DIR/release/gateway}"
MOCK="${MOCK_BIN:-$TARGET_DIR/release/examples/mock_upstream}"
PROBE="${PROBE_BIN:-$TARGET_DIR/release/examples/latency_probe}"
LITELLM_RUST="${LITELLM_RUST:-}"
LAT_REQUESTS="${LAT_REQUESTS:-3000}"
LAT_ROUNDS="${LAT_ROUNDS:-5}"
if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$ROOT" && cargo build --release --workspace --bins --examples)
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_line() { # file pattern
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; return 1
}
wait_http() { # url
  for _ in $(seq 1 1500); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done
  echo "timeout waiting for $1" >&2; return 1
}

MOCK_ADDR=127.0.0.1:9100
GW_ADDR=127.0.0.1:9200
LL_ADDR=127.0.0.1:9300
LR_ADDR=127.0.0.1:9400
"$MOCK" "$MOCK_ADDR" > "$WORK/mock.log" 2>&1 & PIDS+=($!)
wait_line "$WORK/mock.log" "listening on"
sed "s/@MOCK@/$MOCK_ADDR/g" "$HERE/config.yaml.in" > "$WORK/config.yaml"

RUST_LOG=warn "$BIN" --config "$WORK/config.yaml" --listen "$GW_ADDR" --database-url "sqlite://$WORK/gateway.db" > "$WORK/gw.log" 2>&1 & GW_PID=$!; PIDS+=($GW_PID)
wait_line "$WORK/gw.log" "listening on"
VKEY="$(curl -fsS "http://$GW_ADDR/key/generate" -H 'Authorization: Bearer sk-bench-master' \
  -H 'Content-Type: application/json' -d '{"max_budget": 1000000, "rpm_limit": 100000000, "tpm_limit": 100000000000, "models": ["bench-gpt", "bench-claude"], "expires": "1d"}' \
  | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')"

if [[ -z "${SKIP_LITELLM:-}" ]]; then
  LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False DISABLE_SCHEMA_UPDATE=True \
    "$LITELLM" --config "$WORK/config.yaml" --host 127.0.0.1 --port 9300 --num_workers "$LITELLM_WORKERS" \
    > "$WORK/litellm.log" 2>&1 & PIDS+=($!)
  wait_http "http://$LL_ADDR/health/liveliness" || { tail -20 "$WORK/litellm.log" >&2; exit 1; }
fi
if [[ -n "$LITELLM_RUST" ]]; then
  RUST_LOG=warn "$LITELLM_RUST" serve --config "$WORK/config.yaml" --host 127.0.0.1 --port 9400 \
    > "$WORK/litellm-rust.log" 2>&1 & LR_PID=$!; PIDS+=($LR_PID)
  wait_http "http://$LR_ADDR/health" || { tail -20 "$WORK/litellm-rust.log" >&2; exit 1; }
fi

run_wrk() { # url body auth -> prints RESULT line
  BODY_FILE="$2" AUTH="$3" wrk -t1 -c"$CONNS" -d"${4:-$DURATION}"s --latency -s "$HERE/post.lua" "$1" 2>"$WORK/wrk.err" | grep '^RESULT' || { cat "$WORK/wrk.err" >&2; echo "RESULT rps=0"; }
  if [[ -s "$WORK/wrk.err" ]]; then head -3 "$WORK/wrk.err" >&2; fi
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

rss_sampler() { # pid outfile
  local max=0 v
  while kill -0 "$1" 2>/dev/null; do
    v=$(awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
    (( v > max )) && max=$v && echo "$max" > "$2"
    sleep 0.1
  done
}

IDLE_RSS_KB=$(awk '/VmRSS/{print $2}' "/proc/$GW_PID/status")
LL_VERSION=skipped
[[ -z "${SKIP_LITELLM:-}" ]] && LL_VERSION=$("$LITELLM" --version 2>&1 | grep -o "Version = .*" | sed "s/Version = //")
echo "# $(date -u +%FT%TZ)  conns=$CONNS duration=${DURATION}s x $ROUNDS rounds (median)  cores=$(nproc)  load=$(cut -d' ' -f1-3 /proc/loadavg)  litellm=$LL_VERSION workers=$LITELLM_WORKERS  litellm-rust=${LITELLM_RUST:-skipped}"
median() { python3 -c 'import sys,statistics;v=[float(x) for x in sys.argv[1:]];print(f"{statistics.median(v):.2f}" if v else "0")' "$@"; }
printf "%-20s %-12s %10s %9s %9s %8s  %s\n" route target req/s p50_ms p99_ms non2xx "rounds (req/s)"
declare -A RPS
for route in chat messages; do
  if [[ $route == chat ]]; then path=/v1/chat/completions; body="$HERE/openai_body.json"; else path=/v1/messages; body="$HERE/anthropic_body.json"; fi
  declare -A R_RPS=() R_P50=() R_P99=() R_BAD=()
  targets="direct gateway"
  # litellm-rust alternates with direct and the gateway (same load for all three).
  [[ $route == messages && -n "$LITELLM_RUST" ]] && targets="$targets litellm-rust"
  [[ -z "${SKIP_LITELLM:-}" ]] && targets="$targets litellm"
  for target in $targets; do
    case $target in
      direct) url="http://$MOCK_ADDR$path"; auth="";;
      gateway) url="http://$GW_ADDR$path"; auth="$VKEY";;
      litellm) url="http://$LL_ADDR$path"; auth="sk-bench-master";;
      litellm-rust) url="http://$LR_ADDR$path"; auth="sk-bench-master";;
    esac
    run_wrk "$url" "$body" "$auth" 2 > /dev/null   # warm-up
  done
  # direct and gateway alternate, so background load hits both alike; litellm once.
  for round in $(seq 1 "$ROUNDS"); do
    for target in $targets; do
      [[ $target == litellm && $round -gt 1 ]] && continue
      case $target in
        direct) url="http://$MOCK_ADDR$path"; auth="";;
        gateway) url="http://$GW_ADDR$path"; auth="$VKEY";;
        litellm) url="http://$LL_ADDR$path"; auth="sk-bench-master";;
        litellm-rust) url="http://$LR_ADDR$path"; auth="sk-bench-master";;
      esac
      if [[ $target == gateway ]]; then rss_sampler "$GW_PID" "$WORK/rss_${route}_$round" & SAMPLER=$!; fi
      r="$(run_wrk "$url" "$body" "$auth")"
      if [[ $target == gateway ]]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; fi
      R_RPS[$target]="${R_RPS[$target]:-} $(field rps "$r")"
      R_P50[$target]="${R_P50[$target]:-} $(field p50_ms "$r")"
      R_P99[$target]="${R_P99[$target]:-} $(field p99_ms "$r")"
      R_BAD[$target]=$(( ${R_BAD[$target]:-0} + $(field non2xx "$r") ))
    done
  done
  for target in $targets; do
    RPS[$route.$target]="$(median ${R_RPS[$target]})"
    printf "%-20s %-12s %10s %9s %9s %8s  %s\n" "$path" "$target" "${RPS[$route.$target]}" "$(median ${R_P50[$target]})" "$(median ${R_P99[$target]})" "${R_BAD[$target]}" "${R_RPS[$target]# }"
  done
  unset R_RPS R_P50 R_P99 R_BAD
done

echo
echo "# ratios (throughput)"
for route in chat messages; do
  d=${RPS[$route.direct]}; g=${RPS[$route.gateway]}; l=${RPS[$route.litellm]:-0}; r=${RPS[$route.litellm-rust]:-0}
  python3 - "$route" "$d" "$g" "$l" "$r" <<'PY'
import sys
route, d, g, l, r = sys.argv[1], *map(float, sys.argv[2:])
vs = f"{g / l:.1f}x litellm" if l > 0 else "litellm skipped"
rs = f"   gateway/litellm-rust = {g / r:.2f}x" if r > 0 else ""
print(f"{route:9s} gateway/direct = {100 * g / d:.1f}%   gateway/litellm = {vs}{rs}")
PY
done
if [[ -n "$LITELLM_RUST" ]]; then
  echo "# litellm-rust RSS: peak VmHWM $(awk '/VmHWM/{print $2}' "/proc/$LR_PID/status") kB"
fi
HWM_KB=$(awk '/VmHWM/{print $2}' "/proc/$GW_PID/status")
MAX_SAMPLED=$(cat "$WORK"/rss_* 2>/dev/null | sort -n | tail -1)
mb() { python3 -c "print(f'{int(__import__(\"sys\").argv[1]) / 1024:.1f}')" "$1"; }
echo "# gateway RSS: idle $(mb "$IDLE_RSS_KB") MB, max sampled under load $(mb "$MAX_SAMPLED") MB, peak VmHWM $(mb "$HWM_KB") MB"
sleep 0.5
curl -fsS "http://$GW_ADDR/key/info?key=$VKEY" -H 'Authorization: Bearer sk-bench-master' \
  | python3 -c 'import json,sys; i=json.load(sys.stdin)["info"]; print("# spend recorded for the virtual key:", sum(m["requests"] for m in i["model_spend"]), "requests, $%.4f" % i["spend"])'

# ---- added latency at one keep-alive connection (same processes, same run)
if (( LAT_ROUNDS > 0 )); then
  echo
  echo "# one connection: $LAT_REQUESTS sequential requests x $LAT_ROUNDS rounds, direct/gateway alternating (medians of per-round p50/p99)  load=$(cut -d' ' -f1-3 /proc/loadavg)"
  p() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
  for route in chat messages; do
    if [[ $route == chat ]]; then path=/v1/chat/completions; body="$HERE/openai_body.json"; else path=/v1/messages; body="$HERE/anthropic_body.json"; fi
    D=(); G=(); D99=(); G99=(); R=()
    for _ in $(seq "$LAT_ROUNDS"); do
      r="$("$PROBE" "http://$MOCK_ADDR$path" "$body" - "$LAT_REQUESTS")"
      D+=("$(p p50_us "$r")"); D99+=("$(p p99_us "$r")")
      r="$("$PROBE" "http://$GW_ADDR$path" "$body" "$VKEY" "$LAT_REQUESTS")"
      grep -q "non2xx=0" <<<"$r" || { echo "gateway errors: $r" >&2; tail -5 "$WORK/gw.log" >&2; exit 1; }
      G+=("$(p p50_us "$r")"); G99+=("$(p p99_us "$r")")
      if [[ $route == messages && -n "$LITELLM_RUST" ]]; then
        r="$("$PROBE" "http://$LR_ADDR$path" "$body" sk-bench-master "$LAT_REQUESTS")"
        R+=("$(p p50_us "$r")")
      fi
    done
    med() { python3 -c 'import sys,statistics;print(f"{statistics.median(float(x) for x in sys.argv[1:]):.1f}")' "$@"; }
    d=$(med "${D[@]}"); g=$(med "${G[@]}"); d99=$(med "${D99[@]}"); g99=$(med "${G99[@]}")
    extra=""
    if (( ${#R[@]} > 0 )); then lr=$(med "${R[@]}"); extra="   litellm-rust p50 ${lr} us (added $(python3 -c "print(f'{$lr-$d:.1f}')") us)"; fi
    echo "$route  p50: direct ${d} us, gateway ${g} us, added $(python3 -c "print(f'{$g-$d:.1f}')") us   p99: direct ${d99} us, gateway ${g99} us   (p50 rounds direct: ${D[*]}; gateway: ${G[*]})$extra"
  done
  echo "# gateway RSS after all: $(awk '/VmRSS/{print $2}' /proc/$GW_PID/status) kB now, $(awk '/VmHWM/{print $2}' /proc/$GW_PID/status) kB peak"
fi
