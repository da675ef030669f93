//! Behaviour of the task cache against real files in temporary directories.

use damselfly_core::digest::{piece_digest, trusted_piece_digest, TRUSTED_PIECE_DIGEST_ALGORITHM};
use damselfly_core::PieceLayout;
use damselfly_storage::{
    DiskSpace, ExportMethod, PieceEvent, Storage, StorageConfig, StorageError,
};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

const PIECE: u64 = 64 * 1024;

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn task_id(n: u8) -> String {
    format!("{:0>64}", format!("{n:x}"))
}

fn open(dir: &Path) -> Storage {
    Storage::open(StorageConfig::with_dir(dir)).unwrap()
}

/// Prepares and writes every piece of `data`; returns the layout.
async fn store(storage: &Storage, id: &str, data: &[u8]) -> PieceLayout {
    store_except(storage, id, data, &[]).await
}

/// Prepares the task and writes every piece of `data` but those numbered in `absent`.
async fn store_except(storage: &Storage, id: &str, data: &[u8], absent: &[u32]) -> PieceLayout {
    storage
        .prepare_task(id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let task = storage.task(id).unwrap().unwrap();
    let layout = task.layout();
    for span in layout.spans().filter(|s| !absent.contains(&s.number)) {
        let bytes = &data[span.offset as usize..span.end() as usize];
        let digest = piece_digest(bytes);
        storage
            .write_piece(id, span, bytes, Some(&digest), None, Duration::ZERO)
            .await
            .unwrap();
    }
    layout
}

async fn read_all(storage: &Storage, id: &str, number: u32) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (_, mut reader) = storage.read_piece(id, number).await.unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn pieces_roundtrip_with_digests_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let data = content(5 * PIECE as usize + 123, 1);
    let id = task_id(1);
    let layout = store(&storage, &id, &data).await;

    let pieces = storage.pieces(&id).unwrap();
    assert_eq!(pieces.len(), 6);
    for (piece, span) in pieces.iter().zip(layout.spans()) {
        let bytes = &data[span.offset as usize..span.end() as usize];
        assert_eq!(piece.number, span.number);
        assert_eq!(piece.length, span.length);
        assert_eq!(piece.digest, piece_digest(bytes));
        assert_eq!(piece.parent_id, None);
        assert!(read_all(&storage, &id, span.number).await == bytes);
    }
    assert_eq!(storage.usage_bytes(), data.len() as u64);
    let task = storage.finish_task(&id).unwrap();
    assert!(task.is_finished());
    assert!(std::fs::read(storage.content_path(&id)).unwrap() == data);
}

#[tokio::test]
async fn tampered_piece_is_rejected_and_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let id = task_id(2);
    let data = content(2 * PIECE as usize, 2);
    storage
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let span = storage
        .task(&id)
        .unwrap()
        .unwrap()
        .layout()
        .span(0)
        .unwrap();
    let good = &data[..PIECE as usize];
    let mut tampered = good.to_vec();
    tampered[100] ^= 0xff;

    let mut events = storage.subscribe(&id);
    let err = storage
        .write_piece(
            &id,
            span,
            tampered.as_slice(),
            Some(&piece_digest(good)),
            Some("parent"),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::DigestMismatch { number: 0, .. }),
        "{err}"
    );
    assert!(storage.piece(&id, 0).unwrap().is_none());
    assert!(
        matches!(events.try_recv(), Ok(PieceEvent::Arriving(_))),
        "its write was shown as arriving"
    );
    assert!(events.try_recv().is_err(), "but never as finished");
    assert_eq!(storage.usage_bytes(), 0);
    assert!(storage.read_piece(&id, 0).await.is_err());

    let piece = storage
        .write_piece(
            &id,
            span,
            good,
            Some(&piece_digest(good)),
            Some("parent"),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(piece.parent_id.as_deref(), Some("parent"));
    assert!(read_all(&storage, &id, 0).await == good);
    assert!(matches!(events.try_recv(), Ok(PieceEvent::Arriving(s)) if s.number == 0));
    assert!(matches!(events.try_recv(), Ok(PieceEvent::Finished(p)) if p.number == 0));
}

#[tokio::test]
async fn short_source_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let id = task_id(3);
    storage
        .prepare_task(&id, 2 * PIECE, PIECE, vec![])
        .await
        .unwrap();
    let span = storage
        .task(&id)
        .unwrap()
        .unwrap()
        .layout()
        .span(1)
        .unwrap();
    let short = vec![7u8; PIECE as usize - 1];
    let err = storage
        .write_piece(&id, span, short.as_slice(), None, None, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::ShortRead { received, .. } if received == PIECE - 1),
        "{err}"
    );
    assert!(storage.piece(&id, 1).unwrap().is_none());
}

#[tokio::test]
async fn spans_outside_the_layout_and_bad_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let id = task_id(4);
    storage
        .prepare_task(&id, PIECE + 10, PIECE, vec![])
        .await
        .unwrap();
    let wrong = damselfly_core::PieceSpan {
        number: 1,
        offset: PIECE,
        length: PIECE,
    };
    let err = storage
        .write_piece(
            &id,
            wrong,
            vec![0u8; PIECE as usize].as_slice(),
            None,
            None,
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidPiece { .. }), "{err}");
    for bad in ["", "../../etc/passwd", "a/b", "x y"] {
        let err = storage
            .prepare_task(bad, 1, PIECE, vec![])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidTaskId(_)),
            "{bad}: {err}"
        );
    }
    assert!(storage.content_path("../../x").starts_with(dir.path()));
    let missing = storage
        .write_piece(&task_id(99), wrong, &b""[..], None, None, Duration::ZERO)
        .await;
    assert!(matches!(missing, Err(StorageError::TaskNotFound(_))));
}

#[tokio::test]
async fn finish_requires_every_piece() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let id = task_id(5);
    let data = content(3 * PIECE as usize, 5);
    storage
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let span = storage
        .task(&id)
        .unwrap()
        .unwrap()
        .layout()
        .span(0)
        .unwrap();
    storage
        .write_piece(
            &id,
            span,
            &data[..PIECE as usize],
            None,
            None,
            Duration::ZERO,
        )
        .await
        .unwrap();
    let err = storage.finish_task(&id).unwrap_err();
    assert!(
        matches!(err, StorageError::TaskNotFinished { missing: 2, .. }),
        "{err}"
    );
    let output = dir.path().join("out");
    let err = storage
        .export(&id, &output, false, false)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TaskNotFinished { .. }), "{err}");
    assert!(!output.exists());
}

#[tokio::test]
async fn restart_keeps_pieces_and_unfinished_tasks_resume() {
    let dir = tempfile::tempdir().unwrap();
    let finished = task_id(6);
    let partial = task_id(7);
    let data = content(3 * PIECE as usize, 6);
    {
        let storage = open(dir.path());
        store(&storage, &finished, &data).await;
        storage.finish_task(&finished).unwrap();
        storage
            .prepare_task(&partial, data.len() as u64, PIECE, vec![])
            .await
            .unwrap();
        let span = storage
            .task(&partial)
            .unwrap()
            .unwrap()
            .layout()
            .span(1)
            .unwrap();
        let bytes = &data[span.offset as usize..span.end() as usize];
        storage
            .write_piece(&partial, span, bytes, None, None, Duration::ZERO)
            .await
            .unwrap();
    }
    let storage = open(dir.path());
    assert!(storage.task(&finished).unwrap().unwrap().is_finished());
    assert_eq!(storage.pieces(&finished).unwrap().len(), 3);
    assert!(read_all(&storage, &finished, 2).await == data[2 * PIECE as usize..]);
    assert_eq!(storage.usage_bytes(), data.len() as u64 + PIECE);

    // Same layout: the recorded piece survives and the download can go on.
    storage
        .prepare_task(&partial, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let numbers: Vec<u32> = storage
        .pieces(&partial)
        .unwrap()
        .iter()
        .map(|p| p.number)
        .collect();
    assert_eq!(numbers, vec![1]);
    assert!(read_all(&storage, &partial, 1).await == data[PIECE as usize..2 * PIECE as usize]);
    // Another length: the task starts over.
    storage
        .prepare_task(&partial, data.len() as u64 + 1, PIECE, vec![])
        .await
        .unwrap();
    assert!(storage.pieces(&partial).unwrap().is_empty());
    drop(storage);

    let wiped = Storage::open(StorageConfig {
        keep: false,
        ..StorageConfig::with_dir(dir.path())
    })
    .unwrap();
    assert!(wiped.list_tasks().unwrap().is_empty());
    assert_eq!(wiped.usage_bytes(), 0);
    assert!(!wiped.content_path(&finished).exists());
}

#[tokio::test]
async fn gc_evicts_by_ttl_but_spares_tasks_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        task_ttl: Duration::from_millis(50),
        ..StorageConfig::with_dir(dir.path())
    };
    // An empty disk, so only the TTL can evict whatever this machine's disk holds.
    let empty_disk = DiskSpace {
        total: 1 << 40,
        available: 1 << 40,
    };
    let storage = Storage::open_with_probe(config, std::sync::Arc::new(empty_disk)).unwrap();
    let (old, busy) = (task_id(8), task_id(9));
    let data = content(PIECE as usize, 8);
    let before = SystemTime::now();
    for id in [&old, &busy] {
        store(&storage, id, &data).await;
        storage.finish_task(id).unwrap();
    }
    assert!(
        storage
            .gc_at(&HashSet::new(), before)
            .await
            .unwrap()
            .is_empty(),
        "nothing is old yet"
    );
    let later = SystemTime::now() + Duration::from_millis(120);
    let in_use: HashSet<String> = [busy.clone()].into();
    assert_eq!(
        storage.gc_at(&in_use, later).await.unwrap(),
        vec![old.clone()]
    );
    assert!(storage.task(&old).unwrap().is_none());
    assert!(!storage.content_path(&old).exists());
    assert!(storage.task(&busy).unwrap().is_some());
    assert_eq!(storage.usage_bytes(), PIECE);
}

#[tokio::test]
async fn gc_evicts_least_recently_used_finished_tasks_down_to_the_low_watermark() {
    let dir = tempfile::tempdir().unwrap();
    // Quota of 10 pieces: eviction above 8, down to 6.
    let config = StorageConfig {
        quota_bytes: 10 * PIECE,
        ..StorageConfig::with_dir(dir.path())
    };
    let storage = Storage::open(config).unwrap();
    let ids: Vec<String> = (10..15).map(task_id).collect();
    let data = content(2 * PIECE as usize, 10);
    for id in &ids {
        store(&storage, id, &data).await;
        storage.finish_task(id).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The oldest task is used again, so it becomes the most recently used.
    storage.touch_task(&ids[0]).unwrap();
    // An unfinished download is never evicted, even when it is the least recently used.
    let downloading = task_id(20);
    storage
        .prepare_task(&downloading, 2 * PIECE, PIECE, vec![])
        .await
        .unwrap();
    assert_eq!(storage.usage_bytes(), 10 * PIECE);

    let evicted = storage.gc(&HashSet::new()).await.unwrap();
    assert_eq!(evicted, vec![ids[1].clone(), ids[2].clone()]);
    assert_eq!(storage.usage_bytes(), 6 * PIECE);
    assert!(storage.task(&ids[0]).unwrap().is_some());
    assert!(storage.task(&downloading).unwrap().is_some());
    assert!(
        storage.gc(&HashSet::new()).await.unwrap().is_empty(),
        "below the high watermark"
    );
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[tokio::test]
async fn export_hard_links_on_the_same_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir.path().join("cache"));
    let id = task_id(30);
    let data = content(2 * PIECE as usize + 7, 30);
    store(&storage, &id, &data).await;
    storage.finish_task(&id).unwrap();

    let output = dir.path().join("out.bin");
    assert_eq!(
        storage.export(&id, &output, false, true).await.unwrap(),
        ExportMethod::HardLink
    );
    assert!(same_file(&output, &storage.content_path(&id)));
    assert!(std::fs::read(&output).unwrap() == data);

    let err = storage
        .export(&id, &output, false, false)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::OutputExists(_)), "{err}");
    std::fs::remove_file(&output).unwrap();
    std::fs::write(&output, b"an unrelated old file").unwrap();
    assert_eq!(
        storage.export(&id, &output, true, false).await.unwrap(),
        ExportMethod::HardLink
    );
    assert!(std::fs::read(&output).unwrap() == data);
    // Re-exporting onto an existing link of the same file must not leave temporaries behind.
    storage.export(&id, &output, true, false).await.unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("damselfly"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A missing output directory is an error and leaves nothing behind.
    let nowhere = dir.path().join("missing").join("out.bin");
    assert!(storage.export(&id, &nowhere, false, false).await.is_err());
    assert!(!nowhere.exists());
}

/// A directory on another filesystem than `path`, if the machine has one (tmpfs /dev/shm).
fn other_filesystem(path: &Path) -> Option<tempfile::TempDir> {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(path).ok()?.dev();
    ["/dev/shm", "/run/user", "/tmp", "/var/tmp"]
        .iter()
        .find_map(|candidate| {
            let dir = tempfile::tempdir_in(candidate).ok()?;
            (std::fs::metadata(dir.path()).ok()?.dev() != here).then_some(dir)
        })
}

#[tokio::test]
async fn export_copies_across_filesystems() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(elsewhere) = other_filesystem(dir.path()) else {
        // The same rule as the registry e2e tests' `skip`: a skip is a failure under CI.
        let required = ["DAMSELFLY_REQUIRE_TOOLS", "CI"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
            .is_some_and(|v| !matches!(v.trim(), "0" | "false"));
        assert!(!required, "no second filesystem (/dev/shm, /tmp, ...) here");
        eprintln!("SKIP: no second filesystem (/dev/shm, /tmp, ...) here");
        return;
    };
    let storage = open(dir.path());
    let id = task_id(31);
    let data = content(3 * PIECE as usize + 1, 31);
    store(&storage, &id, &data).await;
    storage.finish_task(&id).unwrap();

    let forced = elsewhere.path().join("forced.bin");
    let err = storage.export(&id, &forced, false, true).await.unwrap_err();
    assert!(matches!(err, StorageError::HardLink { .. }), "{err}");
    assert!(!forced.exists(), "a failed export leaves no output");

    let output = elsewhere.path().join("copy.bin");
    assert_eq!(
        storage.export(&id, &output, false, false).await.unwrap(),
        ExportMethod::Copy
    );
    assert!(std::fs::read(&output).unwrap() == data);
    assert!(!same_file(&output, &storage.content_path(&id)));
}

#[tokio::test]
async fn subscribers_see_pieces_then_the_end_of_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let id = task_id(40);
    let data = content(2 * PIECE as usize, 40);
    storage
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let mut events = storage.subscribe(&id);
    let writer = storage.clone();
    let (writer_id, writer_data) = (id.clone(), data.clone());
    tokio::spawn(async move {
        let layout = writer.task(&writer_id).unwrap().unwrap().layout();
        for span in layout.spans() {
            let bytes = &writer_data[span.offset as usize..span.end() as usize];
            writer
                .write_piece(&writer_id, span, bytes, None, None, Duration::ZERO)
                .await
                .unwrap();
        }
        writer.finish_task(&writer_id).unwrap();
    });
    let mut numbers = Vec::new();
    loop {
        match events.recv().await.unwrap() {
            PieceEvent::Finished(piece) => numbers.push(piece.number),
            PieceEvent::TaskFinished => break,
            PieceEvent::TaskFailed => panic!("task failed"),
            PieceEvent::Arriving(_) => {}
        }
    }
    assert_eq!(numbers, vec![0, 1]);
}

#[tokio::test]
async fn streamed_pieces_of_unknown_length() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let id = task_id(50);
    let data = content(2 * PIECE as usize + 999, 50);
    storage.prepare_task(&id, 0, PIECE, vec![]).await.unwrap();
    let mut reader = data.as_slice();
    let mut number = 0;
    let mut total = 0;
    let blake3 = Some(TRUSTED_PIECE_DIGEST_ALGORITHM);
    while let Some(written) = storage
        .write_streamed_piece(&id, number, &mut reader, blake3)
        .await
        .unwrap()
    {
        // Hashed on the way in, as a back-to-source peer reports it.
        let piece = written.piece;
        let bytes = &data[piece.offset as usize..(piece.offset + piece.length) as usize];
        let trusted = written.trusted.map(|d| d.to_string());
        assert_eq!(trusted, Some(trusted_piece_digest(bytes)));
        total += piece.length;
        number += 1;
    }
    assert_eq!((number, total), (3, data.len() as u64));
    storage.set_content_length(&id, total).unwrap();
    storage.finish_task(&id).unwrap();
    assert!(std::fs::read(storage.content_path(&id)).unwrap() == data);
    assert_eq!(storage.pieces(&id).unwrap()[2].length, 999);
}

#[tokio::test]
async fn delete_removes_content_and_ends_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let id = task_id(60);
    store(&storage, &id, &content(PIECE as usize, 60)).await;
    let mut events = storage.subscribe(&id);
    storage.delete_task(&id).await.unwrap();
    assert!(matches!(events.recv().await, Ok(PieceEvent::TaskFailed)));
    assert!(storage.task(&id).unwrap().is_none());
    assert!(!storage.content_path(&id).exists());
    assert_eq!(storage.usage_bytes(), 0);
    assert!(matches!(
        storage.delete_task(&id).await,
        Err(StorageError::TaskNotFound(_))
    ));
}

#[tokio::test]
async fn tasks_whose_ids_share_a_prefix_keep_their_pieces_apart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let data = content(2 * PIECE as usize, 70);
    store(&storage, "abc", &data).await;
    store(&storage, "abc-1", &data[..PIECE as usize]).await;
    assert_eq!(storage.pieces("abc").unwrap().len(), 2);
    assert_eq!(storage.pieces("abc-1").unwrap().len(), 1);
    storage.delete_task("abc").await.unwrap();
    assert_eq!(storage.pieces("abc-1").unwrap().len(), 1);
    assert_eq!(storage.usage_bytes(), PIECE);
}

#[tokio::test]
async fn trusted_digests_of_either_algorithm_are_checked_as_the_bytes_land() {
    use damselfly_core::digest::{trusted_piece_digest, DigestAlgorithm, DigestHasher};
    use damselfly_storage::PieceCheck;
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let data = content(3 * PIECE as usize, 7);
    let id = task_id(9);
    storage
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let layout = storage.task(&id).unwrap().unwrap().layout();
    let bytes = |n: u32| {
        let span = layout.span(n).unwrap();
        &data[span.offset as usize..span.end() as usize]
    };
    let sha256 = |b: &[u8]| {
        let mut h = DigestHasher::new(DigestAlgorithm::Sha256);
        h.update(b);
        h.finalize().to_string()
    };
    let write = |n: u32, body: Vec<u8>, expected: String| {
        let storage = storage.clone();
        let (id, span) = (id.clone(), layout.span(n).unwrap());
        async move {
            let check = PieceCheck::Trusted(&expected);
            storage
                .write_piece_checked(&id, span, body.as_slice(), check, Some("p"), Duration::ZERO)
                .await
        }
    };
    // BLAKE3 (ours) and sha256 (earlier peers') both hold the bytes to the digest.
    write(0, bytes(0).to_vec(), trusted_piece_digest(bytes(0)))
        .await
        .unwrap();
    write(1, bytes(1).to_vec(), sha256(bytes(1))).await.unwrap();
    // A lie fails either way and is never recorded; the true bytes then land.
    let lie: Vec<u8> = bytes(2).iter().map(|b| b ^ 0x5a).collect();
    for expected in [trusted_piece_digest(bytes(2)), sha256(bytes(2))] {
        let err = write(2, lie.clone(), expected.clone()).await.unwrap_err();
        assert!(
            matches!(&err, StorageError::DigestMismatch { number: 2, expected: e, .. } if *e == expected),
            "{err}"
        );
        assert!(storage.piece(&id, 2).unwrap().is_none());
    }
    // A digest that is not a trusted one never passes for one.
    let crc = piece_digest(bytes(2));
    assert!(write(2, bytes(2).to_vec(), crc).await.is_err());
    write(2, bytes(2).to_vec(), trusted_piece_digest(bytes(2)))
        .await
        .unwrap();
    for n in 0..3 {
        assert_eq!(read_all(&storage, &id, n).await, bytes(n));
    }
}

/// A range's pieces are looked up by number (one or two records, not the task's every one),
/// and a wide window is read in one scan: both give the recorded pieces the window overlaps.
#[tokio::test]
async fn a_window_gets_exactly_the_recorded_pieces_it_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let data = content(100 * PIECE as usize + 123, 9);
    let id = task_id(9);
    store_except(&storage, &id, &data, &[3, 50]).await;
    let numbers = |window: (u64, u64), piece_length: u64| -> Vec<u32> {
        storage
            .pieces_overlapping(&id, window, piece_length)
            .unwrap()
            .iter()
            .map(|p| p.number)
            .collect()
    };
    assert_eq!(numbers((0, 1), PIECE), vec![0]);
    assert_eq!(numbers((3 * PIECE - 1, 4 * PIECE + 1), PIECE), vec![2, 4]);
    assert_eq!(numbers((3 * PIECE, 4 * PIECE), PIECE), Vec::<u32>::new());
    assert_eq!(
        numbers((100 * PIECE + 5, 100 * PIECE + 100), PIECE),
        vec![100]
    );
    assert_eq!(numbers((7, 7), PIECE), Vec::<u32>::new());
    let wide: Vec<u32> = (10..90).filter(|n| *n != 50).collect();
    assert_eq!(numbers((10 * PIECE, 90 * PIECE), PIECE), wide);
    assert_eq!(numbers((0, 1), 0).len(), 99, "no layout: every record");
}

/// The content reader opens the file on its first read and reads exact ranges; a read past
/// the end is an error, not a short answer.
#[tokio::test]
async fn the_content_reader_reads_exact_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let data = content(3 * PIECE as usize + 17, 4);
    let id = task_id(4);
    store(&storage, &id, &data).await;
    let mut reader = storage.content_reader(&id);
    for (offset, len) in [(0, 10), (PIECE - 3, 7), (3 * PIECE, 17), (5, 0)] {
        let bytes = reader.read_at(offset, len).await.unwrap();
        assert!(bytes == data[offset as usize..offset as usize + len]);
    }
    assert!(reader.read_at(3 * PIECE, 18).await.is_err());
    let mut missing = storage.content_reader(&task_id(5));
    assert!(missing.read_at(0, 1).await.is_err());
}
