//! The origin backend against a real loopback HTTP server.

mod common;

use common::*;
use damselfly_core::digest::{trusted_piece_digest, TRUSTED_PIECE_DIGEST_ALGORITHM};
use damselfly_core::PieceSpan;
use damselfly_storage::Storage;
use damselfly_transfer::{Backend, BackendConfig, OriginPiece, RateLimiter, TransferError};
use std::time::{Duration, Instant};

fn backend() -> Backend {
    Backend::new(BackendConfig {
        use_env_proxy: false,
        retry_backoff: Duration::from_millis(10),
        ..BackendConfig::default()
    })
    .unwrap()
}

/// A ranged GET of `span` into `storage`, hashed with crc32 only.
fn origin_piece<'a>(
    url: &'a str,
    storage: &'a Storage,
    id: &'a str,
    span: PieceSpan,
    limiters: &'a [RateLimiter],
) -> OriginPiece<'a> {
    OriginPiece {
        url,
        headers: &[],
        storage,
        task_id: id,
        span,
        limiters,
        trusted: None,
    }
}

/// Fetches every piece of the origin's object (`data`) with ranged GETs, hashed with the
/// trusted algorithm on the way; returns the stored bytes.
async fn fetch_by_pieces(origin: &Origin, storage: &Storage, id: &str, data: &[u8]) -> Vec<u8> {
    let backend = backend();
    let stat = backend.stat(&origin.url(BLOB), &[]).await.unwrap();
    let len = stat.content_length.unwrap();
    let task = storage
        .prepare_task(id, len, PIECE, stat.headers)
        .await
        .unwrap();
    let url = origin.url(BLOB);
    let limiters = [RateLimiter::unlimited()];
    for span in task.layout().spans() {
        let piece = OriginPiece {
            trusted: Some(TRUSTED_PIECE_DIGEST_ALGORITHM),
            ..origin_piece(&url, storage, id, span, &limiters)
        };
        let written = backend.fetch_piece(&piece).await.unwrap();
        let piece = &written.piece;
        assert_eq!((piece.offset, piece.length), (span.offset, span.length));
        assert_eq!(piece.parent_id, None);
        // What a back-to-source peer reports: the digest of the bytes the origin served.
        let served = &data[span.offset as usize..span.end() as usize];
        let trusted = written.trusted.map(|d| d.to_string());
        assert_eq!(
            trusted,
            Some(trusted_piece_digest(served)),
            "piece {span:?}"
        );
    }
    storage.finish_task(id).unwrap();
    std::fs::read(storage.content_path(id)).unwrap()
}

#[tokio::test]
async fn stat_uses_head_and_reports_range_support() {
    let data = content(1_000_003, 1);
    let origin = start_origin(data, OriginOptions::default()).await;
    let stat = backend().stat(&origin.url(BLOB), &[]).await.unwrap();
    assert_eq!(stat.content_length, Some(1_000_003));
    assert!(stat.supports_range);
    assert_eq!(stat.status, 200);
    assert_eq!(origin.request_count(), 1, "HEAD alone was enough");
}

#[tokio::test]
async fn stat_falls_back_to_a_ranged_get_when_head_is_refused() {
    let origin = start_origin(
        content(5000, 2),
        OriginOptions {
            head_status: Some(405),
            ..Default::default()
        },
    )
    .await;
    let stat = backend().stat(&origin.url(BLOB), &[]).await.unwrap();
    assert_eq!(stat.content_length, Some(5000));
    assert!(stat.supports_range);
    assert!(stat
        .headers
        .iter()
        .any(|(k, v)| k == "content-length" && v == "5000"));
}

#[tokio::test]
async fn stat_of_an_origin_without_range_support_or_length() {
    let origin = start_origin(
        content(5000, 3),
        OriginOptions {
            ranges: Ranges::Ignored,
            length: BodyLength::Chunked,
            ..Default::default()
        },
    )
    .await;
    let stat = backend().stat(&origin.url(BLOB), &[]).await.unwrap();
    assert_eq!(stat.content_length, None);
    assert!(!stat.supports_range);
}

#[tokio::test]
async fn origin_errors_are_reported_clearly() {
    let origin = start_origin(
        vec![1],
        OriginOptions {
            status: Some(404),
            ..Default::default()
        },
    )
    .await;
    let err = backend().stat(&origin.url(BLOB), &[]).await.unwrap_err();
    assert!(
        matches!(err, TransferError::OriginStatus { status: 404, ref url } if url == &origin.url(BLOB)),
        "{err}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/nothing");
    let err = backend().stat(&url, &[]).await.unwrap_err();
    assert!(
        matches!(err, TransferError::OriginUnreachable { .. }),
        "{err}"
    );

    let err = backend().stat("not a url", &[]).await.unwrap_err();
    assert!(matches!(err, TransferError::InvalidUrl { .. }), "{err}");
}

#[tokio::test]
async fn ranged_pieces_land_in_storage_intact() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let data = content(3 * PIECE as usize + 4321, 4);
    let origin = start_origin(data.clone(), OriginOptions::default()).await;
    let stored = fetch_by_pieces(&origin, &storage, &task_id(1), &data).await;
    assert_eq!(sha256(&stored), sha256(&data));
}

#[tokio::test]
async fn an_origin_ignoring_range_still_yields_the_right_piece() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let data = content(2 * PIECE as usize + 10, 5);
    let origin = start_origin(
        data.clone(),
        OriginOptions {
            ranges: Ranges::Ignored,
            ..Default::default()
        },
    )
    .await;
    let stored = fetch_by_pieces(&origin, &storage, &task_id(2), &data).await;
    assert_eq!(sha256(&stored), sha256(&data));
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let data = content(PIECE as usize, 6);
    let origin = start_origin(
        data.clone(),
        OriginOptions {
            fail_first: 1,
            ..Default::default()
        },
    )
    .await;
    let id = task_id(3);
    let task = storage
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let span = task.layout().span(0).unwrap();
    let url = origin.url(BLOB);
    let piece = origin_piece(&url, &storage, &id, span, &[]);
    let written = backend().fetch_piece(&piece).await.unwrap();
    assert_eq!(written.trusted, None, "no trusted digest asked for");
    assert_eq!(origin.request_count(), 2);

    // Two failures exceed the single default retry.
    let origin = start_origin(
        data,
        OriginOptions {
            fail_first: 2,
            ..Default::default()
        },
    )
    .await;
    storage.delete_task(&id).await.unwrap();
    storage
        .prepare_task(&id, PIECE, PIECE, vec![])
        .await
        .unwrap();
    let url = origin.url(BLOB);
    let err = backend()
        .fetch_piece(&origin_piece(&url, &storage, &id, span, &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::OriginStatus { status: 503, .. }),
        "{err}"
    );
    assert!(storage.piece(&id, 0).unwrap().is_none());
}

#[tokio::test]
async fn fetch_all_streams_an_unknown_length_body_into_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let data = content(2 * PIECE as usize + 777, 7);
    let origin = start_origin(
        data.clone(),
        OriginOptions {
            length: BodyLength::Chunked,
            ranges: Ranges::Ignored,
            ..Default::default()
        },
    )
    .await;
    let id = task_id(4);
    storage.prepare_task(&id, 0, PIECE, vec![]).await.unwrap();
    let (total, pieces) = backend()
        .fetch_all(&origin.url(BLOB), &[], &storage, &id, PIECE, &[])
        .await
        .unwrap();
    assert_eq!(total, data.len() as u64);
    assert_eq!(pieces.len(), 3);
    assert_eq!(storage.task(&id).unwrap().unwrap().content_length, total);
    storage.finish_task(&id).unwrap();
    assert_eq!(
        sha256(&std::fs::read(storage.content_path(&id)).unwrap()),
        sha256(&data)
    );
}

#[tokio::test]
async fn the_limiter_bounds_the_download_rate() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let data = content(PIECE as usize, 8);
    let origin = start_origin(data, OriginOptions::default()).await;
    let id = task_id(5);
    let task = storage
        .prepare_task(&id, PIECE, PIECE, vec![])
        .await
        .unwrap();
    // 256 KiB at 512 KiB/s: about half a second (less the 100 ms burst allowance).
    let limiter = RateLimiter::new(512 * 1024);
    let started = Instant::now();
    let url = origin.url(BLOB);
    let limiters = [limiter];
    let span = task.layout().span(0).unwrap();
    backend()
        .fetch_piece(&origin_piece(&url, &storage, &id, span, &limiters))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}
