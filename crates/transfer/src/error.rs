use damselfly_storage::StorageError;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The origin answered with a 4xx/5xx status.
    #[error("origin answered HTTP {status} for {url}")]
    OriginStatus { status: u16, url: String },

    /// Connect, DNS or TLS failure, or the body broke off.
    #[error("origin {url} unreachable: {reason}")]
    OriginUnreachable { url: String, reason: String },

    /// The origin's TLS certificate is not trusted: the connection was refused before any
    /// request, and a retry would fail the same way.
    #[error("origin {url} presented a certificate that is not trusted ({reason}); add its CA to the system trust store, proxy.registryMirror.cert or the download's certificate_chain")]
    OriginCertificate { url: String, reason: String },

    /// A CA file named in the configuration cannot be used.
    #[error("CA certificate file {}: {reason}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        reason: String,
    },

    #[error("invalid origin URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("timed out: {0}")]
    Timeout(String),

    #[error(transparent)]
    Storage(#[from] StorageError),

    /// The other side broke the HTTP or Vortex protocol contract.
    #[error("protocol error: {0}")]
    Protocol(String),

    #[error("task {0} not found")]
    TaskNotFound(String),

    #[error("task {0} failed")]
    TaskFailed(String),

    #[error("piece {number} of task {task_id} not found")]
    PieceNotFound { task_id: String, number: u32 },

    #[error("parent {addr} unreachable: {reason}")]
    PeerUnreachable { addr: SocketAddr, reason: String },

    /// A piece the parent was forwarding while it arrived there stopped arriving (the
    /// parent's own fetch of it failed or moved elsewhere), or its copy failed its check:
    /// the parent is not at fault and announces the piece again once it holds it.
    #[error("parent {addr} stopped forwarding piece {number}: {reason}")]
    ArrivalStopped {
        addr: SocketAddr,
        number: u32,
        reason: String,
    },

    /// The parent answered a Vortex Error frame other than "not found".
    #[error("parent {addr} refused the piece (code {code}): {message}")]
    PeerError {
        addr: SocketAddr,
        code: u8,
        message: String,
    },

    #[error("HTTP client setup failed: {0}")]
    Client(String),

    /// A QUIC endpoint or its TLS configuration could not be set up.
    #[error("QUIC setup failed: {0}")]
    Quic(String),

    /// The QUIC handshake with a parent failed on certificates: we rejected its
    /// certificate, or it rejected ours.
    #[error("parent {addr} not trusted: {reason}")]
    PeerUntrusted { addr: SocketAddr, reason: String },
}

impl TransferError {
    /// Worth another attempt: the same request may succeed a moment later.
    pub fn is_transient(&self) -> bool {
        match self {
            TransferError::OriginStatus { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            TransferError::OriginUnreachable { .. }
            | TransferError::Timeout(_)
            | TransferError::ArrivalStopped { .. } => true,
            TransferError::Storage(e) => {
                matches!(
                    e,
                    StorageError::SourceRead(_) | StorageError::ShortRead { .. }
                )
            }
            _ => false,
        }
    }
}
