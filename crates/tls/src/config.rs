//! `rustls` configs for both ends of an mTLS link, on the ring provider.

use crate::files::read;
use crate::{Result, TlsError, TlsFiles};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// The provider every config uses: ring, which tokio-rustls already brings in; naming it
/// explicitly keeps a second provider (aws-lc) out and avoids depending on a process default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server that refuses any client without a certificate signed by `files.ca_cert`, and
/// presents `files.cert`. No ALPN: the caller sets it on a clone.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let roots = Arc::new(load_roots(&files.ca_cert)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: files.ca_cert.clone(),
            reason: e.to_string(),
        })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    Ok(Arc::new(config))
}

/// A client that presents `files.cert` and accepts only servers whose certificate is signed
/// by `files.ca_cert` and names the address or host it dialled.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(load_roots(&files.ca_cert)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    Ok(Arc::new(config))
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs_as(path, "CA certificate")? {
        roots.add(cert).map_err(|e| TlsError::Verifier {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    load_certs_as(path, "certificate")
}

fn load_certs_as(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let what = "private key";
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}
