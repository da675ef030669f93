//! Handshakes between configs built from `issue` files: the right CA is accepted, a wrong CA
//! or a missing client certificate is refused, and identities read back what was issued.

use damselfly_tls::issue::{create_ca, issue, HostSpec};
use damselfly_tls::{client_config, server_config, Identity, Role, TlsFiles};
use rustls::pki_types::ServerName;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn host(dir: &Path, ca: &str, name: &str, role: Role) -> TlsFiles {
    let spec = HostSpec {
        name: name.into(),
        ips: vec![LOOPBACK],
        role,
    };
    issue(&dir.join(ca), &spec, &dir.join(name)).expect("issue")
}

fn cas(dir: &Path) {
    create_ca(&dir.join("ca-a")).expect("ca a");
    create_ca(&dir.join("ca-b")).expect("ca b");
}

/// Runs both ends of one handshake; returns (client result, server result).
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (Result<(), String>, Result<Option<Identity>, String>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_side = async move {
        let stream = TlsAcceptor::from(server)
            .accept(a)
            .await
            .map_err(|e| e.to_string())?;
        let certs = stream.get_ref().1.peer_certificates().map(|c| c.to_vec());
        match certs.as_deref().and_then(|c| c.first()) {
            Some(leaf) => Identity::from_der(leaf.as_ref())
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }
    };
    let client_side = async move {
        let name = ServerName::IpAddress(LOOPBACK.into());
        let mut stream = TlsConnector::from(client)
            .connect(name, b)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3 reports a refused client certificate only on the first read.
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::join!(client_side, server_side)
}

#[tokio::test]
async fn same_ca_handshake_proves_client_identity() {
    let dir = tempfile::tempdir().unwrap();
    cas(dir.path());
    let server = host(dir.path(), "ca-a", "scheduler-1", Role::Scheduler);
    let client = host(dir.path(), "ca-a", "seed-1", Role::SeedPeer);
    let (_, server_result) = handshake(
        server_config(&server).unwrap(),
        client_config(&client).unwrap(),
    )
    .await;
    let identity = server_result.expect("handshake").expect("client cert");
    assert_eq!(identity.role, Role::SeedPeer);
    assert!(identity.has_name("SEED-1"));
    assert!(identity.has_ip(LOOPBACK));
    assert!(!identity.has_name("seed-2"));
}

#[tokio::test]
async fn server_refuses_client_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    cas(dir.path());
    let server = host(dir.path(), "ca-a", "server", Role::Peer);
    // Trusts CA a (so it accepts the server) but presents a cert signed by CA b.
    let mut client = host(dir.path(), "ca-b", "intruder", Role::Peer);
    client.ca_cert = server.ca_cert.clone();
    let (client_result, server_result) = handshake(
        server_config(&server).unwrap(),
        client_config(&client).unwrap(),
    )
    .await;
    let error = server_result.expect_err("server must refuse");
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert!(client_result.is_err());
}

#[tokio::test]
async fn client_refuses_server_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    cas(dir.path());
    let server = host(dir.path(), "ca-b", "fake-scheduler", Role::Scheduler);
    let client = host(dir.path(), "ca-a", "peer", Role::Peer);
    let (client_result, _) = handshake(
        server_config(&server).unwrap(),
        client_config(&client).unwrap(),
    )
    .await;
    let error = client_result.expect_err("client must refuse");
    assert!(error.contains("invalid peer certificate"), "{error}");
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    let dir = tempfile::tempdir().unwrap();
    cas(dir.path());
    let server = host(dir.path(), "ca-a", "server", Role::Peer);
    let roots = {
        let pem = std::fs::read(&server.ca_cert).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    };
    let anonymous = rustls::ClientConfig::builder_with_provider(damselfly_tls::config::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (client_result, server_result) =
        handshake(server_config(&server).unwrap(), Arc::new(anonymous)).await;
    let error = server_result.expect_err("server must refuse");
    assert!(error.contains("certificate"), "{error}");
    assert!(client_result.is_err());
}

#[test]
fn partial_triple_names_missing_keys() {
    let error = TlsFiles::from_section(
        "upload.server",
        Some(Path::new("/ca.crt")),
        None,
        Some(Path::new("")),
    )
    .expect_err("partial");
    let message = error.to_string();
    assert!(message.contains("upload.server.cert"), "{message}");
    assert!(message.contains("upload.server.key"), "{message}");
    assert!(TlsFiles::from_section("s", None, None, None)
        .unwrap()
        .is_none());
}

#[test]
fn unreadable_and_empty_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let files = TlsFiles {
        ca_cert: empty.clone(),
        cert: empty.clone(),
        key: dir.path().join("missing.key"),
    };
    let message = server_config(&files).expect_err("empty").to_string();
    assert!(message.contains("empty.pem"), "{message}");
}

#[test]
fn role_names_round_trip_and_existing_ca_key_is_kept() {
    for role in [Role::Peer, Role::SeedPeer, Role::Scheduler] {
        assert_eq!(Role::from_name(role.name()), Some(role));
        assert!(role.uri().starts_with("damselfly://role/"));
    }
    assert_eq!(Role::from_name("admin"), None);
    let dir = tempfile::tempdir().unwrap();
    create_ca(dir.path()).unwrap();
    assert!(create_ca(dir.path()).is_err());
}
