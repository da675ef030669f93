//! What can go wrong in dfget, and the exit code each failure has (docs/DESIGN.md,
//! "Errors users see"). Scripts branch on these codes, so they are a stable contract.

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;
use tonic::Code;

/// Exit codes of the contract table.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const ORIGIN_REFUSED: u8 = 3;
    pub const ORIGIN_UNREACHABLE: u8 = 4;
    pub const DIGEST_MISMATCH: u8 = 5;
    pub const TIMEOUT: u8 = 6;
    pub const NO_SPACE: u8 = 7;
    pub const NO_DAEMON: u8 = 8;
    /// 128 + SIGINT, what shells report for a Ctrl-C'd program.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, Error)]
pub enum DfgetError {
    /// A flag or argument that cannot work (caught before contacting a daemon).
    #[error("{0}")]
    Usage(String),

    #[error("{} already exists; pass --overwrite to replace it", .0.display())]
    OutputExists(PathBuf),

    /// The daemon ended the download with this gRPC status.
    #[error("{message}")]
    Daemon { code: Code, message: String },

    /// No daemon answers and none could be started.
    #[error("{0}")]
    NoDaemon(String),

    /// The socket connection broke mid-download (daemon crashed or restarted).
    #[error("lost the connection to dfdaemon on {}: {reason}", socket.display())]
    ConnectionLost { socket: PathBuf, reason: String },

    /// dfget's own guard when the daemon does not end the download in time.
    #[error("the download did not finish within {}", humantime::format_duration(*.0))]
    Timeout(Duration),

    #[error("interrupted")]
    Interrupted,
}

impl DfgetError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::OutputExists(_) => exit::FAILURE,
            Self::Daemon { code, .. } => exit_code_for_status(*code),
            Self::NoDaemon(_) => exit::NO_DAEMON,
            Self::ConnectionLost { .. } => exit::FAILURE,
            Self::Timeout(_) => exit::TIMEOUT,
            Self::Interrupted => exit::INTERRUPTED,
        }
    }

    /// Turns a status from the download call into an error. A status tonic made up from a
    /// local transport failure carries a source error; one the daemon sent does not. The
    /// distinction matters: `Unavailable` from the daemon means "origin unreachable" (exit 4),
    /// while a broken socket is a local problem.
    pub fn from_status(status: &tonic::Status, socket: &std::path::Path) -> Self {
        if std::error::Error::source(status).is_some() {
            return Self::ConnectionLost {
                socket: socket.to_path_buf(),
                reason: status.message().to_string(),
            };
        }
        let message = if status.message().trim().is_empty() {
            format!(
                "dfdaemon failed the download ({})",
                status.code().description()
            )
        } else {
            status.message().to_string()
        };
        Self::Daemon {
            code: status.code(),
            message,
        }
    }
}

/// The exit code for a gRPC status code the daemon ended a download with.
pub fn exit_code_for_status(code: Code) -> u8 {
    match code {
        Code::Ok => exit::OK,
        Code::InvalidArgument => exit::USAGE,
        Code::NotFound | Code::FailedPrecondition => exit::ORIGIN_REFUSED,
        Code::Unavailable => exit::ORIGIN_UNREACHABLE,
        Code::DataLoss => exit::DIGEST_MISMATCH,
        Code::DeadlineExceeded => exit::TIMEOUT,
        Code::ResourceExhausted => exit::NO_SPACE,
        Code::AlreadyExists => exit::FAILURE,
        _ => exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn status_codes_follow_the_design_table() {
        let table = [
            (Code::InvalidArgument, 2),
            (Code::NotFound, 3),
            (Code::FailedPrecondition, 3),
            (Code::Unavailable, 4),
            (Code::DataLoss, 5),
            (Code::DeadlineExceeded, 6),
            (Code::ResourceExhausted, 7),
            (Code::AlreadyExists, 1),
            (Code::Internal, 1),
            (Code::Unknown, 1),
            (Code::PermissionDenied, 1),
            (Code::Cancelled, 1),
        ];
        for (code, expected) in table {
            assert_eq!(exit_code_for_status(code), expected, "{code:?}");
        }
    }

    #[test]
    fn local_failures() {
        assert_eq!(DfgetError::Usage("x".into()).exit_code(), 2);
        assert_eq!(DfgetError::OutputExists("/x".into()).exit_code(), 1);
        assert_eq!(DfgetError::NoDaemon("x".into()).exit_code(), 8);
        assert_eq!(DfgetError::Timeout(Duration::from_secs(1)).exit_code(), 6);
        assert_eq!(DfgetError::Interrupted.exit_code(), 130);
    }

    #[test]
    fn daemon_status_keeps_its_message() {
        let status = tonic::Status::not_found("http://o/x answered 404 Not Found");
        let err = DfgetError::from_status(&status, Path::new("/s.sock"));
        assert_eq!(err.exit_code(), 3);
        assert_eq!(err.to_string(), "http://o/x answered 404 Not Found");
    }

    #[test]
    fn empty_status_message_gets_a_sentence() {
        let err = DfgetError::from_status(&tonic::Status::internal(""), Path::new("/s"));
        assert!(err.to_string().contains("dfdaemon failed"), "{err}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn transport_failure_is_not_an_origin_failure() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let status = tonic::Status::from_error(Box::new(io));
        let err = DfgetError::from_status(&status, Path::new("/s.sock"));
        assert!(matches!(err, DfgetError::ConnectionLost { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 1);
    }
}
