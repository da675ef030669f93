# shellcheck shell=bash
# The image-pull contender of bench/netns/run.sh (issue 14). Sourced by run.sh, not run.
#
# A registry (Debian's docker-registry) in the origin namespace holds one image of IMAGE_LAYERS
# random layers (uncompressed tars, SIZE_MIB / IMAGE_LAYERS MiB each, so the image is as large as
# the file of the other contenders and T_min is the same). Every host namespace runs a containerd
# of its own (root, state and socket under the run's work dir). Three waves, every host at once:
#   image-direct: `ctr images pull` straight from the registry (no mirror): the baseline;
#   image-swarm:  (IMAGE_SWARM=1, the default) no containerd: curl on every host fetches every
#                 blob at once through its dfdaemon mirror, caches empty: what the swarm alone
#                 takes to serve the image, for the analysis of cold minus warm;
#   image-cold:   `ctr` through each host's dfdaemon mirror (hosts.toml written by dfinit), with
#                 dfscheduler and a seed peer next to the registry, caches empty again;
#   image-warm:   the image and its content removed from every containerd (the dfdaemons keep
#                 their caches), then pulled again: what containerd's own work costs.
# cold minus warm is what serving the layers through the swarm costs beyond containerd.
#
# IMAGE_PULL=pull (default: `ctr images pull`, fetch and unpack) or fetch (`ctr content fetch`,
# no unpack); IMAGE_SNAPSHOTTER=overlayfs (containerd's default); IMAGE_DIRECT=0 skips the
# baseline (it takes about N x the image / origin uplink); IMAGE_SWARM=0 skips image-swarm.

IMAGE_LAYERS="${IMAGE_LAYERS:-4}"
IMAGE_PULL="${IMAGE_PULL:-pull}"
IMAGE_SNAPSHOTTER="${IMAGE_SNAPSHOTTER:-overlayfs}"
IMAGE_DIRECT="${IMAGE_DIRECT:-1}"
IMAGE_SWARM="${IMAGE_SWARM:-1}"
IMAGE_REPO="bench/img"
IMAGE_TAG="v1"

image_check_params() {
  { isnum "$IMAGE_LAYERS" && [ "$IMAGE_LAYERS" -ge 1 ] && [ "$IMAGE_LAYERS" -le 64 ]; } \
    || die "IMAGE_LAYERS must be 1..64"
  case "$IMAGE_PULL" in pull|fetch) ;; *) die "IMAGE_PULL must be pull or fetch" ;; esac
  case "$IMAGE_DIRECT$IMAGE_SWARM" in [01][01]) ;; *) die "IMAGE_DIRECT and IMAGE_SWARM must be 0 or 1" ;; esac
}

# image_build DIR: an OCI layout of IMAGE_LAYERS random layers in DIR; prints the layer bytes.
image_build() {
  "$PY" - "$1" "$IMAGE_LAYERS" "$(( SIZE_MIB * 1024 * 1024 / IMAGE_LAYERS ))" "$IMAGE_TAG" <<'EOF'
import hashlib, io, json, os, sys, tarfile
out, layers, size, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def blob(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as fh:
        fh.write(data)
    return "sha256:" + h
descs, diff_ids, total = [], [], 0
for i in range(layers):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(f"layer{i}/random.bin")
        info.size, info.mode = size, 0o644
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    data = buf.getvalue()
    d = blob(data)
    total += len(data)
    diff_ids.append(d)  # an uncompressed layer's diff id is its digest
    descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(data)})
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": blob(config), "size": len(config)},
                       "layers": descs}).encode()
index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": blob(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}
with open(os.path.join(out, "index.json"), "w") as fh:
    json.dump(index, fh)
with open(os.path.join(out, "oci-layout"), "w") as fh:
    fh.write('{"imageLayoutVersion":"1.0.0"}')
with open(os.path.join(out, "layers.txt"), "w") as fh:
    fh.write("".join(d["digest"] + "\n" for d in descs))
print(total)
EOF
}

# registry_up IM: docker-registry on REGISTRY_ADDR in the origin namespace, the image pushed.
registry_up() {
  local im="$1"
  mkdir -p "$im/registry"
  cat >"$im/registry.yml" <<EOF
version: 0.1
log: {level: info, formatter: text}
storage:
  filesystem: {rootdirectory: $im/registry}
  delete: {enabled: true}
http: {addr: $REGISTRY_ADDR}
EOF
  bg "$ORIGIN_NS" "$im/registry.log" docker-registry serve "$im/registry.yml"
  REGISTRY_PID=$LAST_PID
  wait_until 20 nsx "$ORIGIN_NS" curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/" \
    || { tail -n 20 "$im/registry.log" >&2; die "docker-registry does not answer"; }
  mkdir -p "$im/home"
  nsx "$ORIGIN_NS" env HOME="$im/home" skopeo --insecure-policy copy --quiet --preserve-digests \
    --dest-tls-verify=false "oci:$im/layout:$IMAGE_TAG" "docker://$IMAGE_REF" >"$im/push.log" 2>&1 \
    || { cat "$im/push.log" >&2; die "skopeo push to the registry failed"; }
}

# registry_blob_bytes [all|remote|containerd]: body bytes of blob GETs the registry answered so
# far (remote: to clients outside the origin namespace, as the seed peer fetches over the
# namespace's loopback; containerd: to containerd itself, i.e. not through a dfdaemon).
registry_blob_bytes() {
  awk -v mode="$1" -v o="$ORIGIN_IP" '
    /msg="response completed"/ && /http.request.method=GET/ && /\/blobs\/sha256:/ {
      w = 0; ra = ""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^http.response.written=/) { split($i, kv, "="); w = kv[2] }
        if ($i ~ /^http.request.remoteaddr=/) { split($i, kv, "="); ra = kv[2]; gsub(/"/, "", ra) }
      }
      sub(/:[0-9]+$/, "", ra)
      if (mode == "all" || (mode == "remote" && ra != o && ra != "127.0.0.1") \
          || (mode == "containerd" && /http.request.useragent=containerd/)) s += w
    }
    END { printf "%.0f\n", s }' "$IMAGE_DIR/registry.log"
}

# containerd_up IM I: containerd in host I's namespace, its dirs under IM/ctd/hI.
containerd_up() {
  local d="$1/ctd/h$2"
  mkdir -p "$d"
  cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
EOF
  bg "$(host_ns "$2")" "$d/containerd.log" containerd --config "$d/config.toml"
  CTD_PIDS+=("$LAST_PID")
}

ctr_at() { local i="$1"; shift; nsx "$(host_ns "$i")" ctr -a "$IMAGE_DIR/ctd/h$i/containerd.sock" "$@"; }

# image_pull_cmd I MODE: the pull command of host I (MODE registry: ctr straight from the
# registry; mirror: ctr through its dfdaemon; swarm: curl through its dfdaemon, no containerd).
image_pull_cmd() {
  local i="$1" hosts=()
  if [ "$2" = swarm ]; then
    PULL_CMD=(bash "$IMAGE_DIR/fetch-blobs.sh" "$WORK/rc/h$i.size"); return
  fi
  [ "$2" = mirror ] && hosts=(--hosts-dir "$IMAGE_DIR/ctd/h$i/certs.d")
  PULL_CMD=(ctr -a "$IMAGE_DIR/ctd/h$i/containerd.sock")
  if [ "$IMAGE_PULL" = fetch ]; then
    PULL_CMD+=(content fetch --plain-http "${hosts[@]}" "$IMAGE_REF")
  else
    PULL_CMD+=(images pull --plain-http --snapshotter "$IMAGE_SNAPSHOTTER" "${hosts[@]}" "$IMAGE_REF")
  fi
}

# image_forget: the image, its content and snapshots out of every containerd (GC done: --sync).
image_forget() {
  local i left
  for i in $(seq 1 "$N"); do
    ctr_at "$i" images rm --sync "$IMAGE_REF" >/dev/null 2>&1 || true
    # `content fetch` leaves no image record: drop the blobs by hand.
    ctr_at "$i" content ls -q 2>/dev/null | xargs -r ctr -a "$IMAGE_DIR/ctd/h$i/containerd.sock" content rm >/dev/null 2>&1 || true
    left="$(ctr_at "$i" content ls -q 2>/dev/null | wc -l)"
    [ "$left" = 0 ] || die "containerd h$i still holds $left blobs after removing the image"
  done
}

# fetch_blobs_script: IM/fetch-blobs.sh, run on a host: every layer of the image at once through
# 127.0.0.1:4001 as containerd asks for it (?ns=, X-Dragonfly-Registry); fails on a short body.
# shellcheck disable=SC2016  # the $ in single quotes are the generated script's
fetch_blobs_script() {
  local layout="$IMAGE_DIR/layout" d
  {
    echo "set -u; fail=0; pids=()"
    while read -r d; do
      d="${d#sha256:}"
      printf 'curl -fsS -o /dev/null -w "%%{size_download}" -H "X-Dragonfly-Registry: http://%s" "http://127.0.0.1:4001/v2/%s/blobs/sha256:%s?ns=%s" >"$1.%s" & pids+=($!)\n' \
        "$REGISTRY_ADDR" "$IMAGE_REPO" "$d" "$REGISTRY_ADDR" "$d"
    done <"$layout/layers.txt"
    echo 'for p in "${pids[@]}"; do wait "$p" || fail=1; done'
    while read -r d; do
      d="${d#sha256:}"
      echo "[ \"\$(cat \"\$1.$d\")\" = $(stat -c %s "$layout/blobs/sha256/$d") ] || { echo 'short $d' >&2; fail=1; }"
    done <"$layout/layers.txt"
    echo 'exit "$fail"'
  } >"$IMAGE_DIR/fetch-blobs.sh"
}

# image_wave NAME MODE: every host pulls at once; times.csv rows; IMAGE_T0 and the origin
# counters before (W0, R0, RR0, S0) for image_summary.
image_wave() {
  local name="$1" mode="$2" i jobs=() how
  case "$mode" in
    registry) how="ctr $IMAGE_PULL straight from the registry" ;;
    mirror) how="ctr $IMAGE_PULL through the dfdaemon mirrors" ;;
    swarm) how="curl of every layer through the dfdaemon mirrors" ;;
  esac
  log "$name: $N x $how at once"
  fresh_dirs
  W0="$(origin_tx)"; R0="$(registry_blob_bytes all)"; RR0="$(registry_blob_bytes remote)"
  S0="$(image_seed_bytes "$mode")"; C0="$(cpu_sum "${CTD_PIDS[@]}")"; B0="$(registry_blob_bytes containerd)"
  local t0; t0="$(now)"
  IMAGE_T0="$t0"
  for i in $(seq 1 "$N"); do
    image_pull_cmd "$i" "$mode"
    ( rc=0
      ip netns exec "$(host_ns "$i")" "${PULL_CMD[@]}" </dev/null >"$WORK/rc/h$i.out" 2>"$WORK/rc/h$i.err" &
      echo "$!" >"$WORK/pid/h$i"
      wait "$!" || rc=$?
      now >"$WORK/done/h$i"; echo "$rc" >"$WORK/rc/h$i" ) &
    jobs+=("$!")
  done
  wait_jobs "${jobs[@]}"
  image_collect "$name" "$t0" "$mode"
  image_summary "$name" "$mode"
  local bypass=$(( $(registry_blob_bytes containerd) - B0 ))
  if [ "$mode" != registry ] && [ "$bypass" -gt 0 ]; then
    # containerd falls back to the registry when its mirror fails: that is no mirror pull.
    log "$name: containerd fetched $bypass blob bytes from the registry itself, not through its mirror"
    [ "${STRICT:-0}" = 0 ] || die "$name: the mirror was bypassed"
  fi
}

# image_collect NAME T0: per-host times; ok when ctr exited 0 and containerd holds every layer.
# ctr fetches every blob, then unpacks: its last "elapsed:" ("0.7 s", "94.3s") and "done:" lines
# are the two phases (image-phases.csv; the unpack as the Go duration ctr prints).
image_collect() {
  local c="$1" t0="$2" mode="$3" i end ok have d
  for i in $(seq 1 "$N"); do
    echo "$c,h$i,$(grep -ao 'elapsed: [0-9.]* *s' "$WORK/rc/h$i.out" | tail -n 1 | tr -d 's' | awk '{ print $2 }'),$(grep -ao 'done: [0-9.]*[a-zµ]*' "$WORK/rc/h$i.out" | tail -n 1 | awk '{ print $2 }')" \
      >>"$RESULTS_DIR/image-phases.csv"
    end="$(cat "$WORK/done/h$i" 2>/dev/null || echo)"
    ok="$(cat "$WORK/rc/h$i" 2>/dev/null || echo timeout)"
    if [ -n "$end" ] && [ "$ok" = 0 ] && [ "$mode" != swarm ]; then
      have="$(ctr_at "$i" content ls -q 2>/dev/null || true)"
      while read -r d; do
        grep -qxF "$d" <<<"$have" || ok=missing-layer
      done <"$IMAGE_DIR/layout/layers.txt"
    fi
    if [ -n "$end" ] && [ "$ok" = 0 ]; then
      echo "$c,h$i,$(awk -v a="$end" -v b="$t0" 'BEGIN { printf "%.3f", a - b }'),1" >>"$RESULTS_DIR/times.csv"
    else
      # A number here is ctr's exit status: not to be read as the ok flag 1.
      echo "$c,h$i,,$(isnum "$ok" && echo "exit-$ok" || echo "$ok")" >>"$RESULTS_DIR/times.csv"
      tail -n 5 "$WORK/rc/h$i.err" >&2 2>/dev/null || true
    fi
  done
}

cpu_sum() {
  local p t=0
  for p in "$@"; do t="$(awk -v a="$t" -v b="$(cpu_secs "$p")" 'BEGIN { printf "%.2f", a + b }')"; done
  echo "$t"
}

# image_seed_bytes MODE: bytes the hosts' dfdaemons got from the seed peer so far (0 without them).
image_seed_bytes() {
  local i s=0
  [ "$1" != registry ] || { echo 0; return; }
  for i in $(seq 1 "$N"); do
    s=$(( s + $(traffic_in "$(host_ns "$i")" "$(host_ip "$i")" remote_peer seed) ))
  done
  echo "$s"
}

# image_summary NAME MODE: summary.csv row of the wave just done, and image-waves.csv (CPU).
image_summary() {
  local name="$1" mode="$2" w1 r1 rr1 s1 c1 dcpu="" drss="" seed_cpu="" seed_rss="" sched_cpu="" sched_rss=""
  w1="$(origin_tx)"; r1="$(registry_blob_bytes all)"; rr1="$(registry_blob_bytes remote)"
  s1="$(image_seed_bytes "$mode")"; c1="$(cpu_sum "${CTD_PIDS[@]}")"
  if [ "$mode" != registry ]; then
    # Cumulative over the cold and warm waves: image-waves.csv has the per-wave CPU.
    dcpu="$(cpu_sum "${DF_PIDS[@]}" "$DF_SEED_PID")"
    drss=0; local p r
    for p in "${DF_PIDS[@]}" "$DF_SEED_PID"; do r="$(hwm_kib "$p")"; [ "$r" -le "$drss" ] || drss="$r"; done
    seed_cpu="$(cpu_secs "$DF_SEED_PID")"; seed_rss="$(hwm_kib "$DF_SEED_PID")"
    sched_cpu="$(cpu_secs "$DF_SCHED_PID")"; sched_rss="$(hwm_kib "$DF_SCHED_PID")"
  fi
  echo "$name,$((r1 - R0)),$((s1 - S0 + rr1 - RR0)),$((w1 - W0)),$dcpu,$drss,$([ "$mode" = registry ] || echo $((N + 1))),$seed_cpu,$seed_rss,$sched_cpu,$sched_rss" \
    >>"$RESULTS_DIR/summary.csv"
  echo "$name,$IMAGE_T0,$(awk -v a="$c1" -v b="$C0" 'BEGIN { printf "%.2f", a - b }'),$([ "$mode" = registry ] || cpu_sum "${DF_PIDS[@]}" "$DF_SEED_PID")" \
    >>"$RESULTS_DIR/image-waves.csv"
}

# image_mirrors: hosts.toml per host by dfinit, the registry mirrored by that host's dfdaemon
# (its proxy listens on 127.0.0.1:4001, the namespace's own loopback, where ctr pulls from).
image_mirrors() {
  local i
  for i in $(seq 1 "$N"); do
    "$DFINIT" --runtime containerd --containerd-certs-dir "$IMAGE_DIR/ctd/h$i/certs.d" \
      --registry "$REGISTRY_ADDR=http://$REGISTRY_ADDR" --mirror "http://127.0.0.1:4001" \
      >"$IMAGE_DIR/ctd/h$i/dfinit.log" 2>&1 \
      || { cat "$IMAGE_DIR/ctd/h$i/dfinit.log" >&2; die "dfinit failed for h$i"; }
  done
  cp "$IMAGE_DIR/ctd/h1/certs.d/$REGISTRY_ADDR/hosts.toml" "$RESULTS_DIR/image-hosts-h1.toml" 2>/dev/null || true
}

run_image() {
  log "image: docker-registry in the origin namespace, a containerd on each of $N hosts"
  IMAGE_DIR="$WORK/image"
  REGISTRY_ADDR="$ORIGIN_IP:5000"
  IMAGE_REF="$REGISTRY_ADDR/$IMAGE_REPO:$IMAGE_TAG"
  rm -rf "$IMAGE_DIR"; mkdir -p "$IMAGE_DIR"
  IMAGE_BYTES="$(image_build "$IMAGE_DIR/layout")"
  registry_up "$IMAGE_DIR"
  CTD_PIDS=()
  local i
  for i in $(seq 1 "$N"); do containerd_up "$IMAGE_DIR" "$i"; done
  for i in $(seq 1 "$N"); do
    wait_until 30 ctr_at "$i" version \
      || { tail -n 20 "$IMAGE_DIR/ctd/h$i/containerd.log" >&2; die "containerd h$i does not answer"; }
  done
  cat >"$RESULTS_DIR/image.json" <<EOF
{"image_bytes": $IMAGE_BYTES, "layers": $IMAGE_LAYERS, "pull": "$IMAGE_PULL",
 "snapshotter": "$IMAGE_SNAPSHOTTER", "containerd": "$(containerd --version | awk '{ print $3 }')"}
EOF
  echo "wave,t0,containerd_cpu_s,dfdaemon_cpu_s_cumulative" >"$RESULTS_DIR/image-waves.csv"
  echo "wave,host,fetch_s,unpack" >"$RESULTS_DIR/image-phases.csv"
  if [ "$IMAGE_DIRECT" = 1 ]; then
    image_wave image-direct registry
    image_forget
  fi
  if [ "$IMAGE_SWARM" = 1 ]; then
    fetch_blobs_script
    swarm_up "$WORK/image-swarm" --registry "http://$REGISTRY_ADDR"
    image_wave image-swarm swarm
    image_keep_logs "$WORK/image-swarm" image-swarm-logs
    swarm_down
    rm -rf "$WORK/image-swarm"
  fi
  swarm_up "$WORK/image-df" --registry "http://$REGISTRY_ADDR"
  image_mirrors
  image_wave image-cold mirror
  image_forget
  image_wave image-warm mirror
  image_keep_logs "$WORK/image-df" image-logs
  swarm_down
  local p
  for p in "${CTD_PIDS[@]}" "$REGISTRY_PID"; do stop_pid "$p"; done
  rm -rf "$IMAGE_DIR" "$WORK/image-df"/*/storage
}

swarm_down() {
  local p
  for p in "${DF_PIDS[@]}" "$DF_SEED_PID" "$DF_SCHED_PID"; do stop_pid "$p"; done
}

# image_keep_logs DF NAME: the daemons' logs in DF, the registry's and containerd's, gzipped in
# RESULTS_DIR/NAME.
image_keep_logs() {
  local d="$RESULTS_DIR/$2" i
  mkdir -p "$d"
  cp "$1"/*.log "$d/" 2>/dev/null || true
  cp "$IMAGE_DIR/registry.log" "$d/registry.log" 2>/dev/null || true
  for i in $(seq 1 "$N"); do
    cp "$IMAGE_DIR/ctd/h$i/containerd.log" "$d/containerd-h$i.log" 2>/dev/null || true
  done
  gzip -f "$d"/* 2>/dev/null || true
}
