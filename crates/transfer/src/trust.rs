//! Which server certificates the origin client accepts.
//!
//! Enterprise registries and artifact stores are signed by the company's own CA, which the
//! built-in web roots do not know. So every origin client trusts the system store (the
//! distribution's CA bundle) plus the web roots, and a download or the registry mirror may add
//! CA certificates of its own (`certificate_chain` of a `Download`, `proxy.registryMirror.cert`)
//! or turn verification off. One reqwest client is built per distinct trust setting and kept,
//! so a connection pool is shared by every download with the same setting.

use crate::error::TransferError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::{debug, warn};

/// Where distributions keep their CA bundle, first match wins (Debian/Ubuntu/Alpine, Fedora/RHEL,
/// openSUSE, RHEL's extracted bundle, macOS/BSD). `SSL_CERT_FILE` is read before these.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// The environment variable OpenSSL and most TLS stacks read for the CA bundle.
pub const SSL_CERT_FILE_ENV: &str = "SSL_CERT_FILE";
/// Distinct trust settings whose clients are kept; past this many the cache starts over, so a
/// caller sending a new CA with every request cannot grow it without bound.
pub const CLIENT_CACHE_LIMIT: usize = 64;

/// What an origin's certificate must chain to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum OriginTrust {
    /// The system store and the built-in web roots.
    #[default]
    System,
    /// Those, plus these CA certificates (DER, sorted, no duplicates).
    WithCas(Vec<Vec<u8>>),
    /// Any certificate: asked for by the operator or the caller, logged as a warning.
    Insecure,
}

impl OriginTrust {
    /// Extra CAs in DER form; none means [`OriginTrust::System`]. Order and repeats do not
    /// make a new setting.
    pub fn with_cas(mut ders: Vec<Vec<u8>>) -> OriginTrust {
        ders.retain(|der| !der.is_empty());
        ders.sort();
        ders.dedup();
        if ders.is_empty() {
            OriginTrust::System
        } else {
            OriginTrust::WithCas(ders)
        }
    }

    /// The CA certificates of a PEM file, as DER (for `proxy.registryMirror.cert`).
    pub fn pem_file_cas(path: &Path) -> Result<Vec<Vec<u8>>, TransferError> {
        let bad = |reason: String| TransferError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let ders = pem_cas(&pem).map_err(bad)?;
        if ders.is_empty() {
            return Err(bad("no PEM certificate in the file".into()));
        }
        Ok(ders)
    }

    pub fn is_insecure(&self) -> bool {
        matches!(self, OriginTrust::Insecure)
    }
}

/// Every `CERTIFICATE` block of a PEM text, as DER.
fn pem_cas(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .map(|cert| cert.map(|c| c.to_vec()).map_err(|e| e.to_string()))
        .collect()
}

/// The system CA bundle, once: `explicit` if given, else `SSL_CERT_FILE`, else the first of
/// [`SYSTEM_CA_FILES`] that exists. A missing or broken bundle leaves the web roots alone.
pub(crate) fn system_roots(explicit: Option<&Path>) -> Vec<reqwest::Certificate> {
    let Some(path) = system_bundle(explicit) else {
        debug!("no system CA bundle found; origins are checked against the web roots only");
        return Vec::new();
    };
    let loaded = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|pem| pem_cas(&pem));
    match loaded {
        Ok(ders) => {
            let roots: Vec<_> = ders
                .iter()
                .filter_map(|der| reqwest::Certificate::from_der(der).ok())
                .collect();
            debug!(path = %path.display(), count = roots.len(), "system CA bundle loaded");
            roots
        }
        Err(reason) => {
            warn!(path = %path.display(), %reason, "system CA bundle unreadable, using the web roots only");
            Vec::new()
        }
    }
}

fn system_bundle(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(SSL_CERT_FILE_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    SYSTEM_CA_FILES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// Applies a trust setting to a client builder that already has the system roots.
pub(crate) fn apply(
    builder: reqwest::ClientBuilder,
    trust: &OriginTrust,
) -> Result<reqwest::ClientBuilder, TransferError> {
    match trust {
        OriginTrust::System => Ok(builder),
        OriginTrust::WithCas(ders) => ders.iter().try_fold(builder, |builder, der| {
            let cert = reqwest::Certificate::from_der(der).map_err(|e| {
                TransferError::Client(format!("CA certificate of the download: {e}"))
            })?;
            Ok(builder.add_root_certificate(cert))
        }),
        OriginTrust::Insecure => {
            warn!("an origin client that accepts any server certificate was built (insecure_skip_verify)");
            Ok(builder.danger_accept_invalid_certs(true))
        }
    }
}

/// The clients built so far, by trust setting.
#[derive(Debug, Default)]
pub(crate) struct ClientCache {
    clients: Mutex<HashMap<OriginTrust, reqwest::Client>>,
}

impl ClientCache {
    /// The client for `trust`, built by `build` the first time.
    pub(crate) fn get_or_build(
        &self,
        trust: &OriginTrust,
        build: impl FnOnce() -> Result<reqwest::Client, TransferError>,
    ) -> Result<reqwest::Client, TransferError> {
        let mut clients = match self.clients.lock() {
            Ok(clients) => clients,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(client) = clients.get(trust) {
            return Ok(client.clone());
        }
        let client = build()?;
        if clients.len() >= CLIENT_CACHE_LIMIT {
            clients.clear();
        }
        clients.insert(trust.clone(), client.clone());
        Ok(client)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// True when a request failed because the server's certificate was not trusted (or was
/// malformed), as opposed to a network failure: such a request is not worth a retry.
pub(crate) fn is_certificate_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(tls) = rustls_error(cause) {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
            );
        }
        current = cause.source();
    }
    false
}

/// io::Error hides its payload from `source()` (and the connector nests one io::Error in
/// another), so look inside each layer.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = error;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = current.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_repeats_make_one_setting() {
        let a = OriginTrust::with_cas(vec![vec![2], vec![1], vec![2]]);
        let b = OriginTrust::with_cas(vec![vec![1], vec![2]]);
        assert_eq!(a, b);
        assert_eq!(OriginTrust::with_cas(vec![vec![]]), OriginTrust::System);
    }

    #[test]
    fn one_client_per_setting() {
        let cache = ClientCache::default();
        let mut builds = 0;
        for trust in [
            OriginTrust::System,
            OriginTrust::Insecure,
            OriginTrust::System,
        ] {
            cache
                .get_or_build(&trust, || {
                    builds += 1;
                    Ok(reqwest::Client::new())
                })
                .unwrap();
        }
        assert_eq!(builds, 2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn io_wrapped_certificate_errors_are_recognised() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let nested = std::io::Error::other(io);
        assert!(is_certificate_error(&nested));
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!is_certificate_error(&other));
    }

    #[test]
    fn unreadable_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let error = OriginTrust::pem_file_cas(&path).unwrap_err();
        assert!(error.to_string().contains("ca.pem"), "{error}");
        std::fs::write(&path, "not a certificate").unwrap();
        let error = OriginTrust::pem_file_cas(&path).unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
