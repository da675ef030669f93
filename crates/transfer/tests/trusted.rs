//! A lying parent over real loopback TCP: its Vortex server sends bytes that are not the
//! origin's, with their own (matching) crc32. The parent's crc32 cannot catch it; the trusted
//! trusted (BLAKE3) digest does, and the piece is never recorded.

mod common;

use common::*;
use damselfly_core::digest::trusted_piece_digest;
use damselfly_storage::StorageError;
use damselfly_transfer::{
    download_piece_from, serve_vortex, PieceSource, RateLimiter, RequestKind, TransferError,
};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_lie_with_a_matching_crc32_fails_the_trusted_digest() {
    let (liar_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(41);
    let truth = content(2 * PIECE as usize, 3);
    let lie: Vec<u8> = truth.iter().map(|b| b.wrapping_add(1)).collect();
    // The liar records the lie through the ordinary path: its crc32 matches the lie.
    let liar = storage(liar_dir.path());
    let task = liar
        .prepare_task(&id, truth.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let layout = task.layout();
    for span in layout.spans() {
        let bytes = &lie[span.offset as usize..span.end() as usize];
        liar.write_piece(&id, span, bytes, None, None, Duration::ZERO)
            .await
            .unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_vortex(
        listener,
        liar,
        RateLimiter::unlimited(),
        shutdown.clone(),
    ));

    let child = storage(child_dir.path());
    child
        .prepare_task(&id, truth.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let span0 = layout.span(0).unwrap();
    let trusted = trusted_piece_digest(&truth[..PIECE as usize]);
    let source = PieceSource {
        addr,
        parent_id: "liar",
        trusted_digest: Some(&trusted),
        request: RequestKind::Recorded,
    };
    let err = download_piece_from(source, &id, span0, &child, &[], TIMEOUT)
        .await
        .unwrap_err();
    match &err {
        TransferError::Storage(StorageError::DigestMismatch {
            number: 0,
            expected,
            actual,
            ..
        }) => {
            assert_eq!(expected, &trusted);
            assert_eq!(actual, &trusted_piece_digest(&lie[..PIECE as usize]));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(child.piece(&id, 0).unwrap().is_none(), "never recorded");
    assert!(child.pieces(&id).unwrap().is_empty(), "nothing to serve");

    // Checked by the parent's crc32 only, the same lie passes: what the trusted digest is for.
    let crc_only = PieceSource {
        addr,
        parent_id: "liar",
        trusted_digest: None,
        request: RequestKind::Recorded,
    };
    let span1 = layout.span(1).unwrap();
    let piece = download_piece_from(crc_only, &id, span1, &child, &[], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(piece.number, 1);
    shutdown.cancel();
}
