//! The daemon's one error type and its mapping to the gRPC codes users see
//! (DESIGN.md "Errors users see": dfget turns the code into its exit code).

use damselfly_storage::StorageError;
use damselfly_transfer::TransferError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration: {0}")]
    Config(String),

    #[error("{0}")]
    InvalidArgument(String),

    #[error(transparent)]
    Storage(#[from] StorageError),

    #[error(transparent)]
    Transfer(#[from] TransferError),

    #[error("digest mismatch for {url}: expected {expected}, got {actual}")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    #[error("cannot download {url}: {reason}, and back-to-source is disabled")]
    BackToSourceDisabled { url: String, reason: String },

    #[error("scheduler {addr}: {status}")]
    Scheduler { addr: SocketAddr, status: Status },

    #[error("no scheduler reachable: {0}")]
    NoScheduler(String),

    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },

    /// TLS files unreadable or a TLS triple only partly set.
    #[error("TLS: {0}")]
    Tls(#[from] damselfly_tls::TlsError),
}

impl DaemonError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DaemonError::Io {
            context: context.into(),
            source,
        }
    }

    /// The gRPC status a caller gets for this error.
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        Status::new(self.code(), message)
    }

    /// The disk (or cache quota) is full: the task's partial content should go, so the next
    /// download finds room.
    pub fn is_no_space(&self) -> bool {
        match self {
            DaemonError::Storage(e) | DaemonError::Transfer(TransferError::Storage(e)) => {
                e.is_no_space()
            }
            DaemonError::Io { source, .. } => io_code(source) == Code::ResourceExhausted,
            _ => false,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            DaemonError::Config(_) | DaemonError::InvalidArgument(_) | DaemonError::Tls(_) => {
                Code::InvalidArgument
            }
            DaemonError::Storage(e) => storage_code(e),
            DaemonError::Transfer(e) => transfer_code(e),
            DaemonError::DigestMismatch { .. } => Code::DataLoss,
            // Not an origin failure: the user forbade the origin and no peer had the task.
            DaemonError::BackToSourceDisabled { .. } => Code::Aborted,
            DaemonError::Scheduler { status, .. } => status.code(),
            DaemonError::NoScheduler(_) => Code::Unavailable,
            DaemonError::Io { source, .. } => io_code(source),
            DaemonError::Bind { .. } => Code::Internal,
        }
    }
}

impl From<DaemonError> for Status {
    fn from(error: DaemonError) -> Self {
        error.to_status()
    }
}

/// Why one download failed, named by the stage it failed in, so each edge decides in its own
/// terms (the proxy: pass through to the origin or answer 502; gRPC: a status code). One job
/// serves every caller of a task, so its failure is shared: the cause sits behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DownloadError {
    /// The request is unusable (URL, digest syntax, output path) or its output exists.
    #[error("{0}")]
    Rejected(Arc<DaemonError>),
    /// The task never started: the origin refused or was unreachable, or the disk had no room.
    #[error("{0}")]
    NotStarted(Arc<DaemonError>),
    /// The task started but its pieces could not all be fetched and stored.
    #[error("{0}")]
    Transfer(Arc<DaemonError>),
    /// The assembled content is not what the caller asked for (whole-file digest).
    #[error("{0}")]
    Corrupt(Arc<DaemonError>),
    /// The content is complete, but the caller's output file could not be written.
    #[error("{0}")]
    Output(Arc<DaemonError>),
    /// This caller's own timeout passed; the shared job may go on for others.
    #[error("download of {url} did not finish within {}", humantime::format_duration(*.after))]
    TimedOut { url: String, after: Duration },
    /// The daemon stopped before the download finished.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// The job ended without telling why (it panicked or was dropped).
    #[error("the download job ended without an outcome")]
    JobLost,
}

impl DownloadError {
    pub fn rejected(error: impl Into<DaemonError>) -> Self {
        Self::classify(error.into(), DownloadError::Rejected)
    }

    pub fn not_started(error: impl Into<DaemonError>) -> Self {
        Self::classify(error.into(), DownloadError::NotStarted)
    }

    pub fn transfer(error: impl Into<DaemonError>) -> Self {
        Self::classify(error.into(), DownloadError::Transfer)
    }

    pub fn output(error: impl Into<DaemonError>) -> Self {
        Self::classify(error.into(), DownloadError::Output)
    }

    /// A wrong whole-file digest is corruption whichever stage found it.
    fn classify(error: DaemonError, stage: fn(Arc<DaemonError>) -> Self) -> Self {
        match error {
            error @ DaemonError::DigestMismatch { .. } => DownloadError::Corrupt(Arc::new(error)),
            other => stage(Arc::new(other)),
        }
    }

    /// The daemon-level cause, when there is one.
    pub fn cause(&self) -> Option<&DaemonError> {
        match self {
            DownloadError::Rejected(e)
            | DownloadError::NotStarted(e)
            | DownloadError::Transfer(e)
            | DownloadError::Corrupt(e)
            | DownloadError::Output(e) => Some(e),
            DownloadError::TimedOut { .. }
            | DownloadError::ShuttingDown
            | DownloadError::JobLost => None,
        }
    }

    /// The gRPC code a caller of `DownloadTask` sees (DESIGN.md "Errors users see").
    pub fn code(&self) -> Code {
        match self {
            DownloadError::TimedOut { .. } => Code::DeadlineExceeded,
            DownloadError::ShuttingDown => Code::Unavailable,
            DownloadError::JobLost => Code::Internal,
            other => other.cause().map_or(Code::Internal, DaemonError::code),
        }
    }
}

impl From<DownloadError> for Status {
    fn from(error: DownloadError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

fn io_code(error: &std::io::Error) -> Code {
    let no_space = matches!(error.raw_os_error(), Some(c) if c == libc::ENOSPC || c == libc::EDQUOT)
        || error.kind() == std::io::ErrorKind::StorageFull;
    match error.kind() {
        _ if no_space => Code::ResourceExhausted,
        std::io::ErrorKind::AlreadyExists => Code::AlreadyExists,
        std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

/// Storage failures: disk full and existing output are the user's to fix; a bad piece is data
/// loss; the rest is ours.
pub fn storage_code(error: &StorageError) -> Code {
    match error {
        StorageError::NoSpace(_) | StorageError::NotEnoughSpace { .. } => Code::ResourceExhausted,
        StorageError::OutputExists(_) => Code::AlreadyExists,
        StorageError::InvalidTaskId(_) => Code::InvalidArgument,
        StorageError::TaskNotFound(_) | StorageError::PieceNotFound { .. } => Code::NotFound,
        StorageError::DigestMismatch { .. } => Code::DataLoss,
        // The piece source (a parent or the origin) broke off: the network, not the disk.
        StorageError::SourceRead(_) | StorageError::ShortRead { .. } => Code::Unavailable,
        StorageError::Io(e) => io_code(e),
        _ => Code::Internal,
    }
}

/// Origin and peer transfer failures, as the table in DESIGN.md.
pub fn transfer_code(error: &TransferError) -> Code {
    match error {
        TransferError::OriginStatus { status: 404, .. } => Code::NotFound,
        TransferError::OriginStatus { .. } => Code::FailedPrecondition,
        TransferError::OriginUnreachable { .. } | TransferError::Timeout(_) => Code::Unavailable,
        TransferError::PeerUnreachable { .. }
        | TransferError::PeerError { .. }
        | TransferError::PeerUntrusted { .. }
        | TransferError::ArrivalStopped { .. } => Code::Unavailable,
        TransferError::Storage(e) => storage_code(e),
        TransferError::InvalidUrl { .. } | TransferError::CaFile { .. } => Code::InvalidArgument,
        // The operator must add the origin's CA; retrying elsewhere will not help.
        TransferError::OriginCertificate { .. } => Code::FailedPrecondition,
        TransferError::TaskNotFound(_) | TransferError::PieceNotFound { .. } => Code::NotFound,
        TransferError::TaskFailed(_)
        | TransferError::Protocol(_)
        | TransferError::Client(_)
        | TransferError::Quic(_) => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: DaemonError) -> Code {
        Status::from(e).code()
    }

    #[test]
    fn storage_errors_map_to_user_codes() {
        assert_eq!(
            code_of(StorageError::NoSpace("disk".into()).into()),
            Code::ResourceExhausted
        );
        assert_eq!(
            code_of(StorageError::OutputExists("/tmp/x".into()).into()),
            Code::AlreadyExists
        );
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(
            code_of(StorageError::from(enospc).into()),
            Code::ResourceExhausted
        );
        assert_eq!(
            code_of(DaemonError::io(
                "write",
                std::io::Error::from_raw_os_error(libc::ENOSPC)
            )),
            Code::ResourceExhausted
        );
    }

    /// Only a full disk (however it is wrapped) drops a failed task's partial pieces.
    #[test]
    fn full_disk_is_recognised_through_every_wrapper() {
        let refused = StorageError::NotEnoughSpace {
            task_id: "t".into(),
            need: 2,
            free: 1,
        };
        assert_eq!(code_of(refused.into()), Code::ResourceExhausted);
        let full = || StorageError::NoSpace("disk".into());
        assert!(DaemonError::from(full()).is_no_space());
        assert!(DaemonError::from(TransferError::Storage(full())).is_no_space());
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(DaemonError::io("write", enospc).is_no_space());
        let other = StorageError::ShortRead {
            task_id: "t".into(),
            number: 0,
            expected: 2,
            received: 1,
        };
        assert!(!DaemonError::from(other).is_no_space());
    }

    #[test]
    fn origin_errors_map_to_user_codes() {
        let not_found = TransferError::OriginStatus {
            status: 404,
            url: "http://o/x".into(),
        };
        let status = Status::from(DaemonError::from(not_found));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("http://o/x") && status.message().contains("404"));
        let forbidden = TransferError::OriginStatus {
            status: 403,
            url: "http://o/x".into(),
        };
        assert_eq!(code_of(forbidden.into()), Code::FailedPrecondition);
        let down = TransferError::OriginUnreachable {
            url: "http://o/x".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(code_of(down.into()), Code::Unavailable);
        let full = TransferError::Storage(StorageError::NoSpace("disk".into()));
        assert_eq!(code_of(full.into()), Code::ResourceExhausted);
    }

    #[test]
    fn engine_errors_map_to_user_codes() {
        let e = DaemonError::DigestMismatch {
            url: "http://o/x".into(),
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
        };
        let status = Status::from(e);
        assert_eq!(status.code(), Code::DataLoss);
        assert!(status.message().contains("sha256:aa") && status.message().contains("sha256:bb"));
        let t = DownloadError::TimedOut {
            url: "http://o/x".into(),
            after: Duration::from_secs(3),
        };
        assert_eq!(Status::from(t).code(), Code::DeadlineExceeded);
        assert_eq!(
            code_of(DaemonError::InvalidArgument("bad".into())),
            Code::InvalidArgument
        );
        let not_found = TransferError::OriginStatus {
            status: 404,
            url: "http://o/x".into(),
        };
        let shared = DownloadError::not_started(not_found);
        assert_eq!(Status::from(shared.clone()).code(), Code::NotFound);
        let late_mismatch = DownloadError::transfer(DaemonError::DigestMismatch {
            url: "http://o/x".into(),
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
        });
        assert!(matches!(late_mismatch, DownloadError::Corrupt(_)));
        assert_eq!(Status::from(late_mismatch).code(), Code::DataLoss);
    }
}
