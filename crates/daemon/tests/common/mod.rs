//! Test helpers: the counting origin (damselfly-testkit) serving one file, an in-process
//! scheduler, daemon configs, and downloads through a daemon's socket.
#![allow(dead_code)]

use bytes::Bytes;
use damselfly_daemon::DaemonConfig;
use damselfly_testkit::{Origin, OriginOptions};
use dragonfly_api::common::v2::Download;
use dragonfly_api::dfdaemon::v2::dfdaemon_download_client::DfdaemonDownloadClient;
use dragonfly_api::dfdaemon::v2::download_task_response::Response as TaskResponse;
use dragonfly_api::dfdaemon::v2::DownloadTaskRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

/// Serves `data` at `/file.bin` with HEAD and Range support; the counter is the body bytes
/// sent. The origin runs on the test's runtime until the test ends.
pub async fn start_origin(data: Bytes) -> (SocketAddr, Arc<AtomicU64>) {
    let origin = Origin::spawn(OriginOptions::default()).await;
    origin.add("file.bin", data);
    (origin.addr, origin.served_counter())
}

pub fn daemon_config(ip: &str, name: &str, dir: &Path, scheduler: SocketAddr) -> DaemonConfig {
    let mut c = DaemonConfig::default();
    c.host.ip = Some(ip.parse().unwrap());
    c.host.hostname = Some(name.to_string());
    c.upload.server.port = 0;
    c.storage.server.tcp_port = 0;
    c.storage.server.quic_port = 0;
    c.metrics.server.port = 0;
    c.health.server.port = 0;
    c.storage.dir = dir.join(name).join("cache");
    c.download.server.socket_path = dir.join(name).join("dfdaemon.sock");
    c.scheduler.addrs = vec![scheduler.into()];
    c
}

pub async fn socket_client(path: PathBuf) -> DfdaemonDownloadClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap();
    DfdaemonDownloadClient::new(channel)
}

/// An in-process scheduler on 127.0.0.1; cancel the token to stop it.
pub async fn start_scheduler() -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduler = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let stop_scheduler = stop.clone();
    tokio::spawn(async move {
        let config = damselfly_scheduler::SchedulerConfig::default();
        let _ =
            damselfly_scheduler::serve(config, listener, stop_scheduler.cancelled_owned()).await;
    });
    (scheduler, stop)
}

/// A download of `url` into `output` as dfget asks for it.
pub fn request(url: &str, output: &Path) -> Download {
    Download {
        url: url.to_string(),
        output_path: Some(output.to_string_lossy().into_owned()),
        timeout: prost_wkt_types::Duration::try_from(Duration::from_secs(90)).ok(),
        ..Default::default()
    }
}

/// What one download through a daemon's socket showed its caller.
#[derive(Debug)]
pub struct Outcome {
    /// The content length the started message announced.
    pub content_length: Option<u64>,
    /// Parent ID of each piece (None: from the origin).
    pub parents: Vec<Option<String>>,
}

/// Runs `download` through the daemon's socket to its end.
pub async fn download(socket: PathBuf, download: Download) -> Result<Outcome, tonic::Status> {
    let mut client = socket_client(socket).await;
    let request = DownloadTaskRequest {
        download: Some(download),
    };
    let mut stream = client.download_task(request).await?.into_inner();
    let mut outcome = Outcome {
        content_length: None,
        parents: Vec::new(),
    };
    while let Some(message) = stream.message().await? {
        match message.response {
            Some(TaskResponse::DownloadTaskStartedResponse(started)) => {
                outcome.content_length = Some(started.content_length);
            }
            Some(TaskResponse::DownloadPieceFinishedResponse(finished)) => {
                let parent = finished.piece.and_then(|piece| piece.parent_id);
                outcome.parents.push(parent);
            }
            None => {}
        }
    }
    Ok(outcome)
}

pub fn sha256_file(path: &Path) -> String {
    damselfly_testkit::sha256_hex(&std::fs::read(path).unwrap())
}
