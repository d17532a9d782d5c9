#!/usr/bin/env bash
# The project's test command:  bash tests/run.sh [extra cargo test args...]
#
# 1. As root, installs what is missing with apt-get (postgresql for pg_virtualenv,
#    mmdebstrap for the offline image build); `apt-get update` runs once, only if needed.
# 2. If a Docker engine answers, builds airlock-sandbox:latest with
#    images/build-offline.sh (cached: seconds when nothing changed) and sets
#    AIRLOCK_REQUIRE_DOCKER=1, so docker tests fail instead of skipping.
# 3. Runs `cargo build --workspace --bins` then `cargo test --workspace [args]` inside a
#    throwaway PostgreSQL cluster (pg_virtualenv) with AIRLOCK_TEST_POSTGRES_URL and
#    AIRLOCK_REQUIRE_POSTGRES=1 exported. Without PostgreSQL, postgres tests skip.
# Exit code: cargo's (or non-zero if a step before it fails).
#
# Env: AIRLOCK_SKIP_IMAGES=1 skips step 2 (docker tests then skip too, unless
# AIRLOCK_REQUIRE_DOCKER is set by you); AIRLOCK_NO_INSTALL=1 never runs apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# --- inner stage: runs inside pg_virtualenv (or directly without PostgreSQL) ----------
if [ "${AIRLOCK_RUN_SH_INNER:-}" = 1 ]; then
    unset AIRLOCK_RUN_SH_INNER
    if [ -n "${PGPORT:-}" ] && [ -n "${PGUSER:-}" ]; then
        host="${PGHOST:-localhost}"
        case "$host" in /*|"") host=localhost ;; esac   # a socket dir: use TCP on loopback
        export AIRLOCK_TEST_POSTGRES_URL="postgres://${PGUSER}:${PGPASSWORD:-}@${host}:${PGPORT}/${PGDATABASE:-postgres}"
        export AIRLOCK_REQUIRE_POSTGRES=1
        log "PostgreSQL: postgres://${PGUSER}:***@${host}:${PGPORT}/${PGDATABASE:-postgres} (AIRLOCK_REQUIRE_POSTGRES=1)"
    fi
    # Installed in stage 1: a metrics test that finds no promtool then fails instead of skipping.
    command -v promtool >/dev/null 2>&1 && export AIRLOCK_REQUIRE_PROMTOOL=1
    # --tests as well: one command resolves the features of the binaries and of the tests
    # together, so `cargo test` below reuses every dependency instead of building a second
    # copy of each one whose features the dev-dependencies change (disk and time).
    log "cargo build --workspace --bins --tests (disk free: $(df -h . | awk 'NR==2{print $4}'))"
    cargo build --workspace --bins --tests
    log "cargo test --workspace --no-fail-fast $*"
    set +e
    # --no-fail-fast: one failing crate must not hide the results of the others.
    cargo test --workspace --no-fail-fast "$@"
    rc=$?
    set -e
    log "cargo test exited with $rc (disk free: $(df -h . | awk 'NR==2{print $4}'), target: $(du -sh target 2>/dev/null | cut -f1))"
    exit "$rc"
fi

START=$(date +%s)
# A CI run builds once from a clean clone: incremental-compilation caches would only take
# disk (gigabytes across the workspace's test binaries) and never be reused.
if [ "${CI:-}" = true ] && [ -z "${CARGO_INCREMENTAL:-}" ]; then export CARGO_INCREMENTAL=0; fi
IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1

docker_ok() {
    command -v docker >/dev/null 2>&1 && timeout 30 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}
DOCKER=0
if [ "${AIRLOCK_SKIP_IMAGES:-}" != 1 ] && docker_ok; then DOCKER=1; fi

# --- 1. prerequisites -----------------------------------------------------------------
missing=()
command -v pg_virtualenv >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
    || missing+=(postgresql)
# promtool (Debian's prometheus package): /metrics and k8s/observability/ rules are checked with it.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# Browser tests of the console (tests/tests/console_browser.rs): headless Chromium over WebDriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "$DOCKER" = 1 ]; then
    command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    command -v readelf >/dev/null 2>&1 || missing+=(binutils)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$IS_ROOT" = 1 ] && [ "${AIRLOCK_NO_INSTALL:-}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing missing prerequisites: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "missing prerequisites (not installing: not root, no apt-get or AIRLOCK_NO_INSTALL=1): ${missing[*]}"
    fi
fi

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    export AIRLOCK_REQUIRE_BROWSER=1
fi

# The code interpreter e2e tests (tests/tests/code_interpreter.rs) drive the brain with the
# official OpenAI and Anthropic Python SDKs, from PyPI. Without them (and with docker) those
# tests fail under AIRLOCK_REQUIRE_DOCKER=1 rather than skip.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import openai, anthropic' >/dev/null 2>&1 \
    && [ "$IS_ROOT" = 1 ] && [ "${AIRLOCK_NO_INSTALL:-}" != 1 ]; then
    log "installing the openai and anthropic Python SDKs (pip)"
    python3 -m pip install --quiet openai anthropic >/dev/null 2>&1 \
        || python3 -m pip install --quiet --break-system-packages openai anthropic >/dev/null 2>&1 \
        || log "could not install the openai/anthropic Python SDKs"
fi

# --- 2. sandbox image -----------------------------------------------------------------
if [ "${AIRLOCK_SKIP_IMAGES:-}" = 1 ]; then
    log "AIRLOCK_SKIP_IMAGES=1: not building images"
elif [ "$DOCKER" = 1 ]; then
    if command -v mmdebstrap >/dev/null 2>&1 || docker image inspect airlock-sandbox-base:bookworm >/dev/null 2>&1; then
        log "building the sandbox image (images/build-offline.sh)"
        bash "$ROOT/images/build-offline.sh"
        # The AWS e2e test's image (sandbox image + Debian's awscli, .debs fetched by the
        # host's apt); rebuilt only when the sandbox image changed.
        log "building the AWS test image (images/sandbox-aws/build.sh)"
        bash "$ROOT/images/sandbox-aws/build.sh"
        export AIRLOCK_REQUIRE_DOCKER=1
        log "docker tests enabled (AIRLOCK_REQUIRE_DOCKER=1, image airlock-sandbox:latest)"
    else
        log "mmdebstrap is not installed: cannot build the sandbox image; docker tests will skip"
    fi
else
    log "no Docker engine answers: sandbox image not built, docker tests will skip"
fi

# --- 3. the suite, under a throwaway PostgreSQL ---------------------------------------
export AIRLOCK_RUN_SH_INNER=1
set +e
if command -v pg_virtualenv >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    # -t: cluster in a temp dir even as root, so parallel runs do not collide.
    pg_virtualenv -t -o fsync=off -o synchronous_commit=off -o max_connections=300 \
        bash "$ROOT/tests/run.sh" "$@"
    rc=$?
else
    log "PostgreSQL (pg_virtualenv) not available: postgres tests will skip"
    bash "$ROOT/tests/run.sh" "$@"
    rc=$?
fi
set -e
# --- 4. leftovers -------------------------------------------------------------------------
# Every test removes what it made on the engine: a sandbox container created during this
# run and still there is a leak (or another run's, on a shared engine). Listed with its
# labels (they name the sandbox, its owner and replica), so it can be traced to a test.
if [ "$DOCKER" = 1 ]; then
    since=$(date -u -d "@$START" +%Y-%m-%dT%H:%M:%S)
    # CreatedAt reads "2026-12-05 06:18:45 +0000 UTC": fields 2 and 3 after the id.
    left=$(docker ps -a --filter label=airlock.sandbox --format '{{.ID}} {{.CreatedAt}}' 2>/dev/null \
        | awk -v s="$since" '{ if ($2"T"$3 >= s) print $1 }')
    if [ -n "$left" ]; then
        log "LEAK: containers created during this run are still there:"
        for c in $left; do
            docker inspect -f '  {{.Name}} created {{.Created}} state {{.State.Status}} labels {{json .Config.Labels}}' "$c" 2>/dev/null
        done
    else
        log "no container of this run was left behind"
    fi
fi
# A browser test that ends without quitting its Chromium leaves it running, reparented to
# init, and it goes on using CPU for the rest of the run (and of the machine's life).
browsers=$( (pgrep -P 1 -f '/usr/lib/chromium/chromium' 2>/dev/null || true) | wc -l)
if [ "$browsers" -gt 0 ]; then
    log "LEAK: $browsers Chromium process(es) outlived their test; killing them"
    pkill -9 -P 1 -f '/usr/lib/chromium/chromium' 2>/dev/null || true
else
    log "no browser of this run was left behind"
fi
log "finished in $(( $(date +%s) - START ))s with exit code $rc"
exit "$rc"
