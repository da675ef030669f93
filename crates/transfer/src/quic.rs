//! Vortex over QUIC (dragonfly-v2.md §3.3): the same TLV frames as the TCP transport, one
//! bidirectional stream per piece over one pooled connection per parent, no ALPN.
//!
//! Official Dragonfly peers present a self-signed certificate named "d7y" and accept any
//! server certificate, so their QUIC is encrypted but not authenticated. [`QuicSecurity`]
//! chooses between speaking exactly that and verifying both ends against a cluster CA.

use crate::error::TransferError;
use crate::limiter::RateLimiter;
use crate::metrics::{UPLOAD_PIECE_TOTAL, UPLOAD_TRAFFIC_BYTES};
use crate::vortex::{self, PieceSink, PieceSource, Refusal, VortexServerConfig};
use damselfly_core::admission::ConnectionLimits;
use damselfly_core::PieceSpan;
use damselfly_storage::{PieceMetadata, Storage};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use vortex_protocol::tlv::download_piece::DownloadPiece;

/// The name official Dragonfly peers put in their self-signed certificate and connect to.
pub const DRAGONFLY_SERVER_NAME: &str = "d7y";
/// Pieces one QUIC connection may request at once. A child fetches `concurrentPieceCount`
/// (8) pieces per download over one connection; 64 leave room for several downloads, the
/// same bound the TCP server puts on one address's sockets.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// A connection without traffic for this long is closed, freeing its address's slot; the
/// client's pool then opens a new one on demand.
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Flow-control window per stream on the client: one 4 MiB piece in flight without waiting
/// for window updates, which the 1.25 MB default would otherwise throttle on fast links.
pub const CLIENT_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Closed connections are dropped from the client's pool once it holds this many parents.
const POOL_PRUNE_SIZE: usize = 256;
/// QUIC's error codes for TLS alerts are 0x100 + alert (RFC 9001 §4.8).
const CRYPTO_ERROR_CODES: std::ops::RangeInclusive<u64> = 0x100..=0x1ff;

/// Who a QUIC endpoint trusts.
#[derive(Clone, Debug)]
pub enum QuicSecurity {
    /// As official Dragonfly peers: the server presents a fresh self-signed "d7y"
    /// certificate, the client accepts any server certificate and presents none.
    DragonflyCompatible,
    /// Both ends prove a cluster certificate: the server requires and checks a client
    /// certificate, the client checks the server's against the cluster CA and the parent's IP.
    /// ALPN is cleared from both configs, as Dragonfly's QUIC uses none.
    Verified {
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        unverified_peers: UnverifiedPeers,
    },
}

/// What a verifying client does with a parent whose certificate the cluster CA did not
/// sign (`download.quic.allowUnverifiedPeers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnverifiedPeers {
    /// Refuse to fetch from it.
    #[default]
    Refuse,
    /// Fetch from it as an official Dragonfly peer would (encrypted, unauthenticated).
    AllowDragonflyCompatible,
}

/// A bound QUIC piece server, not yet serving (its port is known before the daemon
/// announces itself).
pub struct QuicListener {
    endpoint: Endpoint,
}

impl QuicListener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

/// Turns a bound UDP socket into a QUIC piece server with `security`'s certificate.
pub fn bind_quic(
    socket: std::net::UdpSocket,
    security: &QuicSecurity,
    config: &VortexServerConfig,
) -> Result<QuicListener, TransferError> {
    let crypto = match security {
        QuicSecurity::DragonflyCompatible => compatible_server_crypto()?,
        QuicSecurity::Verified { server, .. } => {
            let mut server = (**server).clone();
            server.alpn_protocols.clear();
            server
        }
    };
    let crypto = QuicServerConfig::try_from(crypto).map_err(quic_setup)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(server_transport(config)));
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TransferError::Quic("no async runtime for QUIC".to_string()))?;
    let endpoint =
        Endpoint::new(Default::default(), Some(server), socket, runtime).map_err(quic_setup)?;
    Ok(QuicListener { endpoint })
}

fn server_transport(config: &VortexServerConfig) -> TransportConfig {
    let streams = MAX_STREAMS_PER_CONNECTION.min(config.max_connections.max(1) as u32);
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.max_idle_timeout(QUIC_IDLE_TIMEOUT.try_into().ok());
    transport
}

/// A fresh self-signed certificate for "d7y", as an official Dragonfly QUIC server has.
fn compatible_server_crypto() -> Result<rustls::ServerConfig, TransferError> {
    let certified = rcgen::generate_simple_self_signed(vec![DRAGONFLY_SERVER_NAME.to_string()])
        .map_err(quic_setup)?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(quic_setup)?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())
        .map_err(quic_setup)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn quic_setup(error: impl std::fmt::Display) -> TransferError {
    TransferError::Quic(error.to_string())
}

/// Serves pieces over QUIC until `shutdown`, with the TCP server's limits: connections per
/// address and in total, request timeout, sending turns, send timeout.
pub async fn serve_quic(
    listener: QuicListener,
    storage: Storage,
    upload_limiter: RateLimiter,
    shutdown: CancellationToken,
    config: VortexServerConfig,
) {
    let endpoint = listener.endpoint;
    let limits = ConnectionLimits::new(
        config.max_connections_per_address,
        config.max_open_connections,
    );
    let server = Arc::new(StreamServer {
        storage,
        limiter: upload_limiter,
        config,
    });
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let peer = incoming.remote_address();
        let Ok(slot) = limits.admit(peer.ip()) else {
            debug!(%peer, "quic connection refused");
            UPLOAD_PIECE_TOTAL.with_label_values(&["refused"]).inc();
            incoming.refuse();
            continue;
        };
        let server = Arc::clone(&server);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = server.serve_connection(incoming, peer) => {}
            }
            drop(slot);
        });
    }
    endpoint.close(VarInt::from_u32(0), b"server stopping");
    debug!("quic piece server stopped");
}

/// What every stream of the QUIC server shares.
struct StreamServer {
    storage: Storage,
    limiter: RateLimiter,
    config: VortexServerConfig,
}

impl StreamServer {
    /// Completes the handshake (within the request timeout) and serves each stream the peer
    /// opens; the transport config caps how many are open at once.
    async fn serve_connection(self: Arc<Self>, incoming: quinn::Incoming, peer: SocketAddr) {
        let connection = match tokio::time::timeout(self.config.request_timeout, incoming).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                debug!(%peer, %error, "quic handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "quic handshake not completed in time");
                return;
            }
        };
        let mut streams = tokio::task::JoinSet::new();
        loop {
            match connection.accept_bi().await {
                Ok((send, recv)) => {
                    let server = Arc::clone(&self);
                    streams.spawn(async move { server.serve_stream(send, recv, peer).await });
                }
                Err(error) => {
                    debug!(%peer, %error, "quic connection ended");
                    break;
                }
            }
            // Reap finished streams so a long-lived connection does not pile them up.
            while streams.try_join_next().is_some() {}
        }
    }

    async fn serve_stream(&self, mut send: SendStream, mut recv: RecvStream, peer: SocketAddr) {
        let request = match tokio::time::timeout(
            self.config.request_timeout,
            vortex::read_request(&mut recv),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(Refusal::Drop("request not received in time".to_string())),
        };
        let outcome = match request {
            Ok(request) => self.send_in_turn(&mut send, &request.piece, peer).await,
            Err(refusal) => Err(refusal),
        };
        UPLOAD_PIECE_TOTAL
            .with_label_values(&[vortex::outcome_label(&outcome)])
            .inc();
        match outcome {
            Ok(()) => {
                send.finish().ok();
            }
            Err(Refusal::Frame(code, message)) => {
                debug!(%peer, ?code, message, "refusing quic vortex request");
                let packet = vortex::error_packet(code, message);
                self.timed(send.write_all(&packet)).await.ok();
                send.finish().ok();
            }
            Err(Refusal::Drop(reason)) => {
                debug!(%peer, reason, "dropping quic vortex stream");
                send.reset(VarInt::from_u32(0)).ok();
            }
        }
        // The stream's unread input (none for a well-behaved peer) is not wanted.
        recv.stop(VarInt::from_u32(0)).ok();
    }

    /// Waits for a turn to send (see [`crate::UploadSlots`]), then sends; a peer that stops
    /// the stream meanwhile (its fetch moved to another parent) leaves the line.
    async fn send_in_turn(
        &self,
        send: &mut SendStream,
        request: &DownloadPiece,
        peer: SocketAddr,
    ) -> Result<(), Refusal> {
        if let Some(hook) = &self.config.on_requested {
            hook(&request.task_id, request.piece_number);
        }
        let mut turn = tokio::select! {
            biased;
            turn = self.config.slots.acquire(&request.task_id, request.piece_number, peer.ip()) => turn,
            _ = send.stopped() => {
                return Err(Refusal::Drop("peer left while waiting for a turn".to_string()));
            }
        };
        let length = self.send_piece(send, request).await?;
        // The turn covers the bytes in flight (see `vortex::DELIVERY_WAIT`): finishing the
        // stream and waiting until the peer has every byte.
        send.finish().ok();
        tokio::time::timeout(vortex::DELIVERY_WAIT, send.stopped())
            .await
            .ok();
        turn.finished(length);
        Ok(())
    }

    /// Sends the piece; returns its length.
    async fn send_piece(
        &self,
        send: &mut SendStream,
        request: &DownloadPiece,
    ) -> Result<u64, Refusal> {
        let (task_id, number) = (request.task_id.as_str(), request.piece_number);
        let (piece, file) = self
            .storage
            .open_piece(task_id, number)
            .map_err(vortex::storage_refusal)?;
        let packet = vortex::piece_content_packet(&piece);
        self.timed(send.write_all(&packet)).await?;
        self.send_body(send, Arc::new(file), &piece).await?;
        if let Some(hook) = &self.config.on_uploaded {
            hook(task_id, number);
        }
        debug!(
            task_id,
            number,
            length = piece.length,
            "piece uploaded over quic"
        );
        Ok(piece.length)
    }

    /// Streams the piece bytes, charging the upload limiter per chunk. The file is read off
    /// the async workers; QUIC has no sendfile.
    async fn send_body(
        &self,
        send: &mut SendStream,
        file: Arc<std::fs::File>,
        piece: &PieceMetadata,
    ) -> Result<(), Refusal> {
        let mut sent = 0u64;
        let mut buffer = Vec::with_capacity(vortex::SEND_CHUNK_SIZE);
        while sent < piece.length {
            let count = (piece.length - sent).min(vortex::SEND_CHUNK_SIZE as u64) as usize;
            buffer = read_chunk(Arc::clone(&file), buffer, piece.offset + sent, count).await?;
            if buffer.is_empty() {
                return Err(Refusal::Drop(format!(
                    "content file ends inside piece {}",
                    piece.number
                )));
            }
            self.timed(send.write_all(&buffer)).await?;
            sent += buffer.len() as u64;
            UPLOAD_TRAFFIC_BYTES.inc_by(buffer.len() as u64);
            self.config.slots.uploaded(buffer.len() as u64);
            self.limiter.acquire(buffer.len() as u64).await;
        }
        Ok(())
    }

    /// Bounds one stream write by the send timeout.
    async fn timed(
        &self,
        operation: impl std::future::Future<Output = Result<(), quinn::WriteError>>,
    ) -> Result<(), Refusal> {
        match tokio::time::timeout(self.config.send_timeout, operation).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Refusal::Drop(format!("send failed: {e}"))),
            Err(_) => Err(Refusal::Drop("send stalled".to_string())),
        }
    }
}

/// Reads up to `count` bytes at `offset` into `buffer` (replacing its contents); empty at EOF.
async fn read_chunk(
    file: Arc<std::fs::File>,
    mut buffer: Vec<u8>,
    offset: u64,
    count: usize,
) -> Result<Vec<u8>, Refusal> {
    let read = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        buffer.resize(count, 0);
        let n = file.read_at(&mut buffer, offset)?;
        buffer.truncate(n);
        Ok::<_, std::io::Error>(buffer)
    })
    .await;
    match read {
        Ok(Ok(buffer)) => Ok(buffer),
        Ok(Err(e)) => Err(Refusal::Drop(format!("reading piece content: {e}"))),
        Err(e) => Err(Refusal::Drop(format!("reading piece content: {e}"))),
    }
}

/// How the client authenticates a parent.
#[derive(Clone)]
struct ClientTrust {
    /// Tried first.
    primary: quinn::ClientConfig,
    primary_kind: Trust,
    /// Tried when the primary config rejected the parent's certificate, if allowed.
    fallback: Option<quinn::ClientConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trust {
    /// Any certificate, server name "d7y".
    Any,
    /// The cluster CA, server name = the parent's IP.
    ClusterCa,
}

/// A parent's pooled connection; the lock is held while connecting so concurrent fetches
/// from one parent share one handshake.
type PoolEntry = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// Fetches pieces from parents over QUIC, one connection per parent, one stream per piece.
#[derive(Clone)]
pub struct QuicPieceClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    trust: ClientTrust,
    /// One client endpoint per address family, bound on first use.
    endpoints: Mutex<HashMap<bool, Endpoint>>,
    pool: Mutex<HashMap<SocketAddr, PoolEntry>>,
}

impl std::fmt::Debug for QuicPieceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPieceClient")
            .field("trust", &self.inner.trust.primary_kind)
            .field("fallback", &self.inner.trust.fallback.is_some())
            .finish()
    }
}

impl QuicPieceClient {
    pub fn new(security: &QuicSecurity) -> Result<Self, TransferError> {
        let trust = match security {
            QuicSecurity::DragonflyCompatible => ClientTrust {
                primary: compatible_client_config()?,
                primary_kind: Trust::Any,
                fallback: None,
            },
            QuicSecurity::Verified {
                client,
                unverified_peers,
                ..
            } => {
                let mut crypto = (**client).clone();
                crypto.alpn_protocols.clear();
                let fallback = match unverified_peers {
                    UnverifiedPeers::Refuse => None,
                    UnverifiedPeers::AllowDragonflyCompatible => Some(compatible_client_config()?),
                };
                ClientTrust {
                    primary: client_config(crypto)?,
                    primary_kind: Trust::ClusterCa,
                    fallback,
                }
            }
        };
        Ok(Self {
            inner: Arc::new(ClientInner {
                trust,
                endpoints: Mutex::new(HashMap::new()),
                pool: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Fetches one piece from the parent's QUIC server at `addr` into storage (digest
    /// checked, parent recorded), within `timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn download_piece(
        &self,
        addr: SocketAddr,
        task_id: &str,
        span: PieceSpan,
        parent_id: &str,
        storage: &Storage,
        limiters: &[RateLimiter],
        timeout: Duration,
    ) -> Result<PieceMetadata, TransferError> {
        let source = PieceSource::untrusted(addr, parent_id);
        self.download_piece_from(source, task_id, span, storage, limiters, timeout)
            .await
    }

    /// Fetches one piece from `source`; recorded only if it matches the trusted digest when
    /// one is given, else the parent's crc32.
    pub async fn download_piece_from(
        &self,
        source: PieceSource<'_>,
        task_id: &str,
        span: PieceSpan,
        storage: &Storage,
        limiters: &[RateLimiter],
        timeout: Duration,
    ) -> Result<PieceMetadata, TransferError> {
        let sink = source.sink(task_id, span, storage, limiters);
        sink.within(timeout, " over QUIC", self.fetch(&sink)).await
    }

    async fn fetch(&self, sink: &PieceSink<'_>) -> Result<PieceMetadata, TransferError> {
        vortex::check_task_id(sink.task_id)?;
        let addr = sink.addr;
        let started = Instant::now();
        let connection = self.connection(addr).await?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| connection_failure(addr, e))?;
        let request = vortex::request_packet(sink.task_id, sink.span.number);
        send.write_all(&request)
            .await
            .map_err(|e| stream_failure(addr, &connection, e.to_string()))?;
        send.finish().ok();
        match sink.receive(&mut recv, started).await {
            // A closed connection (say, the parent refused our certificate) says more than
            // the stream error it caused.
            Err(error) => Err(match connection.close_reason() {
                Some(reason) => connection_failure(addr, reason),
                None => error,
            }),
            ok => ok,
        }
    }

    /// The parent's live pooled connection, or a new one.
    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, TransferError> {
        let entry = {
            let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() >= POOL_PRUNE_SIZE {
                pool.retain(|_, entry| entry.try_lock().map_or(true, |c| is_open(&c)));
            }
            Arc::clone(pool.entry(addr).or_default())
        };
        let mut slot = entry.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(connection.clone());
        }
        let connection = self.connect(addr).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Handshakes with the primary trust, then (if allowed) with Dragonfly's when the
    /// parent's certificate was not one the cluster CA signed.
    async fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, TransferError> {
        let endpoint = self.endpoint(addr)?;
        let trust = &self.inner.trust;
        let connecting = start_handshake(&endpoint, &trust.primary, trust.primary_kind, addr)?;
        let rejected = match connecting.await {
            Ok(connection) => return Ok(connection),
            Err(error) if is_local_crypto_failure(&error) => error,
            Err(error) => return Err(connection_failure(addr, error)),
        };
        let Some(fallback) = &trust.fallback else {
            return Err(connection_failure(addr, rejected));
        };
        warn!(%addr, error = %rejected, "parent has no cluster certificate; fetching as Dragonfly does (download.quic.allowUnverifiedPeers)");
        start_handshake(&endpoint, fallback, Trust::Any, addr)?
            .await
            .map_err(|e| connection_failure(addr, e))
    }

    fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, TransferError> {
        let mut endpoints = self
            .inner
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let v4 = addr.is_ipv4();
        if let Some(endpoint) = endpoints.get(&v4) {
            return Ok(endpoint.clone());
        }
        let any = match v4 {
            true => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            false => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let endpoint = Endpoint::client(SocketAddr::new(any, 0)).map_err(quic_setup)?;
        endpoints.insert(v4, endpoint.clone());
        Ok(endpoint)
    }
}

fn is_open(connection: &Option<quinn::Connection>) -> bool {
    connection
        .as_ref()
        .is_some_and(|c| c.close_reason().is_none())
}

/// Sends the first handshake packet; the result resolves to the connection or why not.
fn start_handshake(
    endpoint: &Endpoint,
    config: &quinn::ClientConfig,
    trust: Trust,
    addr: SocketAddr,
) -> Result<quinn::Connecting, TransferError> {
    let server_name = match trust {
        Trust::Any => DRAGONFLY_SERVER_NAME.to_string(),
        Trust::ClusterCa => addr.ip().to_string(),
    };
    endpoint
        .connect_with(config.clone(), addr, &server_name)
        .map_err(|e| TransferError::PeerUnreachable {
            addr,
            reason: e.to_string(),
        })
}

/// Our TLS stack rejected the parent's handshake: its certificate is not one we trust.
fn is_local_crypto_failure(error: &ConnectionError) -> bool {
    matches!(error, ConnectionError::TransportError(e) if CRYPTO_ERROR_CODES.contains(&u64::from(e.code)))
}

fn connection_failure(addr: SocketAddr, error: ConnectionError) -> TransferError {
    match &error {
        ConnectionError::TransportError(e) if CRYPTO_ERROR_CODES.contains(&u64::from(e.code)) => {
            TransferError::PeerUntrusted {
                addr,
                reason: format!("its certificate was rejected: {error}"),
            }
        }
        ConnectionError::ConnectionClosed(close)
            if CRYPTO_ERROR_CODES.contains(&u64::from(close.error_code)) =>
        {
            TransferError::PeerUntrusted {
                addr,
                reason: format!("it refused our certificate: {error}"),
            }
        }
        ConnectionError::TimedOut => TransferError::Timeout(format!("parent {addr}: {error}")),
        _ => TransferError::PeerUnreachable {
            addr,
            reason: error.to_string(),
        },
    }
}

fn stream_failure(
    addr: SocketAddr,
    connection: &quinn::Connection,
    reason: String,
) -> TransferError {
    match connection.close_reason() {
        Some(error) => connection_failure(addr, error),
        None => TransferError::PeerUnreachable { addr, reason },
    }
}

fn client_config(crypto: rustls::ClientConfig) -> Result<quinn::ClientConfig, TransferError> {
    let crypto = QuicClientConfig::try_from(crypto).map_err(quic_setup)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport.max_idle_timeout(QUIC_IDLE_TIMEOUT.try_into().ok());
    transport.stream_receive_window(VarInt::from_u32(CLIENT_STREAM_WINDOW));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Dragonfly's client: any server certificate, no client certificate.
fn compatible_client_config() -> Result<quinn::ClientConfig, TransferError> {
    let provider = provider();
    let crypto = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(quic_setup)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
        .with_no_client_auth();
    client_config(crypto)
}

/// Accepts whatever certificate the server shows (Dragonfly's peers are self-signed), but
/// still checks the handshake signature, so the session key belongs to that certificate.
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
