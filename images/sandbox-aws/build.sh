#!/usr/bin/env bash
# Test image for the AWS e2e test (tests/tests/vault_aws.rs): airlock-sandbox:latest plus
# Debian's `awscli` (AWS CLI v2 + botocore from bookworm). The default sandbox image stays
# lean; this one is only for tests.
#
#   bash images/sandbox-aws/build.sh        # airlock-sandbox-aws:test (FROM airlock-sandbox:latest)
#
# Offline-friendly: containers here have no network, so nothing is installed with apt
# inside a build. Instead this host's apt (its own Debian sources) downloads the .debs of
# awscli and of every dependency the sandbox image lacks, and a `docker build` FROM the
# local image `dpkg -i`s them. Env: AIRLOCK_SANDBOX_IMAGE (base, airlock-sandbox:latest),
# AIRLOCK_SANDBOX_AWS_IMAGE (result, airlock-sandbox-aws:test).
set -euo pipefail
BASE="${AIRLOCK_SANDBOX_IMAGE:-airlock-sandbox:latest}"
OUT="${AIRLOCK_SANDBOX_AWS_IMAGE:-airlock-sandbox-aws:test}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
export DOCKER_BUILDKIT=0

docker image inspect "$BASE" >/dev/null 2>&1 || {
    echo "build: $BASE is missing (bash images/build-offline.sh)" >&2; exit 1; }
# Up to date when built from the current base image.
BASE_ID="$(docker image inspect -f '{{.Id}}' "$BASE")"
if [ "$(docker image inspect -f '{{index .Config.Labels "airlock.base"}}' "$OUT" 2>/dev/null || true)" = "$BASE_ID" ]; then
    echo "build: $OUT is up to date (base $BASE_ID)" >&2
    exit 0
fi
# Packages already in the base image.
docker run --rm --network none --entrypoint dpkg-query "$BASE" -W -f '${Package}\n' \
    | sort -u >"$CTX/have"
# Debian's docker-clean hook empties /var/lib/apt/lists after every install: without a
# candidate for awscli the closure below would be empty, so refresh the lists first.
if ! apt-cache policy awscli 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    [ "$(id -u)" = 0 ] || { echo "build: apt has no awscli candidate; run apt-get update" >&2; exit 1; }
    apt-get update -qq
fi
# awscli's dependency closure (no recommends), minus what the image has.
apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances --no-pre-depends awscli 2>/dev/null \
    | grep -v '^ ' | grep -v '^<' | sort -u >"$CTX/want"
[ -s "$CTX/want" ] || { echo "build: apt found no dependency closure for awscli" >&2; exit 1; }
comm -23 "$CTX/want" "$CTX/have" >"$CTX/missing"
mkdir -p "$CTX/debs"
(cd "$CTX/debs" && xargs -a "$CTX/missing" apt-get download -q >/dev/null)
echo "build: $(ls "$CTX/debs" | wc -l) packages to add to $BASE" >&2
cp "$HERE/Dockerfile" "$CTX/Dockerfile"
docker build -q -t "$OUT" --label "airlock.base=$BASE_ID" --build-arg BASE="$BASE" "$CTX" >/dev/null
docker run --rm --network none --entrypoint aws "$OUT" --version
