//! The two small HTTP servers: Prometheus `/metrics` and `/healthy`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Which endpoint a server answers.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Metrics,
    Health,
}

/// Serves `endpoint` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    debug!(%error, "accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| async move {
                Ok::<_, Infallible>(answer(endpoint, &request))
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        debug!(%error, "HTTP connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
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
