#!/usr/bin/env bash
# The floor under a dfdaemon child's CPU per GiB on this machine: a small C receiver
# (bench/recv-floor.c) takes a file over loopback TCP from a sendfile(2) sender into a file on
# tmpfs with recv + pwrite, nothing else, once on one connection and then with a connection per
# 4 MiB piece, 1, 4 and 8 pieces at once. Compare its CPU seconds per GiB with the P2P child's
# in bench/dfget-vs-curl.sh (which adds BLAKE3 and crc32 over every byte, the Vortex framing
# and the daemon's bookkeeping).
#
#   bench/recv-floor.sh                 # 1 GiB, median of 5 runs per mode
#   SIZE_MIB=256 RUNS=3 bench/recv-floor.sh
# Needs: cc (gcc), /dev/shm.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZE_MIB="${SIZE_MIB:-1024}"
RUNS="${RUNS:-5}"
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || die "RUNS must be 1..20"
[ $(( SIZE_MIB % 4 )) -eq 0 ] && [ "$SIZE_MIB" -ge 4 ] || die "SIZE_MIB must be a multiple of 4"
command -v cc >/dev/null || die "cc missing (apt-get install gcc)"
[ -d /dev/shm ] || die "/dev/shm missing"

WORK="$(mktemp -d /dev/shm/damselfly-recv-floor.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cc -O2 -pthread -o "$WORK/recv-floor" "$(dirname "$0")/recv-floor.c"
make_file "$WORK/src" "$SIZE_MIB"
PIECES=$(( SIZE_MIB / 4 ))
GIB="$(awk -v m="$SIZE_MIB" 'BEGIN { print m / 1024 }')"
log "$SIZE_MIB MiB in $PIECES pieces, $RUNS runs per mode"

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "| receiver, $SIZE_MIB MiB over loopback into tmpfs | wall s | CPU s per GiB |"
echo "|---|---|---|"
for mode in "stream 1" "pieces 1" "pieces 4" "pieces 8"; do
  read -r kind at_once <<<"$mode"
  walls=(); cpus=()
  for _ in $(seq 1 "$RUNS"); do
    read -r _ _ wall cpu < <("$WORK/recv-floor" "$kind" "$at_once" "$WORK/src" "$WORK/dst" "$PIECES")
    cmp -s "$WORK/src" "$WORK/dst" || die "$mode: the received file differs"
    rm -f "$WORK/dst"
    walls+=("$wall"); cpus+=("$(awk -v c="$cpu" -v g="$GIB" 'BEGIN { printf "%.3f", c / g }')")
  done
  label="one connection"
  [ "$kind" = pieces ] && label="a connection per piece, $at_once at once"
  echo "| $label | $(printf '%s\n' "${walls[@]}" | median) | $(printf '%s\n' "${cpus[@]}" | median) |"
done
