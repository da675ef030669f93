#!/usr/bin/env bash
# Checks the unit files with `systemd-analyze verify` without installing anything: the units and
# stand-in binaries go into a throw-away root next to a copy of the system's own units (verify
# needs sysinit.target and friends, and complains about ExecStart= binaries that are missing).
# Fails on any message, since verify reports unknown or misspelled keys but still exits 0.
# Also prints `systemd-analyze security`'s exposure score for each unit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
UNITS=(dfdaemon.service dfscheduler.service)

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIP: systemd-analyze not found (Debian package systemd)"
  exit 0
fi

root="$(mktemp -d "${TMPDIR:-/tmp}/damselfly-units.XXXXXX")"
trap 'rm -rf "$root"' EXIT

mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
ln -s usr/lib "$root/lib"
for unit in "${UNITS[@]}"; do
  cp "$HERE/$unit" "$root/etc/systemd/system/"
  printf '#!/bin/sh\n' >"$root/usr/bin/${unit%.service}"
  chmod 0755 "$root/usr/bin/${unit%.service}"
done

messages="$(systemd-analyze --root="$root" verify "${UNITS[@]}" 2>&1)" || {
  echo "$messages" >&2
  echo "FAIL: systemd-analyze verify" >&2
  exit 1
}
if [ -n "$messages" ]; then
  echo "$messages" >&2
  echo "FAIL: systemd-analyze verify printed warnings" >&2
  exit 1
fi
echo "ok: systemd-analyze verify ${UNITS[*]}"
for unit in "${UNITS[@]}"; do
  systemd-analyze security --offline=yes --root="$root" "$unit" 2>/dev/null | tail -n 1 || true
done
