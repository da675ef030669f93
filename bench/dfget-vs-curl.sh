#!/usr/bin/env bash
# dfget (through a dfdaemon going back to source) vs curl, one file from a local nginx, and then
# a second dfdaemon on the same host fetching the same file from the first one (P2P on loopback).
#
#   bench/dfget-vs-curl.sh            # 1 GiB, median of 5 runs each
#   SIZE_MIB=256 RUNS=3 bench/dfget-vs-curl.sh
#   BENCH_DAEMON_ARGS="--config FILE" bench/dfget-vs-curl.sh   # extra dfdaemon flags
#   PERF_DIR=/tmp/prof bench/dfget-vs-curl.sh   # perf profiles of the back-to-source daemon and the P2P child
#
# Origin, outputs and daemon storage all live on tmpfs (/dev/shm), so the daemon's hard link of
# its cached task to the output works and no disk is measured. Each dfget run gets a fresh
# dfscheduler + dfdaemon with an empty storage dir; only the dfget call is timed. Daemon CPU is
# the utime+stime delta of the daemon process across the call (from /proc/PID/stat), plus dfget's
# own; curl's CPU is its own. Daemon RSS: VmRSS when idle before the call, VmHWM after it.
# Needs: curl, python3, nginx (nginx-light is installed with apt-get if missing).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZE_MIB="${SIZE_MIB:-1024}"
RUNS="${RUNS:-5}"
IP="${BENCH_IP:-127.0.9.2}"
CHILD_IP="${BENCH_CHILD_IP:-127.0.9.3}"
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || die "RUNS must be 1..20"
[ -d /dev/shm ] || die "/dev/shm missing"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

find_binaries
ensure_nginx
command -v curl >/dev/null || die "curl missing"

WORK="$(mktemp -d /dev/shm/damselfly-bench.XXXXXX)"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
log "work dir $WORK"

PORT="$(free_port 127.0.0.1)"
start_nginx "$WORK/nginx" "$PORT"
make_file "$WORK/nginx/www/file.bin" "$SIZE_MIB"
URL="http://127.0.0.1:$PORT/file.bin"
BYTES=$(( SIZE_MIB * 1024 * 1024 ))
GIB="$(awk -v b="$BYTES" 'BEGIN { print b / 1073741824 }')"
log "origin $URL ($SIZE_MIB MiB), $RUNS runs each"

TIMEFORMAT='%R %U %S'
declare -a c_wall c_cpu d_wall d_cpu d_idle d_peak p_wall p_cpu p_idle p_peak p_parent

# timed_dfget SOCKET OUT ERRFILE DAEMON_PID: runs dfget through a daemon and sets WALL, CPU (dfget's
# own plus the daemon's delta, in seconds), IDLE and PEAK (the daemon's KiB).
timed_dfget() {
  local socket="$1" out="$2" errf="$3" pid="$4" t before after usr sys
  IDLE="$(status_kib "$pid" VmRSS)"
  before="$(cpu_ticks "$pid")"
  t="$( { time "$DFGET" "$URL" -O "$out" -e "$socket" --no-progress 2>"$errf"; } 2>&1 )" \
    || { cat "$errf" >&2; die "dfget through $socket failed"; }
  after="$(cpu_ticks "$pid")"
  PEAK="$(status_kib "$pid" VmHWM)"
  read -r WALL usr sys <<<"$t"
  cmp -s "$out" "$WORK/nginx/www/file.bin" || die "dfget output through $socket differs"
  CPU="$(awk -v u="$usr" -v s="$sys" -v a="$after" -v b="$before" -v hz="$CLK_TCK" 'BEGIN { print u + s + (a - b) / hz }')"
  rm -f "$out"
}

# perf_start PID NAME: with PERF_DIR set, a perf profile (dwarf call graphs) of PID until
# perf_stop, kept as $PERF_DIR/perf-NAME.data. Off by default: it costs the profiled process.
PERF_PID=""
perf_start() {
  [ -n "${PERF_DIR:-}" ] || return 0
  mkdir -p "$PERF_DIR"
  perf record -q -F 1999 --call-graph dwarf,16384 -p "$1" -o "$PERF_DIR/perf-$2.data" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.5
}
perf_stop() {
  [ -n "$PERF_PID" ] || return 0
  kill -INT "$PERF_PID"; wait "$PERF_PID" || true
  PERF_PID=""
}

for run in $(seq 1 "$RUNS"); do
  # curl
  out="$WORK/curl.out"
  t="$( { time curl -fsS -o "$out" "$URL" 2>"$WORK/curl.err"; } 2>&1 )" || { cat "$WORK/curl.err" >&2; die "curl failed"; }
  read -r wall usr sys <<<"$t"
  cmp -s "$out" "$WORK/nginx/www/file.bin" || die "curl output differs"
  rm -f "$out"
  c_wall+=("$wall"); c_cpu+=("$(awk -v u="$usr" -v s="$sys" 'BEGIN { print u + s }')")
  log "curl  run $run: ${wall}s"

  # dfget through a fresh daemon
  rundir="$WORK/run$run"; mkdir -p "$rundir"
  sport="$(free_port 127.0.0.1)"
  start_scheduler "$rundir" "127.0.0.1:$sport"
  start_daemon d "$IP" "127.0.0.1:$sport" "$rundir/storage" "$rundir/d.sock" "$rundir/dfdaemon.log" ${BENCH_DAEMON_ARGS:-}
  sleep 1
  parent_pid="$DAEMON_PID"
  perf_start "$parent_pid" "b2s-run$run"
  timed_dfget "$rundir/d.sock" "$WORK/dfget.out" "$rundir/dfget.err" "$parent_pid"
  perf_stop
  d_wall+=("$WALL"); d_cpu+=("$CPU"); d_idle+=("$IDLE"); d_peak+=("$PEAK")
  log "dfget run $run: ${WALL}s (daemon idle ${IDLE} KiB, peak ${PEAK} KiB)"

  # The same file again through a second daemon: every piece from the first one.
  start_daemon c "$CHILD_IP" "127.0.0.1:$sport" "$rundir/child-storage" "$rundir/c.sock" "$rundir/child.log" ${BENCH_DAEMON_ARGS:-}
  sleep 1
  parent_before="$(cpu_ticks "$parent_pid")"
  perf_start "$DAEMON_PID" "p2p-run$run"
  timed_dfget "$rundir/c.sock" "$WORK/child.out" "$rundir/child-dfget.err" "$DAEMON_PID"
  perf_stop
  parent_after="$(cpu_ticks "$parent_pid")"
  from_peers="$(traffic "$CHILD_IP" remote_peer '*')"
  [ "${from_peers%.*}" -ge "$BYTES" ] || die "child took only ${from_peers} bytes from peers (of $BYTES)"
  p_wall+=("$WALL"); p_cpu+=("$CPU"); p_idle+=("$IDLE"); p_peak+=("$PEAK")
  p_parent+=("$(awk -v a="$parent_after" -v b="$parent_before" -v hz="$CLK_TCK" 'BEGIN { print (a - b) / hz }')")
  log "p2p   run $run: ${WALL}s (child CPU ${CPU}s, parent CPU ${p_parent[-1]}s)"
  stop_pid "$DAEMON_PID"
  stop_pid "$parent_pid"; stop_pid "$SCHED_PID"
  rm -rf "$rundir/storage" "$rundir/child-storage"
done

row() { # name walls cpus [idle peak]
  local name="$1" wall="$2" cpu="$3" idle="${4:-}" peak="${5:-}"
  awk -v n="$name" -v w="$wall" -v c="$cpu" -v g="$GIB" -v mib="$SIZE_MIB" -v i="$idle" -v p="$peak" 'BEGIN {
    printf "| %s | %.2f | %.0f | %.2f | %s | %s |\n", n, w, mib / w, c / g,
      (i == "" ? "-" : sprintf("%.1f", i / 1024)), (p == "" ? "-" : sprintf("%.1f", p / 1024)) }'
}

echo
echo "dfget vs curl: ${SIZE_MIB} MiB from nginx on loopback, tmpfs, median of $RUNS runs ($(nproc) CPUs)"
echo
echo "| client | wall s | MiB/s | CPU s per GiB | daemon RSS idle MiB | daemon RSS peak MiB |"
echo "|---|---|---|---|---|---|"
row curl "$(median "${c_wall[@]}")" "$(median "${c_cpu[@]}")"
row "dfget + dfdaemon" "$(median "${d_wall[@]}")" "$(median "${d_cpu[@]}")" "$(median "${d_idle[@]}")" "$(median "${d_peak[@]}")"
row "dfget + child dfdaemon (P2P)" "$(median "${p_wall[@]}")" "$(median "${p_cpu[@]}")" "$(median "${p_idle[@]}")" "$(median "${p_peak[@]}")"
echo
echo "CPU for dfget is dfget's own plus the daemon's (utime+stime delta); curl's is its own; nginx's is in neither."
echo "Daemon RSS: VmRSS idle before the call, VmHWM after it (a fresh daemon per run)."
echo "P2P: the parent daemon's upload CPU, median $(median "${p_parent[@]}") s ($(awk -v c="$(median "${p_parent[@]}")" -v g="$GIB" 'BEGIN { printf "%.2f", c / g }') s per GiB)."
echo "runs (wall s): curl ${c_wall[*]}; dfget ${d_wall[*]}; p2p ${p_wall[*]}"
