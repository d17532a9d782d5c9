#!/usr/bin/env bash
# A/B of gateway builds in the same minutes: each argument is a gateway binary, optionally
# with environment settings (`VAR=v,VAR2=w::/path/to/gateway`); all run side by side on one
# mock upstream, and wrk rounds alternate between them (rotating the order each round), so
# background load hits every build alike. Prints each build's rounds and median per route,
# then, at one keep-alive connection (latency_probe), each build's median p50 and the added p50
# over the mock alone, then each one's peak RSS (VmHWM) and current RssAnon/RssFile.
# Env: ROUNDS (4), DURATION (s per round, 5), CONNS (50), ROUTES ("chat messages"),
# LAT_REQUESTS (requests per one-connection round, 3000; 0 skips that part),
# MOCK_BIN / PROBE_BIN (default: the target dir's release examples), DBURL (default: a SQLite
# file per gateway), DBURLS (one database URL per build, space-separated, `-` for the default;
# e.g. `DBURLS="- memory"` to see what the SQLite writes cost). Runs in a private network namespace when it can (as run.sh).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
if [[ -z "${BENCH_IN_NETNS:-}" && -z "${BENCH_NO_NETNS:-}" ]] && unshare -rn true 2>/dev/null; then
  exec unshare -rn env BENCH_IN_NETNS=1 bash -c 'ip link set lo up; exec "$0" "$@"' "$0" "$@"
fi
[[ $# -ge 1 ]] || { echo "usage: $0 [VAR=v,...::]GATEWAY_BIN ..." >&2; exit 2; }
ROUNDS=${ROUNDS:-4}; DURATION=${DURATION:-5}; CONNS=${CONNS:-50}; ROUTES=${ROUTES:-chat messages}
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])' || echo "$ROOT/target")"
MOCK="${MOCK_BIN:-$TARGET_DIR/release/examples/mock_upstream}"
PROBE="${PROBE_BIN:-$TARGET_DIR/release/examples/latency_probe}"; LAT_REQUESTS=${LAT_REQUESTS:-3000}
W=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null||true; done; wait 2>/dev/null; rm -rf $W' EXIT
"$MOCK" 127.0.0.1:9100 > "$W/mock.log" 2>&1 & PIDS+=($!)
sleep 0.3; sed "s/@MOCK@/127.0.0.1:9100/g" "$HERE/config.yaml.in" > "$W/config.yaml"
read -r -a DBURL_LIST <<< "${DBURLS:-}"
dburl_of() { local u="${DBURL_LIST[$1]:--}"; [[ "$u" == - ]] && u="${DBURL:-sqlite://$W/gw$1.db}"; echo "$u"; }
i=0; declare -a KEYS GWP
for spec in "$@"; do
  port=$((9200+i)); bin=${spec##*::}; envs=""; [[ "$spec" == *::* ]] && envs=${spec%%::*}
  # shellcheck disable=SC2086
  env ${envs//,/ } RUST_LOG=warn "$bin" --config "$W/config.yaml" --listen 127.0.0.1:$port \
    --database-url "$(dburl_of $i)" > "$W/gw$i.log" 2>&1 & GWP[$i]=$!; PIDS+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$W/gw$i.log" && break; sleep 0.1; done
  KEYS[$i]="$(curl -fsS "http://127.0.0.1:$port/key/generate" -H 'Authorization: Bearer sk-bench-master' -H 'Content-Type: application/json' \
    -d '{"max_budget": 1000000, "rpm_limit": 100000000, "tpm_limit": 100000000000, "models": ["bench-gpt", "bench-claude"], "expires": "1d"}' \
    | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')"
  i=$((i+1))
done
n=$i
echo "# $(date -u +%FT%TZ) load=$(cut -d' ' -f1-3 /proc/loadavg) cores=$(nproc) conns=$CONNS rounds=$ROUNDS x ${DURATION}s"
for route in $ROUTES; do
  if [[ $route == chat ]]; then path=/v1/chat/completions; body=$HERE/openai_body.json; else path=/v1/messages; body=$HERE/anthropic_body.json; fi
  declare -A R=()
  for r in $(seq "$ROUNDS"); do
    for j in $(seq 0 $((n-1))); do
      k=$(( (j + r) % n ))
      out=$(BODY_FILE=$body AUTH="${KEYS[$k]}" wrk -t1 -c"$CONNS" -d"${DURATION}"s -s "$HERE/post.lua" "http://127.0.0.1:$((9200+k))$path" 2>/dev/null | grep RESULT || echo "RESULT rps=0")
      rps=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$out"); bad=$(sed -n 's/.*non2xx=\([0-9]*\).*/\1/p' <<<"$out")
      R[$k]="${R[$k]:-} $rps"; [[ "$bad" == 0 ]] || echo "gw$k: non2xx=$bad errors in a round"
    done
  done
  for j in $(seq 0 $((n-1))); do
    med=$(python3 -c 'import sys,statistics;v=[float(x) for x in sys.argv[1:]];print(f"{statistics.median(v):.0f}")' ${R[$j]})
    echo "$route gw$j: median $med req/s   rounds:${R[$j]}"
  done
done
if [[ "$LAT_REQUESTS" != 0 ]]; then
  median() { python3 -c 'import sys,statistics;print(f"{statistics.median(float(x) for x in sys.argv[1:]):.1f}")' "$@"; }
  p50() { sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$1"; }
  for route in $ROUTES; do
    if [[ $route == chat ]]; then path=/v1/chat/completions; body=$HERE/openai_body.json; else path=/v1/messages; body=$HERE/anthropic_body.json; fi
    D=(); declare -A L=()
    for r in $(seq "$ROUNDS"); do
      D+=("$(p50 "$("$PROBE" "http://127.0.0.1:9100$path" "$body" - "$LAT_REQUESTS")")")
      for j in $(seq 0 $((n-1))); do
        k=$(( (j + r) % n ))
        out=$("$PROBE" "http://127.0.0.1:$((9200+k))$path" "$body" "${KEYS[$k]}" "$LAT_REQUESTS")
        grep -q "non2xx=0" <<<"$out" || echo "gw$k: errors at one connection: $out"
        L[$k]="${L[$k]:-} $(p50 "$out")"
      done
    done
    d=$(median "${D[@]}")
    echo "$route one connection: direct p50 median $d us   rounds: ${D[*]}"
    for j in $(seq 0 $((n-1))); do
      # shellcheck disable=SC2086
      g=$(median ${L[$j]})
      echo "$route one connection gw$j: p50 median $g us, added $(python3 -c "print(f'{$g-$d:.1f}')") us   rounds:${L[$j]}"
    done
  done
fi
j=0
for spec in "$@"; do
  echo "gw$j $spec: VmHWM $(awk '/VmHWM/{print $2}' /proc/${GWP[$j]}/status) kB, $(grep -E 'RssAnon|RssFile' /proc/${GWP[$j]}/status | tr -s ' \t' ' ' | tr '\n' ' ')"
  j=$((j+1))
done
