#!/usr/bin/env bash
# Vault proxy benchmark: added latency, req/s and RSS through the MITM
# (swap + scrub + audit on every request) vs a direct call to the same local
# HTTPS upstream, vs the v1 proxy (before credential positions and the audit
# write-before-send) and vs mitmdump with an equivalent swap/scrub addon, all in
# the same run. Loopback only.
# Usage: bench/vault-proxy/run.sh [--duration 8] [--concurrency 32] [--tunnels 1000] [--rounds 4]
# BASELINE_REV (default e9f88af, the last commit before positions) is built once into
# target/bench-baseline/<rev>; BASELINE_REV=none skips the v1 baseline.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
tgt=${CARGO_TARGET_DIR:-target}
if ! command -v mitmdump >/dev/null; then
  echo "mitmdump not found; installing with pip (pip install mitmproxy)" >&2
  pip install --quiet mitmproxy || echo "could not install mitmproxy: comparison skipped" >&2
fi
cargo build --release -p vault-proxy --bin vault-proxy --example vault_bench
baseline=()
rev=${BASELINE_REV:-e9f88af}
if [ "$rev" != none ]; then
  out="$root/target/bench-baseline/$rev"
  if [ ! -x "$out/release/vault-proxy" ]; then
    if src=$(mktemp -d) && git archive "$rev" | tar -x -C "$src"; then
      echo "building the v1 baseline ($rev) into $out" >&2
      (cd "$src" && CARGO_TARGET_DIR="$out" cargo build --release -p vault-proxy --bin vault-proxy) \
        || echo "could not build the baseline $rev: skipped" >&2
    else
      echo "no git history for $rev: v1 baseline skipped" >&2
    fi
    rm -rf "$src"
  fi
  if [ -x "$out/release/vault-proxy" ]; then
    baseline=(--baseline-bin "$out/release/vault-proxy")
  fi
fi
ulimit -n 20000 2>/dev/null || true
exec "$tgt/release/examples/vault_bench" --proxy-bin "$tgt/release/vault-proxy" "${baseline[@]}" "$@"
