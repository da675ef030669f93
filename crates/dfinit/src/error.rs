//! dfinit's one error type, and the exit code of each failure.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DfinitError {
    #[error("{0}")]
    InvalidArgument(String),

    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path} is not valid {format}: {reason}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },

    #[error("{path}: {reason}")]
    Shape { path: PathBuf, reason: String },

    /// dfinit.yaml cannot be read or holds a bad value: like a bad flag, nothing was touched.
    #[error("config file {path}: {reason}")]
    Config { path: PathBuf, reason: String },
}

/// Exit codes: as for dfget, 2 is "fix the command line or dfinit.yaml and run again".
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
}

impl DfinitError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidArgument(_) | Self::Config { .. } => exit::USAGE,
            Self::Read { .. } | Self::Write { .. } | Self::Parse { .. } | Self::Shape { .. } => {
                exit::FAILURE
            }
        }
    }
}
