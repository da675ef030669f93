//! Vortex over QUIC on loopback: pieces arrive byte-identical, Dragonfly-compatible mode
//! works, and verified mode refuses every end that cannot prove a cluster certificate.

mod common;

use common::*;
use damselfly_core::PieceLayout;
use damselfly_storage::{Storage, StorageError};
use damselfly_transfer::{
    bind_quic, serve_quic, QuicPieceClient, QuicSecurity, RateLimiter, TransferError,
    UnverifiedPeers, VortexServerConfig,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A cluster CA (damselfly-testkit's) whose host certificates serve both TLS roles.
struct ClusterCa(TestCa);

impl ClusterCa {
    fn new(name: &str) -> ClusterCa {
        ClusterCa(TestCa::named(name))
    }

    /// A host certificate and its key.
    fn host(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let leaf = self.0.leaf();
        (leaf.chain(), leaf.key())
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.0.der.clone()).unwrap();
        Arc::new(roots)
    }

    /// A server that requires a client certificate from this CA.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots(), provider())
                .build()
                .unwrap();
        let (chain, key) = self.host();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }

    /// A client that trusts this CA and presents a certificate from it.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let (chain, key) = self.host();
        Arc::new(
            self.client_builder()
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    }

    /// A client that trusts this CA but has no certificate of its own.
    fn client_config_without_cert(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(self.client_builder().with_no_client_auth())
    }

    fn client_builder(
        &self,
    ) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
    }

    fn verified(&self, unverified_peers: UnverifiedPeers) -> QuicSecurity {
        QuicSecurity::Verified {
            server: self.server_config(),
            client: self.client_config(),
            unverified_peers,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn start_server(
    storage: Storage,
    security: &QuicSecurity,
    config: VortexServerConfig,
) -> (SocketAddr, CancellationToken) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listener = bind_quic(socket, security, &config).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_quic(
        listener,
        storage,
        RateLimiter::unlimited(),
        shutdown.clone(),
        config,
    ));
    (addr, shutdown)
}

/// A seed serving `data` as task `id` over QUIC, and an empty child storage for the task.
struct Pair {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    child_dir: std::path::PathBuf,
    id: String,
    data: Vec<u8>,
    layout: PieceLayout,
    child: Storage,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

async fn pair(n: u8, len: usize, security: &QuicSecurity) -> Pair {
    let (seed_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id = task_id(n);
    let data = content(len, n);
    let (seed, layout) = seeded(seed_dir.path(), &id, &data).await;
    let (addr, shutdown) = start_server(seed, security, VortexServerConfig::default()).await;
    let child = storage(child_dir.path());
    child
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    Pair {
        child_dir: child_dir.path().to_path_buf(),
        _dirs: (seed_dir, child_dir),
        id,
        data,
        layout,
        child,
        addr,
        shutdown,
    }
}

impl Pair {
    /// Fetches every piece at once over one client, then checks the file's sha256.
    async fn fetch_all(&self, client: &QuicPieceClient) {
        let downloads = self.layout.spans().map(|span| {
            let (child, id, addr) = (self.child.clone(), self.id.clone(), self.addr);
            async move {
                client
                    .download_piece(addr, &id, span, "seed-peer", &child, &[], TIMEOUT)
                    .await
            }
        });
        for result in futures::future::join_all(downloads).await {
            let piece = result.unwrap();
            assert_eq!(piece.parent_id.as_deref(), Some("seed-peer"));
        }
        self.child.finish_task(&self.id).unwrap();
        let output = self.child_dir.join("out");
        self.child
            .export(&self.id, &output, false, false)
            .await
            .unwrap();
        assert_eq!(sha256(&std::fs::read(&output).unwrap()), sha256(&self.data));
    }

    /// Fetches piece 0 and expects a refusal; nothing may be recorded.
    async fn fetch_refused(&self, client: &QuicPieceClient) -> TransferError {
        let span = self.layout.span(0).unwrap();
        let error = client
            .download_piece(
                self.addr,
                &self.id,
                span,
                "seed-peer",
                &self.child,
                &[],
                TIMEOUT,
            )
            .await
            .unwrap_err();
        assert!(self.child.piece(&self.id, 0).unwrap().is_none());
        error
    }
}

#[tokio::test]
async fn dragonfly_compatible_pieces_arrive_byte_identical() {
    let security = QuicSecurity::DragonflyCompatible;
    let p = pair(1, 9 * PIECE as usize + 4321, &security).await;
    let client = QuicPieceClient::new(&security).unwrap();
    p.fetch_all(&client).await;
    p.shutdown.cancel();
}

#[tokio::test]
async fn verified_peers_exchange_pieces() {
    let ca = ClusterCa::new("cluster");
    let security = ca.verified(UnverifiedPeers::Refuse);
    let p = pair(2, 5 * PIECE as usize + 17, &security).await;
    let client = QuicPieceClient::new(&security).unwrap();
    p.fetch_all(&client).await;
    p.shutdown.cancel();
}

#[tokio::test]
async fn a_verified_server_refuses_a_client_without_a_certificate() {
    let ca = ClusterCa::new("cluster");
    let p = pair(3, 2 * PIECE as usize, &ca.verified(UnverifiedPeers::Refuse)).await;
    let no_cert = QuicPieceClient::new(&QuicSecurity::Verified {
        server: ca.server_config(),
        client: ca.client_config_without_cert(),
        unverified_peers: UnverifiedPeers::Refuse,
    })
    .unwrap();
    let error = p.fetch_refused(&no_cert).await;
    assert!(
        matches!(error, TransferError::PeerUntrusted { .. }),
        "{error}"
    );
    p.shutdown.cancel();
}

#[tokio::test]
async fn a_verified_client_refuses_a_server_signed_by_another_ca() {
    let (ours, theirs) = (ClusterCa::new("cluster"), ClusterCa::new("elsewhere"));
    let p = pair(
        4,
        2 * PIECE as usize,
        &theirs.verified(UnverifiedPeers::Refuse),
    )
    .await;
    let client = QuicPieceClient::new(&ours.verified(UnverifiedPeers::Refuse)).unwrap();
    let error = p.fetch_refused(&client).await;
    assert!(
        matches!(&error, TransferError::PeerUntrusted { reason, .. } if reason.contains("its certificate")),
        "{error}"
    );
    p.shutdown.cancel();
}

#[tokio::test]
async fn a_dragonfly_compatible_client_cannot_fetch_from_a_verified_server() {
    let ca = ClusterCa::new("cluster");
    let p = pair(5, 2 * PIECE as usize, &ca.verified(UnverifiedPeers::Refuse)).await;
    let client = QuicPieceClient::new(&QuicSecurity::DragonflyCompatible).unwrap();
    let error = p.fetch_refused(&client).await;
    assert!(
        matches!(&error, TransferError::PeerUntrusted { reason, .. } if reason.contains("our certificate")),
        "{error}"
    );
    p.shutdown.cancel();
}

#[tokio::test]
async fn an_official_peer_is_refused_unless_the_operator_allows_it() {
    let ca = ClusterCa::new("cluster");
    // An official Dragonfly peer: self-signed "d7y" certificate, no client certificates.
    let p = pair(
        6,
        3 * PIECE as usize + 1,
        &QuicSecurity::DragonflyCompatible,
    )
    .await;
    let strict = QuicPieceClient::new(&ca.verified(UnverifiedPeers::Refuse)).unwrap();
    let error = p.fetch_refused(&strict).await;
    assert!(
        matches!(error, TransferError::PeerUntrusted { .. }),
        "{error}"
    );
    let lenient =
        QuicPieceClient::new(&ca.verified(UnverifiedPeers::AllowDragonflyCompatible)).unwrap();
    p.fetch_all(&lenient).await;
    p.shutdown.cancel();
}

#[tokio::test]
async fn unknown_pieces_are_not_found_and_the_connection_keeps_serving() {
    let security = QuicSecurity::DragonflyCompatible;
    let p = pair(7, 2 * PIECE as usize, &security).await;
    let client = QuicPieceClient::new(&security).unwrap();
    let unknown = task_id(99);
    let error = client
        .download_piece(
            p.addr,
            &unknown,
            p.layout.span(0).unwrap(),
            "seed-peer",
            &p.child,
            &[],
            TIMEOUT,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, TransferError::PieceNotFound { number: 0, .. }),
        "{error}"
    );
    // The same pooled connection then serves the real task.
    p.fetch_all(&client).await;
    p.shutdown.cancel();
}

#[tokio::test]
async fn a_tampered_piece_is_rejected_over_quic() {
    let security = QuicSecurity::DragonflyCompatible;
    let p = pair(8, 2 * PIECE as usize, &security).await;
    p.shutdown.cancel();
    // A second server on a corrupted copy of the seed's content.
    let seed_dir = tempfile::tempdir().unwrap();
    let (seed, layout) = seeded(seed_dir.path(), &p.id, &p.data).await;
    let path = seed.content_path(&p.id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (addr, shutdown) = start_server(seed, &security, VortexServerConfig::default()).await;
    let client = QuicPieceClient::new(&security).unwrap();
    let error = client
        .download_piece(
            addr,
            &p.id,
            layout.span(0).unwrap(),
            "bad",
            &p.child,
            &[],
            TIMEOUT,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            TransferError::Storage(StorageError::DigestMismatch { number: 0, .. })
        ),
        "{error}"
    );
    assert!(p.child.piece(&p.id, 0).unwrap().is_none());
    shutdown.cancel();
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_refused() {
    let security = QuicSecurity::DragonflyCompatible;
    let seed_dir = tempfile::tempdir().unwrap();
    let id = task_id(9);
    let data = content(2 * PIECE as usize, 9);
    let (seed, layout) = seeded(seed_dir.path(), &id, &data).await;
    let config = VortexServerConfig {
        max_connections_per_address: 1,
        ..VortexServerConfig::default()
    };
    let (addr, shutdown) = start_server(seed, &security, config).await;
    let child_dir = tempfile::tempdir().unwrap();
    let child = storage(child_dir.path());
    child
        .prepare_task(&id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    let (span0, span1) = (layout.span(0).unwrap(), layout.span(1).unwrap());
    // The first client's pooled connection stays open and holds the address's one slot.
    let first = QuicPieceClient::new(&security).unwrap();
    first
        .download_piece(addr, &id, span0, "seed", &child, &[], TIMEOUT)
        .await
        .unwrap();
    let second = QuicPieceClient::new(&security).unwrap();
    let error = second
        .download_piece(addr, &id, span1, "seed", &child, &[], TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(error, TransferError::PeerUnreachable { .. }),
        "{error}"
    );
    // The first client's connection keeps serving.
    first
        .download_piece(addr, &id, span1, "seed", &child, &[], TIMEOUT)
        .await
        .unwrap();
    shutdown.cancel();
}
