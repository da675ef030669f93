//! Vortex piece server and client over real loopback TCP.

mod common;

use common::*;
use damselfly_core::digest::piece_digest;
use damselfly_storage::{Storage, StorageError};
use damselfly_transfer::{
    download_piece_vortex, serve_vortex, serve_vortex_with, RateLimiter, TransferError,
    VortexServerConfig,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn start_server(
    storage: Storage,
    config: VortexServerConfig,
) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_vortex_with(
        listener,
        storage,
        RateLimiter::unlimited(),
        shutdown.clone(),
        config,
    ));
    (addr, shutdown)
}

#[tokio::test]
async fn pieces_roundtrip_between_two_storages() {
    let (seed_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(1);
    let data = content(5 * PIECE as usize + 12345, 1);
    let (seed, layout) = seeded(seed_dir.path(), &id, &data).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_vortex(
        listener,
        seed.clone(),
        RateLimiter::unlimited(),
        shutdown.clone(),
    ));

    let child = storage(child_dir.path());
    child
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let downloads =
        layout.spans().map(|span| {
            let child = child.clone();
            let id = id.clone();
            async move {
                download_piece_vortex(addr, &id, span, "seed-peer", &child, &[], TIMEOUT).await
            }
        });
    for result in futures::future::join_all(downloads).await {
        let piece = result.unwrap();
        assert_eq!(piece.parent_id.as_deref(), Some("seed-peer"));
        assert_eq!(
            piece.digest,
            seed.piece(&id, piece.number).unwrap().unwrap().digest
        );
    }
    child.finish_task(&id).unwrap();
    let output = child_dir.path().join("out");
    child.export(&id, &output, false, false).await.unwrap();
    assert_eq!(sha256(&std::fs::read(&output).unwrap()), sha256(&data));
    shutdown.cancel();
}

#[tokio::test]
async fn a_tampered_piece_is_rejected_and_not_recorded() {
    let (seed_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(2);
    let data = content(2 * PIECE as usize, 2);
    let (seed, layout) = seeded(seed_dir.path(), &id, &data).await;
    // Bit rot on the parent's disk after the piece was recorded.
    let path = seed.content_path(&id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[PIECE as usize + 5] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (addr, shutdown) = start_server(seed, VortexServerConfig::default()).await;

    let child = storage(child_dir.path());
    child
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let span = layout.span(1).unwrap();
    let err = download_piece_vortex(addr, &id, span, "bad-parent", &child, &[], TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::Storage(StorageError::DigestMismatch { number: 1, .. })
        ),
        "{err}"
    );
    assert!(child.piece(&id, 1).unwrap().is_none());
    // The intact piece still comes through.
    download_piece_vortex(
        addr,
        &id,
        layout.span(0).unwrap(),
        "bad-parent",
        &child,
        &[],
        TIMEOUT,
    )
    .await
    .unwrap();
    shutdown.cancel();
}

#[tokio::test]
async fn unknown_tasks_and_pieces_are_not_found() {
    let (seed_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(3);
    let seed = storage(seed_dir.path());
    seed.prepare_task(&id, 2 * PIECE, PIECE, vec![])
        .await
        .unwrap();
    let first = &content(PIECE as usize, 3);
    let layout = seed.task(&id).unwrap().unwrap().layout();
    seed.write_piece(
        &id,
        layout.span(0).unwrap(),
        first.as_slice(),
        None,
        None,
        Duration::ZERO,
    )
    .await
    .unwrap();
    let (addr, shutdown) = start_server(seed, VortexServerConfig::default()).await;

    let child = storage(child_dir.path());
    child
        .prepare_task(&id, 2 * PIECE, PIECE, vec![])
        .await
        .unwrap();
    let err = download_piece_vortex(
        addr,
        &id,
        layout.span(1).unwrap(),
        "p",
        &child,
        &[],
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransferError::PieceNotFound { number: 1, .. }),
        "{err}"
    );

    let other = task_id(4);
    child
        .prepare_task(&other, 2 * PIECE, PIECE, vec![])
        .await
        .unwrap();
    let err = download_piece_vortex(
        addr,
        &other,
        layout.span(0).unwrap(),
        "p",
        &child,
        &[],
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransferError::PieceNotFound { .. }), "{err}");
    shutdown.cancel();
}

/// Sends raw bytes, then reads whatever comes back until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8], close_write: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    if close_write {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("server must close");
    answer
}

const TAG_ERROR: u8 = 255;

#[tokio::test]
async fn garbage_gets_an_error_or_a_close_and_the_server_keeps_serving() {
    let (seed_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(5);
    let data = content(PIECE as usize, 5);
    let (seed, layout) = seeded(seed_dir.path(), &id, &data).await;
    let config = VortexServerConfig {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (addr, shutdown) = start_server(seed, config).await;

    // Wrong tag.
    let answer = exchange(addr, &[7, 42, 0, 0, 0, 4, 1, 2, 3, 4], false).await;
    assert_eq!(answer.get(1), Some(&TAG_ERROR), "{answer:?}");
    assert_eq!(answer.get(6), Some(&1), "invalid argument");
    // DownloadPiece claiming a 4 GiB value.
    let answer = exchange(addr, &[1, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], false).await;
    assert_eq!(answer.get(1), Some(&TAG_ERROR), "{answer:?}");
    // Truncated request, then the client gives up writing: closed without an answer.
    let answer = exchange(addr, &[1, 0, 0, 0, 0, 68, b'a', b'b'], true).await;
    assert!(answer.is_empty(), "{answer:?}");
    // Non-UTF-8 task ID.
    let mut bad_id = vec![1, 0, 0, 0, 0, 68];
    bad_id.extend([0xffu8; 68]);
    let answer = exchange(addr, &bad_id, false).await;
    assert_eq!(answer.get(1), Some(&TAG_ERROR), "{answer:?}");
    // Slowloris: half a header, then silence; the server hangs up after its request timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(&[1, 0, 0]).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a silent client must be dropped");
    // Random junk.
    let junk: Vec<u8> = content(100_000, 9);
    exchange(addr, &junk, false).await;

    // Still serving.
    let child = storage(child_dir.path());
    child
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let piece = download_piece_vortex(
        addr,
        &id,
        layout.span(0).unwrap(),
        "p",
        &child,
        &[],
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(piece.digest, piece_digest(&data));
    shutdown.cancel();
}

#[tokio::test]
async fn the_wire_format_is_header_value_then_raw_bytes() {
    let seed_dir = tempfile::tempdir().unwrap();
    let id = task_id(6);
    let data = content(1000, 6);
    let seed = storage(seed_dir.path());
    seed.prepare_task(&id, 1000, PIECE, vec![]).await.unwrap();
    let span = seed.task(&id).unwrap().unwrap().layout().span(0).unwrap();
    seed.write_piece(&id, span, data.as_slice(), None, None, Duration::ZERO)
        .await
        .unwrap();
    let (addr, shutdown) = start_server(seed, VortexServerConfig::default()).await;

    let mut request = vec![9, 0, 0, 0, 0, 68];
    request.extend(id.as_bytes());
    request.extend(0u32.to_be_bytes());
    // A peer that half-closes its side after the request is still answered.
    let half_closed = exchange(addr, &request, true).await;
    assert_eq!(
        half_closed.get(1),
        Some(&1),
        "PieceContent after a half-close"
    );
    let answer = exchange(addr, &request, false).await;
    assert_eq!(answer[1], 1, "PieceContent tag");
    let value_len = u32::from_be_bytes(answer[2..6].try_into().unwrap()) as usize;
    assert_eq!(
        answer.len(),
        6 + value_len + 1000,
        "header length covers the value only"
    );
    assert!(answer[6 + value_len..] == data[..]);
    let digest = piece_digest(&data);
    let value = &answer[6..6 + value_len];
    assert!(value.windows(digest.len()).any(|w| w == digest.as_bytes()));
    shutdown.cancel();
}

#[tokio::test]
async fn a_client_timeout_is_reported() {
    let child_dir = tempfile::tempdir().unwrap();
    // Accepts but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let id = task_id(7);
    let child = storage(child_dir.path());
    let task = child.prepare_task(&id, PIECE, PIECE, vec![]).await.unwrap();
    let err = download_piece_vortex(
        addr,
        &id,
        task.layout().span(0).unwrap(),
        "p",
        &child,
        &[],
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransferError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn uploads_are_counted() {
    let seed_dir = tempfile::tempdir().unwrap();
    let child_dir = tempfile::tempdir().unwrap();
    let id = task_id(8);
    let data = content(PIECE as usize, 8);
    let (seed, layout) = seeded(seed_dir.path(), &id, &data).await;
    let (addr, shutdown) = start_server(seed, VortexServerConfig::default()).await;
    let before = damselfly_transfer::metrics::UPLOAD_TRAFFIC_BYTES.get();
    let child = storage(child_dir.path());
    child.prepare_task(&id, PIECE, PIECE, vec![]).await.unwrap();
    download_piece_vortex(
        addr,
        &id,
        layout.span(0).unwrap(),
        "p",
        &child,
        &[],
        TIMEOUT,
    )
    .await
    .unwrap();
    let after = damselfly_transfer::metrics::UPLOAD_TRAFFIC_BYTES.get();
    assert!(after - before >= PIECE, "{before} -> {after}");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    assert!(text.contains("damselfly_upload_traffic_bytes_total"));
    shutdown.cancel();
}

/// Opens `count` TCP connections from `source` to `addr` and sends nothing on them.
async fn idle_connections(source: &str, addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        streams.push(socket.connect(addr).await.unwrap());
    }
    streams
}

/// Whether the server closed `stream` (a read returns end of file or an error).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn an_idle_flood_from_one_address_does_not_starve_other_peers() {
    let (seed_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(9);
    let data = content(4 * PIECE as usize, 9);
    let (seed, layout) = seeded(seed_dir.path(), &id, &data).await;
    let config = VortexServerConfig {
        // Long enough that the flood is still open while the honest peer downloads.
        request_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let (addr, shutdown) = start_server(seed, config).await;
    let mut flood = idle_connections("127.0.0.77", addr, 300).await;

    // Everything past the per-address cap is closed at once, not left in the backlog.
    let over_cap = flood.split_off(damselfly_transfer::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS);
    for mut stream in over_cap {
        assert!(
            closed_by_server(&mut stream).await,
            "an over-cap connection stayed open"
        );
    }

    let child = storage(child_dir.path());
    child
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    for span in layout.spans() {
        download_piece_vortex(addr, &id, span, "seed", &child, &[], TIMEOUT)
            .await
            .expect("a peer from another address is served during the flood");
    }
    child.finish_task(&id).unwrap();
    let output = child_dir.path().join("out");
    child.export(&id, &output, false, false).await.unwrap();
    assert_eq!(sha256(&std::fs::read(&output).unwrap()), sha256(&data));
    drop(flood);
    shutdown.cancel();
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_request_timeout() {
    let seed_dir = tempfile::tempdir().unwrap();
    let (seed, _) = seeded(seed_dir.path(), &task_id(10), &content(PIECE as usize, 10)).await;
    let config = VortexServerConfig {
        request_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let (addr, shutdown) = start_server(seed, config).await;
    for mut stream in idle_connections("127.0.0.78", addr, 3).await {
        assert!(
            closed_by_server(&mut stream).await,
            "an idle peer kept its socket"
        );
    }
    shutdown.cancel();
}

/// A Vortex DownloadPiece request for piece `number` of `id`, as the wire carries it.
fn raw_request(id: &str, number: u32) -> Vec<u8> {
    let mut request = vec![9, 0, 0, 0, 0, 68];
    request.extend(id.as_bytes());
    request.extend(number.to_be_bytes());
    request
}

/// Waits until `slots` has `count` requests in line.
async fn line_reaches(slots: &damselfly_transfer::UploadSlots, count: usize) {
    tokio::time::timeout(TIMEOUT, async {
        while slots.waiting() != count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the line never held {count} requests"));
}

#[tokio::test]
async fn requests_past_the_upload_limit_wait_and_a_peer_that_leaves_leaves_the_line() {
    let (seed_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(11);
    let data = content(2 * PIECE as usize, 11);
    let (seed, layout) = seeded(seed_dir.path(), &id, &data).await;
    let slots = damselfly_transfer::UploadSlots::new(1, 1);
    let config = VortexServerConfig {
        slots: slots.clone(),
        ..Default::default()
    };
    let (addr, shutdown) = start_server(seed, config).await;
    // Another upload holds the only turn.
    let busy = slots.acquire(&id, 1, "127.0.0.9".parse().unwrap()).await;

    // A peer asks, then gives up (its fetch moved elsewhere): it leaves the line.
    let mut leaving = TcpStream::connect(addr).await.unwrap();
    leaving.write_all(&raw_request(&id, 1)).await.unwrap();
    line_reaches(&slots, 1).await;
    drop(leaving);
    line_reaches(&slots, 0).await;

    // A peer that sends anything after its request (one request per connection) is dropped
    // from the line, and the server goes on serving.
    let mut noisy = TcpStream::connect(addr).await.unwrap();
    noisy.write_all(&raw_request(&id, 1)).await.unwrap();
    line_reaches(&slots, 1).await;
    noisy.write_all(b"garbage after the request").await.unwrap();
    line_reaches(&slots, 0).await;
    assert!(
        closed_by_server(&mut noisy).await,
        "the noisy peer was dropped"
    );

    // A peer that stays waits for the turn with nothing sent, then gets the whole piece.
    let child = storage(child_dir.path());
    child
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let span = layout.span(0).unwrap();
    let fetch = tokio::spawn({
        let (id, child) = (id.clone(), child.clone());
        async move { download_piece_vortex(addr, &id, span, "seed", &child, &[], TIMEOUT).await }
    });
    line_reaches(&slots, 1).await;
    assert!(!fetch.is_finished(), "a request past the limit was served");
    drop(busy);
    fetch.await.unwrap().expect("served once the turn is free");
    let stored = child.piece(&id, 0).unwrap().expect("piece 0 recorded");
    assert_eq!(stored.length, span.length);
    // The turn ends once the child acknowledged every byte.
    tokio::time::timeout(TIMEOUT, async {
        while slots.sending() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the turn is given back");
    shutdown.cancel();
}
