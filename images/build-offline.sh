#!/usr/bin/env bash
# Build Airlock's images on a Docker engine that has no registry and no images.
#
#   bash images/build-offline.sh                 # airlock-sandbox:latest
#   bash images/build-offline.sh --all           # + airlock-brain:latest, airlock-vault-proxy:latest
#   bash images/build-offline.sh --rebuild       # also rebuild the cached Debian base image
#   bash images/build-offline.sh --context-only  # only build binaries + stage images/.build/<image>/
#
# How: mmdebstrap builds a minimal Debian bookworm rootfs with the sandbox packages
# (read from images/sandbox/Dockerfile) from the apt sources this host is configured
# with, `docker import` turns it into airlock-sandbox-base:bookworm (cached, rebuilt
# only when the recipe changes or with --rebuild), then images/sandbox/Dockerfile is
# built FROM that local image (no pull). brain and vault-proxy are FROM scratch images
# around crt-static binaries. Works from any cwd; safe to run again (fast when cached).
#
# Env: AIRLOCK_SANDBOX_IMAGE (airlock-sandbox:latest), AIRLOCK_SANDBOX_BASE
# (airlock-sandbox-base:bookworm), AIRLOCK_APT_SOURCES (a sources.list file to use
# instead of the host's apt configuration), CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES="$ROOT/images"
BUILD="$IMAGES/.build"
TARGET_TRIPLE="x86_64-unknown-linux-gnu"
SUITE="bookworm"
SANDBOX_IMAGE="${AIRLOCK_SANDBOX_IMAGE:-airlock-sandbox:latest}"
BASE_IMAGE="${AIRLOCK_SANDBOX_BASE:-airlock-sandbox-base:bookworm}"
# Bump when the rootfs recipe below changes in a way the package list does not show.
RECIPE_VERSION=2

REBUILD=0 ALL=0 CONTEXT_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        --all) ALL=1 ;;
        --context-only) CONTEXT_ONLY=1 ;;
        -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-offline: unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[build-offline] %s\n' "$*" >&2; }
die() { printf '[build-offline] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }
T0=$(now)

export DOCKER_BUILDKIT=0   # classic builder: needs no buildx plugin, FROM a local image never pulls

if [ "$CONTEXT_ONLY" = 0 ]; then
    command -v docker >/dev/null || die "docker CLI not found"
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers (docker version failed)"
fi

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac

is_static() { # no ELF interpreter = statically linked
    ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

# Build crt-static release binaries of the given packages; prints nothing.
cargo_static() {
    local args=()
    for p in "$@"; do args+=(-p "$p"); done
    log "cargo build --release (crt-static, $TARGET_TRIPLE): $*"
    (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --target "$TARGET_TRIPLE" "${args[@]}" >&2) \
        || die "cargo build of $* failed"
}

# Prints the path of a static sandbox-agent binary.
build_agent() {
    local script="$ROOT/sandbox-agent/build-static.sh" out path
    if [ -f "$script" ]; then
        log "building sandbox-agent with sandbox-agent/build-static.sh"
        out="$(cd "$ROOT" && bash "$script")" || die "sandbox-agent/build-static.sh failed"
        path="$(printf '%s\n' "$out" | sed '/^[[:space:]]*$/d' | tail -n1)"
        case "$path" in /*) ;; *) path="$ROOT/$path" ;; esac
    else
        cargo_static sandbox-agent
        path="$TARGET_DIR/$TARGET_TRIPLE/release/sandbox-agent"
    fi
    [ -x "$path" ] || die "sandbox-agent binary not found at '$path'"
    is_static "$path" || die "$path is dynamically linked; the sandbox needs a static binary"
    printf '%s\n' "$path"
}

# copy_if_changed SRC DST: keeps mtimes stable when nothing changed.
copy_if_changed() {
    if ! cmp -s "$1" "$2" 2>/dev/null; then install -m "${3:-0644}" "$1" "$2"; fi
}

# Apt sources for the rootfs, from this host's apt configuration (never hard-coded).
write_sources() {
    local out="$1"
    if [ -n "${AIRLOCK_APT_SOURCES:-}" ]; then
        cp "$AIRLOCK_APT_SOURCES" "$out"; return
    fi
    command -v apt-get >/dev/null || die "apt-get not found: set AIRLOCK_APT_SOURCES to a sources.list for $SUITE"
    local host_codename
    host_codename="$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")"
    apt-get indextargets --no-release-info \
            --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' 2>/dev/null \
        | awk -v suite="$SUITE" -v host="$host_codename" '
            {
                uri = $1; rel = $2; comp = $3
                base = rel; sub(/-(updates|security|backports)$/, "", base)
                if (rel ~ /-backports$/) next
                if (base != suite) {
                    if (host == "" || base != host) next
                    sub("^" host, suite, rel)     # same mirrors, our suite
                }
                key = uri " " rel
                if (!(key in comps)) { order[++n] = key; comps[key] = comp }
                else if (index(" " comps[key] " ", " " comp " ") == 0) comps[key] = comps[key] " " comp
            }
            END { for (i = 1; i <= n; i++) print "deb " order[i] " " comps[order[i]] }' > "$out"
    [ -s "$out" ] || die "no Debian '$SUITE' apt source found in this host's apt configuration; set AIRLOCK_APT_SOURCES=<sources.list>"
}

sandbox_packages() {
    sed -n 's/^ARG SANDBOX_PACKAGES="\(.*\)"[[:space:]]*$/\1/p' "$IMAGES/sandbox/Dockerfile" | head -n1
}

build_base() {
    local pkgs recipe current tmp sources start
    pkgs="$(sandbox_packages)"
    [ -n "$pkgs" ] || die "could not read SANDBOX_PACKAGES from images/sandbox/Dockerfile"
    recipe="$(printf 'v%s %s %s minbase' "$RECIPE_VERSION" "$SUITE" "$pkgs" | sha256sum | cut -c1-16)"
    current="$(docker image inspect -f '{{ index .Config.Labels "airlock.recipe" }}' "$BASE_IMAGE" 2>/dev/null || true)"
    if [ "$REBUILD" = 0 ] && [ "$current" = "$recipe" ]; then
        log "base image $BASE_IMAGE is up to date (recipe $recipe), reusing it (--rebuild to force)"
        return
    fi
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install mmdebstrap)"
    start=$(now)
    log "building base rootfs: Debian $SUITE minbase + $pkgs (this takes a few minutes)"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/airlock-rootfs.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    sources="$tmp/sources.list"
    write_sources "$sources"
    log "apt sources (from host apt config):"; sed 's/^/    /' "$sources" >&2
    mmdebstrap --variant=minbase --format=tar --quiet \
        --include="$(echo "$pkgs" | tr -s ' ' ',')" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --aptopt='Acquire::Languages "none"' \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --dpkgopt='path-exclude=/usr/share/linda/*' \
        --dpkgopt='path-exclude=/usr/share/bash-completion/*' \
        --dpkgopt='path-exclude=/usr/share/zsh/*' \
        --customize-hook='find "$1"/var/cache/apt "$1"/var/lib/apt/lists -type f -delete' \
        --customize-hook='rm -rf "$1"/var/log/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/cache/ldconfig/aux-cache "$1"/tmp/* "$1"/var/tmp/*' \
        --customize-hook='rm -f "$1"/etc/machine-id; : > "$1"/etc/machine-id' \
        "$SUITE" "$tmp/rootfs.tar" "$sources" \
        || die "mmdebstrap failed"
    log "rootfs tarball: $(du -h "$tmp/rootfs.tar" | cut -f1); importing as $BASE_IMAGE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL airlock.recipe=$recipe" \
        --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase rootfs for airlock-sandbox (images/build-offline.sh)\"" \
        "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"; trap - EXIT
    log "base image $BASE_IMAGE built in $(( $(now) - start ))s"
}

stage_sandbox() {
    local agent="$1" ctx="$BUILD/sandbox"
    mkdir -p "$ctx"
    copy_if_changed "$IMAGES/sandbox/Dockerfile" "$ctx/Dockerfile"
    copy_if_changed "$agent" "$ctx/sandbox-agent" 0755
    rm -rf "$ctx/ca"; cp -r "$IMAGES/sandbox/ca" "$ctx/ca"
    log "staged build context $ctx"
}

# stage_scratch NAME BINARY: context for a FROM scratch image (binary + CA bundle + passwd).
stage_scratch() {
    local name="$1" bin="$2" ctx="$BUILD/$1"
    [ -x "$bin" ] || die "$bin not found"
    is_static "$bin" || die "$bin is dynamically linked; FROM scratch needs a static binary"
    rm -rf "$ctx/rootfs/data"
    mkdir -p "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp" "$ctx/data"
    : > "$ctx/data/.keep"   # a non-empty layer: the classic builder fails on an empty one
    copy_if_changed "$IMAGES/$name/Dockerfile" "$ctx/Dockerfile"
    copy_if_changed "$bin" "$ctx/$name" 0755
    local ca="${AIRLOCK_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
    [ -f "$ca" ] || die "CA bundle $ca not found (install ca-certificates or set AIRLOCK_CA_BUNDLE)"
    copy_if_changed "$ca" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' > "$ctx/rootfs/etc/passwd.new"
    printf 'root:x:0:\nnonroot:x:65532:\n' > "$ctx/rootfs/etc/group.new"
    for f in passwd group; do copy_if_changed "$ctx/rootfs/etc/$f.new" "$ctx/rootfs/etc/$f"; rm -f "$ctx/rootfs/etc/$f.new"; done
    chmod 1777 "$ctx/rootfs/tmp"
    log "staged build context $ctx"
}

docker_build() { # docker_build IMAGE CONTEXT [ARGS...]
    local image="$1" ctx="$2"; shift 2
    local start out; start=$(now)
    log "docker build -t $image $ctx"
    out="$(docker build -t "$image" "$@" "$ctx" 2>&1)" || {
        printf '%s\n' "$out" >&2; die "docker build of $image failed"; }
    log "$image ready in $(( $(now) - start ))s: $(docker image inspect -f '{{.Id}} {{.Size}}' "$image" | awk '{printf "%s, %.0f MB", substr($1,8,12), $2/1e6}')"
}

# --- binaries ---------------------------------------------------------------
AGENT="$(build_agent)"
log "sandbox-agent: $AGENT ($(du -h "$AGENT" | cut -f1), static)"
if [ "$ALL" = 1 ]; then
    cargo_static brain vault-proxy
fi

# --- contexts ---------------------------------------------------------------
stage_sandbox "$AGENT"
if [ "$ALL" = 1 ]; then
    stage_scratch brain "$TARGET_DIR/$TARGET_TRIPLE/release/brain"
    copy_if_changed "$AGENT" "$BUILD/brain/sandbox-agent" 0755   # for the local backend
    stage_scratch vault-proxy "$TARGET_DIR/$TARGET_TRIPLE/release/vault-proxy"
fi
if [ "$CONTEXT_ONLY" = 1 ]; then
    log "contexts staged under $BUILD (build them with: docker build -t airlock-sandbox:latest $BUILD/sandbox)"
    exit 0
fi

# --- images -----------------------------------------------------------------
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
# drop_old ID...: remove images this script replaced, if nothing tags or uses them any more.
drop_old() {
    local id
    for id in "$@"; do
        [ -n "$id" ] || continue
        if [ -z "$(docker image inspect -f '{{join .RepoTags ","}}' "$id" 2>/dev/null)" ]; then
            docker rmi "$id" >/dev/null 2>&1 && log "removed replaced image ${id#sha256:}" || true
        fi
    done
}
OLD_SANDBOX="$(image_id "$SANDBOX_IMAGE")" OLD_BASE="$(image_id "$BASE_IMAGE")"
build_base
docker_build "$SANDBOX_IMAGE" "$BUILD/sandbox" --build-arg "BASE=$BASE_IMAGE"
drop_old "$OLD_SANDBOX" "$OLD_BASE"
if [ "$ALL" = 1 ]; then
    OLD_BRAIN="$(image_id airlock-brain:latest)" OLD_PROXY="$(image_id airlock-vault-proxy:latest)"
    docker_build airlock-brain:latest "$BUILD/brain"
    docker_build airlock-vault-proxy:latest "$BUILD/vault-proxy"
    drop_old "$OLD_BRAIN" "$OLD_PROXY"
fi
log "done in $(( $(now) - T0 ))s"
