#!/usr/bin/env bash
# aws_sigv4 re-signing cost per request vs a plain stub swap (and per aws-chunked chunk vs
# hashing it), measured in one run on the proxy's request-path code.
# Usage: bench/vault-proxy/sigv4.sh [iterations]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --quiet --release -p vault-proxy --example sigv4_bench -- "$@"
