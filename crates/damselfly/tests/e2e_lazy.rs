//! Lazy pulls through the proxy (issue 12): a Range request fetches only the pieces covering
//! it, from peers that hold them or with ranged origin GETs; other hosts reading the same
//! ranges take them from the first; prefetch fetches the rest of the blob once; several
//! ranges are answered `multipart/byteranges`; `dfget --range` writes just the range.
//!
//! The origin is the test process's HTTP server (it counts the body bytes it serves); the
//! daemons are real processes on loopback, used as registry mirrors (`X-Dragonfly-Registry`).

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// Dragonfly's proxy port; every daemon binds it on its own loopback address.
const PROXY_PORT: u16 = 4001;
const REGISTRY_HEADER: &str = "x-dragonfly-registry";
/// 64 MiB: 16 pieces of 4 MiB (Dragonfly's piece length for this size).
const BLOB_LEN: usize = 64 * MIB;
const PIECE: u64 = 4 * MIB as u64;

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

/// A GET of `path` through `daemon`'s mirror, with extra request headers.
fn mirror_get(daemon: &DaemonInfo, origin: &Origin, path: &str, headers: &[(&str, &str)]) -> Reply {
    let proxy = SocketAddr::new(daemon.ip.into(), PROXY_PORT);
    let url = format!("http://{proxy}{path}");
    let upstream = format!("http://{}", origin.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut request = reqwest::Client::new()
            .get(&url)
            .timeout(DEFAULT_DFGET_TIMEOUT)
            .header(REGISTRY_HEADER, &upstream);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("proxy request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("proxy body").to_vec();
        Reply {
            status,
            headers,
            body,
        }
    })
}

/// A blob at `/v2/lazy/blobs/sha256:<its digest>` (so the proxy's default rule sends it
/// through the swarm).
fn add_blob(origin: &Origin, len: usize) -> OriginFile {
    let data = bytes::Bytes::from(random_bytes(len));
    let path = format!("v2/lazy/blobs/sha256:{}", sha256_hex(&data));
    origin.add(&path, data)
}

/// Reads `[start, end]` (inclusive) through `daemon` and checks the answer against the blob.
fn read_range(daemon: &DaemonInfo, origin: &Origin, blob: &OriginFile, start: u64, end: u64) {
    let range = format!("bytes={start}-{end}");
    let reply = mirror_get(daemon, origin, &blob.path, &[("range", &range)]);
    assert_eq!(reply.status, 206, "{range} through {}", daemon.name);
    assert_eq!(
        reply.header("content-range"),
        format!("bytes {start}-{end}/{}", blob.len())
    );
    let slice = &blob.data[start as usize..=end as usize];
    assert_eq!(
        sha256_hex(&reply.body),
        sha256_hex(slice),
        "{range} bytes differ from the blob's"
    );
}

fn bytes_from_parents(daemon: &DaemonInfo) -> f64 {
    daemon.metrics().sum(
        "damselfly_download_traffic_bytes_total",
        &[("type", "remote_peer")],
    )
}

/// The piece a ranged origin GET asked for, when it asked for exactly one piece.
fn piece_of(range: &str) -> Option<u64> {
    let (first, last) = range.strip_prefix("bytes=")?.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    (first % PIECE == 0 && last + 1 == first + PIECE).then_some(first / PIECE)
}

/// The pieces of `blob` fetched from the origin, in order of piece number, once per GET.
fn piece_gets(origin: &Origin, blob: &OriginFile) -> Vec<u64> {
    let mut pieces: Vec<u64> = origin
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == blob.path)
        .filter_map(|r| r.range.as_deref().and_then(piece_of))
        .collect();
    pieces.sort_unstable();
    pieces
}

/// Every origin GET of `blob` was ranged: each of `pieces` once (no other piece), else the
/// rest of one of the clients' `ranges`: all of it, or what was left of it when the job went
/// to the origin after its piece's first bytes had already been sent from storage.
fn assert_origin_gets(origin: &Origin, blob: &OriginFile, pieces: &[u64], ranges: &[(u64, u64)]) {
    assert_eq!(
        piece_gets(origin, blob),
        pieces,
        "every covering piece is fetched once, no other"
    );
    let gets: Vec<Option<String>> = origin
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == blob.path)
        .map(|r| r.range)
        .collect();
    assert!(
        gets.iter().all(|range| range
            .as_deref()
            .is_some_and(|range| rest_of_a_range(range, ranges) || piece_of(range).is_some())),
        "every origin GET is a piece or the rest of a client's range: {gets:?}"
    );
}

/// Whether `range` (a `Range` header value) runs from inside one of `ranges` to its end.
fn rest_of_a_range(range: &str, ranges: &[(u64, u64)]) -> bool {
    let Some((first, last)) = range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) else {
        return false;
    };
    let (Ok(first), Ok(last)) = (first.parse::<u64>(), last.parse::<u64>()) else {
        return false;
    };
    ranges
        .iter()
        .any(|&(start, end)| (start..=end).contains(&first) && last == end)
}

/// `Range` header values of `[start, end]` ranges.
fn range_headers(ranges: &[(u64, u64)]) -> Vec<String> {
    ranges
        .iter()
        .map(|(start, end)| format!("bytes={start}-{end}"))
        .collect()
}

fn bytes_from_origin(daemon: &DaemonInfo) -> f64 {
    daemon.metrics().sum(
        "damselfly_download_traffic_bytes_total",
        &[("type", "back_to_source")],
    )
}

/// A daemon whose proxy has these `proxy` settings (YAML lines under `proxy:`).
fn start_daemon_with_proxy(cluster: &mut Cluster, proxy: &str) -> DaemonInfo {
    let config = cluster.path(&format!("dfdaemon-{}.yaml", cluster.daemons.len()));
    std::fs::write(&config, format!("proxy:\n{proxy}")).unwrap();
    cluster.start_daemon(DaemonOpts {
        extra: vec!["--config".into(), config.display().to_string()],
        ..DaemonOpts::default()
    })
}

/// Two ranges of a 64 MiB blob: the origin serves only the two pieces covering them; a second
/// host reading the same ranges takes them from the first, not the origin.
#[test]
fn ranges_fetch_only_their_pieces_and_peers_share_them() {
    let mut cluster = Cluster::new("lazy-ranges");
    cluster.start_scheduler();
    let a = cluster.start_daemon(DaemonOpts::default());
    let b = cluster.start_daemon(DaemonOpts::default());
    let origin = Origin::start();
    let blob = add_blob(&origin, BLOB_LEN);
    // Piece 1 (inside it) and piece 10 (inside it, not aligned).
    let ranges = [
        (5 * MIB as u64, 6 * MIB as u64 - 1),
        (40 * MIB as u64 + 100, 41 * MIB as u64 + 99),
    ];

    for &(start, end) in &ranges {
        read_range(&a, &origin, &blob, start, end);
    }
    // The answers may come from the origin directly, ahead of the pieces.
    assert!(
        wait_until(Duration::from_secs(60), || bytes_from_origin(&a)
            >= (2 * PIECE) as f64),
        "the ranges' pieces did not land"
    );
    let first = origin.served();
    let read: u64 = ranges.iter().map(|(start, end)| end - start + 1).sum();
    // Each cold range is also read from the origin directly (at most its own bytes) while
    // its piece fills the cache.
    assert!(
        (2 * PIECE..=2 * PIECE + read).contains(&first),
        "the first host should fetch exactly the 2 covering pieces of 16 (and at most the \
         ranges' bytes besides): {first} B"
    );
    assert_origin_gets(&origin, &blob, &[1, 10], &ranges);

    for &(start, end) in &ranges {
        read_range(&b, &origin, &blob, start, end);
    }
    assert_eq!(
        origin.served(),
        first,
        "the second host took bytes from the origin instead of the first host"
    );
    // Counted when the fetch returns, which may be just after the answer went out.
    assert!(
        wait_until(Duration::from_secs(10), || bytes_from_parents(&b)
            >= (2 * PIECE) as f64),
        "the second host's pieces did not come from a parent"
    );
    cluster.assert_no_panics();
}

/// A cold range's bytes go out as its piece arrives from the origin: with the origin holding
/// the piece's GET after its first 2 MiB, a read of the piece's first MiB is answered in full
/// (no whole piece could have landed); released, the piece lands once and serves the rest.
#[test]
fn a_cold_range_streams_while_its_piece_arrives() {
    let mut cluster = Cluster::new("lazy-stream");
    cluster.start_scheduler();
    // Without the origin read of the range itself, which would answer it before the piece.
    let a = start_daemon_with_proxy(&mut cluster, "  rangeHedge: false\n");
    let origin = Origin::start();
    let blob = add_blob(&origin, BLOB_LEN);
    let held_at = 2 * MIB as u64;
    origin.hold_bodies_after(held_at);
    // Piece 3's first MiB.
    let start = 3 * PIECE;
    read_range(&a, &origin, &blob, start, start + MIB as u64 - 1);
    assert!(
        origin.served() <= held_at,
        "the origin sent {} bytes: the answer waited for more than the held part of the piece",
        origin.served()
    );
    origin.release_bodies();
    // The rest of the piece, once it landed: no second origin fetch.
    read_range(
        &a,
        &origin,
        &blob,
        start + 3 * MIB as u64,
        start + PIECE - 1,
    );
    assert_eq!(origin.served(), PIECE, "piece 3 came from the origin once");
    cluster.assert_no_panics();
}

/// A cold range no peer holds is read from the origin directly while its piece fills the
/// cache: with every origin body held after its first 2 MiB, two ranges in the last MiB of
/// their pieces (bytes no held piece fetch can reach) are answered in full. Released, each
/// piece lands once; the host then serves the ranges from its cache, and a second host reads
/// them from the first, not the origin.
#[test]
fn a_cold_range_is_read_from_the_origin_while_its_piece_fills_the_cache() {
    let mut cluster = Cluster::new("lazy-hedge");
    cluster.start_scheduler();
    let a = cluster.start_daemon(DaemonOpts::default());
    let b = cluster.start_daemon(DaemonOpts::default());
    let origin = Origin::start();
    let blob = add_blob(&origin, BLOB_LEN);
    origin.hold_bodies_after(2 * MIB as u64);
    let ranges: Vec<(u64, u64)> = [3, 7]
        .iter()
        .map(|&n| ((n + 1) * PIECE - MIB as u64, (n + 1) * PIECE - 1))
        .collect();
    for &(start, end) in &ranges {
        read_range(&a, &origin, &blob, start, end);
    }
    // Answered while no piece could land: the origin was asked for the ranges themselves.
    let asked = range_headers(&ranges);
    let exact: Vec<String> = origin
        .requests()
        .into_iter()
        .filter_map(|r| r.range)
        .filter(|range| asked.contains(range))
        .collect();
    assert_eq!(
        exact, asked,
        "each range was asked of the origin once, exactly"
    );

    origin.release_bodies();
    assert!(
        wait_until(Duration::from_secs(60), || bytes_from_origin(&a)
            >= (2 * PIECE) as f64),
        "the ranges' pieces did not land"
    );
    let first = origin.served();
    assert_eq!(
        first,
        2 * PIECE + 2 * MIB as u64,
        "each piece and range came once"
    );
    assert_origin_gets(&origin, &blob, &[3, 7], &ranges);
    for &(start, end) in &ranges {
        read_range(&a, &origin, &blob, start, end);
        read_range(&b, &origin, &blob, start, end);
    }
    assert_eq!(
        origin.served(),
        first,
        "a warm range or a second host's read went to the origin"
    );
    assert!(
        wait_until(Duration::from_secs(10), || bytes_from_parents(&b)
            >= (2 * PIECE) as f64),
        "the second host's pieces did not come from the first"
    );
    cluster.assert_no_panics();
}

/// With `X-Dragonfly-Prefetch: true` the daemon serves the range, then fetches the rest of the
/// blob in the background: the origin serves the blob once in total, and a later whole GET
/// is a cache hit.
#[test]
fn prefetch_fetches_the_blob_once() {
    let mut cluster = Cluster::new("lazy-prefetch");
    cluster.start_scheduler();
    let a = cluster.start_daemon(DaemonOpts::default());
    let origin = Origin::start();
    let blob = add_blob(&origin, BLOB_LEN);
    let range = format!("bytes={}-{}", 20 * MIB, 21 * MIB - 1);
    let reply = mirror_get(
        &a,
        &origin,
        &blob.path,
        &[("range", &range), ("x-dragonfly-prefetch", "true")],
    );
    assert_eq!(reply.status, 206);
    assert_eq!(
        sha256_hex(&reply.body),
        sha256_hex(&blob.data[20 * MIB..21 * MIB])
    );
    let finished = || a.whole_tasks_finished() >= 1.0;
    assert!(
        wait_until(DEFAULT_DFGET_TIMEOUT, finished),
        "the prefetch did not finish the task"
    );
    assert_eq!(
        origin.served(),
        BLOB_LEN as u64,
        "range + prefetch should fetch the blob exactly once"
    );
    let whole = mirror_get(&a, &origin, &blob.path, &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(sha256_hex(&whole.body), blob.sha256);
    assert_eq!(whole.header("x-dragonfly-task-download-finished"), "true");
    assert_eq!(
        origin.served(),
        BLOB_LEN as u64,
        "the cached blob was fetched again"
    );
    cluster.assert_no_panics();
}

/// Several ranges in one request: a `multipart/byteranges` answer whose parts are the blob's
/// bytes, fetching only the covering pieces.
#[test]
fn several_ranges_are_answered_multipart() {
    let mut cluster = Cluster::new("lazy-multi");
    cluster.start_scheduler();
    let a = cluster.start_daemon(DaemonOpts::default());
    let origin = Origin::start();
    let blob = add_blob(&origin, BLOB_LEN);
    let total = blob.len() as u64;
    let reply = mirror_get(
        &a,
        &origin,
        &blob.path,
        &[("range", "bytes=0-99, 9437184-9437283, -100")],
    );
    assert_eq!(reply.status, 206);
    let content_type = reply.header("content-type");
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("not multipart: {content_type}"));
    assert_eq!(reply.header("content-length"), reply.body.len().to_string());
    let parts = parse_multipart(&reply.body, boundary);
    let expected = [(0u64, 99u64), (9437184, 9437283), (total - 100, total - 1)];
    assert_eq!(parts.len(), expected.len());
    for ((range, bytes), (start, end)) in parts.iter().zip(expected) {
        assert_eq!(range, &format!("bytes {start}-{end}/{total}"));
        assert_eq!(bytes.as_slice(), &blob.data[start as usize..=end as usize]);
    }
    assert_eq!(
        origin.served(),
        3 * PIECE,
        "only pieces 0, 2 and 15 should come from the origin"
    );
    cluster.assert_no_panics();
}

/// `dfget --range FIRST-LAST` writes just those bytes, fetching only their pieces.
#[test]
fn dfget_range_writes_the_slice() {
    let mut cluster = Cluster::new("lazy-dfget");
    cluster.start_scheduler();
    let a = cluster.start_daemon(DaemonOpts::default());
    let origin = Origin::start();
    let blob = add_blob(&origin, BLOB_LEN);
    let out = cluster.path("slice.bin");
    let (start, end) = (30 * MIB + 7, 31 * MIB + 6);
    let range = format!("{start}-{end}");
    let result = cluster.dfget(&a.socket, &blob.url, &out, &["--range", &range]);
    assert!(result.success(), "dfget failed: {}", result.stderr);
    assert_eq!(
        sha256_file(&out),
        sha256_hex(&blob.data[start..=end]),
        "the output is not the slice"
    );
    assert!(
        origin.served() <= 2 * PIECE,
        "dfget --range fetched {} bytes from the origin",
        origin.served()
    );
    cluster.assert_no_panics();
}

/// A client's reading of a `multipart/byteranges` body: (Content-Range, bytes) per part.
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("part headers end");
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .expect("part Content-Range")
            .to_string();
        let (_, total) = range.rsplit_once('/').unwrap();
        let (first, last) = range
            .trim_start_matches("bytes ")
            .trim_end_matches(&format!("/{total}"))
            .split_once('-')
            .unwrap();
        let len = (last.parse::<usize>().unwrap() - first.parse::<usize>().unwrap()) + 1;
        let data = &rest[head_end + 4..head_end + 4 + len];
        parts.push((range, data.to_vec()));
        rest = &rest[head_end + 4 + len..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
