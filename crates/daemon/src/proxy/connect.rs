//! `CONNECT host:port`: a blind TCP tunnel by default; for hosts listed in
//! `proxy.hijackHTTPS.hosts`, TLS is terminated with a certificate from the proxy's CA and the
//! requests inside are served like any other (so HTTPS registries can go through the swarm).

use super::body::{self, ProxyBody};
use super::guard::{self, Kind};
use super::Proxy;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::{debug, Instrument};

/// Time to connect to a tunnel's target.
pub const TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a hijacked client to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn handle(proxy: Arc<Proxy>, request: Request<Incoming>) -> Response<ProxyBody> {
    let Some(authority) = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .filter(|a| a.contains(':'))
    else {
        guard::count(Kind::BadRequest);
        return body::text(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "CONNECT needs a host:port target",
        );
    };
    if proxy.hijacks(&authority).is_some() {
        guard::count(Kind::ConnectTls);
        let span = tracing::info_span!("connect_tls", %authority);
        tokio::spawn(terminate(proxy, request, authority).instrument(span));
        return body::ok_empty();
    }
    guard::count(Kind::ConnectTunnel);
    let target =
        match tokio::time::timeout(TUNNEL_CONNECT_TIMEOUT, TcpStream::connect(&authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return unreachable(&authority, &error.to_string()),
            Err(_) => return unreachable(&authority, "connect timed out"),
        };
    let span = tracing::info_span!("connect_tunnel", %authority);
    tokio::spawn(tunnel(proxy, request, target).instrument(span));
    body::ok_empty()
}

fn unreachable(authority: &str, reason: &str) -> Response<ProxyBody> {
    body::text(
        StatusCode::BAD_GATEWAY,
        "upstream",
        &format!("cannot connect to {authority}: {reason}"),
    )
}

/// Copies bytes both ways until either side closes (or the daemon stops).
async fn tunnel(proxy: Arc<Proxy>, request: Request<Incoming>, mut target: TcpStream) {
    let upgraded = match hyper::upgrade::on(request).await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "CONNECT upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(upgraded);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut target) => {
            if let Err(error) = result {
                debug!(%error, "tunnel closed with an error");
            }
        }
        _ = proxy.life.stopping() => {}
    }
}

/// Terminates the client's TLS with a minted certificate and serves the requests inside.
async fn terminate(proxy: Arc<Proxy>, request: Request<Incoming>, authority: String) {
    let Some(ca) = proxy.authority.as_ref() else {
        return;
    };
    let host = host_of(&authority);
    let config = match ca.server_config(host) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(%error, "cannot mint a certificate");
            return;
        }
    };
    let upgraded = match hyper::upgrade::on(request).await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "CONNECT upgrade failed");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = acceptor.accept(TokioIo::new(upgraded));
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            debug!(%error, "client TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("client TLS handshake timed out");
            return;
        }
    };
    super::serve_connection(proxy, tls, Some(Arc::from(authority.as_str()))).await;
}

/// `host` of `host:port` (brackets of an IPv6 literal removed).
fn host_of(authority: &str) -> &str {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_authority() {
        assert_eq!(super::host_of("reg.test:443"), "reg.test");
        assert_eq!(super::host_of("[::1]:8443"), "::1");
    }
}
