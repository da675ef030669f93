//! SyncPieces server stream.

mod common;

use common::*;
use damselfly_core::PieceSpan;
use damselfly_storage::Storage;
use damselfly_transfer::{sync_pieces_stream, Announce, PiecePorts, TransferError};
use dragonfly_api::dfdaemon::v2::SyncPiecesResponse;
use futures::StreamExt;
use std::time::Duration;

const NO_QUIC: PiecePorts = PiecePorts { tcp: 1, quic: None };

const PIECE: u64 = 64 * 1024;

async fn write(storage: &Storage, id: &str, data: &[u8], span: PieceSpan) {
    let bytes = &data[span.offset as usize..span.end() as usize];
    storage
        .write_piece(id, span, bytes, None, None, Duration::ZERO)
        .await
        .unwrap();
}

/// A task of `pieces` pieces of `PIECE` bytes prepared in a storage at `dir`, nothing
/// written yet: the storage, the task id, its content (from `seed`) and its piece spans.
async fn prepared(
    dir: &std::path::Path,
    pieces: usize,
    seed: u8,
) -> (Storage, String, Vec<u8>, Vec<PieceSpan>) {
    let storage = storage(dir);
    let id = task_id(seed);
    let data = content(pieces * PIECE as usize, seed);
    let task = storage
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let spans = task.layout().spans().collect();
    (storage, id, data, spans)
}

#[tokio::test]
async fn existing_pieces_first_then_pieces_as_they_land() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, id, data, spans) = prepared(dir.path(), 4, 1).await;
    write(&storage, &id, &data, spans[2]).await;

    let stream = sync_pieces_stream(
        storage.clone(),
        id.clone(),
        vec![],
        "127.0.0.9".into(),
        PiecePorts {
            tcp: 4005,
            quic: Some(4006),
        },
        Announce::Recorded,
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
        NO_QUIC,
        Announce::Recorded,
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
        sync_pieces_stream(
            storage.clone(),
            other.clone(),
            vec![],
            "ip".into(),
            NO_QUIC,
            Announce::Recorded,
        )
        .unwrap(),
    );
    storage.fail_task(&other).unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), waiting.next())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        sync_pieces_stream(
            storage.clone(),
            other,
            vec![],
            "ip".into(),
            NO_QUIC,
            Announce::Recorded
        ),
        Err(TransferError::TaskFailed(_))
    ));
}

#[tokio::test]
async fn unknown_task_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let result = sync_pieces_stream(
        storage,
        task_id(9),
        vec![],
        "ip".into(),
        NO_QUIC,
        Announce::Recorded,
    );
    assert!(matches!(result, Err(TransferError::TaskNotFound(_))));
}

#[tokio::test]
async fn a_cut_through_child_hears_of_pieces_as_their_write_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, id, data, spans) = prepared(dir.path(), 2, 7).await;
    let open = |announce| {
        let stream = sync_pieces_stream(
            storage.clone(),
            id.clone(),
            vec![],
            "ip".into(),
            NO_QUIC,
            announce,
        );
        Box::pin(stream.unwrap())
    };
    // Piece 1's write starts before the streams open (listed), piece 0's after (an event).
    let (mut feed1, pipe1) = tokio::io::duplex(1024);
    let writer = storage.clone();
    let (id1, span1) = (id.clone(), spans[1]);
    let write1 = tokio::spawn(async move {
        writer
            .write_piece(&id1, span1, pipe1, None, None, Duration::ZERO)
            .await
    });
    let mut started = storage.watch_piece_writes();
    while storage.arriving_piece(&id, 1).is_none() {
        started.changed().await.unwrap();
    }
    let mut arriving = open(Announce::Arriving);
    let mut recorded = open(Announce::Recorded);
    let wait = Duration::from_secs(5);
    let next =
        |item: Option<Result<SyncPiecesResponse, tonic::Status>>| item.unwrap().unwrap().number;
    assert_eq!(
        next(tokio::time::timeout(wait, arriving.next()).await.unwrap()),
        1
    );
    let (_feed0, pipe0) = tokio::io::duplex(1024);
    let (writer, id0, span0) = (storage.clone(), id.clone(), spans[0]);
    tokio::spawn(async move {
        writer
            .write_piece(&id0, span0, pipe0, None, None, Duration::ZERO)
            .await
    });
    assert_eq!(
        next(tokio::time::timeout(wait, arriving.next()).await.unwrap()),
        0
    );
    // The official view waits for a recorded piece.
    use tokio::io::AsyncWriteExt;
    feed1
        .write_all(&data[span1.offset as usize..span1.end() as usize])
        .await
        .unwrap();
    write1.await.unwrap().unwrap();
    assert_eq!(
        next(tokio::time::timeout(wait, recorded.next()).await.unwrap()),
        1
    );
    // And the cut-through child hears of it again, whole: it may have let us go for it when
    // the write it followed was abandoned.
    assert_eq!(
        next(tokio::time::timeout(wait, arriving.next()).await.unwrap()),
        1
    );
}

#[tokio::test]
async fn a_cut_through_child_hears_of_a_recorded_piece_twice() {
    // A cut-through child tells a copy recorded here (announced twice) from one that may
    // still be arriving (announced once so far); an official child hears of it once.
    let dir = tempfile::tempdir().unwrap();
    let (storage, id, data, spans) = prepared(dir.path(), 2, 8).await;
    write(&storage, &id, &data, spans[0]).await;
    let open = |announce| {
        let stream = sync_pieces_stream(
            storage.clone(),
            id.clone(),
            vec![],
            "ip".into(),
            NO_QUIC,
            announce,
        );
        Box::pin(stream.unwrap())
    };
    let mut arriving = open(Announce::Arriving);
    let mut recorded = open(Announce::Recorded);
    write(&storage, &id, &data, spans[1]).await;
    assert_eq!(heard(&mut arriving).await, vec![0, 0, 1, 1]);
    assert_eq!(heard(&mut recorded).await, vec![0, 1]);
}

/// Every piece number a stream announces until it ends.
async fn heard(
    stream: &mut (impl futures::Stream<Item = Result<SyncPiecesResponse, tonic::Status>> + Unpin),
) -> Vec<u32> {
    let mut numbers = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        numbers.push(item.unwrap().number);
    }
    numbers
}
