#!/usr/bin/env bash
# End-to-end test of the Damselfly images under podman. On one bridge network made for the test
# it runs a dfscheduler, a seed-peer dfdaemon, two dfdaemons, an nginx origin and a registry
# (Debian's docker-registry), all as containers, and checks from the host:
#   a. dfget of a 64 MiB file in dfdaemon-1, then in dfdaemon-2: both copies are intact, the
#      origin sent the file about once, and dfdaemon-2's metrics show bytes from peers;
#   b. an image pull with skopeo through the registry mirror of dfdaemon-1, then of dfdaemon-2
#      (ports published on 127.0.0.1): the layers are intact and the registry sent each layer
#      about once.
# Base images cannot be pulled here, so every image is assembled FROM scratch from binaries on
# this machine: Damselfly's by deploy/images/build-local.sh, nginx's and the registry's below.
#
# Needs root (rootful podman with bridge networking). Missing Debian packages (podman, runc,
# skopeo, nginx-light, docker-registry, curl, jq, iproute2) are installed with apt-get.
#
# Environment:
#   DAMSELFLY_BIN_DIR         binaries to package (default target/debug, or $CARGO_TARGET_DIR/debug;
#                             built with cargo if missing)
#   DAMSELFLY_REQUIRE_PODMAN  1: a SKIP is a failure (CI)
#   KEEP_IMAGES               set: keep the images the test built
#   PODMAN_RUNTIME            OCI runtime (default runc)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=../images/rootfs.sh
source "$REPO/deploy/images/rootfs.sh"

BIN_DIR="$(realpath -m "${DAMSELFLY_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/debug}")"
RUNTIME="${PODMAN_RUNTIME:-runc}"
FILE_SIZE=$((64 << 20))
# Sizes of the test image's random layers. Each is above 4 MiB because dfdaemon fetches content
# of one piece (<= 4 MiB) straight from the origin, without the swarm, by design.
LAYER_MIB=(5 6 9)
NET="damselfly-e2e-$$"
NAME="damselfly-e2e-$$"            # prefix of every container name
IMAGE_PREFIX="localhost/damselfly-e2e-$$" # every image the test builds is under it
REPO_PATH="e2e/random"             # repository of the test image in the registry
PODMAN_TIMEOUT=300                 # seconds any single podman command may take

PASSED=0
FAILED=0
CONTAINERS=()
IMAGES=()
WORK=""
NETWORK_MADE=""
START="$(date +%s)"

# All traffic stays on loopback and the test's network: no proxy for curl and skopeo here, and
# none passed into the containers (podman copies these variables into them by default).
unset http_proxy https_proxy ftp_proxy all_proxy no_proxy \
  HTTP_PROXY HTTPS_PROXY FTP_PROXY ALL_PROXY NO_PROXY

# ---------------------------------------------------------------------------------------------
# Reporting

log() { printf '==> %s\n' "$*"; }
pass() {
  PASSED=$((PASSED + 1))
  printf 'PASS: %s\n' "$*"
}
fail() {
  FAILED=$((FAILED + 1))
  printf 'FAIL: %s\n' "$*"
}
# check DESCRIPTION COMMAND...: one pass or fail, by the command's exit status.
check() {
  local what="$1"
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
die() {
  echo "podman-cluster: $*" >&2
  exit 1
}
# A test that cannot run here is skipped, unless CI said podman must be there.
skip() {
  if [ "${DAMSELFLY_REQUIRE_PODMAN:-}" = 1 ]; then
    echo "FAIL: cannot run, and DAMSELFLY_REQUIRE_PODMAN=1: $*"
    exit 1
  fi
  echo "SKIP: $*"
  exit 0
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
# at_most A B FACTOR: A <= FACTOR x B.
at_most() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { exit !(a <= f * b) }'; }

# Every podman call is bounded, so a wedged runtime fails the test instead of hanging it.
pm() { timeout "$PODMAN_TIMEOUT" podman "$@"; }

# ---------------------------------------------------------------------------------------------
# Cleanup: containers, network, images (unless KEEP_IMAGES), the work directory. Runs on every
# exit; on failure it first prints what the containers logged.

dump_logs() {
  local c
  for c in "${CONTAINERS[@]}"; do
    echo "----- logs of $c (last 60 lines) -----"
    pm logs --tail 60 "$c" 2>&1 || true
  done
  if [ -n "$WORK" ] && [ -s "$WORK/origin-log/access.log" ]; then
    echo "----- origin access log (last 20 lines) -----"
    tail -n 20 "$WORK/origin-log/access.log"
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; then fail "aborted (exit status $rc)"; fi
  if [ "$FAILED" -gt 0 ]; then dump_logs; fi
  summary
  if [ "${#CONTAINERS[@]}" -gt 0 ]; then
    pm rm --force --time 5 "${CONTAINERS[@]}" >/dev/null 2>&1 || true
  fi
  if [ -n "$NETWORK_MADE" ]; then pm network rm --force "$NET" >/dev/null 2>&1 || true; fi
  if [ -z "${KEEP_IMAGES:-}" ] && [ "${#IMAGES[@]}" -gt 0 ]; then
    pm rmi --force "${IMAGES[@]}" >/dev/null 2>&1 || true
  fi
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
  exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Preconditions

# Tools and the Debian packages that bring them.
declare -A PACKAGE_OF=(
  [podman]=podman [runc]=runc [skopeo]=skopeo [nginx]=nginx-light
  [docker-registry]=docker-registry [curl]=curl [jq]=jq [ldd]=libc-bin [ss]=iproute2
)

preflight() {
  [ "$(id -u)" = 0 ] || skip "needs root (rootful podman with bridge networking)"
  PATH="$PATH:/usr/sbin:/sbin" # runc and nginx live there; sudo or cron may leave it out
  local tool missing=() packages=()
  for tool in "${!PACKAGE_OF[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || skip "missing ${missing[*]} and no apt-get"
    for tool in "${missing[@]}"; do packages+=("${PACKAGE_OF[$tool]}"); done
    log "installing ${packages[*]}"
    apt-get update -qq </dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${packages[@]}" </dev/null >/dev/null || skip "could not install ${packages[*]}"
  fi
  pm info >/dev/null 2>&1 || skip "podman does not work here: $(podman info 2>&1 | tail -n 1)"
}

# Explicit ulimits within the hard limits of this shell: podman's defaults (1048576) are above
# them, and without CAP_SYS_RESOURCE the runtime may not raise a limit. nproc also stays at or
# below kernel.pid_max: larger values were refused (EPERM) on the machine this was written on.
pick_ulimits() {
  local hard_nofile hard_nproc pid_max
  hard_nofile="$(ulimit -Hn)"
  hard_nproc="$(ulimit -Hu)"
  pid_max="$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)"
  [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
  [ "$hard_nproc" = unlimited ] && hard_nproc="$pid_max"
  NOFILE=$((hard_nofile < 1048576 ? hard_nofile : 1048576))
  NPROC=$((hard_nproc < pid_max ? hard_nproc : pid_max))
}

# The Damselfly binaries, built with cargo when missing.
ensure_binaries() {
  local bin absent=""
  for bin in dfscheduler dfdaemon dfget dfinit; do
    [ -x "$BIN_DIR/$bin" ] || absent=1
  done
  [ -z "$absent" ] && return 0
  local profile=()
  # Only a cargo profile directory can be filled by cargo.
  case "$BIN_DIR" in
    */debug) ;;
    */release) profile=(--release) ;;
    *) die "$BIN_DIR has no Damselfly binaries" ;;
  esac
  log "building the binaries: cargo build ${profile[*]} --bins -p damselfly"
  (cd "$REPO" && CARGO_TARGET_DIR="$(dirname "$BIN_DIR")" cargo build "${profile[@]}" --bins -p damselfly)
}

# ---------------------------------------------------------------------------------------------
# Images

build_damselfly_images() {
  local out
  out="$(DAMSELFLY_BIN_DIR="$BIN_DIR" DAMSELFLY_IMAGE_PREFIX="$IMAGE_PREFIX" \
    "$REPO/deploy/images/build-local.sh")" || die "build-local.sh failed"
  echo "$out"
  SCHEDULER_IMAGE="$(awk '$1 == "scheduler" { print $2 }' <<<"$out")"
  CLIENT_IMAGE="$(awk '$1 == "client" { print $2 }' <<<"$out")"
  SCHEDULER_SIZE="$(awk '$1 == "scheduler" { print $3 }' <<<"$out")"
  CLIENT_SIZE="$(awk '$1 == "client" { print $3 }' <<<"$out")"
  if [ -z "$SCHEDULER_IMAGE" ] || [ -z "$CLIENT_IMAGE" ]; then die "build-local.sh named no images"; fi
  IMAGES+=("$SCHEDULER_IMAGE" "$CLIENT_IMAGE")
}

# build_scratch_image REF DIR [LAYERS]: DIR holds a root filesystem and a Containerfile (FROM
# scratch). One layer, unless LAYERS is "true": then one layer per COPY, and podman keeps the
# steps as unnamed parent images, which go when the image is removed.
build_scratch_image() {
  IMAGES+=("$1")
  pm build --quiet --layers="${3:-false}" --tag "$1" "$2" >/dev/null
}

# nginx from the host's nginx-light. It serves /srv/origin (mounted) with Range support and logs
# method, path, status and body bytes of each request to /var/log/nginx (mounted).
build_origin_image() {
  local ctx="$WORK/ctx-origin"
  rootfs_add_base "$ctx"
  rootfs_add_binary "$ctx" "$(command -v nginx || echo /usr/sbin/nginx)" /usr/sbin/nginx
  mkdir -p "$ctx/etc/nginx" "$ctx/srv/origin" "$ctx/var/log/nginx"
  cat >"$ctx/etc/nginx/nginx.conf" <<'EOF'
user nobody nogroup;
worker_processes 2;
pid /tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  log_format bytes '$remote_addr $request_method $uri $status $body_bytes_sent $http_range';
  access_log /var/log/nginx/access.log bytes;
  client_body_temp_path /tmp/body;
  proxy_temp_path /tmp/proxy;
  fastcgi_temp_path /tmp/fastcgi;
  uwsgi_temp_path /tmp/uwsgi;
  scgi_temp_path /tmp/scgi;
  default_type application/octet-stream;
  sendfile on;
  server {
    listen 80;
    root /srv/origin;
  }
}
EOF
  cat >"$ctx/Containerfile" <<'EOF'
FROM scratch
COPY . /
EXPOSE 80
ENTRYPOINT ["/usr/sbin/nginx", "-e", "stderr", "-c", "/etc/nginx/nginx.conf", "-g", "daemon off;"]
EOF
  ORIGIN_IMAGE="$IMAGE_PREFIX/origin:test"
  build_scratch_image "$ORIGIN_IMAGE" "$ctx"
}

# Debian's docker-registry (distribution 2.x) with filesystem storage inside the container. Its
# access log (combined format, with bytes sent) goes to the container's log.
build_registry_image() {
  local ctx="$WORK/ctx-registry"
  rootfs_add_base "$ctx"
  rootfs_add_binary "$ctx" "$(command -v docker-registry)" /usr/bin/docker-registry
  mkdir -p "$ctx/etc/docker/registry" "$ctx/var/lib/registry"
  cat >"$ctx/etc/docker/registry/config.yml" <<'EOF'
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: 0.0.0.0:5000
EOF
  cat >"$ctx/Containerfile" <<'EOF'
FROM scratch
COPY . /
EXPOSE 5000
ENTRYPOINT ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]
EOF
  REGISTRY_IMAGE="$IMAGE_PREFIX/registry:test"
  build_scratch_image "$REGISTRY_IMAGE" "$ctx"
}

# A test image of random (incompressible) layers, one COPY each, stored gzip-compressed in
# $WORK/pushed (skopeo's dir: layout), whose files are the exact blobs pushed.
build_test_image() {
  local ctx="$WORK/ctx-testimage" i
  mkdir -p "$ctx"
  echo "FROM scratch" >"$ctx/Containerfile"
  for i in "${!LAYER_MIB[@]}"; do
    mkdir -p "$ctx/layer$i/data"
    head -c "$((LAYER_MIB[i] << 20))" /dev/urandom >"$ctx/layer$i/data/random-$i.bin"
    echo "COPY layer$i/ /" >>"$ctx/Containerfile"
  done
  TEST_IMAGE="$IMAGE_PREFIX/random:test"
  build_scratch_image "$TEST_IMAGE" "$ctx" true
  timeout "$PODMAN_TIMEOUT" skopeo copy --quiet --dest-compress \
    "containers-storage:$TEST_IMAGE" "dir:$WORK/pushed"
}

# ---------------------------------------------------------------------------------------------
# Network and containers

# A bridge network on a /24 that no route on this host uses yet (bounded number of tries).
create_network() {
  local try octet
  for try in $(seq 0 19); do
    octet=$(((${$} + try * 37) % 200 + 30))
    ip route 2>/dev/null | grep -q "^10\.231\.$octet\." && continue
    if pm network create --driver bridge --subnet "10.231.$octet.0/24" "$NET" >/dev/null 2>&1; then
      NETWORK_MADE=1
      SUBNET="10.231.$octet"
      return 0
    fi
  done
  die "could not create a podman bridge network"
}

# run_container NAME IP IMAGE [podman run options...] -- [container arguments...]
run_container() {
  local name="$1" ip="$2" image="$3" options=()
  shift 3
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    options+=("$1")
    shift
  done
  [ "$#" -gt 0 ] && shift
  CONTAINERS+=("$NAME-$name")
  pm run --detach --name "$NAME-$name" --hostname "$name" \
    --runtime "$RUNTIME" --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC" \
    --log-driver k8s-file --network "$NET" --ip "$ip" \
    "${options[@]}" "$image" "$@" >/dev/null
}

# A free TCP port on 127.0.0.1 for a published container port (bounded number of tries).
free_port() {
  local try port
  for try in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
      echo "$port"
      return 0
    fi
  done
  die "no free port on 127.0.0.1"
}

# wait_http WHAT URL [curl options...]: poll until URL answers 2xx, at most 60 times 0.5 s.
wait_http() {
  local what="$1" url="$2" try
  shift 2
  for try in $(seq 1 60); do
    if curl -fsS -o /dev/null -m 2 "$@" "$url" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  die "$what did not answer on $url"
}

start_cluster() {
  SCHEDULER_IP="$SUBNET.10"
  SEED_IP="$SUBNET.11"
  D1_IP="$SUBNET.12"
  D2_IP="$SUBNET.13"
  ORIGIN_IP="$SUBNET.20"
  REGISTRY_IP="$SUBNET.21"
  MIRROR1_PORT="$(free_port)"
  MIRROR2_PORT="$(free_port)"
  [ "$MIRROR1_PORT" != "$MIRROR2_PORT" ] || MIRROR2_PORT="$(free_port)"

  # The origin's files and logs are host directories, so the test reads them directly.
  mkdir -p "$WORK/origin-data" "$WORK/origin-log" "$WORK/out-1" "$WORK/out-2"
  chmod 0755 "$WORK/origin-data"
  head -c "$FILE_SIZE" /dev/urandom >"$WORK/origin-data/file.bin"
  chmod 0644 "$WORK/origin-data/file.bin"
  FILE_SHA="$(sha256sum "$WORK/origin-data/file.bin" | cut -d' ' -f1)"

  # Every dfdaemon reads the same file. The proxy listens on all addresses so the port
  # published on the host's 127.0.0.1 reaches it; the mirror's upstream is the registry.
  mkdir -p "$WORK/conf"
  cat >"$WORK/conf/dfdaemon.yaml" <<EOF
proxy:
  server:
    ip: 0.0.0.0
    port: 4001
  registryMirror:
    addr: http://$REGISTRY_IP:5000
EOF
  # The daemons find the scheduler by name, as in Kubernetes: podman's DNS on this network
  # resolves the container name, and the daemon resolves it again every refresh.
  cat >"$WORK/conf/dynconfig.yaml" <<EOF
scheduler:
  addr: $NAME-scheduler:8002
EOF

  log "starting origin, registry and scheduler on $NET ($SUBNET.0/24)"
  run_container origin "$ORIGIN_IP" "$ORIGIN_IMAGE" \
    -v "$WORK/origin-data:/srv/origin:ro" -v "$WORK/origin-log:/var/log/nginx"
  run_container registry "$REGISTRY_IP" "$REGISTRY_IMAGE"
  run_container scheduler "$SCHEDULER_IP" "$SCHEDULER_IMAGE" -- --listen 0.0.0.0:8002
  wait_http origin "http://$ORIGIN_IP/file.bin" --head
  wait_http registry "http://$REGISTRY_IP:5000/v2/"
  wait_http scheduler "http://$SCHEDULER_IP:8000/healthy"

  log "starting the seed peer and two dfdaemons"
  start_daemon seed "$SEED_IP" -- --seed-peer
  start_daemon dfdaemon-1 "$D1_IP" -p "127.0.0.1:$MIRROR1_PORT:4001" -v "$WORK/out-1:/downloads"
  start_daemon dfdaemon-2 "$D2_IP" -p "127.0.0.1:$MIRROR2_PORT:4001" -v "$WORK/out-2:/downloads"
  local ip
  for ip in "$SEED_IP" "$D1_IP" "$D2_IP"; do
    wait_http "dfdaemon at $ip" "http://$ip:4003/healthy"
  done
}

# start_daemon NAME IP [podman run options...] [-- dfdaemon flags...]
start_daemon() {
  local name="$1" ip="$2" options=() flags=()
  shift 2
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    options+=("$1")
    shift
  done
  [ "$#" -gt 0 ] && shift
  flags=("$@")
  run_container "$name" "$ip" "$CLIENT_IMAGE" \
    -v "$WORK/conf/dfdaemon.yaml:/etc/dragonfly/dfdaemon.yaml:ro" \
    -v "$WORK/conf/dynconfig.yaml:/etc/dragonfly/dynconfig.yaml:ro" "${options[@]}" -- \
    --config /etc/dragonfly/dfdaemon.yaml --dynconfig /etc/dragonfly/dynconfig.yaml --console \
    --ip "$ip" --hostname "$name" "${flags[@]}"
}

# ---------------------------------------------------------------------------------------------
# The images themselves: users and labels as the Containerfiles say.

test_images() {
  log "images: users and labels"
  local users version
  # `podman top ... huser`: the user of each process in the container as the host sees it.
  users="$(pm top "$NAME-scheduler" huser 2>/dev/null | tail -n +2 | sort -u | paste -sd, -)"
  check "dfscheduler runs as uid 65532 (got: ${users:-none})" test "$users" = 65532
  users="$(pm top "$NAME-dfdaemon-1" huser 2>/dev/null | tail -n +2 | sort -u | paste -sd, -)"
  check "dfdaemon runs as root (got: ${users:-none})" test "$users" = root
  version="$("$BIN_DIR/dfscheduler" --version | awk '{ print $2 }')"
  local image label
  for image in "$SCHEDULER_IMAGE" "$CLIENT_IMAGE"; do
    label="$(pm image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$image")"
    check "$image is labelled with the binaries' version $version" test "$label" = "$version"
  done
}

# ---------------------------------------------------------------------------------------------
# a. dfget through the swarm

# Body bytes the origin sent for PATH (nginx log: addr method uri status bytes range).
origin_bytes() {
  awk -v path="$1" '$3 == path { sum += $5 } END { print sum + 0 }' "$WORK/origin-log/access.log"
}

# Bytes dfdaemon at IP downloaded from other peers, from its Prometheus metrics.
peer_bytes() {
  curl -fsS -m 5 "http://$1:4002/metrics" \
    | awk '/^damselfly_download_traffic_bytes_total\{/ && /type="remote_peer"/ { sum += $NF }
           END { printf "%d\n", sum }'
}

test_dfget() {
  log "a. dfget of a $(mib "$FILE_SIZE") file in dfdaemon-1, then dfdaemon-2"
  local n t0 t1
  for n in 1 2; do
    t0="$(date +%s.%N)"
    if pm exec "$NAME-dfdaemon-$n" dfget "http://$ORIGIN_IP/file.bin" -O /downloads/file.bin; then
      t1="$(date +%s.%N)"
      pass "dfget in dfdaemon-$n ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s)"
    else
      fail "dfget in dfdaemon-$n"
    fi
    check "dfdaemon-$n's copy has the origin's sha256" \
      test "$(sha256sum "$WORK/out-$n/file.bin" 2>/dev/null | cut -d' ' -f1)" = "$FILE_SHA"
  done

  ORIGIN_FILE_BYTES="$(origin_bytes /file.bin)"
  check "origin sent file.bin about once: $ORIGIN_FILE_BYTES bytes = $(ratio "$ORIGIN_FILE_BYTES" "$FILE_SIZE") x (limit 1.1)" \
    at_most "$ORIGIN_FILE_BYTES" "$FILE_SIZE" 1.1

  D2_PEER_BYTES="$(peer_bytes "$D2_IP")" || D2_PEER_BYTES=0
  check "dfdaemon-2 got the file from peers: remote_peer $(mib "$D2_PEER_BYTES") (at least 0.9 x file)" \
    at_most "$(awk -v s="$FILE_SIZE" 'BEGIN { print 0.9 * s }')" "$D2_PEER_BYTES" 1
}

# ---------------------------------------------------------------------------------------------
# b. image pull through the registry mirrors

# The layer digests (hex) of the manifest in skopeo's dir: layout DIR.
layer_digests() {
  jq -r '.layers[].digest | sub("^sha256:"; "")' "$1/manifest.json"
}

# Body bytes the registry sent for blob HEX (its access log, combined format).
registry_blob_bytes() {
  pm logs "$NAME-registry" 2>&1 \
    | awk -v blob="/v2/$REPO_PATH/blobs/sha256:$1" '$6 == "\"GET" && $7 == blob { sum += $10 }
        END { print sum + 0 }'
}
registry_blob_gets() {
  pm logs "$NAME-registry" 2>&1 \
    | awk -v blob="/v2/$REPO_PATH/blobs/sha256:$1" '$6 == "\"GET" && $7 == blob { n++ }
        END { print n + 0 }'
}

test_image_pull() {
  log "b. image pull through the registry mirrors of dfdaemon-1 and dfdaemon-2"
  build_test_image
  timeout "$PODMAN_TIMEOUT" skopeo copy --quiet --dest-tls-verify=false \
    "dir:$WORK/pushed" "docker://$REGISTRY_IP:5000/$REPO_PATH:v1"
  PUSHED_LAYERS="$(layer_digests "$WORK/pushed")"

  local n port hex ok
  for n in 1 2; do
    port="MIRROR${n}_PORT"
    if timeout "$PODMAN_TIMEOUT" skopeo copy --quiet --src-tls-verify=false \
      "docker://127.0.0.1:${!port}/$REPO_PATH:v1" "dir:$WORK/pulled-$n"; then
      pass "skopeo pull through dfdaemon-$n's mirror (127.0.0.1:${!port})"
    else
      fail "skopeo pull through dfdaemon-$n's mirror (127.0.0.1:${!port})"
      continue
    fi
    ok=1
    for hex in $PUSHED_LAYERS; do
      [ "$(sha256sum "$WORK/pulled-$n/$hex" 2>/dev/null | cut -d' ' -f1)" = "$hex" ] || ok=""
    done
    check "dfdaemon-$n: the pulled layers are the pushed ones ($(wc -w <<<"$PUSHED_LAYERS") layers)" \
      test -n "$ok"
  done

  local size sent gets
  LAYER_BYTES=0
  REGISTRY_LAYER_BYTES=0
  for hex in $PUSHED_LAYERS; do
    size="$(stat -c %s "$WORK/pushed/$hex")"
    sent="$(registry_blob_bytes "$hex")"
    gets="$(registry_blob_gets "$hex")"
    LAYER_BYTES=$((LAYER_BYTES + size))
    REGISTRY_LAYER_BYTES=$((REGISTRY_LAYER_BYTES + sent))
    check "registry sent layer ${hex:0:12} about once: $sent of $size bytes in $gets GETs (limit 1.1 x)" \
      at_most "$sent" "$size" 1.1
  done
}

# ---------------------------------------------------------------------------------------------

summary() {
  echo
  echo "== summary =="
  printf 'images:  scheduler %s, client %s (binaries from %s)\n' \
    "$(mib "${SCHEDULER_SIZE:-0}")" "$(mib "${CLIENT_SIZE:-0}")" "$BIN_DIR"
  printf 'dfget:   origin sent %s for a %s file (%s x)\n' "$(mib "${ORIGIN_FILE_BYTES:-0}")" \
    "$(mib "$FILE_SIZE")" "$(ratio "${ORIGIN_FILE_BYTES:-0}" "$FILE_SIZE")"
  printf 'mirror:  registry sent %s for %s of layers pulled twice (%s x)\n' \
    "$(mib "${REGISTRY_LAYER_BYTES:-0}")" "$(mib "${LAYER_BYTES:-0}")" \
    "$(ratio "${REGISTRY_LAYER_BYTES:-0}" "${LAYER_BYTES:-0}")"
  printf 'time:    %d s\n' "$(($(date +%s) - START))"
  if [ -n "${KEEP_IMAGES:-}" ] && [ "${#IMAGES[@]}" -gt 0 ]; then echo "kept:    ${IMAGES[*]}"; fi
  echo "$PASSED passed, $FAILED failed"
}

main() {
  preflight
  pick_ulimits
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/damselfly-e2e.XXXXXX")"

  ensure_binaries
  log "building the images (runtime $RUNTIME, ulimits nofile=$NOFILE nproc=$NPROC)"
  build_damselfly_images
  build_origin_image
  build_registry_image
  create_network
  start_cluster
  test_images
  test_dfget
  test_image_pull
  [ "$FAILED" -eq 0 ] # cleanup prints the summary
}

main "$@"
