#!/usr/bin/env bash
# Builds Nydus's lazy-pulling client (nydusd) and its image builder (nydus-image) from the
# nydus-rs crate into a cache, for crates/damselfly/tests/e2e_nydus.rs. Nydus has no Debian
# package; `cargo install` is the project's ordinary way to get it.
#
#   bin dir: ${DAMSELFLY_TOOLS:-~/.cache/damselfly-tools}/nydus-2.2.0/bin (printed on stdout)
#
# Skips everything when both binaries are already there. Only what the test uses is built:
# nydusd with FUSE (fusedev) and the registry backend, no OSS/S3/HTTP-proxy/local-disk
# backends, no virtiofs, no nydusctl. libz-sys (zlib-ng, through flate2) needs cmake, installed
# with apt-get as root when missing. Niced: the build is long and CPU-bound.
set -euo pipefail

NYDUS_VERSION="2.2.0"
NYDUS_FEATURES="fuse-backend-rs/fusedev,backend-registry"
DAMSELFLY_TOOLS="${DAMSELFLY_TOOLS:-${HOME:-/root}/.cache/damselfly-tools}"
root="$DAMSELFLY_TOOLS/nydus-$NYDUS_VERSION"
bin="$root/bin"

log() { echo "nydus/install.sh: $*" >&2; }

if [ -x "$bin/nydusd" ] && [ -x "$bin/nydus-image" ]; then
  log "cached in $bin"
  echo "$bin"
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq </dev/null >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake \
      </dev/null >&2
  else
    log "need cmake to build nydus-rs (apt-get install cmake, or run as root)"
    exit 1
  fi
fi

# A private target dir: an exported CARGO_TARGET_DIR (the workspace's) would otherwise
# receive nydus's artifacts. Removed after a successful install.
build="$root/build"
mkdir -p "$root"
log "building nydusd and nydus-image $NYDUS_VERSION into $bin (takes a while)"
start=$(date +%s)
nice -n 19 cargo install nydus-rs --version "$NYDUS_VERSION" --locked \
  --no-default-features --features "$NYDUS_FEATURES" \
  --bin nydusd --bin nydus-image \
  --root "$root" --target-dir "$build" </dev/null >&2
rm -rf "$build"
log "built in $(( $(date +%s) - start )) s"
echo "$bin"
