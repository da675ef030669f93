#!/usr/bin/env bash
# An idle flood on a seed's piece port, as a benchmark (issue 10): a seed dfdaemon holds a
# file; a peer downloads it from the seed with nothing else going on, then a second peer
# downloads it while FLOOD idle TCP connections from one other address sit on the seed's
# Vortex port (4005) without sending a byte. Reports both download times and how many flood
# sockets the seed kept open. Loopback only (127.0.11.0/24); everything stops by itself.
#
#   bench/idle-flood.sh                  # 64 MiB, 300 idle connections
#   SIZE_MIB=256 FLOOD=1000 bench/idle-flood.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZE_MIB="${SIZE_MIB:-64}"
FLOOD="${FLOOD:-300}"
NET=127.0.11
FLOOD_SOURCE="$NET.99"
case "$SIZE_MIB$FLOOD" in ''|*[!0-9]*) die "SIZE_MIB and FLOOD must be numbers";; esac
[ "$FLOOD" -le 5000 ] || die "FLOOD $FLOOD is too many"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM
find_binaries
ensure_nginx
WORK="$(mktemp -d /dev/shm/damselfly-flood.XXXXXX)"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT

PORT="$(free_port 127.0.0.1)"
start_nginx "$WORK/nginx" "$PORT"
make_file "$WORK/nginx/www/file.bin" "$SIZE_MIB"
url="http://127.0.0.1:$PORT/file.bin"
sport="$(free_port 127.0.0.1)"
declare -a DAEMON_PIDS
start_scheduler "$WORK" "127.0.0.1:$sport"
for n in 2 3 4; do
  extra=(); [ "$n" = 2 ] && extra=(--seed-peer)
  start_daemon "d$n" "$NET.$n" "127.0.0.1:$sport" "$WORK/d$n" "$WORK/d$n.sock" "$WORK/d$n.log" "${extra[@]}"
  DAEMON_PIDS[$n]="$DAEMON_PID"
done

# timed_dfget N: downloads on daemon N, checks the bytes, prints the wall seconds.
timed_dfget() {
  local n="$1" start end
  start="$(date +%s.%N)"
  "$DFGET" "$url" -O "$WORK/out$n" -e "$WORK/d$n.sock" --no-progress >/dev/null 2>"$WORK/dfget$n.err" \
    || { cat "$WORK/dfget$n.err" >&2; die "dfget on d$n failed"; }
  end="$(date +%s.%N)"
  cmp -s "$WORK/out$n" "$WORK/nginx/www/file.bin" || die "d$n's copy differs from the origin's"
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}

log "seed fetches $SIZE_MIB MiB from the origin"
timed_dfget 2 >/dev/null
log "peer d3 downloads from the seed, no flood"
quiet="$(timed_dfget 3)"
# d3 leaves the cluster (graceful stop: the scheduler forgets it), so d4's only parent is
# the seed.
stop_pid "${DAEMON_PIDS[3]}"

log "$FLOOD idle connections from $FLOOD_SOURCE to the seed's piece port"
python3 - "$FLOOD_SOURCE" "$NET.2" 4005 "$FLOOD" "$WORK/flood.ready" <<'PY' &
import socket, sys, time
source, host, port, count, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
held = []
for _ in range(count):
    s = socket.socket()
    s.bind((source, 0))
    try:
        s.connect((host, port))
        held.append(s)
    except OSError:
        s.close()
open(ready, "w").write(str(len(held)))
time.sleep(120)  # bounded: the bench kills it long before
PY
FLOOD_PID=$!
BENCH_PIDS+=("$FLOOD_PID")
for _ in $(seq 1 300); do [ -s "$WORK/flood.ready" ] && break; sleep 0.1; done
[ -s "$WORK/flood.ready" ] || die "the flood did not start"
held_by_seed="$(ss -Htn state established "( sport = :4005 and src $NET.2 and dst $FLOOD_SOURCE )" | wc -l)"
log "peer d4 downloads from the seed during the flood"
flooded="$(timed_dfget 4)"
stop_pid "$FLOOD_PID"

from_seed="$(traffic "$NET.4" remote_peer seed)"
echo
echo "idle flood on the seed's piece port: $SIZE_MIB MiB, $FLOOD idle connections from one address ($(nproc) CPUs, loopback)"
echo
echo "| download from the seed | wall s |"
echo "|---|---|"
echo "| no flood | $quiet |"
echo "| during the flood | $flooded |"
echo
echo "flood sockets the seed kept open: $held_by_seed of $FLOOD; d4 took $((from_seed / 1048576)) MiB from the seed"
