//! End-to-end: one or two dfdaemons and what a user sees from dfget.
//!
//! (c) a small file goes straight to the origin; (d) digest mismatches; (e) origin errors and the
//! rest of the exit-code table; (f) no scheduler, a killed scheduler, a dead scheduler in the
//! list; (g) garbage on the daemon's ports; concurrent dfgets of one URL on one daemon.

mod common;

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::*;

/// A cluster with a scheduler and one daemon.
fn single(name: &str) -> (Cluster, DaemonInfo) {
    let mut c = Cluster::new(name);
    c.start_scheduler();
    let d = c.start_daemon(DaemonOpts::default());
    (c, d)
}

fn assert_no_file(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a failed download left files behind: {left:?}"
    );
}

fn assert_still_serves(c: &mut Cluster, d: &DaemonInfo, origin: &Origin, name: &str) {
    assert!(d.is_healthy(), "{} is not healthy", d.name);
    let file = origin.add_random(name, 6 * MIB);
    let out = c.path(&format!("{}.after", name.replace('/', "_")));
    let result = c.dfget(&d.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
}

#[test]
fn small_file_goes_straight_to_the_origin() {
    let origin = Origin::start();
    let file = origin.add_random("small/1mib.bin", MIB);
    let (mut c, d) = single("small");

    let out = c.path("small.bin");
    let result = c.dfget(&d.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    assert_eq!(
        origin.served(),
        file.len() as u64,
        "origin bytes for a 1 MiB file"
    );

    let t = d.traffic();
    assert_eq!(
        t.back_to_source,
        file.len() as f64,
        "back_to_source bytes: {t:?}"
    );
    assert_eq!(
        t.remote_seed + t.remote_normal,
        0.0,
        "peer bytes for a small file: {t:?}"
    );

    // DESIGN "Download life" step 4: no scheduler involvement for <= 4 MiB.
    let m = c.scheduler_metrics();
    let registered = m.sum("damselfly_scheduler_register_peer_total", &[]);
    assert_eq!(
        registered, 0.0,
        "a 1 MiB download registered a peer at the scheduler"
    );
    c.assert_no_panics();
}

#[test]
fn wrong_digest_fails_with_exit_5_and_no_output() {
    let origin = Origin::start();
    let file = origin.add_random("digest/8mib.bin", 8 * MIB);
    let (mut c, d) = single("digest");
    let outdir = c.path("out");
    fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("file.bin");

    let wrong = sha256_hex(b"not the file");
    let result = c.dfget(
        &d.socket,
        &file.url,
        &out,
        &["--digest", &format!("sha256:{wrong}")],
    );
    assert_eq!(result.code(), Some(5), "wrong digest: {result:?}");
    let msg = result.stderr.to_lowercase();
    assert!(
        msg.contains("digest"),
        "the message does not mention the digest: {}",
        result.stderr
    );
    assert!(
        msg.contains(&wrong),
        "the message does not name the expected digest: {}",
        result.stderr
    );
    assert_no_file(&outdir);

    // The daemon is fine and the right digest works (from its cache or the origin).
    let result = c.dfget(
        &d.socket,
        &file.url,
        &out,
        &["--digest", &format!("sha256:{}", file.sha256)],
    );
    assert_download_ok(&result, &out, &file);
    assert_still_serves(&mut c, &d, &origin, "digest/after.bin");
    c.assert_no_panics();
}

#[test]
fn tampered_origin_is_caught_by_digest_and_not_cached() {
    let origin = Origin::start();
    let file = origin.add_random("tamper/8mib.bin", 8 * MIB);
    let (mut c, d) = single("tamper");
    let outdir = c.path("out");
    fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("file.bin");
    let digest = format!("sha256:{}", file.sha256);

    origin.set_tamper(true);
    let result = c.dfget(&d.socket, &file.url, &out, &["--digest", &digest]);
    assert_eq!(result.code(), Some(5), "tampered bytes: {result:?}");
    assert_no_file(&outdir);

    // Once the origin is fixed, the same download must give the right bytes, not the bad cache.
    origin.set_tamper(false);
    let result = c.dfget(&d.socket, &file.url, &out, &["--digest", &digest]);
    assert_download_ok(&result, &out, &file);
    c.assert_no_panics();
}

#[test]
fn origin_errors_map_to_exit_codes() {
    let origin = Origin::start();
    let (mut c, d) = single("errors");
    let outdir = c.path("out");
    fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("file.bin");

    // 404 -> 3, message names 404.
    let result = c.dfget(&d.socket, &origin.url("no/such/file.bin"), &out, &[]);
    assert_eq!(result.code(), Some(3), "404: {result:?}");
    assert!(
        result.stderr.contains("404"),
        "the message does not name 404: {}",
        result.stderr
    );
    assert_no_file(&outdir);
    assert!(d.is_healthy());

    // Another 4xx/5xx -> 3, message has the status.
    let result = c.dfget(&d.socket, &origin.url("status/503"), &out, &[]);
    assert_eq!(result.code(), Some(3), "503: {result:?}");
    assert!(
        result.stderr.contains("503"),
        "the message does not name 503: {}",
        result.stderr
    );
    assert_no_file(&outdir);

    // Origin unreachable -> 4.
    let ip = Ipv4Addr::LOCALHOST.into();
    let dead = format!("http://127.0.0.1:{}/file.bin", free_port(ip));
    let result = c.dfget(&d.socket, &dead, &out, &[]);
    assert_eq!(result.code(), Some(4), "unreachable origin: {result:?}");
    assert_no_file(&outdir);

    // Bad --digest syntax -> 2.
    let file = origin.add_random("errors/ok.bin", 2 * MIB);
    let result = c.dfget(&d.socket, &file.url, &out, &["--digest", "nosuchalg:zz"]);
    assert_eq!(result.code(), Some(2), "bad --digest: {result:?}");
    assert_no_file(&outdir);

    // Bad URL -> 2.
    let result = c.dfget(&d.socket, "http://", &out, &[]);
    assert_eq!(result.code(), Some(2), "bad URL: {result:?}");
    assert_no_file(&outdir);

    // Existing output without --overwrite -> 1, and the file is untouched.
    fs::write(&out, b"keep me").unwrap();
    let result = c.dfget(&d.socket, &file.url, &out, &[]);
    assert_eq!(result.code(), Some(1), "existing output: {result:?}");
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
    fs::remove_file(&out).unwrap();

    // --timeout elapsed -> 6 (a separate origin that stalls every GET).
    let slow = Origin::start();
    slow.set_delay(Duration::from_secs(20));
    let slow_file = slow.add_random("slow.bin", 8 * MIB);
    let result = c.dfget(&d.socket, &slow_file.url, &out, &["--timeout", "2s"]);
    assert_eq!(result.code(), Some(6), "--timeout: {result:?}");
    assert_no_file(&outdir);

    assert_still_serves(&mut c, &d, &origin, "errors/after.bin");
    c.assert_no_panics();
}

#[test]
fn no_scheduler_listening_falls_back_to_the_origin() {
    let origin = Origin::start();
    let file = origin.add_random("nosched/8mib.bin", 8 * MIB);
    let mut c = Cluster::new("nosched");
    let nothing = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST.into()));
    let d = c.start_daemon(DaemonOpts {
        scheduler: Some(nothing),
        ..Default::default()
    });

    let out = c.path("file.bin");
    let result = c.dfget(&d.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    assert_eq!(d.traffic().back_to_source, file.len() as f64);
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.to_lowercase().contains("scheduler")),
        "no warning about the scheduler in the daemon log"
    );
    c.assert_no_panics();
}

#[test]
fn killed_scheduler_falls_back_to_the_origin() {
    let origin = Origin::start();
    let first = origin.add_random("killsched/first.bin", 8 * MIB);
    let file = origin.add_random("killsched/8mib.bin", 8 * MIB);
    let (mut c, d) = single("killsched");

    // One download while the scheduler is up, then kill it.
    let out = c.path("first.bin");
    let result = c.dfget(&d.socket, &first.url, &out, &[]);
    assert_download_ok(&result, &out, &first);
    let pid = c.scheduler.as_ref().unwrap().pid;
    c.kill(pid);

    let out = c.path("file.bin");
    let result = c.dfget(&d.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.to_lowercase().contains("scheduler")),
        "no warning about the scheduler in the daemon log"
    );
    c.assert_no_panics();
}

#[test]
fn garbage_on_the_ports_does_not_hurt_the_daemon() {
    let origin = Origin::start();
    let file = origin.add_random("garbage/8mib.bin", 8 * MIB);
    let mut c = Cluster::new("garbage");
    c.start_scheduler();
    let d1 = c.start_daemon(DaemonOpts::default());
    let d2 = c.start_daemon(DaemonOpts::default());

    let out = c.path("d1.bin");
    let result = c.dfget(&d1.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);

    // A connection that sends half a Vortex header and then just sits there.
    let mut stalled = std::net::TcpStream::connect(d1.piece_addr()).expect("connect vortex");
    std::io::Write::write_all(&mut stalled, &[7, 0, 0]).unwrap();

    let wait = Duration::from_millis(500);
    let mut vortex: Vec<Vec<u8>> = vec![
        random_bytes(64 * 1024),
        // DownloadPiece claiming a 4 GiB value.
        vec![1, 0, 0xff, 0xff, 0xff, 0xff],
        // PieceContent (a response tag) claiming 1 GiB, sent to the server.
        vec![2, 1, 0x40, 0, 0, 0, 1, 2, 3],
        // Unknown/reserved tag.
        vec![3, 200, 0, 0, 0, 4, 1, 2, 3, 4],
        // Close, then garbage.
        [vec![4, 254, 0, 0, 0, 0], random_bytes(100)].concat(),
    ];
    // DownloadPiece with a well-formed length but a random value, and one for an unknown task.
    let mut bogus = vec![5, 0, 0, 0, 0, 68];
    bogus.extend(random_bytes(68));
    vortex.push(bogus);
    let mut unknown = vec![6, 0, 0, 0, 0, 68];
    unknown.extend(sha256_hex(b"no such task").as_bytes());
    unknown.extend(0u32.to_be_bytes());
    vortex.push(unknown);
    for payload in &vortex {
        send_garbage(d1.piece_addr(), payload, wait);
    }

    let grpc: Vec<Vec<u8>> = vec![
        random_bytes(64 * 1024),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            random_bytes(4096),
        ]
        .concat(),
        // Preface + a SETTINGS frame header claiming a 16 MiB payload.
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            vec![0xff, 0xff, 0xff, 4, 0, 0, 0, 0, 0],
        ]
        .concat(),
    ];
    for payload in &grpc {
        send_garbage(d1.upload_addr(), payload, wait);
    }

    assert!(d1.is_healthy(), "daemon unhealthy after garbage");
    // d1 still downloads, and still serves its pieces to d2.
    assert_still_serves(&mut c, &d1, &origin, "garbage/after.bin");
    let out2 = c.path("d2.bin");
    let result = c.dfget(&d2.socket, &file.url, &out2, &[]);
    assert_download_ok(&result, &out2, &file);
    let t = d2.traffic();
    assert!(
        t.remote_normal > 0.0,
        "d2 should have fetched pieces from d1 over P2P: {t:?}"
    );
    drop(stalled);
    c.assert_no_panics();
}

#[test]
fn concurrent_dfgets_on_one_daemon_share_one_fetch() {
    let origin = Origin::start();
    let file = origin.add_random("shared/16mib.bin", 16 * MIB);
    let (mut c, d) = single("shared");

    let outs: Vec<_> = (0..3).map(|i| c.path(&format!("out{i}.bin"))).collect();
    let running: Vec<RunningDfget> = outs
        .iter()
        .map(|out| c.spawn_dfget(&d.socket, &file.url, out, &[]))
        .collect();
    for (run, out) in running.into_iter().zip(&outs) {
        assert_download_ok(&run.wait(), out, &file);
    }
    let served = origin.served() as f64;
    assert!(
        served <= 1.05 * file.len() as f64,
        "three concurrent dfgets of one URL on one daemon made the origin serve {served} bytes \
         for a {}-byte file",
        file.len()
    );
    c.assert_no_panics();
}

#[test]
fn a_dead_scheduler_in_the_list_is_skipped() {
    let origin = Origin::start();
    let files: Vec<OriginFile> = (0..3)
        .map(|i| origin.add_random(&format!("failover/{i}.bin"), 8 * MIB))
        .collect();
    let mut c = Cluster::new("failover");
    let alive = c.start_scheduler();
    let dead = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST.into()));
    // Both orders, so the dead one is first in the list for one of the daemons.
    let list_a = format!("{dead},{}", alive.addr);
    let list_b = format!("{},{dead}", alive.addr);
    let d1 = c.start_daemon(DaemonOpts {
        scheduler: Some(list_a),
        ..Default::default()
    });
    let d2 = c.start_daemon(DaemonOpts {
        scheduler: Some(list_b),
        ..Default::default()
    });

    // Several tasks, so the hash ring puts some of them on the dead scheduler.
    for (i, file) in files.iter().enumerate() {
        let out1 = c.path(&format!("d1-{i}.bin"));
        let result = c.dfget(&d1.socket, &file.url, &out1, &[]);
        assert_download_ok(&result, &out1, file);
        let out2 = c.path(&format!("d2-{i}.bin"));
        let result = c.dfget(&d2.socket, &file.url, &out2, &[]);
        assert_download_ok(&result, &out2, file);
    }
    // The live scheduler was used: d2 took pieces from d1 instead of the origin.
    let t = d2.traffic();
    assert!(
        t.remote_normal > 0.0,
        "with one live scheduler in the list, d2 fetched nothing from d1: {t:?}"
    );
    c.assert_no_panics();
}

#[test]
fn a_restarted_daemon_keeps_its_cache() {
    let origin = Origin::start();
    let file = origin.add_random("restart/8mib.bin", 8 * MIB);
    let (mut c, d) = single("restart");

    let out = c.path("first.bin");
    let result = c.dfget(&d.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    let served = origin.served();

    // SIGKILL, not a clean shutdown: what was recorded must survive a crash.
    let d = c.restart_daemon(&d);
    let out = c.path("second.bin");
    let result = c.dfget(&d.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    assert_eq!(
        origin.served(),
        served,
        "after a restart the daemon fetched the cached file from the origin again"
    );
    assert_eq!(
        d.traffic().local,
        file.len() as f64,
        "local_peer bytes after the restart"
    );
    c.assert_no_panics();
}
