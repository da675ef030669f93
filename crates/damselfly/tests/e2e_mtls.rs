//! End-to-end mTLS (issue 10): certificates made with `dfctl cert`, a scheduler and daemons
//! with mTLS on every gRPC link.
//!
//! (a) a seed and a peer download one file through the swarm: identical bytes, the origin
//!     serves it once (the scheduler's seed trigger reached the seed over mTLS), and the
//!     peer's bytes come from the seed;
//! (b) refusals: a daemon without a certificate cannot announce, a peer certificate cannot
//!     announce a seed, a client without a certificate cannot open the upload port,
//!     DownloadTask from a non-scheduler and DeleteTask on the upload port are
//!     PermissionDenied, and a scheduler may not choose the task-ID inputs.

mod common;

use common::*;
use damselfly_tls::TlsFiles;
use dragonfly_api::common::v2::Download;
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::{DeleteTaskRequest, DownloadTaskRequest, SyncPiecesRequest};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

/// Generous bound on waiting for a line in a log; a test that reaches it fails.
const LOG_WAIT: Duration = Duration::from_secs(30);

fn dfctl(args: &[&str]) {
    let output = Command::new(bin("dfctl"))
        .args(args)
        .output()
        .expect("run dfctl");
    assert!(
        output.status.success(),
        "dfctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Issues a certificate for `name` (a hostname) at `ip` with `role`; returns its directory.
fn issue(c: &Cluster, name: &str, ip: &str, role: &str) -> PathBuf {
    let out = c.path(&format!("pki/{name}"));
    let ca = c.path("pki/ca");
    dfctl(&[
        "cert",
        "issue",
        "--ca",
        &path(&ca),
        "--name",
        name,
        "--ip",
        ip,
        "--role",
        role,
        "--out",
        &path(&out),
    ]);
    out
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

/// `caCert`/`cert`/`key` lines at `indent`.
fn triple(dir: &Path, indent: &str) -> String {
    let f = files(dir);
    format!(
        "{indent}caCert: {}\n{indent}cert: {}\n{indent}key: {}\n",
        f.ca_cert.display(),
        f.cert.display(),
        f.key.display()
    )
}

fn scheduler_config(c: &Cluster, dir: &Path) -> Vec<String> {
    let yaml = format!(
        "server:\n  tls:\n{}seedPeer:\n  tls:\n{}",
        triple(dir, "    "),
        triple(dir, "    ")
    );
    let file = c.path("scheduler.yaml");
    std::fs::write(&file, yaml).unwrap();
    vec!["--config".into(), path(&file)]
}

/// How pieces move between the daemons of a test.
#[derive(Clone, Copy, PartialEq)]
enum Pieces {
    Tcp,
    /// `download.protocol: quic`; with the upload triples set, QUIC verifies both ends.
    Quic,
}

fn daemon_config(c: &Cluster, name: &str, dir: &Path, pieces: Pieces) -> Vec<String> {
    let mut yaml = format!(
        "scheduler:\n{}upload:\n  server:\n{}  client:\n{}",
        triple(dir, "  "),
        triple(dir, "    "),
        triple(dir, "    ")
    );
    if pieces == Pieces::Quic {
        yaml.push_str("download:\n  protocol: quic\n");
    }
    let file = c.path(&format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    vec!["--config".into(), path(&file)]
}

/// A started cluster: the scheduler with its certificate, and the CA.
fn mtls_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    dfctl(&["cert", "ca", "--out", &path(&c.path("pki/ca"))]);
    let scheduler = issue(&c, "scheduler", "127.0.0.1", "scheduler");
    let flags = scheduler_config(&c, &scheduler);
    c.start_scheduler_with(&flags);
    c
}

/// Starts the next daemon with a certificate for its own hostname and IP.
fn start_with_cert(c: &mut Cluster, seed: bool, role: &str) -> DaemonInfo {
    start_with_cert_moving(c, seed, role, Pieces::Tcp)
}

fn start_with_cert_moving(c: &mut Cluster, seed: bool, role: &str, pieces: Pieces) -> DaemonInfo {
    let host = c.daemons.len() as u8 + 2;
    let name = if seed {
        format!("seed{host}")
    } else {
        format!("peer{host}")
    };
    let hostname = format!("{}-{name}", c.name);
    let dir = issue(c, &hostname, &c.ip(host).to_string(), role);
    let extra = daemon_config(c, &name, &dir, pieces);
    c.start_daemon(DaemonOpts {
        seed,
        extra,
        // The piece servers say which transport carried each upload at debug level.
        log_level: "info,damselfly_transfer=debug,damselfly_daemon=debug".into(),
        ..Default::default()
    })
}

fn wait_for_log(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never logged {needle:?}:\n{text}",
            log.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn upload_client(
    addr: SocketAddr,
    cert: Option<&Path>,
) -> Result<DfdaemonUploadClient<tonic::transport::Channel>, String> {
    let tls = match cert {
        Some(dir) => Some(damselfly_tls::client_config(&files(dir)).map_err(|e| e.to_string())?),
        None => None,
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let channel = damselfly_tls::grpc::channel(endpoint, tls.as_ref())
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(DfdaemonUploadClient::new(channel))
}

#[test]
fn mtls_swarm_downloads_from_the_seed() {
    let origin = Origin::start();
    let file = origin.add_random("mtls/8mib.bin", 8 * MIB);
    let mut c = mtls_cluster("mtls-swarm");
    let seed = start_with_cert(&mut c, true, "seed-peer");
    let peer = start_with_cert(&mut c, false, "peer");
    wait_for_log(&seed.log, "announced host");
    wait_for_log(&peer.log, "announced host");

    let out = c.path("peer-out.bin");
    let result = c.dfget(&peer.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    assert_eq!(sha256_file(&out), file.sha256);

    let traffic = peer.traffic();
    eprintln!("{}: {traffic:?}", peer.name);
    assert_eq!(
        traffic.back_to_source,
        0.0,
        "the peer went to the origin: the seed trigger over mTLS failed?\n{}",
        std::fs::read_to_string(&c.scheduler.as_ref().unwrap().log).unwrap_or_default()
    );
    assert!(
        traffic.remote_seed >= file.len() as f64,
        "the peer's bytes did not come from the seed: {traffic:?}"
    );
    assert!(
        origin.served() as usize <= file.len() + file.len() / 20,
        "origin served {} bytes for a {}-byte file",
        origin.served(),
        file.len()
    );
}

/// With mTLS set, QUIC runs verified: the seed's pieces reach the peer over QUIC with both
/// certificates checked against the cluster CA, and nothing falls back to TCP or the origin.
#[test]
fn mtls_swarm_moves_pieces_over_verified_quic() {
    let origin = Origin::start();
    let file = origin.add_random("mtls/quic-8mib.bin", 8 * MIB);
    let mut c = mtls_cluster("mtls-quic");
    let seed = start_with_cert_moving(&mut c, true, "seed-peer", Pieces::Quic);
    let peer = start_with_cert_moving(&mut c, false, "peer", Pieces::Quic);
    wait_for_log(&seed.log, "announced host");
    wait_for_log(&peer.log, "announced host");

    let out = c.path("peer-out.bin");
    let result = c.dfget(&peer.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    assert_eq!(sha256_file(&out), file.sha256);

    let traffic = peer.traffic();
    assert_eq!(traffic.back_to_source, 0.0, "{traffic:?}");
    assert!(traffic.remote_seed >= file.len() as f64, "{traffic:?}");
    let log = seed.log_text();
    assert!(
        log.contains("piece uploaded over quic"),
        "the seed uploaded no piece over QUIC"
    );
    let over_tcp = log
        .lines()
        .filter(|l| l.contains("piece uploaded") && !l.contains("over quic"))
        .count();
    assert_eq!(over_tcp, 0, "the seed uploaded pieces over TCP");
    assert!(
        !peer.log_text().contains("no cluster certificate"),
        "the peer fell back to an unverified QUIC connection"
    );
    c.assert_no_panics();
}

#[test]
fn mtls_refuses_what_a_certificate_does_not_allow() {
    let mut c = mtls_cluster("mtls-refuse");
    let scheduler_log = c.scheduler.as_ref().unwrap().log.clone();
    let scheduler_cert = c.path("pki/scheduler");

    // A peer certificate announcing a seed host: the scheduler refuses and says why.
    let fake_seed = start_with_cert(&mut c, true, "peer");
    let text = wait_for_log(&fake_seed.log, "cannot announce host");
    assert!(
        text.contains("PermissionDenied") || text.contains("permission"),
        "{text}"
    );
    assert!(text.contains("role peer"), "{text}");
    wait_for_log(&scheduler_log, "AnnounceHost refused");

    // A daemon without any certificate: the handshake refuses it.
    let plain = c.start_daemon(DaemonOpts::default());
    wait_for_log(&plain.log, "cannot announce host");
    wait_for_log(&scheduler_log, "TLS handshake refused");

    let rt = runtime();
    let peer = start_with_cert(&mut c, false, "peer");
    let peer_cert = c.path(&format!("pki/{}-{}", c.name, peer.name));
    rt.block_on(async {
        // No client certificate: no gRPC call gets through.
        let sync = SyncPiecesRequest {
            host_id: "intruder".into(),
            task_id: "0".repeat(64),
            interested_piece_numbers: vec![0],
        };
        let refused = match upload_client(peer.upload_addr(), None).await {
            Err(e) => e,
            Ok(mut client) => match client.sync_pieces(sync).await {
                Err(status) => status.to_string(),
                Ok(_) => panic!("a client without certificate opened SyncPieces"),
            },
        };
        eprintln!("plain client: {refused}");

        // A peer's certificate may sync pieces but not ask for downloads.
        let mut as_peer = upload_client(peer.upload_addr(), Some(&peer_cert))
            .await
            .unwrap();
        let download = Download {
            url: "http://127.0.0.1:9/never".into(),
            ..Default::default()
        };
        let status = as_peer
            .download_task(DownloadTaskRequest {
                download: Some(download.clone()),
            })
            .await
            .expect_err("DownloadTask from a peer must be refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
        assert!(
            status.message().contains("only from schedulers"),
            "{status}"
        );

        // A scheduler may ask, but not choose the task ID.
        let mut as_scheduler = upload_client(peer.upload_addr(), Some(&scheduler_cert))
            .await
            .unwrap();
        let chosen = Download {
            content_for_calculating_task_id: Some("someone else's content".into()),
            ..download
        };
        let status = as_scheduler
            .download_task(DownloadTaskRequest {
                download: Some(chosen),
            })
            .await
            .expect_err("a chosen task ID must be refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
        assert!(
            status.message().contains("content_for_calculating_task_id"),
            "{status}"
        );

        // Nobody deletes through the upload port, not even a scheduler.
        let status = as_scheduler
            .delete_task(DeleteTaskRequest {
                task_id: "0".repeat(64),
                remote_ip: None,
            })
            .await
            .expect_err("DeleteTask on the upload port must be refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
        assert!(status.message().contains("unix socket"), "{status}");
    });
    wait_for_log(&peer.log, "TLS handshake refused");
}

/// A scheduler whose TLS files cannot be read must stop with an error naming them, not keep
/// `/healthy` answering while nothing serves gRPC (probes would pass on a dead scheduler).
#[test]
fn a_scheduler_with_unreadable_tls_files_exits_naming_them() {
    let c = Cluster::new("mtls-badfiles");
    let missing = c.path("pki/absent");
    let config = c.path("scheduler.yaml");
    std::fs::write(
        &config,
        format!("server:\n  tls:\n{}", triple(&missing, "    ")),
    )
    .unwrap();
    let mut child = Command::new(bin("dfscheduler"))
        .args(["--config", &path(&config), "--listen", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dfscheduler");
    let deadline = Instant::now() + LOG_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dfscheduler kept running with unreadable TLS files");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("ca.crt"),
        "the error does not name the file:\n{stderr}"
    );
}
