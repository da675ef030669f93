//! The two small HTTP servers: Prometheus `/metrics` and `/healthy`.

use bytes::Bytes;
use damselfly_transfer::admission::ConnectionLimits;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Which endpoint a server answers.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Metrics,
    Health,
}

/// Sockets one address may hold on the metrics or health port (a scraper needs one or two).
const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// Sockets held on the metrics or health port over all addresses.
const MAX_CONNECTIONS: usize = 256;
/// Time a client gets to send a request's headers; idle and slowloris clients are closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one connection may live: every answer here is immediate, so a connection that
/// stays longer is only holding a socket.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `endpoint` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, shutdown: CancellationToken) {
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
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_connection(stream, endpoint) => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                _ = shutdown.cancelled() => {}
            }
            drop(slot);
        });
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, endpoint: Endpoint) {
    let service =
        service_fn(move |request| async move { Ok::<_, Infallible>(answer(endpoint, &request)) });
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

fn answer(endpoint: Endpoint, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let get = request.method() == Method::GET || request.method() == Method::HEAD;
    match (endpoint, request.uri().path(), get) {
        (Endpoint::Metrics, "/metrics", true) => {
            let body = crate::metrics::render(prometheus::default_registry());
            respond(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        (Endpoint::Health, "/healthy", true) => respond(StatusCode::OK, "text/plain", "OK".into()),
        (_, _, false) => respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", String::new()),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
