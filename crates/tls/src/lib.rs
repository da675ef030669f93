//! Mutual TLS for Damselfly's gRPC links (daemon to scheduler, daemon to daemon, scheduler to
//! seed peer), read from the same `caCert` / `cert` / `key` PEM triples Dragonfly's config
//! files use.
//!
//! - [`files`]: the triple, and the "all three or none" rule for a config section;
//! - [`config`]: `rustls` 0.23 server and client configs (ring provider) that both require a
//!   certificate from the other side, signed by the cluster CA. They carry no ALPN: the
//!   caller sets it (`h2` for gRPC, its own for QUIC), so one config serves every transport;
//! - [`identity`]: who a peer certificate names (SAN DNS names, IP addresses) and its
//!   Damselfly role, encoded as a SAN URI (see [`identity::Role`]);
//! - [`grpc`]: serving tonic over TLS and connecting tonic channels through it;
//! - [`issue`]: a development CA and host certificates (`dfctl cert`).

pub mod config;
pub mod files;
pub mod grpc;
pub mod identity;
pub mod issue;

pub use config::{client_config, server_config};
pub use files::{TlsFiles, TlsKeys};
pub use identity::{Identity, Role};

use std::path::PathBuf;
use thiserror::Error;

/// Errors from loading TLS material or reading a peer certificate.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no {what} found in PEM file")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{path}: invalid PEM {what}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{section}: caCert, cert and key must be set together to turn mTLS on; \
         set {missing} too, or remove the others"
    )]
    Partial { section: String, missing: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("CA certificates in {path} rejected: {reason}")]
    Verifier { path: PathBuf, reason: String },
    #[error("cannot issue certificate: {0}")]
    Issue(String),
    #[error("peer certificate cannot be parsed: {0}")]
    Certificate(String),
}

/// Result alias for this crate.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;
