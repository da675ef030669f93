//! Vortex over QUIC for this daemon: which [`QuicSecurity`] its piece server and client use,
//! and the client `download.protocol` asks for.

use crate::config::{DaemonConfig, PieceProtocol};
use crate::error::DaemonError;
use damselfly_transfer::{PieceFetcher, QuicPieceClient, QuicSecurity, UnverifiedPeers};
use std::sync::Arc;
use tokio_rustls::rustls;

/// The one place that decides how QUIC peers are authenticated: verified against the
/// cluster CA when `upload.server.*` and `upload.client.*` are both set, else exactly what
/// official Dragonfly peers speak.
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
/// this host's certificate): the upload port's triples, so one certificate proves a host on
/// every link. Fresh configs, not the gRPC ones, because QUIC sets its own ALPN.
type ClusterTls = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);
fn cluster_tls(config: &DaemonConfig) -> Result<Option<ClusterTls>, DaemonError> {
    let files = config.tls_files()?;
    match (&files.upload_server, &files.upload_client) {
        (Some(server), Some(client)) => Ok(Some((
            damselfly_tls::server_config(server)?,
            damselfly_tls::client_config(client)?,
        ))),
        _ => Ok(None),
    }
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
