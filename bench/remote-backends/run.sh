#!/usr/bin/env bash
# Remote sandbox backends (E2B, Daytona): the brain's own added time per provision and per exec,
# on top of the local fakes' response time. Against a fake, absolute provision/exec latencies say
# nothing about the providers; what this measures is what the brain adds (HTTP API, store
# writes, vault grant, client) over making the same provider calls directly.
# Loopback only. Usage: bench/remote-backends/run.sh [--debug] [N]   (N = iterations, default 30)
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=--release
if [ "${1:-}" = "--debug" ]; then profile=; shift; fi
export BENCH_N="${1:-30}"
cargo build $profile -p brain --bin brain
exec cargo test $profile -p airlock-tests --test remote_backends bench_brain_overhead_over_the_fakes \
  -- --ignored --nocapture --test-threads 1
