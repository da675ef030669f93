#!/usr/bin/env bash
# Scheduler scale: one release dfscheduler pinned to one core, loaded over gRPC on loopback by
# damselfly-loadgen (crates/loadgen) with 1k, 5k and 10k synthetic hosts, 5 peers per host
# (50k peers at 10k hosts) over hosts/20 tasks of 16 pieces, 500 peers downloading at once,
# each reporting a piece every 20 ms (25,000 reports per second offered, over the 20,000 of the
# issue's target). Prints one table row per size:
# decisions/s, p50/p99 decision latency (all peers, and without the first --concurrency peers,
# which register in one burst at the start), piece reports/s, scheduler KiB per peer and per host,
# and over the peer phase the CPU seconds of the scheduler and of the generator, each with the
# seconds it sat runnable but without a CPU (other work on its core), and how late the
# generator woke for its reports (its own backlog) and handed them over (plus the scheduler's
# backpressure), p99.
#
#   bench/scheduler-load.sh                      # 1000 5000 10000 hosts
#   SIZES="1000" RUN_NICE=19 bench/scheduler-load.sh
#
# The scheduler runs on CPU $SCHED_CPU (default 1), the load generator on $LOADGEN_CPU
# (default 0). RUN_NICE (default 0) nices both, for runs beside other work. A fresh scheduler
# per size. ARRIVALS=poisson (default: each peer's reports come at exponential gaps averaging
# PIECE_INTERVAL_MS, as independent downloads do) or lockstep (every downloading peer reports
# in the same instant once per interval: a burst of CONCURRENCY reports, a worst case).
# Knobs: PEERS_PER_HOST, PIECES, CONNECTIONS, CONCURRENCY, PIECE_INTERVAL_MS, ARRIVALS,
# MAX_SECONDS; DAMSELFLY_BIN_DIR skips the build (it must hold dfscheduler and
# damselfly-loadgen).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZES="${SIZES:-1000 5000 10000}"
PEERS_PER_HOST="${PEERS_PER_HOST:-5}"
PIECES="${PIECES:-16}"
CONNECTIONS="${CONNECTIONS:-32}"
CONCURRENCY="${CONCURRENCY:-500}"
PIECE_INTERVAL_MS="${PIECE_INTERVAL_MS:-20}"
ARRIVALS="${ARRIVALS:-poisson}"
MAX_SECONDS="${MAX_SECONDS:-600}"
SCHED_CPU="${SCHED_CPU:-1}"
LOADGEN_CPU="${LOADGEN_CPU:-0}"
RUN_NICE="${RUN_NICE:-0}"
IP="${BENCH_IP:-127.0.0.1}"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM
command -v taskset >/dev/null || die "taskset missing (util-linux)"

if [ -z "${DAMSELFLY_BIN_DIR:-}" ]; then
  log "building dfscheduler and damselfly-loadgen (release, nice 19)"
  (cd "$BENCH_ROOT" && nice -n 19 cargo build --release -q -p damselfly -p damselfly-loadgen \
    --bin dfscheduler --bin damselfly-loadgen </dev/null) >&2
  DAMSELFLY_BIN_DIR="${CARGO_TARGET_DIR:-$BENCH_ROOT/target}/release"
fi
DFSCHEDULER="$DAMSELFLY_BIN_DIR/dfscheduler"
LOADGEN="$DAMSELFLY_BIN_DIR/damselfly-loadgen"
for b in "$DFSCHEDULER" "$LOADGEN"; do [ -x "$b" ] || die "missing $b"; done

# Every AnnouncePeer stream is a socket only in HTTP/2 terms, but keep room for the
# connections of both sides: raise the soft fd limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "fd limit $(ulimit -n); scheduler on CPU $SCHED_CPU, load generator on CPU $LOADGEN_CPU, nice $RUN_NICE"

WORK="$(mktemp -d /tmp/damselfly-schedload.XXXXXX)"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT

# decision_quantiles METRICS_ADDR: "inside_p50_ms=X inside_p99_ms=Y" from the scheduler's own
# damselfly_scheduler_decision_duration_seconds histogram (RegisterPeerRequest read to the
# decision handed to the stream), interpolated within buckets. The load generator's latency
# also holds HTTP/2 and both sides' run queues; this one holds only the scheduler's session.
decision_quantiles() {
  curl -fsS "http://$1/metrics" | python3 -c '
import sys
buckets = []
for line in sys.stdin:
    if line.startswith("damselfly_scheduler_decision_duration_seconds_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
total = buckets[-1][1] if buckets else 0
def quantile(q):
    rank, low, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return low
            share = (rank - below) / (count - below) if count > below else 1.0
            return low + (bound - low) * share
        low, below = bound, count
    return low
print("inside_p50_ms=%.2f inside_p99_ms=%.2f" % (quantile(0.5) * 1e3, quantile(0.99) * 1e3) if total else "inside_p50_ms=- inside_p99_ms=-")
' || echo "inside_p50_ms=- inside_p99_ms=-"
}

# run_size HOSTS: one fresh scheduler, one load run; appends "RESULT ... sched_cpu_run_s=X (the whole run)".
run_size() {
  local hosts="$1" port mport pid before after line inside
  port="$(free_port "$IP")"
  mport="$(free_port "$IP")"
  nice -n "$RUN_NICE" taskset -c "$SCHED_CPU" "$DFSCHEDULER" --listen "$IP:$port" \
    --metrics "$IP:$mport" --http none --log-dir "$WORK/log-$hosts" </dev/null >"$WORK/sched-$hosts.out" 2>&1 &
  pid=$!
  BENCH_PIDS+=("$pid")
  local i=0
  until (exec 3<>"/dev/tcp/$IP/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/sched-$hosts.out" >&2; die "dfscheduler exited"; }
    i=$((i + 1)); [ "$i" -lt 300 ] || die "dfscheduler did not listen on $IP:$port"
    sleep 0.1
  done
  before="$(cpu_ticks "$pid")"
  log "$hosts hosts x $PEERS_PER_HOST peers: running"
  line="$(nice -n "$RUN_NICE" taskset -c "$LOADGEN_CPU" "$LOADGEN" --scheduler "$IP:$port" \
    --scheduler-pid "$pid" --hosts "$hosts" --peers-per-host "$PEERS_PER_HOST" \
    --pieces "$PIECES" --connections "$CONNECTIONS" --concurrency "$CONCURRENCY" \
    --piece-interval-ms "$PIECE_INTERVAL_MS" --arrivals "$ARRIVALS" --max-seconds "$MAX_SECONDS" | grep '^RESULT')"
  after="$(cpu_ticks "$pid")"
  inside="$(decision_quantiles "$IP:$mport")"
  stop_pid "$pid"
  echo "$line $inside sched_cpu_run_s=$(awk -v a="$after" -v b="$before" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (a - b) / t }')" \
    | tee -a "$WORK/results" >&2
}

for hosts in $SIZES; do run_size "$hosts"; done

# The table: one row per RESULT line.
awk '
  BEGIN {
    print "| hosts | peers | tasks | decisions/s | p50 ms | p99 ms | steady p50/p99 ms | inside the scheduler p50/p99 ms | reports/s | KiB/peer | KiB/host | phase s | sched CPU s (wait) | loadgen CPU s (wait) | wake/send lag p99 ms | errors |"
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  }
  {
    delete v
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "| %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s | %s | %s (%s) | %s (%s) | %s / %s | %s |\n", v["hosts"], v["peers"], v["tasks"],
      v["decisions_per_s"], v["p50_ms"], v["p99_ms"], v["steady_p50_ms"], v["steady_p99_ms"], v["inside_p50_ms"], v["inside_p99_ms"], v["reports_per_s"], v["kib_per_peer"],
      v["kib_per_host"], v["peer_phase_s"], v["sched_cpu_s"], v["sched_wait_s"], v["loadgen_cpu_s"],
      v["loadgen_wait_s"], v["wake_lag_p99_ms"], v["send_lag_p99_ms"], v["errors"]
  }' "$WORK/results"
