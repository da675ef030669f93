//! End-to-end fault matrix (issue 10), real processes on loopback:
//!
//! (a) a full disk: on a small tmpfs, a download that cannot fit fails with a clear error, one
//!     that fills the disk mid-way fails with "no space left on device" and frees its partial
//!     pieces, and a later small download succeeds on the same live daemon;
//! (b) the scheduler killed and restarted: the daemons tell the new one what they hold, so a
//!     new peer's download costs the origin nothing;
//! (c) a daemon SIGKILLed mid-task and restarted completes the download with correct bytes.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Size of the test file system: small enough to fill in a moment.
const TMPFS_MIB: usize = 48;

/// The skip rule of the other e2e tests: `SKIP: <reason>`, or a failure under CI or with
/// `DAMSELFLY_REQUIRE_TOOLS=1`.
fn skip(reason: &str) {
    let required = ["DAMSELFLY_REQUIRE_TOOLS", "CI"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        .is_some_and(|v| !matches!(v.trim(), "0" | "false"));
    assert!(!required, "{reason} (a skip is a failure under CI)");
    eprintln!("SKIP: {reason}");
}

/// A tmpfs mounted by the test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_mib: usize) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip("mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs {
                path: path.to_path_buf(),
            }),
            other => {
                skip(&format!("cannot mount a tmpfs here: {other:?}"));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding files must not keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros to `path` until the file system is full (or `limit` bytes are written).
fn fill(path: &Path, limit: usize) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < limit {
        match file.write(&block[..block.len().min(limit - written)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n,
        }
    }
    let _ = file.sync_all();
}

fn free_bytes(path: &Path) -> usize {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

#[test]
fn full_disk_fails_clearly_frees_its_pieces_and_the_next_download_works() {
    let origin = Origin::start();
    let first = origin.add_random("disk/first.bin", 8 * MIB);
    let big = origin.add_random("disk/big.bin", 16 * MIB);
    let filling = origin.add_random("disk/filling.bin", 24 * MIB);
    let small = origin.add_random("disk/small.bin", 100 * 1024);

    let mut c = Cluster::new("fulldisk");
    let Some(disk) = Tmpfs::mount(&c.path("tmpfs"), TMPFS_MIB) else {
        return;
    };
    c.start_scheduler();
    let d = c.start_daemon(DaemonOpts {
        storage: Some(disk.path.join("cache")),
        ..Default::default()
    });

    let out = c.path("first.bin");
    let result = c.dfget(&d.socket, &first.url, &out, &[]);
    assert_download_ok(&result, &out, &first);

    // Room for less than `big` even after evicting `first`: refused before any byte flows.
    let filler = disk.path.join("filler");
    fill(&filler, free_bytes(&disk.path).saturating_sub(6 * MIB));
    let result = c.dfget(&d.socket, &big.url, &c.path("big.bin"), &[]);
    assert!(!result.success(), "a 16 MiB download fit in ~14 MiB");
    assert!(
        result
            .stderr
            .contains("not enough disk space: need 16777216 bytes"),
        "unclear error: {}",
        result.stderr
    );

    // The disk fills up while a download runs: it fails, and its partial pieces go.
    std::fs::remove_file(&filler).unwrap();
    origin.set_rate(256 * 1024);
    let free_before = free_bytes(&disk.path);
    let running = c.spawn_dfget(&d.socket, &filling.url, &c.path("filling.bin"), &[]);
    // Enough of it on disk that freeing it leaves room for the small file and the reserve.
    assert!(
        wait_until(Duration::from_secs(60), || free_before
            .saturating_sub(free_bytes(&disk.path))
            >= 6 * MIB),
        "the download did not write its first pieces"
    );
    fill(&filler, usize::MAX);
    let result = running.wait();
    assert!(!result.success(), "the download outgrew a full disk");
    assert!(
        result.stderr.contains("no space left on device"),
        "unclear error: {}",
        result.stderr
    );

    // The same daemon, the disk still full but for the freed pieces: a small file works.
    origin.set_rate(0);
    let out = c.path("small.bin");
    let result = c.dfget(&d.socket, &small.url, &out, &[]);
    assert_download_ok(&result, &out, &small);
    assert!(d.is_healthy(), "the daemon died");
    c.assert_no_panics();
}

#[test]
fn after_a_scheduler_restart_a_new_peer_costs_the_origin_nothing() {
    let origin = Origin::start();
    let file = origin.add_random("restart/file.bin", 24 * MIB);
    let mut c = Cluster::new("schedrestart");
    c.start_scheduler();
    let holders: Vec<DaemonInfo> = (0..4)
        .map(|_| c.start_daemon(DaemonOpts::default()))
        .collect();
    for d in &holders {
        let out = c.path(&format!("{}.bin", d.name));
        let result = c.dfget(&d.socket, &file.url, &out, &[]);
        assert_download_ok(&result, &out, &file);
    }

    c.restart_scheduler();
    let told = wait_until(Duration::from_secs(60), || {
        c.scheduler_metrics().sum(
            "damselfly_scheduler_schedule_total",
            &[("decision", "metadata_only")],
        ) >= holders.len() as f64
    });
    assert!(
        told,
        "the daemons did not tell the restarted scheduler what they hold"
    );

    let before = origin.served();
    let newcomer = c.start_daemon(DaemonOpts::default());
    let out = c.path("newcomer.bin");
    let result = c.dfget(&newcomer.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    assert_eq!(
        origin.served() - before,
        0,
        "the origin served bytes although four daemons held the file"
    );
    assert!(holders.iter().all(DaemonInfo::is_healthy));
    c.assert_no_panics();
}

#[test]
fn a_daemon_killed_mid_task_completes_the_download_after_a_restart() {
    let origin = Origin::start();
    let file = origin.add_random("killed/file.bin", 32 * MIB);
    let mut c = Cluster::new("daemonkill");
    c.start_scheduler();
    let d = c.start_daemon(DaemonOpts::default());

    origin.set_rate(1024 * 1024);
    let running = c.spawn_dfget(&d.socket, &file.url, &c.path("first-try.bin"), &[]);
    assert!(
        wait_until(Duration::from_secs(60), || origin.served() as usize
            >= 8 * MIB),
        "the download did not start"
    );
    let d = c.restart_daemon(&d);
    let interrupted = running.wait();
    assert!(
        !interrupted.success(),
        "dfget succeeded although its daemon was killed"
    );

    origin.set_rate(0);
    let out = c.path("file.bin");
    let result = c.dfget(&d.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    assert!(d.is_healthy());
    c.assert_no_panics();
}
