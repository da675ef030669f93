//! A real loopback HTTP origin (hyper) and helpers shared by the transfer tests.
#![allow(dead_code)]

use bytes::Bytes;
use damselfly_storage::{Storage, StorageConfig};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

mod tls;
#[allow(unused_imports)]
pub use tls::{start_tls_origin, TestCa};

/// How the test origin misbehaves.
#[derive(Default)]
pub struct OriginBehaviour {
    /// Answer every request with this status.
    pub status: Option<u16>,
    /// Answer HEAD with this status (e.g. 405).
    pub head_status: Option<u16>,
    /// Serve the whole body with 200 even when a Range is asked for.
    pub ignore_range: bool,
    /// No Content-Length, chunked transfer encoding.
    pub chunked: bool,
    /// Answer this many requests with 503 before behaving.
    pub fail_first: AtomicUsize,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub data: Bytes,
    pub requests: Arc<AtomicUsize>,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl Origin {
    pub fn url(&self) -> String {
        format!("{}://{}/blob", self.scheme, self.addr)
    }
}

pub async fn start_origin(data: Vec<u8>, behaviour: OriginBehaviour) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = Bytes::from(data);
    let requests = Arc::new(AtomicUsize::new(0));
    let state = Arc::new((data.clone(), behaviour, requests.clone()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(respond(req, &state.0, &state.1, &state.2)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Origin {
        addr,
        data,
        requests,
        scheme: "http",
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed()
}

fn chunked(bytes: Bytes) -> Body {
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = bytes
        .chunks(10_000)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures::stream::iter(chunks)).boxed()
}

fn status(code: u16) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
}

fn respond(
    req: Request<Incoming>,
    data: &Bytes,
    behaviour: &OriginBehaviour,
    requests: &AtomicUsize,
) -> Response<Body> {
    requests.fetch_add(1, Ordering::SeqCst);
    if let Some(code) = behaviour.status {
        return status(code);
    }
    if behaviour
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return status(503);
    }
    let len = data.len() as u64;
    if req.method() == Method::HEAD {
        if let Some(code) = behaviour.head_status {
            return status(code);
        }
        let mut builder = Response::builder().status(200);
        if !behaviour.chunked {
            builder = builder.header("content-length", len);
        }
        if !behaviour.ignore_range {
            builder = builder.header("accept-ranges", "bytes");
        }
        return builder.body(full(Bytes::new())).unwrap();
    }
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    match range {
        Some(_) if behaviour.ignore_range => whole(data, behaviour),
        Some((start, _)) if start >= len => Response::builder()
            .status(416)
            .header("content-range", format!("bytes */{len}"))
            .body(full(Bytes::new()))
            .unwrap(),
        Some((start, end)) => {
            let end = end.min(len - 1);
            Response::builder()
                .status(206)
                .header("content-range", format!("bytes {start}-{end}/{len}"))
                .header("accept-ranges", "bytes")
                .body(full(data.slice(start as usize..=end as usize)))
                .unwrap()
        }
        None => whole(data, behaviour),
    }
}

fn whole(data: &Bytes, behaviour: &OriginBehaviour) -> Response<Body> {
    let body = if behaviour.chunked {
        chunked(data.clone())
    } else {
        full(data.clone())
    };
    Response::builder().status(200).body(body).unwrap()
}

fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?))
}

pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed) | 0x9e37_0000;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

pub fn task_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

pub fn storage(dir: &std::path::Path) -> Storage {
    Storage::open(StorageConfig::with_dir(dir)).unwrap()
}
