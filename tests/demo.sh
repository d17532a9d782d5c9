#!/usr/bin/env bash
# The demo:  bash tests/demo.sh
#
# Builds the binaries (brain, sandbox-agent, vault-proxy) and, when a Docker engine answers,
# the sandbox image (images/build-offline.sh, cached after the first run), then runs the demo
# program tests/examples/demo.rs (`cargo run -q -p airlock-tests --example demo`):
#
#   a local HTTPS upstream plays api.github.test (where GITHUB_TOKEN is bound) and evil.test
#   (where it is not); a real `brain serve` with the embedded defaults (SQLite, embedded vault
#   proxy, docker backend if the engine answers, else local) and a scripted model runs the
#   sample ticket through `brain run --credential GITHUB_TOKEN "…"`, printing the transcript:
#   the agent provisions a sandbox (which holds only a stub), curl with the stub gets 200 from
#   api.github.test, which receives the real token, the same toward evil.test gets 403
#   credential_not_allowed_for_host, curl --noproxy fails; then the swap and block audit
#   records are printed (`brain audit`), `vault-proxy audit verify` accepts the hash chain,
#   and the session's sandbox is gone.
#
# Every outcome is checked: the exit code is non-zero if any expected one does not happen.
# Secrets are never printed in full. The brain, the upstream and the temp dirs go away on
# exit. AIRLOCK_DEMO_BACKEND=local|docker forces a backend; AIRLOCK_DEMO_MODEL=anthropic|openai
# uses a real model (with ANTHROPIC_API_KEY / OPENAI_API_KEY) instead of the script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '\033[1m== %s\033[0m\n' "$*"; }

say "building brain, sandbox-agent, vault-proxy and the demo"
cargo build --quiet -p brain -p sandbox-agent -p vault-proxy
cargo build --quiet -p airlock-tests --example demo
if [ "${AIRLOCK_DEMO_BACKEND:-}" != local ] && command -v docker >/dev/null 2>&1 \
    && timeout 20 docker info >/dev/null 2>&1; then
    # The offline image build needs mmdebstrap unless its base layer is already cached; on a
    # fresh machine install it as tests/run.sh does (root + apt-get), else fall back to local.
    if ! command -v mmdebstrap >/dev/null 2>&1 \
        && ! docker image inspect airlock-sandbox-base:bookworm >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "installing mmdebstrap (needed once to build the sandbox image without a registry)"
            export DEBIAN_FRONTEND=noninteractive
            { apt-get update -qq && apt-get install -y -qq --no-install-recommends mmdebstrap binutils; } >/dev/null
        else
            say "mmdebstrap is missing and cannot be installed here (not root): using the local backend (no isolation)"
            export AIRLOCK_DEMO_BACKEND=local
        fi
    fi
fi
if [ "${AIRLOCK_DEMO_BACKEND:-}" != local ] && command -v docker >/dev/null 2>&1 \
    && timeout 20 docker info >/dev/null 2>&1; then
    say "docker engine found: building the sandbox image (minutes the first time, then cached; log shown on failure)"
    LOG="$(mktemp)"
    trap 'rm -f "$LOG"' EXIT
    bash images/build-offline.sh >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
    grep -E 'ready in|done in' "$LOG" || true
    rm -f "$LOG"
    trap - EXIT
fi

exec cargo run --quiet -p airlock-tests --example demo
