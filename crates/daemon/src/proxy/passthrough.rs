//! Requests that do not go through the swarm: sent to the upstream as they came (method,
//! headers, body), and the upstream's answer streamed back unchanged (status, headers, body),
//! so manifests, token requests, 401 challenges, redirects and uploads behave as without us.

use super::body::{self, ProxyBody};
use super::guard::{self, Kind};
use futures::TryStreamExt;
use http::header::{HeaderMap, HeaderName};
use http::{Response, StatusCode};
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::time::Duration;
use tracing::debug;
use url::Url;

/// Time to connect to an upstream for a passed-through request.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence from an upstream while waiting for headers or body bytes.
pub const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Hop-by-hop headers (RFC 9110 §7.6.1) and ours: never forwarded in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Our request headers start with this; they are for the proxy, not the upstream.
const DRAGONFLY_HEADER_PREFIX: &str = "x-dragonfly-";

/// HTTP clients towards upstreams: one that verifies certificates (against the download
/// engine's roots: system store, web roots, `registryMirror.cert`), one that does not (for
/// `hijackHTTPS.hosts[].insecure`). Neither follows redirects: the client sees them.
pub struct Upstream {
    verified: reqwest::Client,
    insecure: reqwest::Client,
}

impl Upstream {
    pub fn new(trust: &damselfly_transfer::Backend) -> Result<Self, crate::error::DaemonError> {
        let builder = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(UPSTREAM_CONNECT_TIMEOUT)
                .read_timeout(UPSTREAM_READ_TIMEOUT)
                .tcp_nodelay(true)
        };
        let client_error =
            |e: String| crate::error::DaemonError::Config(format!("proxy HTTP client: {e}"));
        let verified = trust
            .trusting(builder())?
            .build()
            .map_err(|e| client_error(e.to_string()))?;
        let insecure = builder()
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| client_error(e.to_string()))?;
        Ok(Self { verified, insecure })
    }

    /// Sends the request upstream and streams the answer back; transport failures are 502.
    pub async fn forward(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        url: Url,
        insecure: bool,
        kind: Kind,
    ) -> Response<ProxyBody> {
        guard::count(kind);
        let client = if insecure {
            &self.insecure
        } else {
            &self.verified
        };
        let mut request = client
            .request(parts.method.clone(), url.as_str())
            .headers(forwardable(&parts.headers));
        if has_body(&parts.headers) {
            let stream = BodyDataStream::new(body);
            request = request.body(reqwest::Body::wrap_stream(stream));
        }
        match request.send().await {
            Ok(upstream) => relay(upstream),
            Err(error) => {
                debug!(%url, %error, "upstream request failed");
                body::text(
                    StatusCode::BAD_GATEWAY,
                    "upstream",
                    &format!("cannot reach {url}: {}", error_chain(&error)),
                )
            }
        }
    }
}

/// The upstream's answer as ours: same status and end-to-end headers, body streamed.
fn relay(upstream: reqwest::Response) -> Response<ProxyBody> {
    let status = upstream.status();
    let headers = forwardable(upstream.headers());
    let stream = upstream
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| std::io::Error::other(e.to_string()));
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// End-to-end headers only (also drops those the `Connection` header names).
pub fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_hop_by_hop(name) || named.iter().any(|n| n == name.as_str()) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    HOP_BY_HOP.contains(&name) || name.starts_with(DRAGONFLY_HEADER_PREFIX)
}

/// Whether the client is sending a body (GET and HEAD normally do not).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// reqwest hides the cause (refused, DNS, TLS) in the source chain.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_our_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("host", "127.0.0.1:4001".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("x-dragonfly-registry", "https://r".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.append("accept", "a".parse().unwrap());
        h.append("accept", "b".parse().unwrap());
        let out = forwardable(&h);
        assert_eq!(out.len(), 3);
        assert_eq!(out.get("authorization").unwrap(), "Bearer t");
        assert_eq!(out.get_all("accept").iter().count(), 2);
        assert!(!has_body(&h));
        h.insert("content-length", "3".parse().unwrap());
        assert!(has_body(&h));
    }
}
