//! The origin backend against a real loopback HTTP server.

mod common;

use common::*;
use damselfly_transfer::{Backend, BackendConfig, RateLimiter, TransferError};
use std::time::{Duration, Instant};

fn backend() -> Backend {
    Backend::new(BackendConfig {
        use_env_proxy: false,
        retry_backoff: Duration::from_millis(10),
        ..BackendConfig::default()
    })
    .unwrap()
}

/// Fetches every piece of the origin's object with ranged GETs; returns the stored bytes.
async fn fetch_by_pieces(
    origin: &Origin,
    storage: &damselfly_storage::Storage,
    id: &str,
) -> Vec<u8> {
    let backend = backend();
    let stat = backend.stat(&origin.url(BLOB), &[]).await.unwrap();
    let len = stat.content_length.unwrap();
    let task = storage
        .prepare_task(id, len, PIECE, stat.headers)
        .await
        .unwrap();
    for span in task.layout().spans() {
        let piece = backend
            .fetch_piece(
                &origin.url(BLOB),
                &[],
                storage,
                id,
                span,
                &[RateLimiter::unlimited()],
            )
            .await
            .unwrap();
        assert_eq!((piece.offset, piece.length), (span.offset, span.length));
        assert_eq!(piece.parent_id, None);
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
    let stored = fetch_by_pieces(&origin, &storage, &task_id(1)).await;
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
    let stored = fetch_by_pieces(&origin, &storage, &task_id(2)).await;
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
    backend()
        .fetch_piece(&origin.url(BLOB), &[], &storage, &id, span, &[])
        .await
        .unwrap();
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
    let err = backend()
        .fetch_piece(&origin.url(BLOB), &[], &storage, &id, span, &[])
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
    backend()
        .fetch_piece(
            &origin.url(BLOB),
            &[],
            &storage,
            &id,
            task.layout().span(0).unwrap(),
            &[limiter],
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}
