//! The proxy's response body type and small canned responses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Sent on every answer the proxy makes itself, so users can tell it from the upstream's.
pub const ERROR_TYPE_HEADER: &str = "x-dragonfly-error-type";

/// Any body the proxy sends: canned, streamed from the upstream, or from the task's pieces.
pub type ProxyBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A plain-text answer from the proxy itself; `kind` goes to `X-Dragonfly-Error-Type`.
pub fn text(status: StatusCode, kind: &'static str, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(format!("{message}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR_TYPE_HEADER, HeaderValue::from_static(kind));
    response
}

/// `200 OK` with no body (CONNECT established).
pub fn ok_empty() -> Response<ProxyBody> {
    Response::new(empty())
}
