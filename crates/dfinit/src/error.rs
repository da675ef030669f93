//! dfinit's one error type.

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
}
