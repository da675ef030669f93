#!/usr/bin/env bash
# The five-daemon swarm of the end-to-end test, as a benchmark: dfscheduler on 127.0.0.1, one seed
# dfdaemon and four dfdaemons on 127.0.10.2-6, nginx as the origin; all five run dfget for the same
# file at once. Reports wall time per dfget, origin bytes / file size, and where each daemon's
# bytes came from (origin, seed, other peers; from damselfly_download_traffic_bytes_total).
#
#   bench/swarm.sh                 # 100 MiB and 1 GiB
#   SIZES_MIB="100" bench/swarm.sh
#
# Everything lives on tmpfs (/dev/shm); a fresh scheduler and fresh daemons per size.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZES_MIB="${SIZES_MIB:-100 1024}"
NET="${BENCH_NET:-127.0.10}"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

find_binaries
ensure_nginx

WORK="$(mktemp -d /dev/shm/damselfly-swarm.XXXXXX)"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
log "work dir $WORK"

PORT="$(free_port 127.0.0.1)"
start_nginx "$WORK/nginx" "$PORT"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

report=()
summary=()
for size in $SIZES_MIB; do
  case "$size" in ''|*[!0-9]*) die "bad size $size";; esac
  [ "$size" -le 4096 ] || die "size $size MiB too large"
  dir="$WORK/s$size"; mkdir -p "$dir"
  make_file "$WORK/nginx/www/f$size.bin" "$size"
  url="http://127.0.0.1:$PORT/f$size.bin"
  bytes=$(( size * 1024 * 1024 ))

  sport="$(free_port 127.0.0.1)"
  start_scheduler "$dir" "127.0.0.1:$sport"
  ips=(); pids=(); roles=()
  for n in 2 3 4 5 6; do
    ip="$NET.$n"; extra=(); role=normal
    if [ "$n" = 2 ]; then extra=(--seed-peer); role=seed; fi
    start_daemon "d$n" "$ip" "127.0.0.1:$sport" "$dir/d$n/storage" "$dir/d$n.sock" "$dir/d$n.log" "${extra[@]}"
    ips+=("$ip"); pids+=("$DAEMON_PID"); roles+=("$role")
  done
  origin_before="$(origin_bytes "$WORK/nginx")"

  log "swarm of 5, $size MiB"
  TIMEFORMAT='%R'
  jobs_pids=()
  for i in 0 1 2 3 4; do
    n=$((i + 2))
    ( rc=0
      { time "$DFGET" "$url" -O "$dir/out$n" -e "$dir/d$n.sock" --no-progress 2>"$dir/dfget$n.err"; } 2>"$dir/time$n" || rc=$?
      echo "$rc" >"$dir/rc$n" ) &
    jobs_pids+=("$!")
  done
  for p in "${jobs_pids[@]}"; do wait "$p" || true; done

  origin_after="$(origin_bytes "$WORK/nginx")"
  origin=$(( origin_after - origin_before ))
  tot_src=0; tot_seed=0; tot_peer=0
  for i in 0 1 2 3 4; do
    n=$((i + 2)); ip="${ips[$i]}"
    rc="$(cat "$dir/rc$n")"
    if [ "$rc" != 0 ]; then cat "$dir/dfget$n.err" >&2; tail -n 30 "$dir/d$n.log" >&2; die "dfget on d$n failed ($rc)"; fi
    cmp -s "$dir/out$n" "$WORK/nginx/www/f$size.bin" || die "output of d$n differs"
    wall="$(tail -n 1 "$dir/time$n")"
    src="$(traffic "$ip" back_to_source '*')"
    seed="$(traffic "$ip" remote_peer seed)"
    peer="$(traffic "$ip" remote_peer normal)"
    tot_src=$((tot_src + src)); tot_seed=$((tot_seed + seed)); tot_peer=$((tot_peer + peer))
    report+=("| $size MiB | d$n ($ip) | ${roles[$i]} | $wall | $(mib "$src") | $(mib "$seed") | $(mib "$peer") |")
  done
  ratio="$(awk -v o="$origin" -v b="$bytes" 'BEGIN { printf "%.3f", o / b }')"
  summary+=("| $size MiB | $(mib "$origin") | $ratio | $(mib "$tot_src") | $(mib "$tot_seed") | $(mib "$tot_peer") |")

  for p in "${pids[@]}"; do stop_pid "$p"; done
  stop_pid "$SCHED_PID"
  rm -rf "$dir" "$WORK/nginx/www/f$size.bin"
done

echo
echo "swarm: 1 seed + 4 daemons, all five dfget at once, nginx origin on loopback ($(nproc) CPUs)"
echo
echo "| file | daemon | role | dfget wall s | from origin MiB | from seed MiB | from other peers MiB |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${report[@]}"
echo
echo "| file | origin served MiB | origin bytes / file size | all daemons from origin MiB | from seed MiB | from other peers MiB |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
