//! End-to-end: a real swarm of dfdaemons behind one dfscheduler, fed by an HTTP origin.
//!
//! (a) five daemons (one seed) fetch one 100 MiB file at once: identical bytes everywhere, the
//!     origin serves the file about once, the seed's uplink carries it about once, the normal
//!     peers feed each other; then a repeat on a daemon that has the file is a local hit.
//! (b) one daemon is SIGKILLed in the middle of a swarm download: the others still finish.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

#[test]
fn swarm_of_five_shares_one_origin_fetch() {
    let origin = Origin::start();
    let file = origin.add_random("swarm/100mib.bin", 100 * MIB);
    let size = file.len() as f64;

    let mut c = Cluster::new("swarm");
    let scheduler = c.start_scheduler();
    let seed = c.start_daemon(DaemonOpts {
        seed: true,
        ..Default::default()
    });
    let peers: Vec<DaemonInfo> = (0..4)
        .map(|_| c.start_daemon(DaemonOpts::default()))
        .collect();
    let all: Vec<DaemonInfo> = std::iter::once(seed.clone())
        .chain(peers.iter().cloned())
        .collect();

    let outs: Vec<PathBuf> = all
        .iter()
        .map(|d| c.path(&format!("out-{}.bin", d.name)))
        .collect();
    let running: Vec<RunningDfget> = all
        .iter()
        .zip(&outs)
        .map(|(d, out)| c.spawn_dfget(&d.socket, &file.url, out, &[]))
        .collect();
    let results: Vec<DfgetResult> = running.into_iter().map(RunningDfget::wait).collect();
    for ((d, out), result) in all.iter().zip(&outs).zip(&results) {
        eprintln!("{}: dfget took {:?}", d.name, result.elapsed);
        assert_download_ok(result, out, &file);
    }

    // The traffic checks are collected so one run reports every broken expectation.
    let mut problems: Vec<String> = Vec::new();
    let served = origin.served() as f64;
    if served > 1.05 * size {
        problems.push(format!(
            "origin served {served} bytes for a {size}-byte file to a swarm of five (> 1.05x)"
        ));
    }

    let mut normal_from_peers = 0.0;
    let mut normal_from_seed = 0.0;
    let mut normal_total = 0.0;
    for d in &peers {
        let t = d.traffic();
        eprintln!("{}: {:?}", d.name, t);
        normal_from_peers += t.remote_normal;
        normal_from_seed += t.remote_seed;
        normal_total += t.network();
    }
    // The seed hands each piece to one child and the mesh spreads it: its uplink, the
    // scarcest link in a real deployment, carries the file about once.
    if normal_from_seed > 1.1 * size {
        problems.push(format!(
            "the normal daemons took {normal_from_seed} bytes from the seed for a {size}-byte \
             file (> 1.1x)"
        ));
    }
    eprintln!("{}: {:?}", seed.name, seed.traffic());
    if normal_total < 4.0 * size * 0.99 {
        problems.push(format!(
            "the four normal daemons report {normal_total} downloaded bytes in \
             {DOWNLOAD_TRAFFIC}, expected about {}",
            4.0 * size
        ));
    }
    if normal_from_peers < 0.5 * normal_total {
        problems.push(format!(
            "only {normal_from_peers} of {normal_total} bytes the normal daemons downloaded came \
             from normal (non-seed) peers; expected at least half"
        ));
    }

    // Peers that register together trade both ways: the scheduler pushed newer peers to the
    // running downloads of their parents (the mesh's reverse edges), and those downloads
    // still ended with the right bytes (checked above).
    let pushed = Metrics::scrape(scheduler.metrics).sum(
        "damselfly_scheduler_schedule_total",
        &[("decision", "pushed")],
    );
    eprintln!("scheduler: {pushed} mesh parents pushed");
    if pushed < 1.0 {
        problems.push("the scheduler pushed no mesh parent to a running download".to_string());
    }
    // Every download's first decision was timed (the seed's own included).
    let timed = Metrics::scrape(scheduler.metrics)
        .sum("damselfly_scheduler_decision_duration_seconds_count", &[]);
    if timed < peers.len() as f64 {
        problems.push(format!(
            "damselfly_scheduler_decision_duration_seconds counted {timed} first decisions, \
             expected at least {}",
            peers.len()
        ));
    }

    // A second download on a daemon that has the task: no origin traffic, same bytes.
    let before = origin.served();
    let local_before = peers[0].traffic().local;
    let again = c.path("again.bin");
    let result = c.dfget(&peers[0].socket, &file.url, &again, &[]);
    assert_download_ok(&result, &again, &file);
    if origin.served() != before {
        problems.push(format!(
            "a repeated download fetched {} bytes from the origin",
            origin.served() - before
        ));
    }
    let local_after = peers[0].traffic().local;
    if local_after - local_before < size {
        problems.push(format!(
            "a local hit should count {size} local_peer bytes, counted {}",
            local_after - local_before
        ));
    }
    assert!(
        problems.is_empty(),
        "swarm expectations not met:\n  {}",
        problems.join("\n  ")
    );
    c.assert_no_panics();
}

#[test]
fn swarm_survives_a_killed_peer() {
    let origin = Origin::start();
    let file = origin.add_random("kill/64mib.bin", 64 * MIB);
    // Slow the origin down so that the swarm is still moving bytes when the victim dies.
    origin.set_rate(2 * MIB as u64);

    let mut c = Cluster::new("kill");
    c.start_scheduler();
    let seed = c.start_daemon(DaemonOpts {
        seed: true,
        ..Default::default()
    });
    let peers: Vec<DaemonInfo> = (0..3)
        .map(|_| c.start_daemon(DaemonOpts::default()))
        .collect();
    let victim = peers[0].clone();
    let survivors: Vec<DaemonInfo> = std::iter::once(seed.clone())
        .chain(peers[1..].iter().cloned())
        .collect();

    let victim_run = c.spawn_dfget(&victim.socket, &file.url, &c.path("victim.bin"), &[]);
    let outs: Vec<PathBuf> = survivors
        .iter()
        .map(|d| c.path(&format!("out-{}.bin", d.name)))
        .collect();
    let running: Vec<RunningDfget> = survivors
        .iter()
        .zip(&outs)
        .map(|(d, out)| c.spawn_dfget(&d.socket, &file.url, out, &[]))
        .collect();

    // Kill the victim once it has downloaded something but not everything.
    let moved = wait_until(Duration::from_secs(120), || {
        victim
            .try_traffic()
            .map(|t| t.network() >= 2.0 * MIB as f64)
            .unwrap_or(false)
    });
    let at_kill = victim.try_traffic().unwrap_or_default();
    eprintln!("victim traffic at kill time: {at_kill:?} (moved: {moved})");
    c.kill(victim.pid);
    assert!(!c.is_running(victim.pid));
    let victim_result = victim_run.wait();
    eprintln!(
        "victim dfget: code {:?}, stderr: {}",
        victim_result.code(),
        victim_result.stderr
    );
    assert!(
        at_kill.network() < file.len() as f64,
        "the victim had finished before the kill; the test did not exercise a mid-flight kill"
    );

    let results: Vec<DfgetResult> = running.into_iter().map(RunningDfget::wait).collect();
    for ((d, out), result) in survivors.iter().zip(&outs).zip(&results) {
        eprintln!("{}: dfget took {:?}", d.name, result.elapsed);
        assert_download_ok(result, out, &file);
    }
    for d in &survivors {
        assert!(d.is_healthy(), "{} is not healthy after the kill", d.name);
    }
    c.assert_no_panics();
}

/// Cut-through: a daemon still fetching a file from the origin forwards the bytes it already
/// has to a second daemon, which ends with the same bytes; the origin serves the file once.
#[test]
fn a_piece_still_arriving_is_forwarded_to_a_second_daemon() {
    let origin = Origin::start();
    let file = origin.add_random("cut-through/8mib.bin", 8 * MIB);
    let size = file.len() as u64;
    let mut c = Cluster::new("cut-through");
    c.start_scheduler();
    let a = c.start_daemon(DaemonOpts::default());
    let b = c.start_daemon(DaemonOpts::default());
    // Every origin body (one per 4 MiB piece) stops after 2 MiB until released.
    let held = 2 * MIB as u64;
    origin.hold_bodies_after(held);
    let wait = Duration::from_secs(30);

    let (out_a, out_b) = (c.path("a.bin"), c.path("b.bin"));
    let first = c.spawn_dfget(&a.socket, &file.url, &out_a, &[]);
    assert!(
        wait_until(wait, || origin.served() >= 2 * held),
        "daemon a never fetched both pieces' first halves (origin served {})",
        origin.served()
    );
    let second = c.spawn_dfget(&b.socket, &file.url, &out_b, &[]);
    // While the origin still holds both pieces, b gets what a has of them.
    let uploaded = || a.metrics().sum("damselfly_upload_traffic_bytes_total", &[]);
    assert!(
        wait_until(wait, || uploaded() >= MIB as f64),
        "daemon a forwarded {} bytes of its arriving pieces to b",
        uploaded()
    );
    assert_eq!(
        origin.served(),
        2 * held,
        "b must not go to the held origin"
    );

    origin.release_bodies();
    assert_download_ok(&first.wait(), &out_a, &file);
    assert_download_ok(&second.wait(), &out_b, &file);
    assert_eq!(origin.served(), size, "the origin served the file once");
    let forwarded = a
        .metrics()
        .sum("damselfly_upload_forwarded_piece_total", &[]);
    assert_eq!(forwarded, 2.0, "both pieces were forwarded as they arrived");
    // Loopback is no thin uplink: a sent every request at once and nothing waits.
    let turns = a.metrics();
    assert_eq!(turns.sum("damselfly_upload_paced", &[]), 0.0);
    assert_eq!(turns.sum("damselfly_upload_waiting", &[]), 0.0);
    assert_eq!(turns.sum("damselfly_upload_limit", &[]), 256.0);
    assert_eq!(turns.sum("damselfly_upload_suspended_total", &[]), 0.0);
    let b_traffic = b.traffic();
    assert_eq!(b_traffic.remote_normal, size as f64, "{b_traffic:?}");
    c.assert_no_panics();
}
