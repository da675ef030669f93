//! Pieces nobody can forge (DESIGN.md "Pieces nobody can forge"): a parent that lies with a
//! matching crc32, a parent whose content file was corrupted after it finished, and content
//! whose whole-file digest does not match. In-process scheduler and daemons on loopback, a
//! counting HTTP origin; every test ends with the right bytes by sha256.

mod common;

use bytes::Bytes;
use common::{
    daemon_config, request, sha256_file, socket_client, start_origin, start_scheduler, Outcome,
};
use damselfly_core::{PieceLayout, MIN_PIECE_LENGTH};
use damselfly_daemon::Daemon;
use damselfly_storage::{Storage, StorageConfig};
use damselfly_testkit::sha256_hex;
use dragonfly_api::common::v2::Download;
use dragonfly_api::dfdaemon::v2::ListLocalTasksRequest;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;

const SIZE: usize = 6 * MIN_PIECE_LENGTH as usize + 4321;

/// Metrics are process-wide: tests that count rejected pieces run one at a time, so each
/// sees only its own.
static METRIC_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn content(seed: usize) -> Bytes {
    (0..SIZE)
        .map(|i| (i * seed % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Downloads `url` through `socket`, with `digest` when given.
async fn download(
    socket: PathBuf,
    url: &str,
    output: &Path,
    digest: Option<String>,
) -> Result<Outcome, tonic::Status> {
    common::download(
        socket,
        Download {
            digest,
            ..request(url, output)
        },
    )
    .await
}

async fn only_task_id(daemon: &Daemon) -> String {
    let mut client = socket_client(daemon.addrs().socket.clone()).await;
    let tasks = client
        .list_local_tasks(ListLocalTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    tasks[0].task_id.clone()
}

async fn rejected_pieces(daemon: &Daemon, check: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(daemon.addrs().metrics)
        .await
        .unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let prefix = format!("damselfly_download_piece_rejected_total{{check=\"{check}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Stores `lie` (bytes that are not the origin's) as every piece but the first of `task_id`
/// in a daemon's cache before it starts: each piece is recorded with the crc32 of its wrong
/// bytes, so a child checking the parent's own crc32 would take them.
async fn plant_lie(cache: &Path, task_id: &str, lie: &[u8]) {
    let storage = Storage::open(StorageConfig::with_dir(cache)).unwrap();
    let layout = PieceLayout::new(SIZE as u64, None);
    storage
        .prepare_task(task_id, SIZE as u64, layout.piece_length, Vec::new())
        .await
        .unwrap();
    for span in layout.spans().skip(1) {
        let bytes = &lie[span.offset as usize..span.end() as usize];
        storage
            .write_piece(task_id, span, bytes, None, Some("forger"), Duration::ZERO)
            .await
            .unwrap();
    }
    storage.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lying_parent_is_caught_reported_and_kept_out() {
    let _serial = METRIC_TESTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = content(7);
    let want = sha256_hex(&data);
    let lie: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    let (origin, origin_bytes) = start_origin(data).await;
    let url = format!("http://{origin}/file.bin");
    let (scheduler, stop) = start_scheduler().await;

    // A fetches from the origin and reports each piece's trusted (BLAKE3) digest to the scheduler.
    let a = Daemon::start(daemon_config("127.0.0.21", "honest", dir.path(), scheduler))
        .await
        .unwrap();
    download(
        a.addrs().socket.clone(),
        &url,
        &dir.path().join("a.bin"),
        None,
    )
    .await
    .unwrap();
    let task_id = only_task_id(&a).await;

    // L holds a lie for every piece but the first, which it then fetches from A: L finishes
    // the task and the scheduler lists it as a parent.
    let liar_config = daemon_config("127.0.0.22", "liar", dir.path(), scheduler);
    plant_lie(&liar_config.storage.dir, &task_id, &lie).await;
    let liar = Daemon::start(liar_config).await.unwrap();
    let out_liar = dir.path().join("liar.bin");
    download(liar.addrs().socket.clone(), &url, &out_liar, None)
        .await
        .unwrap();
    assert_ne!(sha256_file(&out_liar), want, "the liar holds a lie");
    // A leaves: the liar is the only parent the child can be given.
    a.stop().await;
    let origin_before = origin_bytes.load(Ordering::Relaxed);

    let child = Daemon::start(daemon_config("127.0.0.23", "child", dir.path(), scheduler))
        .await
        .unwrap();
    let rejected_before = rejected_pieces(&child, "trusted").await;
    let out = dir.path().join("child.bin");
    let outcome = download(child.addrs().socket.clone(), &url, &out, None)
        .await
        .unwrap();
    assert_eq!(
        sha256_file(&out),
        want,
        "the child ends with the origin's bytes"
    );
    assert!(
        rejected_pieces(&child, "trusted").await > rejected_before,
        "the liar's pieces failed the trusted digest"
    );
    // Only the liar's one honest piece (the first, from A) may have come from it.
    let liar_pieces = outcome
        .parents
        .iter()
        .filter(|p| {
            p.as_deref()
                .is_some_and(|id| id.starts_with("127.0.0.22-liar-"))
        })
        .count();
    assert!(liar_pieces <= 1, "{:?}", outcome.parents);
    assert!(
        origin_bytes.load(Ordering::Relaxed) > origin_before,
        "what the liar could not give came from the origin"
    );
    // The child serves what it finished: a second child gets the right bytes from it.
    let second = Daemon::start(daemon_config("127.0.0.24", "second", dir.path(), scheduler))
        .await
        .unwrap();
    let out_second = dir.path().join("second.bin");
    download(second.addrs().socket.clone(), &url, &out_second, None)
        .await
        .unwrap();
    assert_eq!(sha256_file(&out_second), want);
    for daemon in [liar, child, second] {
        daemon.stop().await;
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_with_corrupted_content_does_not_poison_a_child() {
    let _serial = METRIC_TESTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = content(11);
    let want = sha256_hex(&data);
    let (origin, _) = start_origin(data).await;
    let url = format!("http://{origin}/file.bin");
    let (scheduler, stop) = start_scheduler().await;
    let config = daemon_config("127.0.0.25", "rotten", dir.path(), scheduler);
    let storage_dir = config.storage.dir.clone();
    let a = Daemon::start(config).await.unwrap();
    download(
        a.addrs().socket.clone(),
        &url,
        &dir.path().join("a.bin"),
        None,
    )
    .await
    .unwrap();
    let task_id = only_task_id(&a).await;

    // Flip bytes in the middle of every piece of A's finished content file.
    let path = storage_dir
        .join("content/tasks")
        .join(&task_id[..3])
        .join(&task_id);
    let mut bytes = std::fs::read(&path).unwrap();
    for piece in 0..=SIZE / MIN_PIECE_LENGTH as usize {
        let at = piece * MIN_PIECE_LENGTH as usize + 1000;
        if at < bytes.len() {
            bytes[at] ^= 0xff;
        }
    }
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    let b = Daemon::start(daemon_config(
        "127.0.0.26",
        "healthy",
        dir.path(),
        scheduler,
    ))
    .await
    .unwrap();
    let rejected_before = rejected_pieces(&b, "trusted").await;
    let out = dir.path().join("b.bin");
    let outcome = download(b.addrs().socket.clone(), &url, &out, None)
        .await
        .unwrap();
    assert_eq!(sha256_file(&out), want);
    assert!(
        rejected_pieces(&b, "trusted").await > rejected_before,
        "the corrupted parent was tried and its pieces refused"
    );
    assert!(
        outcome.parents.iter().all(Option::is_none),
        "no piece from the corrupted parent: {:?}",
        outcome.parents
    );
    a.stop().await;
    b.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_file_digest_mismatch_leaves_no_finished_task() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(13);
    let want = sha256_hex(&data);
    let (origin, origin_bytes) = start_origin(data).await;
    let url = format!("http://{origin}/file.bin");
    let (scheduler, stop) = start_scheduler().await;
    let a = Daemon::start(daemon_config(
        "127.0.0.27",
        "mismatch",
        dir.path(),
        scheduler,
    ))
    .await
    .unwrap();
    let out = dir.path().join("a.bin");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let Err(status) = download(a.addrs().socket.clone(), &url, &out, Some(wrong)).await else {
        panic!("the download with a wrong digest succeeded");
    };
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(
        status.message().contains("digest mismatch") && status.message().contains(&want),
        "{}",
        status.message()
    );
    assert!(!out.exists(), "no output");
    let mut client = socket_client(a.addrs().socket.clone()).await;
    let tasks = client
        .list_local_tasks(ListLocalTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "the bad content is gone: {tasks:?}");

    // The scheduler was never told A holds the task: B gets it from the origin, not from A.
    let after_a = origin_bytes.load(Ordering::Relaxed);
    let b = Daemon::start(daemon_config("127.0.0.28", "after", dir.path(), scheduler))
        .await
        .unwrap();
    let out_b = dir.path().join("b.bin");
    let outcome = download(
        b.addrs().socket.clone(),
        &url,
        &out_b,
        Some(format!("sha256:{want}")),
    )
    .await
    .unwrap();
    assert_eq!(sha256_file(&out_b), want);
    assert!(
        outcome.parents.iter().all(Option::is_none),
        "{:?}",
        outcome.parents
    );
    assert!(origin_bytes.load(Ordering::Relaxed) >= after_a + SIZE as u64);
    a.stop().await;
    b.stop().await;
    stop.cancel();
}
