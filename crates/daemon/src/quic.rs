//! Vortex over QUIC for this daemon: which [`QuicSecurity`] its piece server and client use,
//! and the client `download.protocol` asks for.

use crate::config::{DaemonConfig, PieceProtocol};
use crate::error::DaemonError;
use damselfly_transfer::{PieceFetcher, QuicPieceClient, QuicSecurity, UnverifiedPeers};
use std::sync::Arc;
use tokio_rustls::rustls;

/// The one place that decides how QUIC peers are authenticated. Verified mode needs the
/// cluster's TLS configs; until they are loaded from `caCert/cert/key` files, the daemon
/// speaks exactly what official Dragonfly peers speak.
pub fn quic_security(config: &DaemonConfig) -> Result<QuicSecurity, DaemonError> {
    let unverified_peers = match config.download.quic.allow_unverified_peers {
        true => UnverifiedPeers::AllowDragonflyCompatible,
        false => UnverifiedPeers::Refuse,
    };
    Ok(match cluster_tls(config)? {
        Some((server, client)) => QuicSecurity::Verified {
            server,
            client,
            unverified_peers,
        },
        None => QuicSecurity::DragonflyCompatible,
    })
}

/// The cluster's server config (requiring client certificates) and client config (with
/// this host's certificate), when certificates are configured. Point this at the TLS
/// files' loader: none is wired yet.
type ClusterTls = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);
fn cluster_tls(_config: &DaemonConfig) -> Result<Option<ClusterTls>, DaemonError> {
    Ok(None)
}

/// How pieces are fetched from parents, from `download.protocol`.
pub fn piece_fetcher(
    config: &DaemonConfig,
    security: &QuicSecurity,
) -> Result<PieceFetcher, DaemonError> {
    Ok(match config.download.protocol {
        PieceProtocol::Tcp => PieceFetcher::Tcp,
        PieceProtocol::Quic => PieceFetcher::Quic(QuicPieceClient::new(security)?),
    })
}
