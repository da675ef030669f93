#!/usr/bin/env bash
# Many hosts on one machine: direct HTTP vs BitTorrent vs Damselfly (issue 4).
#
# N host network namespaces and an `origin` namespace hang off one bridge that lives in a namespace
# of its own, so nothing touches the root namespace's interfaces or addresses. Each link is shaped
# in both directions with tc tbf (host links at HOST_MBIT, the origin's uplink at ORIGIN_MBIT;
# per-host rates with HOST_UP_MBIT / HOST_DOWN_MBIT or SLOW_HOSTS, see below).
# The shaping is measured with iperf3 before any contender runs. Then, in turn:
#   0. links:      every host receives the file from the next host in a ring, over one TCP
#                  connection each, all at once (bench/netns/ring.py): no peer-to-peer logic,
#                  the floor of this machine where T_min is F / d (uplinks >= downlinks);
#   1. direct:     curl on every host at once, from nginx in the origin namespace;
#   2. bittorrent: opentracker + an aria2c seeder in the origin namespace, aria2c on every host;
#   3. damselfly:  dfscheduler + a seed-peer dfdaemon in the origin namespace, a dfdaemon on every
#                  host, dfget on every host at once;
#   4. image:      (only when asked for, CONTENDERS="... image") a registry in the origin namespace
#                  and a containerd on every host: pulls straight from the registry, then through
#                  each host's dfdaemon mirror, cold and warm (bench/netns/image.sh says how).
# The report (markdown, CSV, PNG) lands in RESULTS_DIR; bench/netns/report.py writes it.
#
# Run as root:
#   bench/netns/run.sh                       # default: N=8, hosts 100 Mbit/s, origin 50, 256 MiB
#   bench/netns/run.sh --ci                  # CI size: N=3, 16 MiB, the image pulls too
#   N=16 bench/netns/run.sh                  # or any of the variables below
#   SLOW_HOSTS=4 SLOW_UP_MBIT=10 bench/netns/run.sh   # half the hosts upload at 10 Mbit/s
#   SEED_MBIT=500 bench/netns/run.sh         # seed and origin uplink 5 x the hosts'
#
# Variables (or the matching --flags, see usage()):
#   N=8 HOST_MBIT=100 ORIGIN_MBIT=50 ORIGIN_DOWN_MBIT=HOST_MBIT SIZE_MIB=256 LATENCY_MS=0
#   CONTENDERS="links direct bittorrent damselfly" RESULTS_DIR=bench/netns/results/<stamp>
#   (add image for the image pulls; IMAGE_LAYERS=4 IMAGE_PULL=pull IMAGE_DIRECT=1, see image.sh;
#   DFINIT=<dfinit binary>, default DAMSELFLY_BIN_DIR/dfinit)
#   Uneven links: HOST_UP_MBIT="100 10 100 10 ..." and HOST_DOWN_MBIT="..." (one rate per host,
#   h1 first; hosts past the end of a list use HOST_MBIT), or SLOW_HOSTS=K SLOW_UP_MBIT=R (the
#   last K hosts upload at R; their download stays HOST_MBIT). SEED_MBIT is ORIGIN_MBIT under
#   the name of what it shapes here: the uplink of the namespace with the seed peer and origin.
#   WORK_BASE=/var/tmp  DAMSELFLY_BIN_DIR=<dir with dfscheduler, dfdaemon, dfget>
#   RUN_TIMEOUT=<seconds per contender, default 6 x the slowest bound + 120>
#   NO_INSTALL=1 (never apt-get)  KEEP_WORK=1 (keep the work dir: daemon logs, aria2 logs)
#   STRICT=1 (exit 1 when any host did not get the file; --ci sets it)
#   DF_LOG_LEVEL=info,damselfly_daemon=debug (the daemons' log filter; logs land in RESULTS_DIR)
#   DF_SEED_CONFIG=<dfdaemon.yaml for the seed peer only> (e.g. its seedPeer.ration settings)
#   DF_HOST_CONFIG=<dfdaemon.yaml for the host daemons only> (e.g. upload.piecesInFlight)
#   DF_SCHEDULER_CONFIG=<scheduler.yaml for dfscheduler> (e.g. scheduler.candidateParentLimit)
#
# LATENCY_MS adds one-way delay on every host link with tc netem; when the kernel has no netem
# the bench says so and stops (latency is unsupported there) instead of silently running without.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

usage() {
  cat <<'EOF'
usage: bench/netns/run.sh [--ci] [--hosts N] [--host-mbit R] [--origin-mbit R]
                          [--origin-down-mbit R] [--size-mib S] [--latency-ms L]
                          [--contenders "links direct bittorrent damselfly image"] [--results DIR]
Runs as root. Defaults: --hosts 8 --host-mbit 100 --origin-mbit 50 --size-mib 256.
--ci is --hosts 3 --size-mib 16 and adds the image contender (and keeps the run short).
EOF
}

# The command line as given, for the report (variables the bench reads, then the flags).
CMDLINE="bench/netns/run.sh${*:+ $*}"
for v in N HOST_MBIT ORIGIN_MBIT SEED_MBIT ORIGIN_DOWN_MBIT HOST_UP_MBIT HOST_DOWN_MBIT SLOW_HOSTS \
  SLOW_UP_MBIT SIZE_MIB LATENCY_MS CONTENDERS IMAGE_LAYERS IMAGE_PULL IMAGE_SNAPSHOTTER IMAGE_DIRECT \
  IMAGE_SWARM DF_SEED_CONFIG; do
  case "${!v:-}" in
    '') ;;
    *' '*) CMDLINE="$v='${!v}' $CMDLINE" ;;
    *) CMDLINE="$v=${!v} $CMDLINE" ;;
  esac
done

while [ $# -gt 0 ]; do
  case "$1" in
    --ci) N="${N:-3}"; SIZE_MIB="${SIZE_MIB:-16}"; STRICT=1
      CONTENDERS="${CONTENDERS:-links direct bittorrent damselfly image}"; shift ;;
    --hosts) N="$2"; shift 2 ;;
    --host-mbit) HOST_MBIT="$2"; shift 2 ;;
    --origin-mbit) ORIGIN_MBIT="$2"; shift 2 ;;
    --origin-down-mbit) ORIGIN_DOWN_MBIT="$2"; shift 2 ;;
    --size-mib) SIZE_MIB="$2"; shift 2 ;;
    --latency-ms) LATENCY_MS="$2"; shift 2 ;;
    --contenders) CONTENDERS="$2"; shift 2 ;;
    --results) RESULTS_DIR="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

N="${N:-8}"
HOST_MBIT="${HOST_MBIT:-100}"
ORIGIN_MBIT="${ORIGIN_MBIT:-${SEED_MBIT:-50}}"
ORIGIN_DOWN_MBIT="${ORIGIN_DOWN_MBIT:-$HOST_MBIT}"
SIZE_MIB="${SIZE_MIB:-256}"
LATENCY_MS="${LATENCY_MS:-0}"
CONTENDERS="${CONTENDERS:-links direct bittorrent damselfly}"
WORK_BASE="${WORK_BASE:-/var/tmp}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results/$STAMP-n$N}"

log() { printf '[netns %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

isnum() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
for v in N HOST_MBIT ORIGIN_MBIT ORIGIN_DOWN_MBIT SIZE_MIB LATENCY_MS; do
  isnum "${!v}" || die "$v must be a whole number (got '${!v}')"
done
{ [ "$N" -ge 2 ] && [ "$N" -le 64 ]; } || die "N must be 2..64"
{ [ "$SIZE_MIB" -ge 1 ] && [ "$SIZE_MIB" -le 8192 ]; } || die "SIZE_MIB must be 1..8192"
rate_ok() { { isnum "$2" && [ "$2" -ge 1 ] && [ "$2" -le 10000 ]; } || die "$1 must be 1..10000 (got '$2')"; }
for r in HOST_MBIT ORIGIN_MBIT ORIGIN_DOWN_MBIT; do rate_ok "$r" "${!r}"; done
# Per-host rates: UP[i] and DOWN[i] for host i (1..N).
SLOW_HOSTS="${SLOW_HOSTS:-0}"
SLOW_UP_MBIT="${SLOW_UP_MBIT:-$(( HOST_MBIT / 10 > 0 ? HOST_MBIT / 10 : 1 ))}"
{ isnum "$SLOW_HOSTS" && [ "$SLOW_HOSTS" -le "$N" ]; } || die "SLOW_HOSTS must be 0..N"
rate_ok SLOW_UP_MBIT "$SLOW_UP_MBIT"
UP=(); DOWN=()
read -r -a up_list <<<"${HOST_UP_MBIT:-}"
read -r -a down_list <<<"${HOST_DOWN_MBIT:-}"
{ [ "${#up_list[@]}" -le "$N" ] && [ "${#down_list[@]}" -le "$N" ]; } || die "HOST_UP_MBIT/HOST_DOWN_MBIT list more than N rates"
for i in $(seq 1 "$N"); do
  UP[i]="${up_list[i-1]:-$HOST_MBIT}"; DOWN[i]="${down_list[i-1]:-$HOST_MBIT}"
  [ "$i" -le $(( N - SLOW_HOSTS )) ] || UP[i]="$SLOW_UP_MBIT"
  rate_ok "HOST_UP_MBIT[h$i]" "${UP[i]}"; rate_ok "HOST_DOWN_MBIT[h$i]" "${DOWN[i]}"
done
HOST_UPS="${UP[*]}"; HOST_DOWNS="${DOWN[*]}"
for c in $CONTENDERS; do
  case "$c" in links|direct|bittorrent|damselfly|image) ;; *) die "unknown contender $c" ;; esac
done
has_contender() { case " $CONTENDERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# shellcheck source=bench/netns/image.sh
source "$HERE/image.sh"
has_contender image && image_check_params
[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces and tc need it)"

# ---------------------------------------------------------------------------------------------
# Packages (Debian): installed when missing, unless NO_INSTALL=1.

need_pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || need_pkgs+=("$2"); }
need ip iproute2
need tc iproute2
need curl curl
need nginx nginx-light
need iperf3 iperf3
need python3 python3
case " $CONTENDERS " in
  *" bittorrent "*) need aria2c aria2; need opentracker opentracker; need mktorrent mktorrent ;;
esac
if has_contender image; then
  need containerd containerd; need ctr containerd; need docker-registry docker-registry; need skopeo skopeo
fi
# The chart needs matplotlib for Debian's python3; report.py falls back to its own PNG writer.
/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1 || need_pkgs+=(python3-matplotlib)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "${NO_INSTALL:-0}" = 1 ]; then
    for p in "${need_pkgs[@]}"; do
      case "$p" in python3-matplotlib) ;; *) die "missing package $p (NO_INSTALL=1)" ;; esac
    done
  else
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" </dev/null >&2 \
      || { apt-get update -q </dev/null >&2 \
           && apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" </dev/null >&2; } \
      || log "warning: could not install ${need_pkgs[*]}"
  fi
fi
for b in ip tc curl iperf3; do command -v "$b" >/dev/null || die "$b not found"; done
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || die "nginx not found"
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"

if has_contender damselfly || has_contender image; then
  if [ -z "${DAMSELFLY_BIN_DIR:-}" ]; then
    log "building release binaries (cargo build --release --bins)"
    (cd "$REPO" && cargo build --release --bins </dev/null) >&2 || die "cargo build failed"
    DAMSELFLY_BIN_DIR="${CARGO_TARGET_DIR:-$REPO/target}/release"
  fi
  for b in dfscheduler dfdaemon dfget; do
    [ -x "$DAMSELFLY_BIN_DIR/$b" ] || die "missing $DAMSELFLY_BIN_DIR/$b"
  done
fi
if has_contender image; then
  DFINIT="${DFINIT:-$DAMSELFLY_BIN_DIR/dfinit}"
  [ -x "$DFINIT" ] || die "missing dfinit at $DFINIT (set DFINIT)"
  for b in containerd ctr docker-registry skopeo; do command -v "$b" >/dev/null || die "$b not found"; done
fi

# ---------------------------------------------------------------------------------------------
# State and teardown. Every process we start is recorded in PIDS and stopped by PID; every
# namespace we create is recorded in NSS and deleted. The trap runs on exit, failure and Ctrl-C.

PIDS=()
NSS=()
WORK=""
CLK_TCK="$(getconf CLK_TCK)"
NSP="dfb$$"          # namespace prefix: unique per run

stop_pid() {
  local pid="$1" i=0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid f
  # Clients (curl, dfget) first: their jobs record their PIDs in $WORK/pid.
  if [ -n "$WORK" ] && [ -d "$WORK/pid" ]; then
    for f in "$WORK"/pid/h*; do
      [ -f "$f" ] && PIDS+=("$(cat "$f")")
    done
  fi
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  local ns
  for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
      # Logs are what tells why a run failed: keep them, drop the bulky payloads.
      find "$WORK" -name '*.bin' -type f -delete 2>/dev/null || true
      rm -rf "$WORK"/dl "$WORK"/*/storage "$WORK"/hosts/*/storage "$WORK"/image/registry \
        "$WORK"/image/layout "$WORK"/image/ctd/*/root 2>/dev/null || true
      log "work dir kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# bg NS LOG CMD...: start CMD in namespace NS in the background; sets LAST_PID (the command's own
# PID: ip netns exec and env both exec, so /proc/LAST_PID is the program itself).
bg() {
  local ns="$1" logf="$2"; shift 2
  ip netns exec "$ns" "$@" </dev/null >"$logf" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

# wait_until SECONDS CMD...: poll CMD every 0.2 s, at most SECONDS.
wait_until() {
  local limit=$(( $1 * 5 )) i=0; shift
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1)); [ "$i" -lt "$limit" ] || return 1
    sleep 0.2
  done
}

cpu_secs() { awk -v t="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hwm_kib() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }

# The whole machine's CPU while a contender's clients run (machine-cpu.csv): every namespace's
# daemons, clients and shaping share these cores, so a busy share near 1 means the machine, not
# the contender, set the pace. cpu_begin; ... ; cpu_end CONTENDER
cpu_jiffies() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }
cpu_begin() { CPU_AT_BEGIN="$(cpu_jiffies)"; }
cpu_end() {
  local end; end="$(cpu_jiffies)"
  awk -v c="$1" -v b="$CPU_AT_BEGIN" -v e="$end" -v n="$(nproc)" 'BEGIN {
    split(b, x, " "); split(e, y, " ")
    total = y[2] - x[2]; share = 0; if (total > 0) share = (y[1] - x[1]) / total
    printf "%s,%.3f,%d\n", c, share, n }' \
    >>"$RESULTS_DIR/machine-cpu.csv"
}

# ---------------------------------------------------------------------------------------------
# Testbed.

WORK="$(mktemp -d "$WORK_BASE/damselfly-netns.XXXXXX")"
chmod 755 "$WORK"
mkdir -p "$RESULTS_DIR" "$WORK/www" "$WORK/dl"
if [ -n "${DAMSELFLY_BIN_DIR:-}" ]; then
  # A snapshot of the binaries: a rebuild in the shared target dir must not swap them mid-run.
  mkdir -p "$WORK/bin"
  cp "$DAMSELFLY_BIN_DIR/dfscheduler" "$DAMSELFLY_BIN_DIR/dfdaemon" "$DAMSELFLY_BIN_DIR/dfget" "$WORK/bin/"
  if has_contender image; then cp "$DFINIT" "$WORK/bin/dfinit"; DFINIT="$WORK/bin/dfinit"; fi
  DAMSELFLY_BIN_DIR="$WORK/bin"
fi
GIT_REV="$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)"
RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"
log "work dir $WORK, results in $RESULTS_DIR"

BR="$NSP-br"
ORIGIN_NS="$NSP-origin"
ORIGIN_IP="10.231.0.1"
host_ns() { echo "$NSP-h$1"; }
host_ip() { echo "10.231.$(( $1 / 250 + 1 )).$(( $1 % 250 + 1 ))"; }

if ! ip netns add "$BR" 2>/dev/null; then
  die "cannot create network namespaces here (ip netns add failed)"
fi
NSS+=("$BR")
nsx "$BR" ip link set lo up
nsx "$BR" ip link add br0 type bridge
nsx "$BR" ip link set br0 up

# Netem probe, only when latency is asked for.
if [ "$LATENCY_MS" -gt 0 ]; then
  if ! nsx "$BR" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    die "LATENCY_MS=$LATENCY_MS is unsupported on this machine: the kernel has no tc netem (sch_netem); run with LATENCY_MS=0"
  fi
  nsx "$BR" tc qdisc del dev lo root
fi

# shape NS DEV MBIT: tbf at MBIT on DEV's egress, plus netem delay when LATENCY_MS > 0.
shape() {
  local ns="$1" dev="$2" mbit="$3"
  # Burst: 10 ms at the rate, at least 64 KiB so GSO-sized packets pass whole.
  local burst=$(( mbit * 1250 )); [ "$burst" -ge 65536 ] || burst=65536
  nsx "$ns" tc qdisc add dev "$dev" root handle 1: tbf rate "${mbit}mbit" burst "$burst" latency 50ms
  if [ "$LATENCY_MS" -gt 0 ]; then
    nsx "$ns" tc qdisc add dev "$dev" parent 1:1 handle 10: netem delay "${LATENCY_MS}ms"
  fi
}

# attach NS IP PORT UP_MBIT DOWN_MBIT: namespace NS with eth0=IP/16 on the bridge, shaped.
attach() {
  local ns="$1" ip="$2" port="$3" up="$4" down="$5"
  ip netns add "$ns"; NSS+=("$ns")
  nsx "$ns" ip link set lo up
  nsx "$BR" ip link add "$port" type veth peer name eth0 netns "$ns"
  nsx "$BR" ip link set "$port" master br0
  nsx "$BR" ip link set "$port" up
  nsx "$ns" ip addr add "$ip/16" dev eth0
  nsx "$ns" ip link set eth0 up
  shape "$ns" eth0 "$up"          # what the namespace sends: its uplink
  shape "$BR" "$port" "$down"     # what the bridge sends it: its downlink
}

attach "$ORIGIN_NS" "$ORIGIN_IP" vorigin "$ORIGIN_MBIT" "$ORIGIN_DOWN_MBIT"
for i in $(seq 1 "$N"); do
  attach "$(host_ns "$i")" "$(host_ip "$i")" "vh$i" "${UP[i]}" "${DOWN[i]}"
done
log "testbed: $N hosts, up Mbit/s [$HOST_UPS], down [$HOST_DOWNS], origin up $ORIGIN_MBIT / down $ORIGIN_DOWN_MBIT Mbit/s, latency ${LATENCY_MS} ms"

# ---------------------------------------------------------------------------------------------
# Shaping check: iperf3 for 3 s over the origin uplink and over a host-to-host path.

iperf_mbit() {  # iperf_mbit SERVER_NS SERVER_IP CLIENT_NS
  local sns="$1" sip="$2" cns="$3" out
  bg "$sns" "$WORK/iperf-server.log" iperf3 -s -B "$sip" -p 5201 -1
  local spid=$LAST_PID
  # Poll with ss, not a connect: iperf3 -1 would take a probe connection for its one client.
  wait_until 10 nsx "$sns" bash -c "ss -ltn | grep -q ':5201 '" || true
  out="$(nsx "$cns" timeout 20 iperf3 -c "$sip" -p 5201 -t 3 -J 2>/dev/null || true)"
  stop_pid "$spid"
  printf '%s' "$out" | "$PY" -c 'import json,sys
try: print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception: print("0")'
}

# iperf3 needs a fresh server per measurement (-1); wait for its port between runs.
M_ORIGIN_UP="$(iperf_mbit "$(host_ns 1)" "$(host_ip 1)" "$ORIGIN_NS")"
M_HOST="$(iperf_mbit "$(host_ns 1)" "$(host_ip 1)" "$(host_ns 2)")"
# h2 -> h1 runs at the lesser of h2's uplink and h1's downlink (and the origin's, of h1's).
M_HOST_CONF=$(( UP[2] < DOWN[1] ? UP[2] : DOWN[1] ))
M_ORIGIN_CONF=$(( ORIGIN_MBIT < DOWN[1] ? ORIGIN_MBIT : DOWN[1] ))
log "shaping check: origin -> h1 $M_ORIGIN_UP Mbit/s (configured $M_ORIGIN_CONF), h2 -> h1 $M_HOST Mbit/s (configured $M_HOST_CONF)"
shaping_ok=yes
for pair in "$M_ORIGIN_UP:$M_ORIGIN_CONF" "$M_HOST:$M_HOST_CONF"; do
  if ! awk -v m="${pair%%:*}" -v c="${pair##*:}" 'BEGIN { exit !(m >= 0.85 * c && m <= 1.05 * c) }'; then
    shaping_ok=no
  fi
done
[ "$shaping_ok" = yes ] || log "warning: measured rates are off by more than -15%/+5% of the configuration"
# A wildly unshaped link would make every number meaningless.
awk -v m="$M_HOST" -v c="$M_HOST_CONF" 'BEGIN { exit !(m <= 1.5 * c) }' || die "shaping does not hold ($M_HOST Mbit/s on a $M_HOST_CONF Mbit/s path)"

# ---------------------------------------------------------------------------------------------
# The file and the origin's nginx.

FILE_NAME="blob-${SIZE_MIB}m.bin"
FILE="$WORK/www/$FILE_NAME"
FILE_BYTES=$(( SIZE_MIB * 1024 * 1024 ))
log "generating $SIZE_MIB MiB of random data"
head -c "$FILE_BYTES" /dev/urandom >"$FILE"
chmod 644 "$FILE"
URL="http://$ORIGIN_IP/$FILE_NAME"

mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
user root;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  log_format bytes '\$remote_addr \$request_method \$status \$body_bytes_sent "\$http_range"';
  access_log $WORK/nginx/access.log bytes;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  types { application/octet-stream bin; }
  server {
    listen $ORIGIN_IP:80;
    listen 127.0.0.1:80;
    root $WORK/www;
  }
}
EOF
bg "$ORIGIN_NS" "$WORK/nginx/nginx.out" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
NGINX_PID=$LAST_PID
for i in $(seq 1 "$N"); do
  wait_until 10 nsx "$(host_ns "$i")" curl -fsS -o /dev/null -r 0-0 "$URL" \
    || { cat "$WORK/nginx/nginx.out" "$WORK/nginx/error.log" >&2 2>/dev/null; die "host $i cannot fetch $URL"; }
done
: >"$WORK/nginx/access.log"

# nginx_bytes [all|remote]: body bytes nginx sent (remote = to clients outside the origin ns).
nginx_bytes() {
  awk -v mode="$1" -v o="$ORIGIN_IP" '
    $2 == "GET" && ($3 == 200 || $3 == 206) { if (mode == "all" || ($1 != o && $1 != "127.0.0.1")) s += $4 }
    END { printf "%.0f\n", s }' "$WORK/nginx/access.log"
}
origin_tx() { nsx "$ORIGIN_NS" cat /sys/class/net/eth0/statistics/tx_bytes; }

# ---------------------------------------------------------------------------------------------
# Raw results for report.py: params.json, times.csv (contender,host,seconds,ok), summary.csv.

T_BOUND="$("$PY" - "$FILE_BYTES" "$ORIGIN_MBIT" "$HOST_UPS" "$HOST_DOWNS" <<'EOF'
import sys
f, o = int(sys.argv[1]) * 8, float(sys.argv[2]) * 1e6
ups = [float(x) * 1e6 for x in sys.argv[3].split()]
downs = [float(x) * 1e6 for x in sys.argv[4].split()]
print("%.0f" % max(f / o, f / min(downs), len(ups) * f / (o + sum(ups))))
EOF
)"
# Direct takes about N x F / u_s; the P2P contenders should be near the bound.
RUN_TIMEOUT="${RUN_TIMEOUT:-$("$PY" -c "print(int(6 * max($T_BOUND, $N * $FILE_BYTES * 8 / ($ORIGIN_MBIT * 1e6)) + 120))")}"
cat >"$RESULTS_DIR/params.json" <<EOF
{"n": $N, "host_mbit": $HOST_MBIT, "origin_mbit": $ORIGIN_MBIT, "origin_down_mbit": $ORIGIN_DOWN_MBIT,
 "host_up_mbit": [$(echo "$HOST_UPS" | tr ' ' ',')], "host_down_mbit": [$(echo "$HOST_DOWNS" | tr ' ' ',')],
 "size_mib": $SIZE_MIB, "file_bytes": $FILE_BYTES, "latency_ms": $LATENCY_MS,
 "measured_origin_up_mbit": $M_ORIGIN_UP, "measured_host_mbit": $M_HOST, "shaping_ok": "$shaping_ok",
 "stamp": "$STAMP", "git": "$GIT_REV", "kernel": "$(uname -r)", "cpus": $(nproc),
 "command": "$(printf '%s' "$CMDLINE" | sed 's/"/\\"/g')"}
EOF
echo "contender,host,seconds,ok" >"$RESULTS_DIR/times.csv"
echo "contender,busy_share,cores" >"$RESULTS_DIR/machine-cpu.csv"
echo "contender,http_origin_bytes,uplink_payload_bytes,uplink_wire_bytes,daemon_cpu_s,daemon_peak_rss_kib,daemon_count,seed_cpu_s,seed_peak_rss_kib,scheduler_cpu_s,scheduler_peak_rss_kib" >"$RESULTS_DIR/summary.csv"

# collect CONTENDER T0: read $WORK/done/hN (end timestamp) and $WORK/rc/hN into times.csv.
collect() {
  local c="$1" t0="$2" i end ok
  for i in $(seq 1 "$N"); do
    end="$(cat "$WORK/done/h$i" 2>/dev/null || echo)"
    ok="$(cat "$WORK/rc/h$i" 2>/dev/null || echo timeout)"
    if [ -n "$end" ] && [ "$ok" = 0 ]; then
      # links: ring.py's exit status already says whether every byte came.
      if [ "$c" != direct ] && [ "$c" != links ] && ! cmp -s "$WORK/dl/h$i/$FILE_NAME" "$FILE"; then ok=corrupt; fi
      if [ "$c" = direct ] && [ "$(stat -c %s "$WORK/dl/h$i/$FILE_NAME" 2>/dev/null || echo 0)" != "$FILE_BYTES" ]; then ok=short; fi
      echo "$c,h$i,$(awk -v a="$end" -v b="$t0" 'BEGIN { printf "%.3f", a - b }'),$([ "$ok" = 0 ] && echo 1 || echo "$ok")" >>"$RESULTS_DIR/times.csv"
    else
      # A number here is the client's exit status: not to be read as the ok flag 1.
      echo "$c,h$i,,$(isnum "$ok" && echo "exit-$ok" || echo "$ok")" >>"$RESULTS_DIR/times.csv"
    fi
  done
}

fresh_dirs() {
  rm -rf "$WORK/done" "$WORK/rc" "$WORK/dl" "$WORK/pid"
  mkdir -p "$WORK/done" "$WORK/rc" "$WORK/pid"
  local i
  for i in $(seq 1 "$N"); do mkdir -p "$WORK/dl/h$i"; done
}

# client I CMD...: run CMD on host I in the background, as a job that writes its end time to
# done/hI and its exit status to rc/hI; the client's own PID goes to pid/hI for the trap.
client() {
  local i="$1"; shift
  ( rc=0
    ip netns exec "$(host_ns "$i")" "$@" </dev/null 2>"$WORK/rc/h$i.err" &
    echo "$!" >"$WORK/pid/h$i"
    wait "$!" || rc=$?
    now >"$WORK/done/h$i"; echo "$rc" >"$WORK/rc/h$i" ) &
}

# wait_jobs PIDS...: wait for the client jobs, at most RUN_TIMEOUT seconds; stragglers are stopped.
wait_jobs() {
  local deadline=$(( $(date +%s) + RUN_TIMEOUT )) p alive f
  while :; do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timeout after ${RUN_TIMEOUT}s: stopping the clients still running"
      for f in "$WORK"/pid/h*; do [ -f "$f" ] && stop_pid "$(cat "$f")"; done
      for p in "$@"; do stop_pid "$p"; done
      break
    fi
    sleep 0.2
  done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# ---------------------------------------------------------------------------------------------
# 0. links: the ring of bench/netns/ring.py, host i receiving from host i+1 (h1 from h2, hN from
# h1); each server takes one connection and exits.

LINKS_PORT=5301
run_links() {
  log "links: $N hosts each receive the file from the next host, one TCP connection each, at once"
  fresh_dirs
  local servers=() jobs=() i next t0
  for i in $(seq 1 "$N"); do
    bg "$(host_ns "$i")" "$WORK/links-h$i.log" "$PY" "$HERE/ring.py" serve "$FILE" "$(host_ip "$i")" "$LINKS_PORT"
    servers+=("$LAST_PID")
  done
  for i in $(seq 1 "$N"); do
    wait_until 10 nsx "$(host_ns "$i")" bash -c "ss -ltn | grep -q ':$LINKS_PORT '" \
      || { cat "$WORK/links-h$i.log" >&2; die "links: h$i does not listen"; }
  done
  cpu_begin
  t0="$(now)"
  for i in $(seq 1 "$N"); do
    next=$(( i % N + 1 ))
    client "$i" "$PY" "$HERE/ring.py" fetch "$(host_ip "$next")" "$LINKS_PORT" "$FILE_BYTES"
    jobs+=("$!")
  done
  wait_jobs "${jobs[@]}"
  cpu_end links
  for i in "${servers[@]}"; do stop_pid "$i"; done
  collect links "$t0"
  echo "links,,0,0,,,,,,," >>"$RESULTS_DIR/summary.csv"
  rm -rf "$WORK/dl"
}

# ---------------------------------------------------------------------------------------------
# 1. direct

run_direct() {
  log "direct: $N x curl at once"
  fresh_dirs
  local o0 w0 t0 jobs=() i
  o0="$(nginx_bytes all)"; w0="$(origin_tx)"
  cpu_begin
  t0="$(now)"
  for i in $(seq 1 "$N"); do
    client "$i" curl -fsS -o "$WORK/dl/h$i/$FILE_NAME" "$URL"
    jobs+=("$!")
  done
  wait_jobs "${jobs[@]}"
  cpu_end direct
  local o1 w1
  o1="$(nginx_bytes all)"; w1="$(origin_tx)"
  collect direct "$t0"
  echo "direct,$((o1 - o0)),$((o1 - o0)),$((w1 - w0)),,,,,,," >>"$RESULTS_DIR/summary.csv"
  rm -rf "$WORK/dl"
}

# ---------------------------------------------------------------------------------------------
# 2. bittorrent: opentracker (whitelist = the torrent's info hash), aria2c seeding in the origin
# namespace, aria2c leeching on every host. A leecher's completion time is taken by its
# --on-bt-download-complete hook (called when the download is done, before seeding); leechers
# keep seeding until every host is done, as a swarm would.

run_bittorrent() {
  log "bittorrent: opentracker + aria2c seeder + $N aria2c leechers"
  fresh_dirs
  local bt="$WORK/bt"
  rm -rf "$bt"; mkdir -p "$bt/tracker"
  # Piece size: 1 MiB up to 1 GiB files (2^20), as common clients choose.
  local plen=20
  [ "$SIZE_MIB" -gt 1024 ] && plen=22
  mktorrent -a "http://$ORIGIN_IP:6969/announce" -l "$plen" -o "$bt/f.torrent" "$FILE" >"$bt/mktorrent.log" 2>&1 \
    || { cat "$bt/mktorrent.log" >&2; die "mktorrent failed"; }
  local hash
  hash="$(aria2c -S "$bt/f.torrent" | awk -F': *' '/^Info Hash:/ { print $2 }')"
  [ -n "$hash" ] || die "no info hash from aria2c -S"
  echo "$hash" >"$bt/tracker/whitelist.txt"
  # opentracker chroots into tracker.rootdir and drops to nobody before it reads the whitelist,
  # so the whitelist's path is the one inside that root.
  chmod 755 "$bt" "$bt/tracker"; chmod 644 "$bt/tracker/whitelist.txt"
  cat >"$bt/tracker/opentracker.conf" <<EOF
tracker.rootdir $bt/tracker
access.whitelist /whitelist.txt
EOF
  bg "$ORIGIN_NS" "$bt/opentracker.log" opentracker -f "$bt/tracker/opentracker.conf" -i "$ORIGIN_IP" -p 6969 -P 6969 -u nobody
  local tracker_pid=$LAST_PID
  wait_until 10 nsx "$(host_ns 1)" bash -c "exec 3<>/dev/tcp/$ORIGIN_IP/6969" \
    || { cat "$bt/opentracker.log" >&2; die "opentracker does not listen"; }

  cat >"$bt/done-hook.sh" <<'EOF'
#!/bin/sh
date +%s.%N >"$BENCH_DONE_FILE.tmp" && mv "$BENCH_DONE_FILE.tmp" "$BENCH_DONE_FILE"
EOF
  chmod 755 "$bt/done-hook.sh"
  local common=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=true
    --seed-ratio=0.0 --file-allocation=none --bt-tracker-interval=10 --summary-interval=0
    --console-log-level=warn --log-level=notice --check-certificate=false --auto-save-interval=0
    --bt-save-metadata=false --disk-cache=16M)
  bg "$ORIGIN_NS" "$bt/seed.out" aria2c "${common[@]}" --dir="$WORK/www" --check-integrity=false \
    --bt-seed-unverified=true --enable-rpc=true --rpc-listen-port=6800 --rpc-listen-all=false \
    --log="$bt/seed.log" "$bt/f.torrent"
  local seed_pid=$LAST_PID
  local rpc='{"jsonrpc":"2.0","id":"b","method":"aria2.tellActive","params":[["uploadLength","seeder"]]}'
  wait_until 15 nsx "$ORIGIN_NS" curl -fsS -d "$rpc" http://127.0.0.1:6800/jsonrpc \
    || { cat "$bt/seed.out" >&2; die "aria2c seeder did not start"; }
  sleep 2   # let the seeder announce before the leechers do

  local w0 t0 i leech=() 
  w0="$(origin_tx)"
  cpu_begin
  t0="$(now)"
  for i in $(seq 1 "$N"); do
    bg "$(host_ns "$i")" "$bt/h$i.out" env BENCH_DONE_FILE="$WORK/done/h$i" aria2c "${common[@]}" \
      --dir="$WORK/dl/h$i" --on-bt-download-complete="$bt/done-hook.sh" --log="$bt/h$i.log" "$bt/f.torrent"
    leech+=("$LAST_PID")
  done
  # Wait until every host has its completion stamp (or a leecher died, or the timeout).
  local deadline=$(( $(date +%s) + RUN_TIMEOUT )) n_done p dead
  while :; do
    n_done="$(find "$WORK/done" -name 'h*' ! -name '*.tmp' | wc -l)"
    [ "$n_done" -lt "$N" ] || break
    dead=0; for p in "${leech[@]}"; do kill -0 "$p" 2>/dev/null || dead=1; done
    [ "$dead" = 0 ] || { log "an aria2c leecher exited early"; break; }
    [ "$(date +%s)" -lt "$deadline" ] || { log "bittorrent: timeout after ${RUN_TIMEOUT}s"; break; }
    sleep 0.2
  done
  cpu_end bittorrent
  local up w1 cpu=0 rss=0 s r
  up="$(nsx "$ORIGIN_NS" curl -fsS -d "$rpc" http://127.0.0.1:6800/jsonrpc | "$PY" -c 'import json,sys
r = json.load(sys.stdin)["result"]; print(sum(int(t["uploadLength"]) for t in r))' || echo 0)"
  w1="$(origin_tx)"
  for p in "${leech[@]}" "$seed_pid"; do
    s="$(cpu_secs "$p")"; r="$(hwm_kib "$p")"
    cpu="$(awk -v a="$cpu" -v b="$s" 'BEGIN { printf "%.2f", a + b }')"
    [ "$r" -le "$rss" ] || rss="$r"
  done
  local seed_cpu seed_rss
  seed_cpu="$(cpu_secs "$seed_pid")"; seed_rss="$(hwm_kib "$seed_pid")"
  for i in $(seq 1 "$N"); do
    if [ -s "$WORK/done/h$i" ]; then echo 0 >"$WORK/rc/h$i"; fi
  done
  for p in "${leech[@]}" "$seed_pid" "$tracker_pid"; do stop_pid "$p"; done
  collect bittorrent "$t0"
  echo "bittorrent,0,$up,$((w1 - w0)),$cpu,$rss,$((N + 1)),$seed_cpu,$seed_rss,," >>"$RESULTS_DIR/summary.csv"
  rm -rf "$WORK/dl"
}

# ---------------------------------------------------------------------------------------------
# 3. damselfly

# swarm_up DIR EXTRA...: dfscheduler and a seed-peer dfdaemon in the origin namespace, a dfdaemon
# on every host (EXTRA: more dfdaemon flags for all of them), logs and storage under DIR; waits
# until every daemon is healthy. Sets DF_SCHED_PID, DF_SEED_PID and DF_PIDS (h1 first).
swarm_up() {
  local df="$1" i; shift
  rm -rf "$df"; mkdir -p "$df"
  # damselfly_daemon at debug logs one line per piece with its source (pieces.py reads them).
  local level="${DF_LOG_LEVEL:-info,damselfly_daemon=debug}"
  bg "$ORIGIN_NS" "$df/dfscheduler.log" "$DAMSELFLY_BIN_DIR/dfscheduler" --listen "$ORIGIN_IP:8002" \
    --metrics none --log-level "$level" ${DF_SCHEDULER_CONFIG:+--config "$DF_SCHEDULER_CONFIG"}
  DF_SCHED_PID=$LAST_PID
  wait_until 20 nsx "$ORIGIN_NS" bash -c "exec 3<>/dev/tcp/$ORIGIN_IP/8002" \
    || { tail -n 30 "$df/dfscheduler.log" >&2; die "dfscheduler does not listen"; }
  # daemon NS IP NAME EXTRA...: one dfdaemon.
  daemon() {
    local ns="$1" ip="$2" name="$3"; shift 3
    mkdir -p "$df/$name/storage"
    bg "$ns" "$df/$name.log" "$DAMSELFLY_BIN_DIR/dfdaemon" --scheduler "$ORIGIN_IP:8002" --ip "$ip" \
      --hostname "$name" --storage-dir "$df/$name/storage" --socket "$df/$name.sock" --log-level "$level" "$@"
  }
  daemon "$ORIGIN_NS" "$ORIGIN_IP" seed --seed-peer ${DF_SEED_CONFIG:+--config "$DF_SEED_CONFIG"} "$@"
  DF_SEED_PID=$LAST_PID
  DF_PIDS=()
  for i in $(seq 1 "$N"); do
    daemon "$(host_ns "$i")" "$(host_ip "$i")" "h$i" ${DF_HOST_CONFIG:+--config "$DF_HOST_CONFIG"} "$@"
    DF_PIDS+=("$LAST_PID")
  done
  wait_until 30 nsx "$ORIGIN_NS" curl -fsS -o /dev/null "http://$ORIGIN_IP:4003/healthy" \
    || { tail -n 30 "$df/seed.log" >&2; die "seed dfdaemon not healthy"; }
  for i in $(seq 1 "$N"); do
    wait_until 30 nsx "$(host_ns "$i")" curl -fsS -o /dev/null "http://$(host_ip "$i"):4003/healthy" \
      || { tail -n 30 "$df/h$i.log" >&2; die "dfdaemon h$i not healthy"; }
    [ -S "$df/h$i.sock" ] || die "dfdaemon h$i has no socket"
  done
}

run_damselfly() {
  log "damselfly: dfscheduler + seed peer in the origin namespace, $N dfdaemons, $N x dfget"
  fresh_dirs
  local df="$WORK/df" i
  swarm_up "$df"
  local sched_pid=$DF_SCHED_PID seed_pid=$DF_SEED_PID pids=("${DF_PIDS[@]}")

  local o0 w0 t0 jobs=()
  o0="$(nginx_bytes all)"; w0="$(origin_tx)"
  local r0; r0="$(nginx_bytes remote)"
  cpu_begin
  t0="$(now)"
  for i in $(seq 1 "$N"); do
    client "$i" "$DAMSELFLY_BIN_DIR/dfget" "$URL" -O "$WORK/dl/h$i/$FILE_NAME" \
      -e "$df/h$i.sock" --no-progress
    jobs+=("$!")
  done
  wait_jobs "${jobs[@]}"
  cpu_end damselfly
  local o1 w1 r1
  o1="$(nginx_bytes all)"; w1="$(origin_tx)"; r1="$(nginx_bytes remote)"

  # Where each host's bytes came from (dfdaemon's /metrics on port 4002).
  local seed_bytes=0 src_line="" b_seed b_peer b_src
  {
    echo "host,from_seed,from_peers,back_to_source"
    for i in $(seq 1 "$N"); do
      b_seed="$(traffic_in "$(host_ns "$i")" "$(host_ip "$i")" remote_peer seed)"
      b_peer="$(traffic_in "$(host_ns "$i")" "$(host_ip "$i")" remote_peer normal)"
      b_src="$(traffic_in "$(host_ns "$i")" "$(host_ip "$i")" back_to_source '*')"
      seed_bytes=$((seed_bytes + b_seed))
      echo "h$i,$b_seed,$b_peer,$b_src"
    done
  } >"$RESULTS_DIR/damselfly-sources.csv"
  src_line="$(cat "$RESULTS_DIR/damselfly-sources.csv")"
  log "damselfly bytes by source:"; printf '%s\n' "$src_line" >&2

  local cpu=0 rss=0 s r p
  for p in "${pids[@]}" "$seed_pid"; do
    s="$(cpu_secs "$p")"; r="$(hwm_kib "$p")"
    cpu="$(awk -v a="$cpu" -v b="$s" 'BEGIN { printf "%.2f", a + b }')"
    [ "$r" -le "$rss" ] || rss="$r"
  done
  local seed_cpu seed_rss sched_cpu sched_rss
  seed_cpu="$(cpu_secs "$seed_pid")"; seed_rss="$(hwm_kib "$seed_pid")"
  sched_cpu="$(cpu_secs "$sched_pid")"; sched_rss="$(hwm_kib "$sched_pid")"
  for p in "${pids[@]}" "$seed_pid" "$sched_pid"; do stop_pid "$p"; done
  collect damselfly "$t0"
  # Uplink payload: the seed peer's uploads (as counted by the hosts) + nginx bytes to hosts.
  echo "damselfly,$((o1 - o0)),$((seed_bytes + r1 - r0)),$((w1 - w0)),$cpu,$rss,$((N + 1)),$seed_cpu,$seed_rss,$sched_cpu,$sched_rss" >>"$RESULTS_DIR/summary.csv"
  # The daemon logs say which parents served which pieces: keep them with the results.
  mkdir -p "$RESULTS_DIR/damselfly-logs"
  cp "$df"/*.log "$RESULTS_DIR/damselfly-logs/" 2>/dev/null || true
  for i in $(seq 1 "$N"); do
    cp "$WORK/rc/h$i.err" "$RESULTS_DIR/damselfly-logs/dfget-h$i.err" 2>/dev/null || true
  done
  gzip -f "$RESULTS_DIR/damselfly-logs"/* 2>/dev/null || true
  rm -rf "$WORK/dl" "$df"/*/storage
}

# traffic_in NS IP TYPE PARENT_TYPE: bytes in dfdaemon's damselfly_download_traffic_bytes_total
# with those labels, read inside namespace NS by bench/lib.sh's `traffic`.
traffic_in() {
  local ns="$1"; shift
  # shellcheck disable=SC2016  # expanded by the inner shell
  nsx "$ns" bash -c 'source "$1"; shift; traffic "$@"' traffic_in "$REPO/bench/lib.sh" "$@"
}

for c in $CONTENDERS; do
  "run_$c"
done

stop_pid "$NGINX_PID"
"$PY" "$HERE/report.py" "$RESULTS_DIR"
log "results: $RESULTS_DIR/results.md (results.csv, chart.png)"
cat "$RESULTS_DIR/results.md"
# --ci (or STRICT=1): every host of every contender must have its file.
if [ "${STRICT:-0}" = 1 ] && awk -F, 'NR > 1 && $4 != 1 { bad = 1 } END { exit !bad }' "$RESULTS_DIR/times.csv"; then
  die "some hosts did not get the file (see times.csv and the logs above)"
fi
