# Shared helpers for the bench scripts. Sourced, not run.
#
# Everything started here is recorded in BENCH_PIDS and stopped by PID in bench_cleanup, which the
# scripts install as an EXIT/INT/TERM trap.

BENCH_PIDS=()
BENCH_ROOT="${BENCH_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CLK_TCK="$(getconf CLK_TCK)"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in "${BENCH_PIDS[@]}"; do
    local i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

# stop_pid PID: stop one process we started, and forget it.
stop_pid() {
  local pid="$1" i=0 kept=() p
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  BENCH_PIDS=("${kept[@]}")
}

# Binaries: DAMSELFLY_BIN_DIR, else a release build of the workspace.
find_binaries() {
  if [ -z "${DAMSELFLY_BIN_DIR:-}" ]; then
    log "building release binaries (cargo build --release -p damselfly)"
    (cd "$BENCH_ROOT" && cargo build --release -p damselfly --bins </dev/null) >&2
    DAMSELFLY_BIN_DIR="$BENCH_ROOT/target/release"
  fi
  DFSCHEDULER="$DAMSELFLY_BIN_DIR/dfscheduler"
  DFDAEMON="$DAMSELFLY_BIN_DIR/dfdaemon"
  DFGET="$DAMSELFLY_BIN_DIR/dfget"
  local b
  for b in "$DFSCHEDULER" "$DFDAEMON" "$DFGET"; do [ -x "$b" ] || die "missing $b"; done
}

# nginx from the Debian package nginx-light, installed when missing.
ensure_nginx() {
  if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then return; fi
  log "installing nginx-light"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light </dev/null >&2 \
    || { $sudo apt-get update -q </dev/null >&2 && \
         $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light </dev/null >&2; } \
    || die "could not install nginx-light"
  # The package may start a system nginx on port 80; we do not need it, but we leave the
  # system's service alone (it is not ours to stop).
}

nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

# free_port IP: a port that was free a moment ago.
free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

# start_nginx DIR PORT: serves DIR/www on 127.0.0.1:PORT, logs body bytes to DIR/access.log.
# Sets NGINX_PID.
start_nginx() {
  local dir="$1" port="$2"
  mkdir -p "$dir/tmp" "$dir/www"
  chmod 755 "$(dirname "$dir")" "$dir" "$dir/www"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  log_format bytes '\$request_method \$status \$body_bytes_sent "\$http_range"';
  access_log $dir/access.log bytes;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  types { application/octet-stream bin; }
  server {
    listen 127.0.0.1:$port;
    root $dir/www;
  }
}
EOF
  "$(nginx_bin)" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' </dev/null >"$dir/nginx.out" 2>&1 &
  NGINX_PID=$!
  BENCH_PIDS+=("$NGINX_PID")
  local i=0
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null)" != 000 ]; do
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$dir/nginx.out" "$dir/error.log" >&2 2>/dev/null; die "nginx exited"; }
    i=$((i + 1)); [ "$i" -lt 100 ] || die "nginx did not come up"
    sleep 0.1
  done
}

# origin_bytes DIR: body bytes nginx has served for GETs so far.
origin_bytes() {
  awk '$1 == "GET" && ($2 == 200 || $2 == 206) { s += $3 } END { printf "%d\n", s }' "$1/access.log" 2>/dev/null || echo 0
}

# make_file PATH MIB: random content.
make_file() {
  head -c "$(( $2 * 1024 * 1024 ))" /dev/urandom >"$1"
  chmod 644 "$1"
}

# start_scheduler DIR LISTEN: sets SCHED_PID.
start_scheduler() {
  local dir="$1" listen="$2"
  "$DFSCHEDULER" --listen "$listen" --metrics none </dev/null >"$dir/dfscheduler.log" 2>&1 &
  SCHED_PID=$!
  BENCH_PIDS+=("$SCHED_PID")
  local host="${listen%:*}" port="${listen##*:}" i=0
  until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    kill -0 "$SCHED_PID" 2>/dev/null || { tail -n 50 "$dir/dfscheduler.log" >&2; die "dfscheduler exited"; }
    i=$((i + 1)); [ "$i" -lt 300 ] || die "dfscheduler did not listen on $listen"
    sleep 0.1
  done
}

# start_daemon NAME IP SCHEDULER STORAGE SOCKET LOG [extra args...]: sets DAEMON_PID.
start_daemon() {
  local name="$1" ip="$2" scheduler="$3" storage="$4" socket="$5" logf="$6"
  shift 6
  mkdir -p "$storage"
  "$DFDAEMON" --scheduler "$scheduler" --ip "$ip" --hostname "bench-$name" \
    --storage-dir "$storage" --socket "$socket" --log-level "${BENCH_LOG_LEVEL:-info}" "$@" \
    </dev/null >"$logf" 2>&1 &
  DAEMON_PID=$!
  BENCH_PIDS+=("$DAEMON_PID")
  local i=0
  until [ -S "$socket" ] && curl -fsS -o /dev/null "http://$ip:4003/healthy" 2>/dev/null; do
    kill -0 "$DAEMON_PID" 2>/dev/null || { tail -n 50 "$logf" >&2; die "dfdaemon $name exited"; }
    i=$((i + 1)); [ "$i" -lt 300 ] || { tail -n 50 "$logf" >&2; die "dfdaemon $name not healthy"; }
    sleep 0.1
  done
}

# cpu_ticks PID: utime+stime of PID in clock ticks.
cpu_ticks() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# status_kib PID FIELD: a /proc/PID/status field in KiB (VmRSS, VmHWM).
status_kib() {
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# traffic IP TYPE PARENT_TYPE: bytes in damselfly_download_traffic_bytes_total with those labels
# (PARENT_TYPE "*" = any).
traffic() {
  curl -fsS "http://$1:4002/metrics" 2>/dev/null | awk -v t="$2" -v p="$3" '
    function lab(line, k,   r) {
      if (match(line, "[{,]" k "=\"[^\"]*\"")) {
        r = substr(line, RSTART + 1, RLENGTH - 1); sub(/^[^=]*="/, "", r); sub(/"$/, "", r); return r
      }
      return ""
    }
    /^damselfly_download_traffic_bytes_total\{/ {
      if (lab($0, "type") == t && (p == "*" || lab($0, "parent_type") == p)) sum += $NF
    }
    END { printf "%d\n", sum }'
}

# median of the arguments (numbers).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
