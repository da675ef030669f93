//! Who this daemon is on the wire: its IDs and the `common.v2.Host` it announces.

use dragonfly_api::common::v2::{Build, Cpu, Disk, Host, Memory, Network};
use std::net::IpAddr;
use std::path::PathBuf;

/// The identity and advertised addresses of this daemon. Built once the servers are bound,
/// so the ports are the real ones even when the configuration asked for port 0.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub id: String,
    pub ip: IpAddr,
    pub hostname: String,
    pub seed: bool,
    /// `common.v2.Host.type`: 0 normal, 1 super seed.
    pub host_type: u32,
    pub upload_port: u16,
    pub piece_port: u16,
    /// The Vortex QUIC server's UDP port, advertised in SyncPieces.
    pub quic_port: u16,
    pub idc: Option<String>,
    pub location: Option<String>,
    /// Announced bandwidth limits in bytes/s.
    pub max_tx_bandwidth: u64,
    pub max_rx_bandwidth: u64,
    /// Disk statistics are taken on the filesystem of the cache.
    pub storage_dir: PathBuf,
}

impl HostInfo {
    /// A fresh peer ID for one download.
    pub fn new_peer_id(&self) -> String {
        damselfly_core::peer_id(&self.ip.to_string(), &self.hostname, self.seed)
    }

    /// The announced host, with cheap live statistics.
    pub fn to_proto(&self) -> Host {
        Host {
            id: self.id.clone(),
            r#type: self.host_type,
            hostname: self.hostname.clone(),
            ip: self.ip.to_string(),
            port: i32::from(self.upload_port),
            download_port: i32::from(self.upload_port),
            os: std::env::consts::OS.to_string(),
            platform: std::env::consts::OS.to_string(),
            cpu: Some(cpu_stats()),
            memory: memory_stats(),
            network: Some(Network {
                location: self.location.clone(),
                idc: self.idc.clone(),
                max_rx_bandwidth: self.max_rx_bandwidth,
                max_tx_bandwidth: self.max_tx_bandwidth,
                ..Default::default()
            }),
            disk: disk_stats(&self.storage_dir),
            build: Some(Build {
                git_version: env!("CARGO_PKG_VERSION").to_string(),
                rust_version: option_env!("CARGO_PKG_RUST_VERSION").map(str::to_string),
                platform: Some(format!(
                    "{}-{}",
                    std::env::consts::OS,
                    std::env::consts::ARCH
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn cpu_stats() -> Cpu {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    Cpu {
        logical_count: logical,
        physical_count: logical,
        ..Default::default()
    }
}

/// From `/proc/meminfo`; absent where that file does not exist.
fn memory_stats() -> Option<Memory> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:").unwrap_or(0);
    let free = field("MemFree:").unwrap_or(0);
    let used = total.saturating_sub(available);
    Some(Memory {
        total,
        available,
        used,
        used_percent: percent(used, total),
        free,
        ..Default::default()
    })
}

fn disk_stats(dir: &std::path::Path) -> Option<Disk> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    let total = st.f_blocks as u64 * frsize;
    let free = st.f_bavail as u64 * frsize;
    let used = total.saturating_sub(st.f_bfree as u64 * frsize);
    let inodes_total = st.f_files as u64;
    let inodes_free = st.f_ffree as u64;
    let inodes_used = inodes_total.saturating_sub(inodes_free);
    Some(Disk {
        total,
        free,
        used,
        used_percent: percent(used, total),
        inodes_total,
        inodes_used,
        inodes_free,
        inodes_used_percent: percent(inodes_used, inodes_total),
        ..Default::default()
    })
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}
