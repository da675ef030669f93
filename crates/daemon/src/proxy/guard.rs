//! What a request must pass before it is served: the request rate limit (429) and the
//! optional basic auth (401), plus the proxy's request counters.

use super::config::BasicAuth;
use http::HeaderMap;
use prometheus::IntCounterVec;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

/// Header carrying the client's proxy credentials (HTTP_PROXY=http://user:pass@host sends it).
const PROXY_AUTHORIZATION: &str = "proxy-authorization";

/// Kinds of proxy requests, the label of `damselfly_proxy_request_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Served by the download engine.
    P2p,
    /// Passed straight through to the upstream.
    Passthrough,
    /// A P2P download that failed: answered 502 before the response started, or the
    /// response cut short (digest mismatch, missing bytes).
    P2pFailed,
    /// A P2P request that fell back to the upstream (the engine could not start it).
    Fallback,
    ConnectTunnel,
    ConnectTls,
    RateLimited,
    Unauthorized,
    BadRequest,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::P2p => "p2p",
            Kind::P2pFailed => "p2p_failed",
            Kind::Passthrough => "passthrough",
            Kind::Fallback => "fallback",
            Kind::ConnectTunnel => "connect_tunnel",
            Kind::ConnectTls => "connect_tls",
            Kind::RateLimited => "rate_limited",
            Kind::Unauthorized => "unauthorized",
            Kind::BadRequest => "bad_request",
        }
    }
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "damselfly_proxy_request_total",
        "Proxy requests by kind",
        &["kind"],
    )
});

pub fn count(kind: Kind) {
    REQUESTS.with_label_values(&[kind.label()]).inc();
}

/// Makes the counter family exist before the first request.
pub fn init_metrics() {
    LazyLock::force(&REQUESTS);
}

/// Token bucket of requests per second; 0 = unlimited. Bursts up to one second's worth.
pub struct RequestLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RequestLimiter {
    pub fn new(per_second: u64) -> Self {
        let rate = per_second as f64;
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes one token; false = over the limit.
    pub fn try_acquire(&self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether the request carries the configured credentials (always true without basic auth).
pub fn authorized(auth: Option<&BasicAuth>, headers: &HeaderMap) -> bool {
    let Some(auth) = auth else {
        return true;
    };
    let Some(value) = headers
        .get(PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    use base64::Engine as _;
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", auth.username, auth.password);
    constant_time_eq(&decoded, expected.as_bytes())
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_over_the_rate() {
        let limiter = RequestLimiter::new(3);
        assert!((0..3).all(|_| limiter.try_acquire()));
        assert!(!limiter.try_acquire());
        assert!((0..100).all(|_| RequestLimiter::new(0).try_acquire()));
    }

    #[test]
    fn basic_auth() {
        let auth = BasicAuth {
            username: "u".into(),
            password: "p".into(),
        };
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(PROXY_AUTHORIZATION, value.parse().unwrap());
            headers
        };
        // "u:p"
        assert!(authorized(Some(&auth), &with("Basic dTpw")));
        assert!(!authorized(Some(&auth), &with("Basic dTpx")));
        assert!(!authorized(Some(&auth), &with("Bearer dTpw")));
        assert!(!authorized(Some(&auth), &with("Basic !!")));
        let none = HeaderMap::new();
        assert!(!authorized(Some(&auth), &none));
        assert!(authorized(None, &none));
    }
}
