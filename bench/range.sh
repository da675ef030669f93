#!/usr/bin/env bash
# Lazy reads: 1 MiB ranges at random offsets of a 1 GiB blob, straight from nginx, then through
# a fresh dfdaemon's registry mirror cold (nothing cached, prefetch off) and warm (the same
# ranges again). Reports time to first byte, p50/p99 per range and origin bytes per byte read.
#
#   bench/range.sh                       # 1 GiB blob, 200 ranges, seed 12
#   SIZE_MIB=256 RANGES=50 SEED=7 bench/range.sh
#   PAUSE_MS=50 bench/range.sh           # the reader works 50 ms (untimed) between reads
#
# The blob sits at /v2/bench/blobs/sha256:<digest> on nginx (tmpfs), so the proxy's default
# rule sends it through the swarm; the client names nginx with X-Dragonfly-Registry. One
# scheduler and one daemon (so every cold range goes to the origin, the worst case: with a
# peer holding the pieces, they come from it). Requests are sequential, one at a time.
# Needs: curl, python3, nginx (nginx-light is installed with apt-get if missing).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZE_MIB="${SIZE_MIB:-1024}"
RANGES="${RANGES:-200}"
SEED="${SEED:-12}"
RANGE_KIB="${RANGE_KIB:-1024}"
# A reader that works between its reads (untimed), e.g. a container touching files.
PAUSE_MS="${PAUSE_MS:-0}"
IP="${BENCH_IP:-127.0.9.3}"
[ "$RANGES" -ge 1 ] && [ "$RANGES" -le 2000 ] || die "RANGES must be 1..2000"
[ -d /dev/shm ] || die "/dev/shm missing"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

find_binaries
ensure_nginx
command -v python3 >/dev/null || die "python3 missing"

WORK="$(mktemp -d /dev/shm/damselfly-range.XXXXXX)"
trap 'bench_cleanup; [ -n "${KEEP_LOG:-}" ] && cp "$WORK/dfdaemon.log" "$KEEP_LOG"; rm -rf "$WORK"' EXIT
log "work dir $WORK"

PORT="$(free_port 127.0.0.1)"
start_nginx "$WORK/nginx" "$PORT"
make_file "$WORK/blob" "$SIZE_MIB"
DIGEST="$(sha256sum "$WORK/blob" | cut -d' ' -f1)"
BLOB_PATH="/v2/bench/blobs/sha256:$DIGEST"
mkdir -p "$WORK/nginx/www/v2/bench/blobs"
chmod -R 755 "$WORK/nginx/www/v2"
mv "$WORK/blob" "$WORK/nginx/www$BLOB_PATH"
ORIGIN="127.0.0.1:$PORT"
log "blob $SIZE_MIB MiB at http://$ORIGIN$BLOB_PATH; $RANGES ranges of $RANGE_KIB KiB, seed $SEED"

# The client: sequential GETs with a Range, timing the first byte and the whole body, checking
# each body against the file. Prints one line: ranges, bytes, ttfb p50, p50, p99 (ms).
cat >"$WORK/client.py" <<'EOF'
import http.client, random, sys, time, statistics
host, port, path, registry, blob, size, count, seed, kib, pause_ms = sys.argv[1:11]
size, count, seed, length = int(size), int(count), int(seed), int(kib) * 1024
pause = int(pause_ms) / 1000
rng = random.Random(seed)
data = open(blob, "rb")
ttfb, total, read = [], [], 0
conn = http.client.HTTPConnection(host, int(port), timeout=300)
for _ in range(count):
    start = rng.randrange(0, size - length)
    headers = {"Range": f"bytes={start}-{start + length - 1}"}
    if registry:
        headers["X-Dragonfly-Registry"] = registry
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    first = resp.read(1)
    t1 = time.perf_counter()
    body = first + resp.read()
    t2 = time.perf_counter()
    if resp.status != 206:
        sys.exit(f"status {resp.status} for {headers['Range']}")
    data.seek(start)
    if body != data.read(length):
        sys.exit(f"wrong bytes for {headers['Range']}")
    ttfb.append((t1 - t0) * 1000)
    total.append((t2 - t0) * 1000)
    read += len(body)
    time.sleep(pause)
q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
print(count, read, f"{statistics.median(ttfb):.2f}", f"{statistics.median(total):.2f}", f"{q(total, 0.99):.2f}")
EOF

run_client() { # HOST PORT REGISTRY
  python3 "$WORK/client.py" "$1" "$2" "$BLOB_PATH" "$3" "$WORK/nginx/www$BLOB_PATH" \
    "$(( SIZE_MIB * 1024 * 1024 ))" "$RANGES" "$SEED" "$RANGE_KIB" "$PAUSE_MS"
}

# Warm the page cache so the direct reads measure nginx, not the first touch of tmpfs.
cat "$WORK/nginx/www$BLOB_PATH" >/dev/null
before="$(origin_bytes "$WORK/nginx")"
read -r n d_read d_ttfb d_p50 d_p99 <<<"$(run_client 127.0.0.1 "$PORT" "")"
d_origin=$(( $(origin_bytes "$WORK/nginx") - before ))
log "direct: ttfb p50 ${d_ttfb} ms, p50 ${d_p50} ms, p99 ${d_p99} ms"

sport="$(free_port 127.0.0.1)"
start_scheduler "$WORK" "127.0.0.1:$sport"
start_daemon d "$IP" "127.0.0.1:$sport" "$WORK/storage" "$WORK/d.sock" "$WORK/dfdaemon.log" ${BENCH_DAEMON_ARGS:-}

before="$(origin_bytes "$WORK/nginx")"
read -r n c_read c_ttfb c_p50 c_p99 <<<"$(run_client "$IP" 4001 "http://$ORIGIN")"
c_origin=$(( $(origin_bytes "$WORK/nginx") - before ))
log "cold:   ttfb p50 ${c_ttfb} ms, p50 ${c_p50} ms, p99 ${c_p99} ms, origin $c_origin B"

# Warm means every cold range's piece fill has ended (they run on after their answers), so
# no warm read meets a fill still running; waits at most 60 s.
jobs_running() {
  curl -fsS "http://$IP:4002/metrics" 2>/dev/null | awk '
    /^damselfly_download_task_total\{/ && /result="started"/ { n += $NF }
    /^damselfly_download_task_total\{/ && /result="(finished|failed)"/ { n -= $NF }
    END { print n + 0 }'
}
for _ in $(seq 600); do [ "$(jobs_running)" = 0 ] && break; sleep 0.1; done
log "jobs still running before the warm reads: $(jobs_running)"

before="$(origin_bytes "$WORK/nginx")"
read -r n w_read w_ttfb w_p50 w_p99 <<<"$(run_client "$IP" 4001 "http://$ORIGIN")"
w_origin=$(( $(origin_bytes "$WORK/nginx") - before ))
log "warm:   ttfb p50 ${w_ttfb} ms, p50 ${w_p50} ms, p99 ${w_p99} ms, origin $w_origin B"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "$RANGES ranges of $RANGE_KIB KiB at random offsets (seed $SEED) of a $SIZE_MIB MiB blob, sequential"
echo
echo "| path | TTFB p50 (ms) | p50 per range (ms) | p99 per range (ms) | origin bytes / byte read |"
echo "|---|---|---|---|---|"
echo "| nginx direct | $d_ttfb | $d_p50 | $d_p99 | $(ratio "$d_origin" "$d_read") |"
echo "| proxy, cold (prefetch off) | $c_ttfb | $c_p50 | $c_p99 | $(ratio "$c_origin" "$c_read") |"
echo "| proxy, warm | $w_ttfb | $w_p50 | $w_p99 | $(ratio "$w_origin" "$w_read") |"
