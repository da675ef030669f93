//! A development CA and host certificates, written as PEM files in the layout of a
//! Kubernetes TLS Secret (`ca.crt`, `tls.crt`, `tls.key`), for tests and trial clusters.
//! Production clusters should use their own PKI; these certificates carry rcgen's default
//! (very long) validity and the CA key sits next to its certificate.

use crate::{Result, Role, TlsError, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// File names in a CA directory and in a host directory.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
/// Subject common name of the development CA.
pub const DEV_CA_NAME: &str = "Damselfly development CA";

/// What a host certificate names.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub role: Role,
}

/// Creates `dir/ca.crt` and `dir/ca.key`. Refuses to overwrite an existing CA key, whose
/// loss would orphan every certificate it signed.
pub fn create_ca(dir: &Path) -> Result<()> {
    let key_path = dir.join(CA_KEY_FILE);
    if key_path.exists() {
        return Err(issue_error(format!(
            "{} exists; not replacing a CA key",
            key_path.display()
        )));
    }
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, DEV_CA_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(rcgen_error)?;
    create_dir(dir)?;
    write(&dir.join(CA_CERT_FILE), &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)
}

/// Issues a host certificate signed by the CA in `ca_dir` into `out`, with the CA
/// certificate copied next to it; returns the triple for a config.
pub fn issue(ca_dir: &Path, host: &HostSpec, out: &Path) -> Result<TlsFiles> {
    let ca_cert = read_text(&ca_dir.join(CA_CERT_FILE))?;
    let ca_key = KeyPair::from_pem(&read_text(&ca_dir.join(CA_KEY_FILE))?).map_err(rcgen_error)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(rcgen_error)?;
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let cert = host_params(host)?
        .signed_by(&key, &issuer)
        .map_err(rcgen_error)?;
    create_dir(out)?;
    let files = TlsFiles {
        ca_cert: out.join(CA_CERT_FILE),
        cert: out.join(CERT_FILE),
        key: out.join(KEY_FILE),
    };
    write(&files.ca_cert, &ca_cert, false)?;
    write(&files.cert, &cert.pem(), false)?;
    write(&files.key, &key.serialize_pem(), true)?;
    Ok(files)
}

/// Client and server use in one certificate: every link is mutual, and a daemon is a
/// client of its parents and a server to its children.
fn host_params(host: &HostSpec) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params
        .distinguished_name
        .push(DnType::CommonName, host.name.as_str());
    let mut sans = vec![SanType::DnsName(
        host.name.clone().try_into().map_err(rcgen_error)?,
    )];
    sans.extend(host.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    sans.push(SanType::URI(
        host.role.uri().try_into().map_err(rcgen_error)?,
    ));
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        what: "CA file",
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))
}

/// Writes a PEM file; private keys are readable by their owner only.
fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|e| io_error(path, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> TlsError {
    issue_error(format!("{}: {e}", PathBuf::from(path).display()))
}

fn rcgen_error(e: rcgen::Error) -> TlsError {
    issue_error(e.to_string())
}

fn issue_error(message: String) -> TlsError {
    TlsError::Issue(message)
}
