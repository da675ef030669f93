#!/usr/bin/env bash
# dfget (through a dfdaemon going back to source) vs curl, one file from a local nginx.
#
#   bench/dfget-vs-curl.sh            # 1 GiB, median of 5 runs each
#   SIZE_MIB=256 RUNS=3 bench/dfget-vs-curl.sh
#   BENCH_DAEMON_ARGS="--config FILE" bench/dfget-vs-curl.sh   # extra dfdaemon flags
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
declare -a c_wall c_cpu d_wall d_cpu d_idle d_peak

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
  idle_kib="$(status_kib "$DAEMON_PID" VmRSS)"
  before="$(cpu_ticks "$DAEMON_PID")"
  out="$WORK/dfget.out"
  t="$( { time "$DFGET" "$URL" -O "$out" -e "$rundir/d.sock" --no-progress 2>"$rundir/dfget.err"; } 2>&1 )" \
    || { cat "$rundir/dfget.err" >&2; tail -n 50 "$rundir/dfdaemon.log" >&2; die "dfget failed"; }
  after="$(cpu_ticks "$DAEMON_PID")"
  peak_kib="$(status_kib "$DAEMON_PID" VmHWM)"
  read -r wall usr sys <<<"$t"
  cmp -s "$out" "$WORK/nginx/www/file.bin" || die "dfget output differs"
  d_wall+=("$wall")
  d_cpu+=("$(awk -v u="$usr" -v s="$sys" -v a="$after" -v b="$before" -v hz="$CLK_TCK" 'BEGIN { print u + s + (a - b) / hz }')")
  d_idle+=("$idle_kib"); d_peak+=("$peak_kib")
  log "dfget run $run: ${wall}s (daemon idle ${idle_kib} KiB, peak ${peak_kib} KiB)"
  rm -f "$out"
  stop_pid "$DAEMON_PID"; stop_pid "$SCHED_PID"
  rm -rf "$rundir/storage"
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
echo
echo "CPU for dfget is dfget's own plus the daemon's (utime+stime delta); curl's is its own; nginx's is in neither."
echo "Daemon RSS: VmRSS idle before the call, VmHWM after it (a fresh daemon per run)."
echo "runs (wall s): curl ${c_wall[*]}; dfget ${d_wall[*]}"
