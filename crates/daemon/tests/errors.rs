//! What users see when things go wrong, through the daemon's socket (DESIGN.md "Errors users
//! see"), with the scheduler down so every download also exercises the origin fallback.

mod common;

use bytes::Bytes;
use common::{daemon_config, download, request, sha256_file, start_origin};
use damselfly_daemon::Daemon;
use damselfly_testkit::sha256_hex;
use tonic::Code;

const SIZE: usize = 9 * 1024 * 1024 + 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_visible_errors_and_origin_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let data: Bytes = (0..SIZE)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    let sha = sha256_hex(&data);
    let (origin, _) = start_origin(data).await;
    let url = format!("http://{origin}/file.bin");
    // A scheduler address nobody listens on: downloads fall back to the origin.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let daemon = Daemon::start(daemon_config(
        "127.0.0.4",
        "daemon-e",
        dir.path(),
        dead_addr,
    ))
    .await
    .unwrap();
    let socket = daemon.addrs().socket.clone();

    // Wrong digest: DataLoss naming both digests, and no output file.
    let out = dir.path().join("bad-digest.bin");
    let mut wrong = request(&url, &out);
    wrong.digest = Some(format!("sha256:{}", "0".repeat(64)));
    let status = download(socket.clone(), wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains(&sha), "{}", status.message());
    assert!(!out.exists());

    // Right digest, scheduler down: from the origin.
    let out = dir.path().join("good.bin");
    let mut right = request(&url, &out);
    right.digest = Some(format!("sha256:{sha}"));
    download(socket.clone(), right).await.unwrap();
    assert_eq!(sha256_file(&out), sha);

    // The output exists and no overwrite.
    let status = download(socket.clone(), request(&url, &out))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let mut again = request(&url, &out);
    again.overwrite = true;
    download(socket.clone(), again).await.unwrap();

    // 404 names the URL and the status.
    let missing = format!("http://{origin}/missing.bin");
    let status = download(socket.clone(), request(&missing, &dir.path().join("m")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("404") && status.message().contains(&missing));

    // Unreachable origin.
    let status = download(
        socket.clone(),
        request(&format!("http://{dead_addr}/x"), &dir.path().join("u")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Bad input.
    let status = download(socket.clone(), request("ftp://x/y", &dir.path().join("f")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The daemon survived all of it.
    let out = dir.path().join("after.bin");
    download(socket.clone(), request(&url, &out)).await.unwrap();
    daemon.stop().await;
}
