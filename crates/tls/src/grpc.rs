//! tonic over mTLS: a server's incoming connection stream and a client channel connector.
//!
//! We run the handshake ourselves (tokio-rustls) rather than through tonic's TLS builder so
//! the same `rustls` configs serve gRPC and, later, QUIC; tonic still sees the TLS session
//! and gives each request the peer's certificates ([`peer_identity`]).

use crate::{Identity, Result, TlsError};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// ALPN protocol of gRPC; grpc-go refuses TLS connections that do not negotiate it.
pub const ALPN_H2: &[u8] = b"h2";
/// A client that has not finished its handshake by then is dropped, so half-open
/// connections cannot pile up in front of the gRPC server.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The plain-text connections accepted on `listener`, for `serve_with_incoming`, with Nagle's
/// algorithm off. tonic's `Server::tcp_nodelay` applies only to listeners tonic opens itself;
/// with Nagle on, a response's second small write waits for the client's delayed ACK (about
/// 40 ms on Linux): a scheduler decision took 40-50 ms instead of 1 ms on loopback.
pub fn plain_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = io::Result<TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    })
}

/// The TLS connections accepted on `listener`, for `serve_with_incoming`. Each handshake runs
/// in its own task; a failed one (no certificate, wrong CA) is logged with the client's
/// address and never reaches gRPC.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "TLS listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::warn!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The identity the caller's certificate proves: `None` on a plain-text connection,
/// an error if the certificate cannot be read.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<Result<Identity>> {
    let certs = request.peer_certs()?;
    let Some(leaf) = certs.first() else {
        return Some(Err(TlsError::Certificate(
            "TLS session without a client certificate".into(),
        )));
    };
    Some(Identity::from_der(leaf.as_ref()))
}

/// A channel to `endpoint` (an `http://host:port` URI) that connects on first use, through
/// TLS when `tls` is set.
pub fn lazy_channel(endpoint: Endpoint, tls: Option<&Arc<ClientConfig>>) -> Channel {
    match tls {
        Some(config) => endpoint.connect_with_connector_lazy(Connector::new(config)),
        None => endpoint.connect_lazy(),
    }
}

/// Connects to `endpoint` now, through TLS when `tls` is set.
pub async fn channel(
    endpoint: Endpoint,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Channel, tonic::transport::Error> {
    match tls {
        Some(config) => {
            endpoint
                .connect_with_connector(Connector::new(config))
                .await
        }
        None => endpoint.connect().await,
    }
}

/// Dials TCP and runs the client handshake, verifying the server against the CA and the
/// host or IP address in the URI.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
}

impl Connector {
    pub fn new(config: &Arc<ClientConfig>) -> Self {
        let mut config = (**config).clone();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Self {
            tls: TlsConnector::from(Arc::new(config)),
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<ClientStream>>> + Send>>;
type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<ClientStream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let name = ServerName::try_from(host.clone()).map_err(|_| invalid("bad host"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn plain_connections_are_accepted_with_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(plain_incoming(listener));
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
