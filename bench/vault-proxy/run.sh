#!/usr/bin/env bash
# Vault proxy benchmark: added latency, req/s and RSS through the MITM
# (swap + scrub + audit on every request) vs a direct call to the same local
# HTTPS upstream, and vs mitmdump with an equivalent swap/scrub addon.
# Loopback only. Usage: bench/vault-proxy/run.sh [--duration 8] [--concurrency 32] [--tunnels 1000]
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v mitmdump >/dev/null; then
  echo "mitmdump not found; installing with pip (pip install mitmproxy)" >&2
  pip install --quiet mitmproxy || echo "could not install mitmproxy: comparison skipped" >&2
fi
cargo build --release -p vault-proxy --bin vault-proxy --example vault_bench
ulimit -n 20000 2>/dev/null || true
exec target/release/examples/vault_bench --proxy-bin target/release/vault-proxy "$@"
