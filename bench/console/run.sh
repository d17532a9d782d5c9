#!/usr/bin/env bash
# Console page times at scale (issue 15): 10,000 sessions and 1,000,000 audit records.
#
#   PROFILE=debug SKIP_BUILD=1 bash bench/console/run.sh
#   SESSIONS=10000 AUDIT=1000000 bash bench/console/run.sh   # the defaults
#
# Two phases in one run, each on a fresh brain (SQLite store, embedded vault proxy):
#   small: SMALL_SESSIONS sessions, SMALL_AUDIT audit records (the baseline dataset);
#   large: SESSIONS sessions, AUDIT audit records.
# The audit log is generated with a valid hash chain before the brain starts (the proxy
# verifies it end to end when it opens it); sessions are inserted into the brain's store
# (finished, so nothing runs them), 50 of them owned by a virtual key. drive.py signs in
# through /ui/login and times each page (REPS sequential requests): median, p95 and the
# ratio to GET /healthz measured in the same phase. Compare a page's median across the two
# phases: pagination in the database and the backwards audit read keep it flat.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
SESSIONS="${SESSIONS:-10000}"
AUDIT="${AUDIT:-1000000}"
SMALL_SESSIONS="${SMALL_SESSIONS:-100}"
SMALL_AUDIT="${SMALL_AUDIT:-1000}"
PROFILE="${PROFILE:-release}"
if [ -n "${SKIP_BUILD:-}" ]; then
    :
elif [ "$PROFILE" = release ]; then
    cargo build --release --quiet -p brain
else
    cargo build --quiet -p brain
fi
BRAIN="$ROOT/target/$PROFILE/brain"
WORK="$(mktemp -d /tmp/airlock-bench-console.XXXXXX)"
BRAIN_PID=""
stop_brain() {
    if [ -n "$BRAIN_PID" ]; then kill "$BRAIN_PID" 2>/dev/null || true; wait "$BRAIN_PID" 2>/dev/null || true; fi
    BRAIN_PID=""
}
trap 'stop_brain; rm -rf "$WORK"' EXIT
export AIRLOCK_MASTER_KEY="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo '[{"text": "done"}]' >"$WORK/script.json"

phase() {
    local label=$1 sessions=$2 records=$3 dir="$WORK/$1"
    mkdir -p "$dir"
    python3 "$ROOT/bench/console/gen.py" audit "$dir/audit.jsonl" "$records"
    cat >"$dir/vault.yaml" <<YAML
listen: 127.0.0.1:0
ca: { cert: ca.pem, key: ca-key.pem }
audit_log: audit.jsonl
egress: { default: ask }
credentials:
  GITHUB_TOKEN:
    value_env: BENCH_GITHUB_TOKEN
    allowed_hosts: [api.github.com]
    paths: ["/repos/acme/**"]
    methods: [GET, POST]
YAML
    cat >"$dir/airlock.yaml" <<YAML
listen: 127.0.0.1:0
database_url: sqlite://$dir/brain.db
backend: local
models:
  model_list:
    - model_name: scripted
      litellm_params:
        model: scripted/$WORK/script.json
vault:
  config: $dir/vault.yaml
YAML
    BENCH_GITHUB_TOKEN=ghp_benchbenchbenchbenchbenchbenchbench RUST_LOG=warn \
        "$BRAIN" serve --config "$dir/airlock.yaml" >"$dir/stdout" 2>"$dir/brain.log" &
    BRAIN_PID=$!
    for _ in $(seq 1 6000); do
        grep -q '^listening on ' "$dir/stdout" 2>/dev/null && break
        sleep 0.1
    done
    local addr
    addr="$(sed -n 's/^listening on //p' "$dir/stdout")"
    [ -n "$addr" ] || { cat "$dir/brain.log"; exit 1; }
    local vkey owner
    vkey="$(curl -sS -X POST -H "Authorization: Bearer $AIRLOCK_MASTER_KEY" -H 'Content-Type: application/json' \
        -d '{}' "http://$addr/key/generate" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
    owner="vk:$(printf %s "$vkey" | sha256sum | cut -d' ' -f1)"
    python3 "$ROOT/bench/console/gen.py" sessions "$dir/brain.db" "$sessions" "$owner" 50
    AUDIT_RECORDS="$records" python3 "$ROOT/bench/console/drive.py" "http://$addr" "$dir/brain.db" "$vkey" "$label"
    stop_brain
}

echo "profile=$PROFILE reps=${REPS:-20} load=$(cut -d' ' -f1-3 /proc/loadavg)"
phase small "$SMALL_SESSIONS" "$SMALL_AUDIT"
phase large "$SESSIONS" "$AUDIT"
