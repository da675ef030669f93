//! The one HTTP server behind `/metrics` (Prometheus text from the default registry) and
//! `/healthy`, for dfscheduler (both paths on one port) and dfdaemon (one port each, as
//! Dragonfly). Every answer is immediate, so the server guards its sockets rather than its
//! work: a cap per address and in all, a header timeout, and a lifetime per connection.

use bytes::Bytes;
use damselfly_core::admission::ConnectionLimits;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{Encoder, Registry, TextEncoder};
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

/// Which paths one listener answers; every other path is 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/metrics` only (dfdaemon's metrics port).
    Metrics,
    /// `/healthy` only (dfdaemon's health port).
    Health,
    /// Both (dfscheduler's metrics port).
    MetricsAndHealth,
}

impl Endpoints {
    fn metrics(self) -> bool {
        matches!(self, Endpoints::Metrics | Endpoints::MetricsAndHealth)
    }

    fn health(self) -> bool {
        matches!(self, Endpoints::Health | Endpoints::MetricsAndHealth)
    }
}

/// Sockets one address may hold (a scraper needs one or two).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// Sockets held over all addresses.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client gets to send a request's headers; idle and slowloris clients are closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one connection may live: every answer here is immediate, so a connection that
/// stays longer is only holding a socket.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The Prometheus text exposition content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Serves `endpoints` on `listener` until `shutdown`; open connections end with it.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, shutdown: CancellationToken) {
    let limits = ConnectionLimits::new(MAX_CONNECTIONS_PER_ADDRESS, MAX_CONNECTIONS);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(slot) = limits.admit(peer.ip()) else {
            debug!(%peer, "too many connections; closed");
            continue;
        };
        let shutdown = shutdown.clone();
        let span = tracing::debug_span!("monitor", ?endpoints, %peer);
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = serve_connection(stream, endpoints) => {}
                    _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                    _ = shutdown.cancelled() => {}
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
}

async fn serve_connection(stream: TcpStream, endpoints: Endpoints) {
    let service =
        service_fn(move |request| async move { Ok::<_, Infallible>(answer(endpoints, &request)) });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(%error, "HTTP connection ended with an error");
    }
}

fn answer(endpoints: Endpoints, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let get = request.method() == Method::GET || request.method() == Method::HEAD;
    match request.uri().path() {
        _ if !get => respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", String::new()),
        "/metrics" if endpoints.metrics() => {
            let body = render(prometheus::default_registry());
            respond(StatusCode::OK, METRICS_CONTENT_TYPE, body)
        }
        "/healthy" if endpoints.health() => respond(StatusCode::OK, "text/plain", "OK".into()),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The Prometheus text exposition of `registry`; empty if a collector cannot be encoded,
/// which a scrape shows as missing series rather than a failed server.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        Ok(()) => String::from_utf8_lossy(&buffer).into_owned(),
        Err(error) => {
            debug!(%error, "metrics could not be encoded");
            String::new()
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
