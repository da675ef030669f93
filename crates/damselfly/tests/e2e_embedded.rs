//! End-to-end (h): the embedded default. With no daemon on the socket, dfget starts
//! `dfdaemon --embedded-scheduler` itself, says so once, and the download works. The started
//! daemon is found through its socket and killed by PID.
//!
//! Its own test binary: the embedded daemon binds the default ports, so it must not run next to
//! the other end-to-end tests (cargo runs test binaries one after another).

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

fn start_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("daemon")
                && (l.contains("start") || l.contains("spawn") || l.contains("launch"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn dfget_starts_an_embedded_daemon() {
    let origin = Origin::start();
    let big = origin.add_random("embedded/8mib.bin", 8 * MIB);
    let small = origin.add_random("embedded/1mib.bin", MIB);
    let mut c = Cluster::new("embedded");
    let socket = c.path("run/dfdaemon.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // Keep the started daemon's cache (and its dfdaemon.log) inside the test's dir instead of
    // the default /var/lib/dragonfly or ~/.cache/damselfly.
    let storage = c.path("embedded-storage");
    c.dfget_env.push((
        "DFGET_DAEMON_STORAGE_DIR".into(),
        storage.display().to_string(),
    ));
    // The started daemon binds the host's address on the default ports. When something else on
    // this machine holds them (another engineer's daemon, a system dfdaemon), start it through a
    // wrapper that adds `--ip` with an address of our own; dfget's part is the same either way.
    // On CI nothing holds them and the daemon runs exactly as dfget starts it.
    let busy: Vec<u16> = [4000, 4002, 4003, 4005]
        .into_iter()
        .filter(|p| TcpListener::bind(("0.0.0.0", *p)).is_err())
        .chain((std::net::UdpSocket::bind(("0.0.0.0", 4006)).is_err()).then_some(4006))
        .collect();
    if !busy.is_empty() {
        let wrapper = c.path("dfdaemon-wrapper.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec '{}' \"$@\" --ip {}\n",
                bin("dfdaemon").display(),
                c.ip(2)
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!(
            "ports {busy:?} are taken on this machine; the daemon gets --ip {}",
            c.ip(2)
        );
        c.dfget_env
            .push(("DFGET_DFDAEMON_PATH".into(), wrapper.display().to_string()));
    }

    let out = c.path("big.bin");
    let run = c.spawn_dfget(&socket, &big.url, &out, &[]);
    // Register the daemon for cleanup as soon as it shows up, even if dfget then fails.
    wait_until(Duration::from_secs(30), || socket.exists());
    for pid in pids_for_socket(&socket) {
        c.adopt_pid(pid);
    }
    let result = run.wait();
    let pids = pids_for_socket(&socket);
    for &pid in &pids {
        c.adopt_pid(pid);
    }
    assert_download_ok(&result, &out, &big);
    let said = start_lines(&result.stderr);
    // "(pid N" in the message, when it names one.
    for line in &said {
        if let Some(rest) = line.split("pid ").nth(1) {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(pid) = digits.parse() {
                c.adopt_pid(pid);
            }
        }
    }
    assert_eq!(
        said.len(),
        1,
        "dfget should say once on stderr that it started a daemon; stderr:\n{}",
        result.stderr
    );
    assert!(
        !pids.is_empty(),
        "no process holds {}; the daemon did not stay up",
        socket.display()
    );

    // The second dfget finds the running daemon and says nothing about starting one.
    let out = c.path("small.bin");
    let result = c.dfget(&socket, &small.url, &out, &[]);
    assert_download_ok(&result, &out, &small);
    assert!(
        start_lines(&result.stderr).is_empty(),
        "the second dfget started another daemon:\n{}",
        result.stderr
    );
    assert_eq!(
        pids_for_socket(&socket),
        pids,
        "the daemon behind the socket changed"
    );
    // Drop of `c` SIGKILLs the adopted daemon by PID.
    let log = std::fs::read_to_string(storage.join("dfdaemon.log")).unwrap_or_default();
    assert!(
        !log.contains("panicked at"),
        "the started daemon panicked:\n{log}"
    );
}
