//! TLS termination for hijacked CONNECT tunnels: a CA (the user's, or one generated on
//! request and kept beside the config) mints a leaf certificate per host, cached.

use crate::error::DaemonError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Common name of a CA that dfdaemon generates.
pub const GENERATED_CA_NAME: &str = "Damselfly dfdaemon proxy CA";
/// Leaf certificates minted per host are cached; past this many the cache starts over.
const LEAF_CACHE_LIMIT: usize = 1024;

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl Authority {
    /// Loads the CA, generating it first if neither file exists.
    pub fn load_or_generate(cert: &Path, key: &Path) -> Result<Self, DaemonError> {
        if !cert.exists() && !key.exists() {
            generate_ca(cert, key)?;
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| DaemonError::Config(format!("cannot read {}: {e}", path.display())))
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, DaemonError> {
        let key = KeyPair::from_pem(key_pem).map_err(tls_error("proxy CA key"))?;
        let ca_der = rustls_pemfile_cert(cert_pem)?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(tls_error("proxy CA certificate"))?;
        Ok(Self {
            issuer,
            ca_der,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// A TLS server config presenting a certificate for `host`, signed by the CA.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, DaemonError> {
        let mut leaves = match self.leaves.lock() {
            Ok(leaves) => leaves,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(config) = leaves.get(host) {
            return Ok(config.clone());
        }
        let config = Arc::new(self.mint(host)?);
        if leaves.len() >= LEAF_CACHE_LIMIT {
            leaves.clear();
        }
        leaves.insert(host.to_string(), config.clone());
        Ok(config)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, DaemonError> {
        let key = KeyPair::generate().map_err(tls_error("leaf key"))?;
        let mut params =
            CertificateParams::new(vec![host.to_string()]).map_err(tls_error("leaf params"))?;
        params.distinguished_name = name(host);
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(tls_error("leaf certificate"))?;
        let chain = vec![leaf.der().clone(), self.ca_der.clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error("TLS versions"))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(tls_error("TLS server config"))?;
        // Inner requests are HTTP/1.1 only, as Dragonfly's.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The CA certificate (PEM) of `proxy.server.caCert/caKey`, generated first if absent.
pub fn ca_cert_pem(config: &super::config::ProxyConfig) -> Result<String, DaemonError> {
    let (Some(cert), Some(key)) = (&config.server.ca_cert, &config.server.ca_key) else {
        return Err(DaemonError::Config(
            "set proxy.server.caCert and proxy.server.caKey (files to use or create)".into(),
        ));
    };
    Authority::load_or_generate(cert, key)?;
    std::fs::read_to_string(cert)
        .map_err(|e| DaemonError::io(format!("reading {}", cert.display()), e))
}

/// Writes a new CA certificate and key (key readable by the owner only).
pub fn generate_ca(cert: &Path, key: &Path) -> Result<(), DaemonError> {
    let pair = KeyPair::generate().map_err(tls_error("CA key"))?;
    let mut params = CertificateParams::new(Vec::new()).map_err(tls_error("CA params"))?;
    params.distinguished_name = name(GENERATED_CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = params
        .self_signed(&pair)
        .map_err(tls_error("CA certificate"))?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| DaemonError::io(format!("creating {}", dir.display()), e))?;
        }
    }
    write_private(key, pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, ca.pem())
        .map_err(|e| DaemonError::io(format!("writing {}", cert.display()), e))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DaemonError::io(format!("writing {}", path.display()), e))?;
    file.write_all(bytes)
        .map_err(|e| DaemonError::io(format!("writing {}", path.display()), e))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The first certificate of a PEM text, as DER.
fn rustls_pemfile_cert(pem_text: &str) -> Result<CertificateDer<'static>, DaemonError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem_text.as_bytes())
        .map_err(|e| DaemonError::Config(format!("proxy CA certificate: {e}")))
}

fn tls_error<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> DaemonError {
    move |e| DaemonError::Config(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ca_signs_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let authority = Authority::load_or_generate(&cert, &key).unwrap();
        assert!(std::fs::read_to_string(&cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        let a = authority.server_config("registry.test").unwrap();
        let b = authority.server_config("registry.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "leaf configs are cached");
        // Loading again reuses the same CA.
        let again = Authority::load_or_generate(&cert, &key).unwrap();
        assert_eq!(again.ca_der, authority.ca_der);
        assert!(Authority::from_pem("junk", "junk").is_err());
    }
}
