//! Test helpers: a counting HTTP origin with Range support, daemon configs, socket clients.
#![allow(dead_code)]

use bytes::Bytes;
use damselfly_daemon::DaemonConfig;
use dragonfly_api::dfdaemon::v2::dfdaemon_download_client::DfdaemonDownloadClient;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Serves one object with HEAD and Range support, counting body bytes sent.
pub async fn start_origin(data: Bytes) -> (SocketAddr, Arc<AtomicU64>) {
    start_origin_with(data, true).await
}

/// Like [`start_origin`]; with `ranges` false it ignores Range (always 200, whole body) and
/// sends no Accept-Ranges, as Python's http.server does.
pub async fn start_origin_with(data: Bytes, ranges: bool) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let data = data.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let data = data.clone();
                    let counter = counter.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(answer(&req, &data, &counter, ranges))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, sent)
}

fn answer(
    req: &Request<hyper::body::Incoming>,
    data: &Bytes,
    sent: &AtomicU64,
    ranges: bool,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/file.bin" {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let len = data.len() as u64;
    let range = req
        .headers()
        .get("range")
        .filter(|_| ranges)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| {
            let start: u64 = a.parse().unwrap_or(0);
            let end: u64 = b.parse().unwrap_or(len - 1).min(len - 1);
            (start, end)
        });
    let (status, start, end) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
        None => (StatusCode::OK, 0, len - 1),
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        data.slice(start as usize..=end as usize)
    };
    sent.fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut builder = Response::builder()
        .status(status)
        .header("content-length", (end - start + 1).to_string());
    if ranges {
        builder = builder.header("accept-ranges", "bytes");
    }
    if range.is_some() {
        builder = builder.header("content-range", format!("bytes {start}-{end}/{len}"));
    }
    builder.body(Full::new(body)).unwrap()
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
