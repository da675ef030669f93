//! What users see when things go wrong, through the daemon's socket (DESIGN.md "Errors users
//! see"), with the scheduler down so every download also exercises the origin fallback.

mod common;

use bytes::Bytes;
use common::{daemon_config, socket_client, start_origin};
use damselfly_daemon::Daemon;
use dragonfly_api::common::v2::Download;
use dragonfly_api::dfdaemon::v2::DownloadTaskRequest;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

const SIZE: usize = 9 * 1024 * 1024 + 7;

async fn download(socket: PathBuf, download: Download) -> Result<(), tonic::Status> {
    let mut client = socket_client(socket).await;
    let request = DownloadTaskRequest {
        download: Some(download),
    };
    let mut stream = client.download_task(request).await?.into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

fn request(url: &str, output: &Path) -> Download {
    Download {
        url: url.to_string(),
        output_path: Some(output.to_string_lossy().into_owned()),
        timeout: prost_wkt_types::Duration::try_from(Duration::from_secs(60)).ok(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_visible_errors_and_origin_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let data: Bytes = (0..SIZE)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    let sha = hex::encode(Sha256::digest(&data));
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
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&out).unwrap())),
        sha
    );

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
