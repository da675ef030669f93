//! Nydus, the lazy-pulling client, for the end-to-end test: its two programs (`nydus-image`
//! builds a RAFS v6 image of a directory, `nydusd` mounts it over FUSE and fetches the data
//! blob's chunks by HTTP Range from a registry), found where `tools/nydus/install.sh` puts
//! them; a test image; and a mount that is always unmounted and stopped.

#![allow(dead_code)]

use crate::common::*;
use crate::registry::{skip, tools_required};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// The nydus-rs release `tools/nydus/install.sh` builds.
pub const NYDUS_VERSION: &str = "2.2.0";
/// How long a mount may take to appear, and a read from it to finish.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const READ_TIMEOUT: Duration = DEFAULT_DFGET_TIMEOUT;

pub struct Tools {
    pub nydusd: PathBuf,
    pub builder: PathBuf,
}

/// Where `tools/nydus/install.sh` installs the binaries (same cache variable and default).
fn install_dir() -> PathBuf {
    let cache = std::env::var_os("DAMSELFLY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/damselfly-tools")
        });
    cache.join(format!("nydus-{NYDUS_VERSION}/bin"))
}

/// Why a FUSE mount cannot work here, if it cannot. nydusd mounts with mount(2), so it needs
/// root as well as the device.
pub fn fuse_unusable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("nydusd mounts FUSE with mount(2), which needs root".into());
    }
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/fuse cannot be opened ({e})")),
    }
}

fn find(name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var("PATH").unwrap_or_default();
    std::iter::once(install_dir())
        .chain(path_dirs.split(':').map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// nydusd and nydus-image, or None after a skip. Without a usable FUSE the test skips even
/// under `DAMSELFLY_REQUIRE_TOOLS=1` (a machine without /dev/fuse cannot run it at all); a
/// missing binary is a skip that fails there, since `.ci/run` installs it.
pub fn tools() -> Option<Tools> {
    if let Some(reason) = fuse_unusable() {
        eprintln!("SKIP: {reason}; the Nydus test mounts images over FUSE");
        return None;
    }
    let (Some(nydusd), Some(builder)) = (find("nydusd"), find("nydus-image")) else {
        skip(format!(
            "nydusd or nydus-image is not in {} nor on PATH (run tools/nydus/install.sh)",
            install_dir().display()
        ));
        return None;
    };
    if tools_required() {
        eprintln!("nydus: {} and {}", nydusd.display(), builder.display());
    }
    Some(Tools { nydusd, builder })
}

/// A RAFS v6 image: the bootstrap (metadata, read locally by nydusd), the data blob (pushed to
/// the registry; its ID is its sha256) and the files it holds.
pub struct RafsImage {
    pub bootstrap: PathBuf,
    pub blob_id: String,
    pub blob: Vec<u8>,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Builds an image of `count` files of `len` random bytes each with `nydus-image create`.
pub fn build_image(tools: &Tools, dir: &Path, count: usize, len: usize) -> RafsImage {
    let rootfs = dir.join("rootfs");
    let blobs = dir.join("blobs");
    fs::create_dir_all(&rootfs).unwrap();
    fs::create_dir_all(&blobs).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| (format!("file-{i:02}.bin"), random_bytes(len)))
        .collect();
    for (name, data) in &files {
        fs::write(rootfs.join(name), data).unwrap();
    }
    let bootstrap = dir.join("bootstrap");
    let output = Command::new(&tools.builder)
        .args(["create", "--fs-version", "6", "--log-level", "warn"])
        .arg("--bootstrap")
        .arg(&bootstrap)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg(&rootfs)
        .stdin(Stdio::null())
        .output()
        .expect("run nydus-image");
    assert!(
        output.status.success(),
        "nydus-image create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: Vec<PathBuf> = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "one data blob expected: {entries:?}");
    let blob = fs::read(&entries[0]).unwrap();
    let blob_id = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert_eq!(sha256_hex(&blob), blob_id, "a blob is named by its sha256");
    RafsImage {
        bootstrap,
        blob_id,
        blob,
        files,
    }
}

/// Where nydusd's registry backend fetches the blob, and through which proxy.
pub struct Backend<'a> {
    pub registry: SocketAddr,
    pub repo: &'a str,
    /// A dfdaemon's proxy, as Dragonfly's Nydus guide sets `backend.config.proxy.url`.
    pub proxy: SocketAddr,
}

/// nydusd's configuration: the registry backend over plain HTTP through `proxy`, a blob cache
/// in `cache`, and nydusd's own prefetch off (the test decides what is read).
fn nydusd_config(backend: &Backend, cache: &Path) -> String {
    // fallback off: a proxy failure must fail the read, not quietly go to the registry. No
    // ping_url: a failed ping would also send nydusd straight to the registry.
    serde_json::json!({
        "device": {
            "backend": {
                "type": "registry",
                "config": {
                    "scheme": "http",
                    "host": backend.registry.to_string(),
                    "repo": backend.repo,
                    "timeout": 60,
                    "connect_timeout": 10,
                    "retry_limit": 0,
                    "proxy": { "url": format!("http://{}", backend.proxy), "fallback": false }
                }
            },
            "cache": { "type": "blobcache", "config": { "work_dir": cache.display().to_string() } }
        },
        "mode": "direct",
        "digest_validate": false,
        "fs_prefetch": { "enable": false }
    })
    .to_string()
}

/// A running nydusd and its FUSE mount. Dropping it unmounts and stops nydusd by PID, also
/// when the test panics.
pub struct Mount {
    pub point: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Mount {
    /// Starts nydusd on `image` and waits for its mount to appear under `dir/name`.
    pub fn start(
        tools: &Tools,
        dir: &Path,
        name: &str,
        image: &RafsImage,
        backend: &Backend,
    ) -> Mount {
        let point = dir.join(format!("{name}-mnt"));
        let cache = dir.join(format!("{name}-cache"));
        fs::create_dir_all(&point).unwrap();
        fs::create_dir_all(&cache).unwrap();
        let config = dir.join(format!("{name}-nydusd.json"));
        fs::write(&config, nydusd_config(backend, &cache)).unwrap();
        let log = dir.join(format!("{name}-nydusd.log"));
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(&tools.nydusd)
            .arg("--config")
            .arg(&config)
            .arg("--mountpoint")
            .arg(&point)
            .arg("--bootstrap")
            .arg(&image.bootstrap)
            .args(["--log-level", "info"])
            // nydusd raises RLIMIT_NOFILE to 1M by default and exits when that is refused (as
            // in containers); the test needs a handful of files.
            .args(["--rlimit-nofile", "0"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start nydusd");
        // The guard exists before the wait, so a mount that half-came-up is still cleaned up.
        let mut mount = Mount { point, log, child };
        let up = wait_until(MOUNT_TIMEOUT, || {
            mount.is_mounted() || matches!(mount.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            up && mount.is_mounted(),
            "nydusd did not mount {}:\n{}",
            mount.point.display(),
            mount.log_text()
        );
        mount
    }

    /// Whether the kernel lists a FUSE mount at this mount point.
    pub fn is_mounted(&self) -> bool {
        let point = self.point.display().to_string();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                fields.get(4) == Some(&point.as_str()) && line.contains(" - fuse")
            })
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads a file of the mount on another thread, so that a stuck FUSE read fails the test
    /// after [`READ_TIMEOUT`] instead of hanging it.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        let path = self.point.join(rel);
        let (tx, rx) = mpsc::channel();
        let reader = path.clone();
        thread::spawn(move || {
            let _ = tx.send(fs::read(&reader));
        });
        match rx.recv_timeout(READ_TIMEOUT) {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => panic!("read {}: {e}\n{}", path.display(), self.log_text()),
            Err(_) => panic!(
                "read {} did not finish\n{}",
                path.display(),
                self.log_text()
            ),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.point)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted && self.is_mounted() {
            // Busy or stuck: detach it lazily rather than leave it behind.
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
