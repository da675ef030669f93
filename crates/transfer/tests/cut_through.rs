//! Cut-through forwarding over real loopback TCP: a parent still receiving a piece (its bytes
//! fed by the test through a pipe) forwards what it has to a child that asked with the
//! cut-through request; the child records the piece only once the parent's copy is checked,
//! and discards it when the parent's copy fails or stops arriving. Official requests still
//! see only recorded pieces.

mod common;

use common::*;
use damselfly_core::digest::format_crc32;
use damselfly_core::{PieceSpan, RelayPath, MAX_RELAY_HOPS};
use damselfly_storage::{Forwarding, PieceCheck, PieceOrigin, Storage, StorageError};
use damselfly_transfer::{
    download_piece_from, fetch_piece_from, serve_vortex, Delivery, PieceSource, RateLimiter,
    RequestKind, TransferError,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(20);
/// Several of storage's write buffers, so a piece's write shows progress before it ends.
const PIECE_LENGTH: u64 = 4 * damselfly_storage::WRITE_BUFFER_SIZE as u64;

/// A parent serving Vortex, and a child, both with the task prepared.
struct Pair {
    parent: Storage,
    child: Storage,
    addr: SocketAddr,
    id: String,
    span: PieceSpan,
    shutdown: CancellationToken,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn pair(n: u8, len: usize) -> Pair {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(n);
    let parent = storage(dirs.0.path());
    let child = storage(dirs.1.path());
    let task = parent
        .prepare_task(&id, len as u64, PIECE_LENGTH, vec![])
        .await
        .unwrap();
    child
        .prepare_task(&id, len as u64, PIECE_LENGTH, vec![])
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_vortex(
        listener,
        parent.clone(),
        RateLimiter::unlimited(),
        shutdown.clone(),
    ));
    Pair {
        parent,
        child,
        addr,
        span: task.layout().span(0).unwrap(),
        id,
        shutdown,
        _dirs: dirs,
    }
}

impl Pair {
    /// Starts the parent's write of piece 0 from a pipe the test feeds; `check` is what the
    /// parent's copy must match (from its own parent) or nothing (from the origin).
    fn parent_receives(
        &self,
        check: Option<String>,
    ) -> (DuplexStream, JoinHandle<Result<(), StorageError>>) {
        let (feed, pipe) = tokio::io::duplex(64 * 1024);
        let (parent, id, span) = (self.parent.clone(), self.id.clone(), self.span);
        let write = tokio::spawn(async move {
            let (check, from) = match &check {
                Some(digest) => (PieceCheck::Crc32(digest), Some("grandparent")),
                None => (PieceCheck::Nothing, None),
            };
            parent
                .write_piece_checked(&id, span, pipe, check, from, Duration::ZERO)
                .await
                .map(drop)
        });
        (feed, write)
    }

    /// Waits until the parent's write of piece 0 runs (its progress is published).
    async fn parent_writing(&self) {
        let mut started = self.parent.watch_piece_writes();
        while self.parent.arriving_piece(&self.id, 0).is_none() {
            started.changed().await.unwrap();
        }
    }

    fn fetch(&self, request: RequestKind) -> JoinHandle<Result<u64, TransferError>> {
        let (child, id, span, addr) = (self.child.clone(), self.id.clone(), self.span, self.addr);
        tokio::spawn(async move {
            let source = PieceSource {
                addr,
                parent_id: "parent",
                trusted_digest: None,
                request,
            };
            download_piece_from(source, &id, span, &child, &[], TIMEOUT)
                .await
                .map(|piece| piece.length)
        })
    }

    /// Waits until the child's own write of piece 0 has `bytes` of it in its file.
    async fn child_holds(&self, bytes: u64) {
        holds(&self.child, &self.id, self.span.offset + bytes).await;
    }

    async fn child_bytes(&self) -> Vec<u8> {
        let (_, mut reader) = self.child.read_piece(&self.id, 0).await.unwrap();
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.unwrap();
        bytes
    }
}

#[tokio::test]
async fn a_piece_is_forwarded_while_it_arrives_and_recorded_once_its_parent_recorded_it() {
    let pair = pair(51, 2 * PIECE_LENGTH as usize).await;
    let truth = content(PIECE_LENGTH as usize, 5);
    let (mut feed, parent_write) = pair.parent_receives(None);
    let half = PIECE_LENGTH as usize / 2;
    feed.write_all(&truth[..half]).await.unwrap();
    pair.parent_writing().await;

    let fetch = pair.fetch(RequestKind::CutThrough);
    // The child holds the first half while the parent still lacks the second: forwarded.
    pair.child_holds(half as u64 / 2).await;
    assert!(pair.parent.piece(&pair.id, 0).unwrap().is_none());
    assert!(
        pair.child.piece(&pair.id, 0).unwrap().is_none(),
        "not before the trailer"
    );

    feed.write_all(&truth[half..]).await.unwrap();
    parent_write.await.unwrap().unwrap();
    assert_eq!(fetch.await.unwrap().unwrap(), PIECE_LENGTH);
    let recorded = pair.child.piece(&pair.id, 0).unwrap().expect("recorded");
    assert_eq!(recorded.parent_id.as_deref(), Some("parent"));
    assert_eq!(recorded.digest, format_crc32(crc32fast::hash(&truth)));
    assert_eq!(sha256(&pair.child_bytes().await), sha256(&truth));
    pair.shutdown.cancel();
}

/// A cut-through fetch of piece 0 from the Vortex server at `addr` into `storage`.
async fn cut_through_fetch(
    addr: SocketAddr,
    storage: &Storage,
    id: &str,
    span: PieceSpan,
) -> Result<Delivery, TransferError> {
    let source = PieceSource {
        addr,
        parent_id: "relay",
        trusted_digest: None,
        request: RequestKind::CutThrough,
    };
    fetch_piece_from(source, id, span, storage, &[], TIMEOUT)
        .await
        .map(|fetched| fetched.delivery)
}

/// A store with the pair's task prepared, serving Vortex until the pair shuts down.
async fn relay(pair: &Pair, dir: &std::path::Path) -> (Storage, SocketAddr) {
    let store = storage(dir);
    let length = pair.parent.task(&pair.id).unwrap().unwrap().content_length;
    store
        .prepare_task(&pair.id, length, PIECE_LENGTH, vec![])
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_vortex(
        listener,
        store.clone(),
        RateLimiter::unlimited(),
        pair.shutdown.clone(),
    ));
    (store, addr)
}

/// Waits until `store`'s write of piece 0 is in its file up to offset `end`.
async fn holds(store: &Storage, id: &str, end: u64) {
    let mut started = store.watch_piece_writes();
    let mut progress = loop {
        if let Some(progress) = store.piece_write_progress(id, 0) {
            break progress;
        }
        started.changed().await.expect("storage open");
    };
    while progress.borrow_and_update().written_to < end {
        progress
            .changed()
            .await
            .expect("the write ended before it held the bytes");
    }
}

#[tokio::test]
async fn relays_forward_a_piece_still_arriving_until_its_path_is_full() {
    let pair = pair(55, PIECE_LENGTH as usize).await;
    let truth = content(PIECE_LENGTH as usize, 9);
    let (mut feed, parent_write) = pair.parent_receives(None);
    let buffer = damselfly_storage::WRITE_BUFFER_SIZE;
    feed.write_all(&truth[..buffer]).await.unwrap();
    pair.parent_writing().await;

    // A chain of relays, each following the one before it while the origin's bytes still
    // arrive at the first: every relay but the last forwards what it has at once.
    let dirs: Vec<_> = (0..=MAX_RELAY_HOPS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut upstream = pair.addr;
    let mut fetches = Vec::new();
    let mut relays = Vec::new();
    for (hops, dir) in (1..=MAX_RELAY_HOPS).zip(&dirs) {
        let (store, addr) = relay(&pair, dir.path()).await;
        let (child, id, span) = (store.clone(), pair.id.clone(), pair.span);
        fetches.push(tokio::spawn(async move {
            cut_through_fetch(upstream, &child, &id, span).await
        }));
        holds(&store, &pair.id, buffer as u64).await;
        let shown = store.arriving_piece(&pair.id, 0).is_some();
        assert_eq!(
            shown,
            hops < MAX_RELAY_HOPS,
            "a relay {hops} stores down the path forwards while arriving: {shown}"
        );
        assert_eq!(
            store.arriving_pieces(&pair.id).unwrap().len(),
            usize::from(shown)
        );
        upstream = addr;
        relays.push(store);
    }
    // The last relay holds its arriving bytes back: a store asking now is told to look
    // elsewhere, which is no failure.
    let (late, _) = relay(&pair, dirs[MAX_RELAY_HOPS].path()).await;
    let error = cut_through_fetch(upstream, &late, &pair.id, pair.span)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TransferError::ArrivalStopped { number: 0, .. }),
        "a piece the relay cannot forward yet is withdrawn, not a failure: {error}"
    );

    feed.write_all(&truth[buffer..]).await.unwrap();
    parent_write.await.unwrap().unwrap();
    for fetch in fetches {
        assert_eq!(fetch.await.unwrap().unwrap(), Delivery::Forwarded);
    }
    // Recorded at the last relay: served whole.
    assert_eq!(
        cut_through_fetch(upstream, &late, &pair.id, pair.span)
            .await
            .unwrap(),
        Delivery::Whole
    );
    for store in relays.iter().chain([&late]) {
        let (_, mut reader) = store.read_piece(&pair.id, 0).await.unwrap();
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(sha256(&bytes), sha256(&truth));
    }
    pair.shutdown.cancel();
}

#[tokio::test]
async fn a_store_never_follows_an_arriving_copy_that_its_own_bytes_feed() {
    let pair = pair(56, PIECE_LENGTH as usize).await;
    let truth = content(PIECE_LENGTH as usize, 10);
    // The parent is relaying bytes that passed through the child on their way.
    let (mut feed, pipe) = tokio::io::duplex(64 * 1024);
    let path = RelayPath::default().then(pair.child.store_id());
    let (parent, id, span) = (pair.parent.clone(), pair.id.clone(), pair.span);
    let parent_write = tokio::spawn(async move {
        let origin = PieceOrigin {
            parent_id: Some("child"),
            cost: Duration::ZERO,
            forwarding: Forwarding::Relayed(path),
        };
        parent
            .write_piece_unrecorded(&id, span, pipe, None, origin)
            .await
            .map(drop)
    });
    let buffer = damselfly_storage::WRITE_BUFFER_SIZE;
    feed.write_all(&truth[..buffer]).await.unwrap();
    pair.parent_writing().await;

    let error = cut_through_fetch(pair.addr, &pair.child, &pair.id, pair.span)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TransferError::ArrivalStopped { number: 0, .. })
            && error.to_string().contains("own arriving copy"),
        "{error}"
    );
    assert!(pair.child.piece(&pair.id, 0).unwrap().is_none());
    assert!(pair.child.piece_write_progress(&pair.id, 0).is_none());
    drop(feed);
    assert!(parent_write.await.unwrap().is_err(), "its feed ended short");
    pair.shutdown.cancel();
}

#[tokio::test]
async fn a_forwarded_piece_whose_parent_copy_fails_its_check_is_discarded() {
    let pair = pair(52, PIECE_LENGTH as usize).await;
    let truth = content(PIECE_LENGTH as usize, 6);
    let lie: Vec<u8> = truth.iter().map(|b| b.wrapping_add(1)).collect();
    let expected = format_crc32(crc32fast::hash(&truth));
    let (mut feed, parent_write) = pair.parent_receives(Some(expected));
    let buffer = damselfly_storage::WRITE_BUFFER_SIZE;
    feed.write_all(&lie[..buffer]).await.unwrap();
    pair.parent_writing().await;

    let fetch = pair.fetch(RequestKind::CutThrough);
    pair.child_holds(buffer as u64).await;
    feed.write_all(&lie[buffer..]).await.unwrap();
    let parent_error = parent_write.await.unwrap().unwrap_err();
    assert!(matches!(parent_error, StorageError::DigestMismatch { .. }));
    let error = fetch.await.unwrap().unwrap_err();
    match &error {
        TransferError::ArrivalStopped { reason, .. } => {
            assert!(reason.contains("failed its check"), "{reason}")
        }
        other => panic!("expected the parent's error trailer, got {other}"),
    }
    assert!(
        pair.child.piece(&pair.id, 0).unwrap().is_none(),
        "never recorded"
    );
    assert!(
        pair.child.pieces(&pair.id).unwrap().is_empty(),
        "nothing to serve"
    );
    pair.shutdown.cancel();
}

#[tokio::test]
async fn a_forwarded_piece_that_stops_arriving_is_discarded() {
    let pair = pair(53, PIECE_LENGTH as usize).await;
    let truth = content(PIECE_LENGTH as usize, 7);
    let (mut feed, parent_write) = pair.parent_receives(None);
    let buffer = damselfly_storage::WRITE_BUFFER_SIZE;
    feed.write_all(&truth[..buffer]).await.unwrap();
    pair.parent_writing().await;

    let fetch = pair.fetch(RequestKind::CutThrough);
    pair.child_holds(buffer as u64).await;
    drop(feed); // the parent's source breaks off mid-piece
    let parent_error = parent_write.await.unwrap().unwrap_err();
    assert!(matches!(parent_error, StorageError::ShortRead { .. }));
    let error = fetch.await.unwrap().unwrap_err();
    assert!(
        matches!(&error, TransferError::ArrivalStopped { number: 0, reason, .. }
            if reason.contains(&format!("after {} bytes", damselfly_storage::WRITE_BUFFER_SIZE))),
        "the connection drops after what arrived: {error}"
    );
    assert!(
        pair.child.piece(&pair.id, 0).unwrap().is_none(),
        "never recorded"
    );
    pair.shutdown.cancel();
}

#[tokio::test]
async fn official_requests_see_only_recorded_pieces() {
    let pair = pair(54, PIECE_LENGTH as usize).await;
    let truth = content(PIECE_LENGTH as usize, 8);
    let (mut feed, parent_write) = pair.parent_receives(None);
    feed.write_all(&truth[..4096]).await.unwrap();
    pair.parent_writing().await;

    let error = pair
        .fetch(RequestKind::Recorded)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, TransferError::PieceNotFound { number: 0, .. }),
        "{error}"
    );
    feed.write_all(&truth[4096..]).await.unwrap();
    parent_write.await.unwrap().unwrap();
    // Once recorded, both requests get it whole.
    assert_eq!(
        pair.fetch(RequestKind::Recorded).await.unwrap().unwrap(),
        PIECE_LENGTH
    );
    assert_eq!(sha256(&pair.child_bytes().await), sha256(&truth));
    pair.shutdown.cancel();
}
