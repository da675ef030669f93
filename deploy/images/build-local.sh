#!/usr/bin/env bash
# Builds the two Damselfly images (scheduler, client) FROM scratch out of binaries already built
# on this machine, for hosts that cannot pull base images. Each image holds the binaries, the
# shared libraries `ldd` lists for them (with the dynamic loader), /etc/passwd and /etc/group
# with root and nonroot (65532), /etc/nsswitch.conf, the host's CA bundle and /tmp.
#
#   deploy/images/build-local.sh              # binaries from target/release
#   DAMSELFLY_BIN_DIR=target/debug deploy/images/build-local.sh
#
# Environment:
#   DAMSELFLY_BIN_DIR       directory with dfscheduler, dfdaemon, dfget, dfinit
#                           (default: $CARGO_TARGET_DIR/release or target/release)
#   DAMSELFLY_VERSION       image tag and version label (default: `dfscheduler --version`,
#                           else the workspace version in Cargo.toml)
#   DAMSELFLY_IMAGE_PREFIX  default localhost/damselfly (images <prefix>/scheduler, <prefix>/client)
#   DAMSELFLY_STRIP         1: drop the binaries' debug info (objcopy --strip-debug) in the images;
#                           release binaries keep line tables for backtraces, about 3/4 of their size
#   CONTAINER_ENGINE        podman (default) or docker
# Prints one line per image, "<target> <ref> <bytes> bytes (<human>)", which scripts can read.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=rootfs.sh
source "$HERE/rootfs.sh"

ENGINE="${CONTAINER_ENGINE:-podman}"
PREFIX="${DAMSELFLY_IMAGE_PREFIX:-localhost/damselfly}"
BIN_DIR="${DAMSELFLY_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}"

die() {
  echo "build-local: $*" >&2
  exit 1
}

# The workspace version from Cargo.toml's [workspace.package] table.
cargo_version() {
  awk '/^\[/ { section = $0 } section == "[workspace.package]" && /^version *=/ {
         gsub(/[" ]/, "", $0); sub(/^version=/, "", $0); print; exit }' "$REPO/Cargo.toml"
}

# The version the binaries report, so the label says what is really inside.
binary_version() {
  "$BIN_DIR/dfscheduler" --version 2>/dev/null | awk 'NF >= 2 { print $2; exit }'
}

check_inputs() {
  command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE not found (set CONTAINER_ENGINE)"
  command -v ldd >/dev/null 2>&1 || die "ldd not found (Debian package libc-bin)"
  local bin
  for bin in dfscheduler dfdaemon dfget dfinit; do
    [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin is missing: run cargo build --release --bins (or set DAMSELFLY_BIN_DIR)"
  done
}

# prepare_context DIR: base/, scheduler/ and client/ root filesystems for Containerfile.local.
prepare_context() {
  local ctx="$1" bin
  rootfs_add_base "$ctx/base"
  rootfs_add_binary "$ctx/scheduler" "$BIN_DIR/dfscheduler" /usr/local/bin/dfscheduler
  for bin in dfdaemon dfget dfinit; do
    rootfs_add_binary "$ctx/client" "$BIN_DIR/$bin" "/usr/local/bin/$bin"
  done
  # dfdaemon's default config, cache, socket and log directories, so a bare `podman run`
  # works and volumes mounted there get sensible permissions.
  mkdir -p "$ctx/client/etc/dragonfly" "$ctx/client/var/lib/dragonfly" \
    "$ctx/client/var/run/dragonfly" "$ctx/client/var/log/dragonfly"
  if [ "${DAMSELFLY_STRIP:-}" = 1 ]; then
    command -v objcopy >/dev/null 2>&1 || die "DAMSELFLY_STRIP=1 needs objcopy (Debian package binutils)"
    for bin in "$ctx/scheduler/usr/local/bin/"* "$ctx/client/usr/local/bin/"*; do
      objcopy --strip-debug "$bin"
    done
  fi
  cp "$HERE/Containerfile.local" "$ctx/Containerfile"
}

# build_target CONTEXT TARGET REF: one image from Containerfile.local.
build_target() {
  local ctx="$1" target="$2" ref="$3" options=()
  # podman keeps an image per build step as cache; every build here has new binaries, so the
  # cache only piles up unnamed images.
  [ "$(basename "$ENGINE")" = podman ] && options+=(--layers=false)
  "$ENGINE" build --quiet "${options[@]}" --file "$ctx/Containerfile" --target "$target" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
    --tag "$ref" "$ctx" >/dev/null
}

image_size() {
  "$ENGINE" image inspect --format '{{.Size}}' "$1"
}

main() {
  check_inputs
  VERSION="${DAMSELFLY_VERSION:-$(binary_version)}"
  VERSION="${VERSION:-$(cargo_version)}"
  [ -n "$VERSION" ] || die "cannot tell the version (set DAMSELFLY_VERSION)"
  REVISION="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"

  local ctx
  ctx="$(mktemp -d "${TMPDIR:-/tmp}/damselfly-image.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: ctx is local
  trap "rm -rf '$ctx'" EXIT
  prepare_context "$ctx"

  echo "build-local: binaries from $BIN_DIR${DAMSELFLY_STRIP:+ (debug info stripped)}, version $VERSION"
  echo "build-local: libraries: $(cd "$ctx/client" && find lib* usr/lib* -type f 2>/dev/null | sort | tr '\n' ' ')"
  local target ref size
  for target in scheduler client; do
    ref="$PREFIX/$target:$VERSION"
    build_target "$ctx" "$target" "$ref"
    size="$(image_size "$ref")"
    printf '%s %s %s bytes (%s)\n' "$target" "$ref" "$size" \
      "$(numfmt --to=iec-i --suffix=B "$size" 2>/dev/null || echo "$size B")"
  done
}

main "$@"
