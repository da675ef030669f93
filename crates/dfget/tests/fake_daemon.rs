//! dfget's client side end to end against an in-process fake `DfdaemonDownload` server on a
//! unix socket: request contents, progress accounting, status → exit code, cancellation, and
//! the embedded-default start of a daemon program.

use clap::Parser;
use damselfly_dfget::{execute, run, Args, DfgetError};
use dragonfly_api::common::v2::{Download, Piece, TaskType, TrafficType};
use dragonfly_api::dfdaemon::v2::dfdaemon_download_server::{
    DfdaemonDownload, DfdaemonDownloadServer,
};
use dragonfly_api::dfdaemon::v2::download_task_response::Response;
use dragonfly_api::dfdaemon::v2::*;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response as GrpcResponse, Status};

const MIB: u64 = 1024 * 1024;

/// What the fake daemon does with a download.
#[derive(Clone)]
enum Behavior {
    /// Started, then these pieces, then OK.
    Succeed {
        content_length: u64,
        pieces: Vec<Piece>,
    },
    /// Started with `is_finished` (complete in the cache), no pieces, then OK.
    Cached { content_length: u64 },
    /// Fails the call before any message.
    FailAtOnce(Status),
    /// Started, then fails the stream.
    FailAfterStart(Status),
    /// Started, then waits until the client goes away.
    Hang,
}

#[derive(Default)]
struct Seen {
    requests: Vec<(Download, Option<String>)>,
    cancelled: bool,
    last_activity: Option<Instant>,
}

#[derive(Clone)]
struct Fake {
    behavior: Behavior,
    seen: Arc<Mutex<Seen>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn started(content_length: u64) -> DownloadTaskResponse {
    DownloadTaskResponse {
        host_id: "127.0.0.1-fake".into(),
        task_id: "task".into(),
        peer_id: "127.0.0.1-fake-peer".into(),
        response: Some(Response::DownloadTaskStartedResponse(
            DownloadTaskStartedResponse {
                content_length,
                ..Default::default()
            },
        )),
    }
}

fn finished(piece: Piece) -> DownloadTaskResponse {
    DownloadTaskResponse {
        response: Some(Response::DownloadPieceFinishedResponse(
            DownloadPieceFinishedResponse { piece: Some(piece) },
        )),
        ..started(0)
    }
}

fn piece(number: u32, length: u64, traffic: TrafficType, parent: Option<&str>) -> Piece {
    Piece {
        number,
        offset: u64::from(number) * 4 * MIB,
        length,
        traffic_type: Some(traffic as i32),
        parent_id: parent.map(str::to_string),
        ..Default::default()
    }
}

/// Plays the behavior into a channel; the channel closing early means the client cancelled.
async fn play(
    behavior: Behavior,
    tx: mpsc::Sender<Result<DownloadTaskResponse, Status>>,
    seen: Arc<Mutex<Seen>>,
) {
    let hang = matches!(behavior, Behavior::Hang);
    let messages = match behavior {
        Behavior::Succeed {
            content_length,
            pieces,
        } => std::iter::once(Ok(started(content_length)))
            .chain(pieces.into_iter().map(|p| Ok(finished(p))))
            .collect(),
        Behavior::Cached { content_length } => {
            let mut message = started(content_length);
            if let Some(Response::DownloadTaskStartedResponse(s)) = message.response.as_mut() {
                s.is_finished = true;
            }
            vec![Ok(message)]
        }
        Behavior::FailAfterStart(status) => vec![Ok(started(8 * MIB)), Err(status)],
        Behavior::Hang => vec![Ok(started(8 * MIB))],
        Behavior::FailAtOnce(status) => vec![Err(status)],
    };
    for message in messages {
        if tx.send(message).await.is_err() {
            lock(&seen).cancelled = true;
            return;
        }
    }
    if hang {
        tx.closed().await;
        lock(&seen).cancelled = true;
    }
}

#[tonic::async_trait]
impl DfdaemonDownload for Fake {
    type DownloadTaskStream = BoxStream<DownloadTaskResponse>;

    async fn download_task(
        &self,
        request: Request<DownloadTaskRequest>,
    ) -> Result<GrpcResponse<Self::DownloadTaskStream>, Status> {
        let rate = request
            .metadata()
            .get("x-damselfly-rate-limit")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let download = request.into_inner().download.unwrap_or_default();
        {
            let mut seen = lock(&self.seen);
            seen.requests.push((download, rate));
            seen.last_activity = Some(Instant::now());
        }
        if let Behavior::FailAtOnce(status) = &self.behavior {
            return Err(status.clone());
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(play(self.behavior.clone(), tx, self.seen.clone()));
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stat_task(
        &self,
        _: Request<StatTaskRequest>,
    ) -> Result<GrpcResponse<dragonfly_api::common::v2::Task>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn stat_local_task(
        &self,
        _: Request<StatLocalTaskRequest>,
    ) -> Result<GrpcResponse<StatLocalTaskResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_local_tasks(
        &self,
        _: Request<ListLocalTasksRequest>,
    ) -> Result<GrpcResponse<ListLocalTasksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_task_entries(
        &self,
        _: Request<ListTaskEntriesRequest>,
    ) -> Result<GrpcResponse<ListTaskEntriesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_task(&self, _: Request<DeleteTaskRequest>) -> Result<GrpcResponse<()>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_local_task(
        &self,
        _: Request<DeleteLocalTaskRequest>,
    ) -> Result<GrpcResponse<()>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_host(&self, _: Request<()>) -> Result<GrpcResponse<()>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type DownloadCacheTaskStream = BoxStream<DownloadCacheTaskResponse>;
    async fn download_cache_task(
        &self,
        _: Request<DownloadCacheTaskRequest>,
    ) -> Result<GrpcResponse<Self::DownloadCacheTaskStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn stat_cache_task(
        &self,
        _: Request<StatCacheTaskRequest>,
    ) -> Result<GrpcResponse<dragonfly_api::common::v2::CacheTask>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_cache_task(
        &self,
        _: Request<DeleteCacheTaskRequest>,
    ) -> Result<GrpcResponse<()>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type DownloadPersistentTaskStream = BoxStream<DownloadPersistentTaskResponse>;
    async fn download_persistent_task(
        &self,
        _: Request<DownloadPersistentTaskRequest>,
    ) -> Result<GrpcResponse<Self::DownloadPersistentTaskStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn upload_persistent_task(
        &self,
        _: Request<UploadPersistentTaskRequest>,
    ) -> Result<GrpcResponse<dragonfly_api::common::v2::PersistentTask>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn stat_persistent_task(
        &self,
        _: Request<StatPersistentTaskRequest>,
    ) -> Result<GrpcResponse<dragonfly_api::common::v2::PersistentTask>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn stat_local_persistent_task(
        &self,
        _: Request<StatLocalPersistentTaskRequest>,
    ) -> Result<GrpcResponse<StatLocalPersistentTaskResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_local_persistent_tasks(
        &self,
        _: Request<ListLocalPersistentTasksRequest>,
    ) -> Result<GrpcResponse<ListLocalPersistentTasksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type DownloadPersistentCacheTaskStream = BoxStream<DownloadPersistentCacheTaskResponse>;
    async fn download_persistent_cache_task(
        &self,
        _: Request<DownloadPersistentCacheTaskRequest>,
    ) -> Result<GrpcResponse<Self::DownloadPersistentCacheTaskStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn upload_persistent_cache_task(
        &self,
        _: Request<UploadPersistentCacheTaskRequest>,
    ) -> Result<GrpcResponse<dragonfly_api::common::v2::PersistentCacheTask>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn stat_persistent_cache_task(
        &self,
        _: Request<StatPersistentCacheTaskRequest>,
    ) -> Result<GrpcResponse<dragonfly_api::common::v2::PersistentCacheTask>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn stat_local_persistent_cache_task(
        &self,
        _: Request<StatLocalPersistentCacheTaskRequest>,
    ) -> Result<GrpcResponse<StatLocalPersistentCacheTaskResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_local_persistent_cache_tasks(
        &self,
        _: Request<ListLocalPersistentCacheTasksRequest>,
    ) -> Result<GrpcResponse<ListLocalPersistentCacheTasksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves `behavior` on `socket` in the background; returns what the fake saw.
fn serve(socket: &Path, behavior: Behavior) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = Fake {
        behavior,
        seen: seen.clone(),
    };
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the fake daemon socket");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DfdaemonDownloadServer::new(fake))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    seen
}

struct Setup {
    dir: tempfile::TempDir,
    socket: PathBuf,
    output: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("dfdaemon.sock");
    let output = dir.path().join("out.bin");
    Setup {
        dir,
        socket,
        output,
    }
}

fn args(setup: &Setup, extra: &[&str]) -> Args {
    let mut argv: Vec<String> = vec![
        "dfget".into(),
        "http://origin.example/f.bin?X-Amz-Signature=s".into(),
        "-O".into(),
        setup.output.display().to_string(),
        "-e".into(),
        setup.socket.display().to_string(),
        "--no-progress".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Args::try_parse_from(argv).expect("test arguments parse")
}

fn three_pieces() -> Behavior {
    Behavior::Succeed {
        content_length: 10 * MIB,
        pieces: vec![
            piece(0, 4 * MIB, TrafficType::RemotePeer, Some("peer-a")),
            piece(1, 4 * MIB, TrafficType::BackToSource, None),
            piece(2, 2 * MIB, TrafficType::LocalPeer, None),
        ],
    }
}

#[tokio::test]
async fn a_download_streams_progress_and_sends_every_option() {
    let s = setup();
    let seen = serve(&s.socket, three_pieces());
    let digest = format!("sha256:{}", "0f".repeat(32));
    let a = args(
        &s,
        &[
            "--digest",
            &digest,
            "-H",
            "Authorization: Bearer t",
            "-H",
            "X-A: 1",
            "--tag",
            "t1",
            "--application",
            "app",
            "--piece-length",
            "4MiB",
            "-p",
            "4",
            "--rate-limit",
            "10MiB",
            "--timeout",
            "90s",
            "--overwrite",
            "--force-hard-link",
            "--disable-back-to-source",
            "--content-for-calculating-task-id",
            "seed",
        ],
    );
    let outcome = execute(a).await.expect("the fake download succeeds");
    assert_eq!(outcome.traffic.content_length, Some(10 * MIB));
    assert_eq!(outcome.traffic.from_peers, 4 * MIB);
    assert_eq!(outcome.traffic.from_origin, 4 * MIB);
    assert_eq!(outcome.traffic.from_local, 2 * MIB);
    assert_eq!(outcome.output, s.output);
    assert_eq!(outcome.socket, s.socket);

    let seen = lock(&seen);
    assert_eq!(seen.requests.len(), 1);
    let (d, rate) = &seen.requests[0];
    assert_eq!(rate.as_deref(), Some("10485760"));
    assert_eq!(d.url, "http://origin.example/f.bin?X-Amz-Signature=s");
    assert_eq!(d.output_path.as_deref(), s.output.to_str());
    assert_eq!(d.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(d.r#type, TaskType::Standard as i32);
    assert_eq!(d.tag.as_deref(), Some("t1"));
    assert_eq!(d.application.as_deref(), Some("app"));
    assert_eq!(d.piece_length, Some(4 * MIB));
    assert_eq!(d.priority, 4);
    assert_eq!(d.content_for_calculating_task_id.as_deref(), Some("seed"));
    assert!(d.overwrite && d.force_hard_link && d.disable_back_to_source);
    assert_eq!(d.timeout.as_ref().map(|t| t.seconds), Some(90));
    assert_eq!(
        d.request_header.get("Authorization").map(String::as_str),
        Some("Bearer t")
    );
    assert_eq!(d.request_header.get("X-A").map(String::as_str), Some("1"));
    assert!(d
        .filtered_query_params
        .iter()
        .any(|p| p == "X-Amz-Signature"));
}

#[tokio::test]
async fn a_task_complete_in_the_cache_counts_as_local() {
    let s = setup();
    serve(
        &s.socket,
        Behavior::Cached {
            content_length: 5 * MIB,
        },
    );
    let outcome = execute(args(&s, &[]))
        .await
        .expect("the cached download succeeds");
    assert_eq!(outcome.traffic.from_local, 5 * MIB);
    assert_eq!(outcome.traffic.unattributed(), 0);
}

#[tokio::test]
async fn defaults_reach_the_daemon() {
    let s = setup();
    let seen = serve(&s.socket, three_pieces());
    assert_eq!(run(args(&s, &[])).await, ExitCode::SUCCESS);
    let seen = lock(&seen);
    let (d, rate) = &seen.requests[0];
    assert_eq!(rate, &None);
    assert_eq!(d.priority, 6);
    assert_eq!(d.digest, None);
    assert_eq!(d.piece_length, None);
    assert_eq!(d.timeout.as_ref().map(|t| t.seconds), Some(7200));
    assert!(!d.overwrite && !d.disable_back_to_source);
}

#[tokio::test]
async fn daemon_statuses_become_exit_codes() {
    let cases = [
        (Status::invalid_argument("bad digest"), 2),
        (
            Status::not_found("http://origin.example/f.bin answered 404 Not Found"),
            3,
        ),
        (
            Status::failed_precondition("origin answered 403 Forbidden"),
            3,
        ),
        (
            Status::unavailable("cannot connect to origin.example:80"),
            4,
        ),
        (
            Status::data_loss("digest mismatch: expected sha256:aa, got sha256:bb"),
            5,
        ),
        (Status::deadline_exceeded("timed out after 90s"), 6),
        (
            Status::resource_exhausted("no space left on /var/lib/dragonfly"),
            7,
        ),
        (Status::already_exists("/x exists"), 1),
        (Status::internal("boom"), 1),
    ];
    for (status, code) in cases {
        for fail_at_once in [true, false] {
            let s = setup();
            let behavior = if fail_at_once {
                Behavior::FailAtOnce(status.clone())
            } else {
                Behavior::FailAfterStart(status.clone())
            };
            serve(&s.socket, behavior);
            let err = execute(args(&s, &[])).await.expect_err("the fake fails");
            assert_eq!(
                err.exit_code(),
                code,
                "{status:?} (at once: {fail_at_once})"
            );
            assert_eq!(err.to_string(), status.message());
            assert_eq!(run(args(&s, &[])).await, ExitCode::from(code));
        }
    }
}

#[tokio::test]
async fn local_errors_do_not_contact_the_daemon() {
    let s = setup();
    let seen = serve(&s.socket, three_pieces());
    let mut a = args(&s, &[]);
    a.output = s.dir.path().join("missing-dir/out.bin");
    let err = execute(a)
        .await
        .expect_err("the output directory is missing");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("does not exist"), "{err}");

    std::fs::write(&s.output, b"old").expect("write");
    let err = execute(args(&s, &[])).await.expect_err("the output exists");
    assert!(matches!(err, DfgetError::OutputExists(_)), "{err:?}");
    assert_eq!(lock(&seen).requests.len(), 0);
}

#[tokio::test]
async fn dropping_the_download_cancels_it_in_the_daemon() {
    let s = setup();
    let seen = serve(&s.socket, Behavior::Hang);
    let download = execute(args(&s, &[]));
    let result = tokio::time::timeout(Duration::from_millis(500), download).await;
    assert!(result.is_err(), "a hanging download does not finish");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lock(&seen).cancelled {
        assert!(
            Instant::now() < deadline,
            "the daemon never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a shell script standing in for `dfdaemon`.
fn fake_program(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("dfdaemon");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[tokio::test]
async fn a_daemon_that_cannot_start_exits_8_and_points_at_its_log() {
    let s = setup();
    let storage = s.dir.path().join("storage");
    let argv_file = s.dir.path().join("argv");
    let program = fake_program(
        s.dir.path(),
        &format!(
            "echo \"$@\" > '{}'\necho 'fatal: cannot bind port 4000' >&2\nexit 1",
            argv_file.display()
        ),
    );
    let a = args(
        &s,
        &[
            "--dfdaemon-path",
            program.to_str().expect("utf-8"),
            "--daemon-storage-dir",
            storage.to_str().expect("utf-8"),
            "--idle-exit",
            "90s",
        ],
    );
    let err = execute(a).await.expect_err("the daemon exits at once");
    assert_eq!(err.exit_code(), 8);
    let message = err.to_string();
    assert!(message.contains("dfdaemon.log"), "{message}");
    assert!(
        message.contains("fatal: cannot bind port 4000"),
        "{message}"
    );
    let argv = std::fs::read_to_string(&argv_file).expect("the script ran");
    let expected = format!(
        "--config /dev/null --embedded-scheduler --idle-exit 1m 30s --ip 127.0.0.1 --upload-port 0 --piece-port 0 \
         --quic-port 0 --metrics-port 0 --health-port 0 --socket {} --storage-dir {}",
        s.socket.display(),
        storage.display()
    );
    assert_eq!(argv.trim(), expected);
}

#[tokio::test]
async fn a_missing_daemon_program_exits_8() {
    let s = setup();
    let a = args(
        &s,
        &[
            "--dfdaemon-path",
            "/nonexistent/dfdaemon",
            "--daemon-storage-dir",
            s.dir.path().join("st").to_str().expect("utf-8"),
        ],
    );
    let err = execute(a).await.expect_err("nothing to start");
    assert_eq!(err.exit_code(), 8);
}

/// Env var that turns this test binary into a fake dfdaemon (see `fake_dfdaemon_process`).
const FAKE_ARGS_ENV: &str = "DFGET_TEST_FAKE_DAEMON_ARGS";

#[tokio::test]
async fn an_absent_daemon_is_started_once_and_then_reused() {
    let s = setup();
    let storage = s.dir.path().join("storage");
    let starts = s.dir.path().join("starts");
    let test_binary = std::env::current_exe().expect("the test binary path");
    // The script records each start, then runs this test binary as the daemon.
    let program = fake_program(
        s.dir.path(),
        &format!(
            "echo start >> '{}'\n{FAKE_ARGS_ENV}=\"$*\" exec '{}' --ignored --exact fake_dfdaemon_process --nocapture",
            starts.display(),
            test_binary.display()
        ),
    );
    let flags = [
        "--dfdaemon-path",
        program.to_str().expect("utf-8"),
        "--daemon-storage-dir",
        storage.to_str().expect("utf-8"),
    ];
    // Two dfgets at once: the start lock makes the second wait for the first's daemon.
    let mut second = args(&s, &flags);
    second.output = s.dir.path().join("second.bin");
    let (first, second) = tokio::join!(execute(args(&s, &flags)), execute(second));
    assert_eq!(
        first.expect("the started daemon serves").traffic.done(),
        10 * MIB
    );
    assert_eq!(
        second.expect("the started daemon serves").traffic.done(),
        10 * MIB
    );
    assert!(storage.join("dfdaemon.log").exists());

    std::fs::remove_file(&s.output).ok();
    let outcome = execute(args(&s, &flags))
        .await
        .expect("the same daemon serves again");
    assert_eq!(outcome.traffic.from_peers, 4 * MIB);
    let starts = std::fs::read_to_string(&starts).expect("the script ran");
    assert_eq!(
        starts.lines().count(),
        1,
        "one daemon served all three dfgets"
    );
}

/// Not a test: the body of the fake dfdaemon process started by the test above. It serves
/// `three_pieces` on `--socket` and exits after 3 s without a download, like `--idle-exit`.
#[tokio::test]
#[ignore = "run as a child process by an_absent_daemon_is_started_once_and_then_reused"]
async fn fake_dfdaemon_process() {
    let Ok(argv) = std::env::var(FAKE_ARGS_ENV) else {
        return;
    };
    let words: Vec<&str> = argv.split_whitespace().collect();
    let socket = words
        .windows(2)
        .find(|w| w[0] == "--socket")
        .map(|w| PathBuf::from(w[1]))
        .expect("--socket is passed");
    let seen = serve(&socket, three_pieces());
    lock(&seen).last_activity = Some(Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let idle = lock(&seen).last_activity.map(|t| t.elapsed());
        if idle.is_some_and(|idle| idle > Duration::from_secs(3)) {
            std::process::exit(0);
        }
    }
}
