//! End-to-end: a daemon told to stop (SIGTERM) while a download is in flight stops accepting
//! work but lets that download finish from its parents within the shutdown grace, then exits 0.

mod common;

use std::time::Duration;

use common::*;
use damselfly_daemon::lifecycle::SHUTDOWN_GRACE;

/// Beyond the grace, the stop may take this long to leave the schedulers and close.
const EXIT_MARGIN: Duration = Duration::from_secs(5);

#[test]
fn download_in_flight_at_sigterm_finishes_from_parents() {
    let origin = Origin::start();
    let file = origin.add_random("shutdown/16mib.bin", 16 * MIB);
    let mut c = Cluster::new("shutdown");
    c.start_scheduler();
    let seed = c.start_daemon(DaemonOpts {
        seed: true,
        ..Default::default()
    });
    let peer = c.start_daemon(DaemonOpts::default());

    // The seed holds the whole file: the origin serves it once.
    let warm = c.path("warm.bin");
    let result = c.dfget(&seed.socket, &file.url, &warm, &[]);
    assert_download_ok(&result, &warm, &file);
    let served_before = origin.served();

    // 16 MiB at 4 MiB/s: seconds in flight, well inside the grace.
    let out = c.path("out.bin");
    let running = c.spawn_dfget(&peer.socket, &file.url, &out, &["--rate-limit", "4MiB"]);
    let in_flight = wait_until(Duration::from_secs(60), || {
        peer.try_traffic().is_some_and(|t| t.network() > 0.0)
    });
    assert!(in_flight, "the peer never received a byte from its parents");
    let status = c.terminate(peer.pid, SHUTDOWN_GRACE + EXIT_MARGIN);

    let result = running.wait();
    assert_download_ok(&result, &out, &file);
    assert_eq!(
        origin.served(),
        served_before,
        "the download in flight at SIGTERM went back to the origin"
    );
    match status {
        Some(status) => assert!(status.success(), "dfdaemon exited with {status}"),
        None => panic!("dfdaemon still running {SHUTDOWN_GRACE:?} + {EXIT_MARGIN:?} after SIGTERM"),
    }
    let log = peer.log_text();
    assert!(log.contains("SIGTERM received"), "no SIGTERM in the log");
    c.assert_no_panics();
}
