#!/usr/bin/env bash
# Load test of the agent loop: N concurrent sessions against the scripted model.
#
#   bash bench/sessions/run.sh            # 200 sessions, local backend, release build
#   SESSIONS=50 MODE=nosandbox bash bench/sessions/run.sh
#   PROFILE=debug bash bench/sessions/run.sh   # skip the release build (numbers are then lower)
#
# MODE=local (default): each session provisions a local-backend sandbox (a sandbox-agent child
#   process), runs two commands in it, answers; the session's end destroys the sandbox.
# MODE=nosandbox: each session makes two model calls with a tool call that fails cleanly (no
#   sandbox) and answers: the loop, the store and the gateway alone.
# Prints sessions/s (first POST to last session settled) and the brain's peak RSS (VmHWM).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
SESSIONS="${SESSIONS:-200}"
MODE="${MODE:-local}"
CONCURRENCY="${CONCURRENCY:-200}"

PROFILE="${PROFILE:-release}"
if [ -n "${SKIP_BUILD:-}" ]; then
    :   # use what target/$PROFILE already holds
elif [ "$PROFILE" = release ]; then
    cargo build --release --quiet -p brain -p sandbox-agent
else
    cargo build --quiet -p brain -p sandbox-agent
fi
BRAIN="target/$PROFILE/brain"
WORK="$(mktemp -d /tmp/airlock-bench-sessions.XXXXXX)"
BRAIN_PID=""
cleanup() {
    if [ -n "$BRAIN_PID" ]; then kill "$BRAIN_PID" 2>/dev/null || true; wait "$BRAIN_PID" 2>/dev/null || true; fi
    # Every session destroys its sandbox when it ends, so no sandbox-agent outlives the run.
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$MODE" = local ]; then
cat >"$WORK/script.json" <<'JSON'
{"responses": [
  {"tool_calls": [{"id": "p", "name": "sandbox_provision", "arguments": {"task_description": "bench"}}],
   "usage": {"input_tokens": 400, "output_tokens": 20}},
  {"tool_calls": [{"id": "e1", "name": "sandbox_execute", "arguments": {"command": "echo hello; uname -s"}}],
   "usage": {"input_tokens": 600, "output_tokens": 20}},
  {"tool_calls": [{"id": "e2", "name": "sandbox_execute", "arguments": {"command": "seq 1 1000 | wc -l"}}],
   "usage": {"input_tokens": 800, "output_tokens": 20}},
  {"text": "done", "usage": {"input_tokens": 900, "output_tokens": 5}}
]}
JSON
else
cat >"$WORK/script.json" <<'JSON'
{"responses": [
  {"tool_calls": [{"id": "e1", "name": "sandbox_execute", "arguments": {"command": "true"}}],
   "usage": {"input_tokens": 400, "output_tokens": 20}},
  {"text": "done", "usage": {"input_tokens": 600, "output_tokens": 5}}
]}
JSON
fi

mkdir -p "$WORK/sandboxes" "$WORK/local-state"
cat >"$WORK/airlock.yaml" <<YAML
listen: 127.0.0.1:0
database_url: sqlite://$WORK/brain.db
backend: local
sandbox:
  local:
    state_dir: $WORK/local-state
    temp_root: $WORK/sandboxes
models:
  model_list:
    - model_name: scripted
      litellm_params:
        model: scripted/$WORK/script.json
sessions:
  max_concurrent: $CONCURRENCY
  poll_interval_ms: 200
YAML

export AIRLOCK_MASTER_KEY="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
RUST_LOG=warn "$BRAIN" serve --config "$WORK/airlock.yaml" >"$WORK/stdout" 2>"$WORK/brain.log" &
BRAIN_PID=$!
for _ in $(seq 1 100); do
    grep -q '^listening on ' "$WORK/stdout" 2>/dev/null && break
    sleep 0.1
done
ADDR="$(sed -n 's/^listening on //p' "$WORK/stdout")"
[ -n "$ADDR" ] || { cat "$WORK/brain.log"; exit 1; }
IDLE_RSS="$(awk '/VmRSS/ {print $2}' /proc/$BRAIN_PID/status)"

echo "profile=$PROFILE backend=local max_concurrent=$CONCURRENCY"
python3 "$ROOT/bench/sessions/drive.py" "http://$ADDR" "$SESSIONS" "$BRAIN_PID" "$IDLE_RSS" "$MODE"
