//! The PEM file triple that turns mTLS on for one link.

use crate::{Result, TlsError};
use std::path::{Path, PathBuf};

/// Dragonfly's `caCert` / `cert` / `key` triple: the cluster CA that the other side's
/// certificate must chain to, and this side's own certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The triple of a config section (`section` names it in errors, e.g.
    /// `upload.server`): `None` when none of the three is set (plain text, Dragonfly's
    /// default), an error naming the missing keys when only some are, because running in
    /// plain text while the operator asked for TLS would be silent downgrade.
    pub fn from_section(
        section: &str,
        ca_cert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>> {
        match (set(ca_cert), set(cert), set(key)) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(Self {
                ca_cert: ca.to_path_buf(),
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })),
            (ca, cert, key) => {
                let missing: Vec<String> = [("caCert", ca), ("cert", cert), ("key", key)]
                    .into_iter()
                    .filter(|(_, value)| value.is_none())
                    .map(|(name, _)| format!("{section}.{name}"))
                    .collect();
                Err(TlsError::Partial {
                    section: section.to_string(),
                    missing: missing.join(", "),
                })
            }
        }
    }
}

/// An empty path (`cert: ''` in YAML) counts as unset, as in Dragonfly.
fn set(path: Option<&Path>) -> Option<&Path> {
    path.filter(|p| !p.as_os_str().is_empty())
}

/// Reads a file named in a config, naming it on failure.
pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A `tls:` config section with Dragonfly's key names (`caCert`, `cert`, `key`), as in the
/// scheduler's `server.tls` and `seedPeer.tls`. Unset by default: plain text.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsKeys {
    /// PEM CA certificate(s) the other side's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate chain this side presents.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

impl TlsKeys {
    /// The files, `None` when the section is unset; see [`TlsFiles::from_section`].
    pub fn files(&self, section: &str) -> Result<Option<TlsFiles>> {
        TlsFiles::from_section(
            section,
            self.ca_cert.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
        )
    }
}
