//! In-process swarm: a scheduler, two daemons on 127.0.0.2 / 127.0.0.3 and a counting HTTP
//! origin. The second daemon must get its bytes from the first.

mod common;

use bytes::Bytes;
use common::{daemon_config, request, sha256_file, socket_client, start_origin, start_scheduler};
use damselfly_daemon::Daemon;
use damselfly_testkit::{sha256_hex, Origin, OriginOptions, Ranges};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

const SIZE: usize = 40 * 1024 * 1024 + 12345;

/// Downloads through the daemon's socket; returns the parent IDs of the pieces.
async fn download(socket: PathBuf, url: &str, output: &Path) -> Vec<Option<String>> {
    let outcome = common::download(socket, request(url, output))
        .await
        .unwrap();
    assert_eq!(outcome.content_length, Some(SIZE as u64));
    outcome.parents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_daemon_downloads_from_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let data: Bytes = (0..SIZE)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let want = sha256_hex(&data);
    let (origin, origin_bytes) = start_origin(data).await;
    let url = format!("http://{origin}/file.bin");

    let (scheduler, stop) = start_scheduler().await;

    // A second scheduler that is down: the ring fails over to the live one.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_scheduler = dead.local_addr().unwrap();
    drop(dead);
    let with_dead = |ip: &str, name: &str| {
        let mut config = daemon_config(ip, name, dir.path(), scheduler);
        config.scheduler.addrs = vec![dead_scheduler.into(), scheduler.into()];
        config
    };
    let a = Daemon::start(with_dead("127.0.0.2", "daemon-a"))
        .await
        .unwrap();
    let b = Daemon::start(with_dead("127.0.0.3", "daemon-b"))
        .await
        .unwrap();

    // Two concurrent requests on A share one job: one copy from the origin.
    let out_a = dir.path().join("a.bin");
    let out_a_twin = dir.path().join("a-twin.bin");
    tokio::join!(
        download(a.addrs().socket.clone(), &url, &out_a),
        download(a.addrs().socket.clone(), &url, &out_a_twin)
    );
    assert_eq!(sha256_file(&out_a), want);
    assert_eq!(sha256_file(&out_a_twin), want);
    let after_first = origin_bytes.load(Ordering::Relaxed);
    assert_eq!(after_first, SIZE as u64, "first daemon fetched one copy");

    let out_b = dir.path().join("b.bin");
    let parents = download(b.addrs().socket.clone(), &url, &out_b).await;
    assert_eq!(sha256_file(&out_b), want);
    assert!(!parents.is_empty());
    assert!(
        parents.iter().all(|p| p
            .as_deref()
            .is_some_and(|id| id.starts_with("127.0.0.2-daemon-a-"))),
        "every piece came from daemon A: {parents:?}"
    );
    let total = origin_bytes.load(Ordering::Relaxed);
    assert_eq!(total, SIZE as u64, "the origin served about one copy");

    // A second request on A is a local hit: no origin bytes at all.
    let out_a2 = dir.path().join("a2.bin");
    download(a.addrs().socket.clone(), &url, &out_a2).await;
    assert_eq!(sha256_file(&out_a2), want);
    assert_eq!(origin_bytes.load(Ordering::Relaxed), total);

    // Metrics and health answer.
    let metrics = http_get(a.addrs().metrics, "/metrics").await;
    assert!(
        metrics.contains("damselfly_download_traffic_bytes_total"),
        "{metrics}"
    );
    assert!(http_get(b.addrs().health, "/healthy").await.contains("OK"));

    let socket_a = a.addrs().socket.clone();
    a.stop().await;
    b.stop().await;
    assert!(!socket_a.exists(), "socket removed at shutdown");
    stop.cancel();
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

/// A parent that lost the task: the child drops it, reschedules, and ends at the origin with
/// the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parent_without_the_task_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data: Bytes = (0..SIZE)
        .map(|i| (i * 13 % 241) as u8)
        .collect::<Vec<u8>>()
        .into();
    let want = sha256_hex(&data);
    let (origin, origin_bytes) = start_origin(data).await;
    let url = format!("http://{origin}/file.bin");
    let (scheduler, stop) = start_scheduler().await;
    let a = Daemon::start(daemon_config(
        "127.0.0.5",
        "daemon-f",
        dir.path(),
        scheduler,
    ))
    .await
    .unwrap();
    let b = Daemon::start(daemon_config(
        "127.0.0.6",
        "daemon-g",
        dir.path(),
        scheduler,
    ))
    .await
    .unwrap();
    download(a.addrs().socket.clone(), &url, &dir.path().join("a.bin")).await;

    // A forgets the task without telling the scheduler, which still lists A as a parent.
    let mut client = socket_client(a.addrs().socket.clone()).await;
    let task_id = client
        .list_local_tasks(dragonfly_api::dfdaemon::v2::ListLocalTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks[0]
        .task_id
        .clone();
    client
        .delete_local_task(dragonfly_api::dfdaemon::v2::DeleteLocalTaskRequest {
            task_id,
            remote_ip: None,
        })
        .await
        .unwrap();

    let out_b = dir.path().join("b.bin");
    download(b.addrs().socket.clone(), &url, &out_b).await;
    assert_eq!(sha256_file(&out_b), want);
    assert_eq!(origin_bytes.load(Ordering::Relaxed), 2 * SIZE as u64);
    a.stop().await;
    b.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_ignoring_range_is_fetched_once_and_shared() {
    let dir = tempfile::tempdir().unwrap();
    let data: Bytes = (0..SIZE)
        .map(|i| (i * 13 % 241) as u8)
        .collect::<Vec<u8>>()
        .into();
    let want = sha256_hex(&data);
    let origin = Origin::spawn(OriginOptions {
        ranges: Ranges::Ignored,
        ..OriginOptions::default()
    })
    .await;
    let url = origin.add("file.bin", data).url;
    let gets = || {
        origin
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count()
    };

    let (scheduler, stop) = start_scheduler().await;
    let a = Daemon::start(daemon_config("127.0.0.4", "plain-a", dir.path(), scheduler))
        .await
        .unwrap();
    let b = Daemon::start(daemon_config("127.0.0.5", "plain-b", dir.path(), scheduler))
        .await
        .unwrap();

    let out_a = dir.path().join("a.bin");
    let from_origin = download(a.addrs().socket.clone(), &url, &out_a).await;
    assert_eq!(sha256_file(&out_a), want);
    assert!(from_origin.iter().all(Option::is_none), "{from_origin:?}");
    // The stat's `Range: bytes=0-0` probe (answered 200 with the whole body, which the
    // client drops after the head) plus one whole-body stream: nothing per piece.
    assert_eq!(
        gets(),
        2,
        "one probe and one body stream: {:?}",
        origin.requests()
    );
    assert!(origin.served() >= SIZE as u64, "the stream was whole");

    let out_b = dir.path().join("b.bin");
    let parents = download(b.addrs().socket.clone(), &url, &out_b).await;
    assert_eq!(sha256_file(&out_b), want);
    assert!(
        parents.iter().all(|p| p
            .as_deref()
            .is_some_and(|id| id.starts_with("127.0.0.4-plain-a-"))),
        "every piece came from daemon A: {parents:?}"
    );
    assert_eq!(
        gets(),
        3,
        "the second daemon's stat probes the origin, its pieces do not touch it: {:?}",
        origin.requests()
    );
    a.stop().await;
    b.stop().await;
    stop.cancel();
}
