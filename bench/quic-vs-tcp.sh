#!/usr/bin/env bash
# Vortex over TCP versus Vortex over QUIC on loopback: a seed dfdaemon holds a file; then,
# ROUNDS times for each protocol, a fresh peer with `download.protocol: tcp|quic` downloads it
# from the seed. Reports the median download time per protocol and checks every copy's bytes
# and that the peer took the whole file from the seed. Loopback only (127.0.12.0/24).
#
#   bench/quic-vs-tcp.sh BIN_DIR [SIZE_MIB]     # BIN_DIR holds dfscheduler, dfdaemon, dfget
#   ROUNDS=5 bench/quic-vs-tcp.sh target/release 256
#
# Figures from debug binaries measure the debug build, not the protocols.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: $0 BIN_DIR [SIZE_MIB]"
DAMSELFLY_BIN_DIR="$(cd "$1" && pwd)"
export DAMSELFLY_BIN_DIR
SIZE_MIB="${2:-64}"
ROUNDS="${ROUNDS:-3}"
NET=127.0.12
case "$SIZE_MIB$ROUNDS" in ''|*[!0-9]*) die "SIZE_MIB and ROUNDS must be numbers";; esac
if [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 50 ]; then die "ROUNDS must be 1..50"; fi

trap bench_cleanup EXIT
trap 'exit 130' INT TERM
find_binaries
ensure_nginx
WORK="$(mktemp -d /dev/shm/damselfly-quic.XXXXXX)"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT

PORT="$(free_port 127.0.0.1)"
start_nginx "$WORK/nginx" "$PORT"
make_file "$WORK/nginx/www/file.bin" "$SIZE_MIB"
url="http://127.0.0.1:$PORT/file.bin"
sport="$(free_port 127.0.0.1)"
start_scheduler "$WORK" "127.0.0.1:$sport"
for p in tcp quic; do printf 'download:\n  protocol: %s\n' "$p" >"$WORK/$p.yaml"; done

# timed_dfget N: downloads on daemon N, checks the bytes, prints the wall seconds.
timed_dfget() {
  local n="$1" start end
  start="$(date +%s.%N)"
  "$DFGET" "$url" -O "$WORK/out$n" -e "$WORK/d$n.sock" --no-progress >/dev/null 2>"$WORK/dfget$n.err" \
    || { cat "$WORK/dfget$n.err" >&2; die "dfget on d$n failed"; }
  end="$(date +%s.%N)"
  cmp -s "$WORK/out$n" "$WORK/nginx/www/file.bin" || die "d$n's copy differs from the origin's"
  rm -f "$WORK/out$n"
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}

log "seed fetches $SIZE_MIB MiB from the origin"
start_daemon d2 "$NET.2" "127.0.0.1:$sport" "$WORK/d2" "$WORK/d2.sock" "$WORK/d2.log" \
  --seed-peer --config "$WORK/tcp.yaml"
timed_dfget 2 >/dev/null

declare -A TIMES=([tcp]="" [quic]="")
n=10
for round in $(seq 1 "$ROUNDS"); do
  for p in tcp quic; do
    start_daemon "d$n" "$NET.$n" "127.0.0.1:$sport" "$WORK/d$n" "$WORK/d$n.sock" "$WORK/d$n.log" \
      --config "$WORK/$p.yaml"
    peer_pid="$DAEMON_PID"
    seconds="$(timed_dfget "$n")"
    from_seed="$(traffic "$NET.$n" remote_peer '*')"
    [ "$from_seed" -ge $(( SIZE_MIB * 1024 * 1024 )) ] \
      || die "round $round $p: the peer took only $from_seed bytes from the seed"
    log "round $round: $p ${seconds}s"
    TIMES[$p]+="$seconds "
    # A graceful stop: the scheduler forgets the peer, so the next one's parent is the seed.
    stop_pid "$peer_pid"
    rm -rf "$WORK/d$n"
    n=$((n + 1))
  done
done

# shellcheck disable=SC2086
printf 'size %s MiB, %s rounds, median seconds: tcp %s, quic %s\n' "$SIZE_MIB" "$ROUNDS" \
  "$(median ${TIMES[tcp]})" "$(median ${TIMES[quic]})"
