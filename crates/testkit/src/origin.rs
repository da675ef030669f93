//! The test origin: files by path on 127.0.0.1, answered by [`crate::respond`].

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::{random_bytes, sha256_hex};

/// Whether the origin honours `Range`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ranges {
    /// 206 with `Content-Range`, 416 past the end; `Accept-Ranges: bytes` on every answer.
    #[default]
    Honoured,
    /// Always 200 with the whole body and no `Accept-Ranges`, as Python's http.server.
    Ignored,
}

/// How a body's length is told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length` on every answer, HEAD included.
    #[default]
    Declared,
    /// No `Content-Length`: chunked transfer encoding.
    Chunked,
}

/// How an origin behaves; the default is a well-behaved plain HTTP server.
#[derive(Clone, Default)]
pub struct OriginOptions {
    pub ranges: Ranges,
    pub length: BodyLength,
    /// Answer every request with this status.
    pub status: Option<u16>,
    /// Answer HEAD with this status (e.g. 405, to force a ranged GET instead).
    pub head_status: Option<u16>,
    /// Answer this many requests with 503 before behaving.
    pub fail_first: usize,
    /// Serve HTTPS with this configuration (see [`crate::TestCa::server_config`]).
    pub tls: Option<Arc<ServerConfig>>,
}

/// One request the origin answered.
#[derive(Debug, Clone)]
pub struct OriginRequest {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

/// A file the origin serves.
#[derive(Clone)]
pub struct OriginFile {
    pub url: String,
    pub path: String,
    pub sha256: String,
    pub data: Bytes,
}

impl OriginFile {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// What the serving tasks share with the [`Origin`] handle.
pub(crate) struct OriginState {
    pub(crate) options: OriginOptions,
    pub(crate) files: Mutex<HashMap<String, Bytes>>,
    /// Body bytes handed to the connections (GET bodies only; HEAD has none).
    pub(crate) served: Arc<AtomicU64>,
    /// Flip one byte in every chunk served.
    pub(crate) tamper: AtomicBool,
    /// Per-response throttle in bytes per second; 0 = unlimited.
    pub(crate) rate: AtomicU64,
    /// Delay before answering any GET, in milliseconds.
    pub(crate) delay_ms: AtomicU64,
    /// While set, every GET body stops after its first `hold_after` bytes (see
    /// [`Origin::hold_bodies_after`]).
    pub(crate) holding: tokio::sync::watch::Sender<bool>,
    pub(crate) hold_after: AtomicU64,
    /// Failures still owed by [`OriginOptions::fail_first`].
    pub(crate) failures_left: AtomicUsize,
    pub(crate) requests: Mutex<Vec<OriginRequest>>,
}

/// An HTTP/1.1 origin on 127.0.0.1:0. [`Origin::start`] runs it on a runtime of its own (for
/// synchronous tests; stopped on drop); [`Origin::spawn`] on the caller's runtime.
pub struct Origin {
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    state: Arc<OriginState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Origin {
    /// A plain, well-behaved origin on a runtime of its own.
    pub fn start() -> Origin {
        Origin::start_with(OriginOptions::default())
    }

    /// An origin with `options` on a runtime of its own; usable from sync and async tests.
    pub fn start_with(options: OriginOptions) -> Origin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("origin")
            .enable_all()
            .build()
            .expect("origin runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind origin");
        listener.set_nonblocking(true).expect("nonblocking origin");
        let listener = {
            let _inside = runtime.enter();
            TcpListener::from_std(listener).expect("origin listener")
        };
        let (addr, state) = prepare(&listener, options);
        runtime.spawn(accept(listener, state.clone()));
        Origin::new(addr, state, Some(runtime))
    }

    /// An origin with `options` on the caller's runtime; it serves until that runtime ends.
    pub async fn spawn(options: OriginOptions) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let (addr, state) = prepare(&listener, options);
        tokio::spawn(accept(listener, state.clone()));
        Origin::new(addr, state, None)
    }

    fn new(
        addr: SocketAddr,
        state: Arc<OriginState>,
        runtime: Option<tokio::runtime::Runtime>,
    ) -> Origin {
        let scheme = if state.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Origin {
            addr,
            scheme,
            state,
            runtime,
        }
    }

    /// Adds a file of `len` random bytes at `/name`.
    pub fn add_random(&self, name: &str, len: usize) -> OriginFile {
        self.add(name, Bytes::from(random_bytes(len)))
    }

    /// Serves `data` at `/name` from now on.
    pub fn add(&self, name: &str, data: impl Into<Bytes>) -> OriginFile {
        let data = data.into();
        let path = format!("/{}", name.trim_start_matches('/'));
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.clone(), data.clone());
        OriginFile {
            url: self.url(&path),
            sha256: sha256_hex(&data),
            path,
            data,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://{}/{}",
            self.scheme,
            self.addr,
            path.trim_start_matches('/')
        )
    }

    /// Body bytes served so far.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// The live counter behind [`Origin::served`], for helpers that outlive the handle.
    pub fn served_counter(&self) -> Arc<AtomicU64> {
        self.state.served.clone()
    }

    pub fn set_tamper(&self, on: bool) {
        self.state.tamper.store(on, Ordering::SeqCst);
    }

    /// Throttle every response body to `bytes_per_sec` (0 = unlimited).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.state.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Every GET body from now on stops after its first `bytes` (rounded up to the 64 KiB
    /// chunks bodies are sent in) until [`Origin::release_bodies`]: a transfer caught
    /// mid-way, for as long as the test needs.
    pub fn hold_bodies_after(&self, bytes: u64) {
        self.state.hold_after.store(bytes, Ordering::SeqCst);
        self.state.holding.send_replace(true);
    }

    /// Lets held bodies go on.
    pub fn release_bodies(&self) {
        self.state.holding.send_replace(false);
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<OriginRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests were answered so far (HEAD included).
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The listener's address and the state its connections will share.
fn prepare(listener: &TcpListener, options: OriginOptions) -> (SocketAddr, Arc<OriginState>) {
    let addr = listener.local_addr().expect("origin address");
    let state = Arc::new(OriginState {
        failures_left: AtomicUsize::new(options.fail_first),
        options,
        files: Mutex::new(HashMap::new()),
        served: Arc::new(AtomicU64::new(0)),
        tamper: AtomicBool::new(false),
        rate: AtomicU64::new(0),
        delay_ms: AtomicU64::new(0),
        holding: tokio::sync::watch::channel(false).0,
        hold_after: AtomicU64::new(0),
        requests: Mutex::new(Vec::new()),
    });
    (addr, state)
}

async fn accept(listener: TcpListener, state: Arc<OriginState>) {
    let acceptor = state.options.tls.clone().map(TlsAcceptor::from);
    loop {
        // An accept error (e.g. out of descriptors under a busy test) is not the end of the
        // origin: the next accept may succeed.
        let Ok((stream, _)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let (state, acceptor) = (state.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                // A client that refuses the certificate ends the handshake; nothing to serve.
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        connection(stream, state).await;
                    }
                }
                None => connection(stream, state).await,
            }
        });
    }
}

async fn connection<S>(stream: S, state: Arc<OriginState>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(crate::respond::respond(state, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
