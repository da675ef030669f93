//! SyncPieces server stream.

mod common;

use common::*;
use damselfly_core::PieceSpan;
use damselfly_storage::Storage;
use damselfly_transfer::{sync_pieces_stream, TransferError};
use futures::StreamExt;
use std::time::Duration;

const PIECE: u64 = 64 * 1024;

async fn write(storage: &Storage, id: &str, data: &[u8], span: PieceSpan) {
    let bytes = &data[span.offset as usize..span.end() as usize];
    storage
        .write_piece(id, span, bytes, None, None, Duration::ZERO)
        .await
        .unwrap();
}

#[tokio::test]
async fn existing_pieces_first_then_pieces_as_they_land() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let id = task_id(1);
    let data = content(4 * PIECE as usize, 1);
    let task = storage
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let spans: Vec<_> = task.layout().spans().collect();
    write(&storage, &id, &data, spans[2]).await;

    let stream = sync_pieces_stream(
        storage.clone(),
        id.clone(),
        vec![],
        "127.0.0.9".into(),
        4005,
        Some(4006),
    )
    .unwrap();
    let mut stream = Box::pin(stream);
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        (first.number, first.offset, first.length),
        (2, 2 * PIECE, PIECE)
    );
    assert_eq!(first.ip, "127.0.0.9");
    assert_eq!(first.tcp_port, Some(4005));
    assert_eq!(first.quic_port, Some(4006));

    // Each piece written is the stream's next item, in the order written.
    let wait = Duration::from_secs(5);
    for n in [0, 3, 1] {
        write(&storage, &id, &data, spans[n]).await;
        let item = tokio::time::timeout(wait, stream.next()).await.unwrap();
        assert_eq!(item.unwrap().unwrap().number, n as u32);
    }
    assert!(
        tokio::time::timeout(wait, stream.next())
            .await
            .unwrap()
            .is_none(),
        "ends by itself once every piece was sent"
    );
}

#[tokio::test]
async fn interested_pieces_only_and_end_when_the_task_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let id = task_id(2);
    let data = content(3 * PIECE as usize, 2);
    let task = storage
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let stream = sync_pieces_stream(
        storage.clone(),
        id.clone(),
        vec![1, 2, 99],
        "ip".into(),
        1,
        None,
    )
    .unwrap();
    let mut stream = Box::pin(stream);
    for span in task.layout().spans() {
        let bytes = &data[span.offset as usize..span.end() as usize];
        storage
            .write_piece(&id, span, bytes, None, None, Duration::ZERO)
            .await
            .unwrap();
    }
    let mut numbers = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        numbers.push(item.unwrap().number);
    }
    assert_eq!(numbers, vec![1, 2]);

    // A failed task ends the stream of a waiting child.
    let other = task_id(3);
    storage
        .prepare_task(&other, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let mut waiting = Box::pin(
        sync_pieces_stream(storage.clone(), other.clone(), vec![], "ip".into(), 1, None).unwrap(),
    );
    storage.fail_task(&other).unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), waiting.next())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        sync_pieces_stream(storage.clone(), other, vec![], "ip".into(), 1, None),
        Err(TransferError::TaskFailed(_))
    ));
}

#[tokio::test]
async fn unknown_task_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let result = sync_pieces_stream(storage, task_id(9), vec![], "ip".into(), 1, None);
    assert!(matches!(result, Err(TransferError::TaskNotFound(_))));
}
