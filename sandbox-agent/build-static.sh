#!/usr/bin/env bash
# Builds a fully static sandbox-agent without installing any toolchain or target:
# glibc's static libc via `+crt-static` on the host's own gnu target (no `rustup target add`).
# This is safe for the agent because it never resolves names (no DNS/NSS): addresses are
# parsed as IP:port and it never looks up users or hosts.
# Prints the path of the binary on the last line of stdout.
set -euo pipefail

cd "$(dirname "$0")/.."

host="$(rustc -vV | sed -n 's/^host: //p')"
case "$host" in
  *-unknown-linux-gnu) ;;
  *) echo "build-static.sh: unsupported host $host (expected *-unknown-linux-gnu)" >&2; exit 1 ;;
esac

# With an explicit --target the output lands in target/<triple>/, apart from target/release,
# so these RUSTFLAGS do not invalidate the workspace's normal builds.
target_dir="${CARGO_TARGET_DIR:-target}"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release -p sandbox-agent --target "$host" --target-dir "$target_dir" >&2

bin="$target_dir/$host/release/sandbox-agent"
[ -x "$bin" ] || { echo "build-static.sh: $bin was not produced" >&2; exit 1; }

# Verify: no interpreter / no dynamic section. `file` says "statically linked" (or
# "static-pie linked"); `ldd` says "not a dynamic executable" / "statically linked".
if command -v file >/dev/null; then
  desc="$(file -L "$bin")"
  echo "$desc" >&2
  case "$desc" in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) echo "build-static.sh: $bin is not static" >&2; exit 1 ;;
  esac
fi
if command -v ldd >/dev/null; then
  ldd_out="$(ldd "$bin" 2>&1 || true)"
  echo "ldd: $ldd_out" >&2
  case "$ldd_out" in
    *"not a dynamic executable"*|*"statically linked"*) ;;
    *) echo "build-static.sh: ldd reports dynamic dependencies" >&2; exit 1 ;;
  esac
fi

realpath "$bin"
