//! How much room the cache has: the file system's free space and the cache quota.
//!
//! The reading is injected ([`SpaceProbe`]) so tests can play a full disk without filling one.

use crate::config::StorageConfig;
use std::io;
use std::path::Path;

/// Free space kept aside when admitting a task, so the metadata database can still commit
/// (record pieces, mark tasks failed, delete tasks) when a download has used everything else.
pub const RESERVED_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// A file system's size and the bytes an unprivileged writer may still use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    pub total: u64,
    pub available: u64,
}

impl DiskSpace {
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }
}

/// Reads the space of the file system holding a directory.
pub trait SpaceProbe: Send + Sync {
    fn space(&self, dir: &Path) -> io::Result<DiskSpace>;
}

/// The real reading, `statvfs(3)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Statvfs;

impl SpaceProbe for Statvfs {
    // The statvfs fields are 32 bits wide on some targets.
    #[allow(clippy::useless_conversion)]
    fn space(&self, dir: &Path) -> io::Result<DiskSpace> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs only writes into the zeroed struct we pass, and `path` is a valid
        // NUL-terminated string that outlives the call.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let block = u64::from(stat.f_frsize);
        Ok(DiskSpace {
            total: u64::from(stat.f_blocks).saturating_mul(block),
            available: u64::from(stat.f_bavail).saturating_mul(block),
        })
    }
}

/// A fixed reading, for tests and for callers that measure space some other way.
impl SpaceProbe for DiskSpace {
    fn space(&self, _dir: &Path) -> io::Result<DiskSpace> {
        Ok(*self)
    }
}

/// Bytes that must be freed before `need` more bytes fit: on the file system (keeping
/// [`RESERVED_FREE_BYTES`]) and, with a quota, within the quota given the cache's `usage`.
pub(crate) fn shortfall(config: &StorageConfig, space: DiskSpace, usage: u64, need: u64) -> u64 {
    let usable = space.available.saturating_sub(RESERVED_FREE_BYTES);
    let on_disk = need.saturating_sub(usable);
    let in_quota = match config.quota_bytes {
        0 => 0,
        quota => usage.saturating_add(need).saturating_sub(quota),
    };
    on_disk.max(in_quota)
}

/// Bytes GC should free: with a quota, the cache's usage above the quota's high watermark
/// down to its low one; without, Dragonfly's default, the file system's used share above
/// the high watermark down to the low one (the quota is then a share of the whole disk).
pub(crate) fn pressure(config: &StorageConfig, space: DiskSpace, usage: u64) -> u64 {
    let (used, capacity) = match config.quota_bytes {
        0 => (space.used(), space.total),
        quota => (usage, quota),
    };
    let high = config.high_watermark_percent.min(100);
    let low = config.low_watermark_percent.min(high);
    if used <= share(capacity, high) {
        return 0;
    }
    used.saturating_sub(share(capacity, low))
}

fn share(bytes: u64, percent: u8) -> u64 {
    (u128::from(bytes) * u128::from(percent) / 100) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn config(quota_bytes: u64) -> StorageConfig {
        StorageConfig {
            quota_bytes,
            ..StorageConfig::with_dir("/unused")
        }
    }

    #[test]
    fn a_task_fits_in_free_space_minus_the_reserve() {
        let space = DiskSpace {
            total: 100 * MIB,
            available: 20 * MIB,
        };
        assert_eq!(shortfall(&config(0), space, 0, 10 * MIB), 0);
        assert_eq!(
            shortfall(&config(0), space, 0, 20 * MIB),
            RESERVED_FREE_BYTES
        );
    }

    #[test]
    fn a_quota_limits_the_cache_even_on_an_empty_disk() {
        let space = DiskSpace {
            total: 100 * MIB,
            available: 100 * MIB,
        };
        assert_eq!(
            shortfall(&config(30 * MIB), space, 25 * MIB, 10 * MIB),
            5 * MIB
        );
    }

    #[test]
    fn without_a_quota_pressure_is_measured_against_the_whole_disk() {
        let full = DiskSpace {
            total: 100 * MIB,
            available: 10 * MIB,
        };
        // 90 % used, high 80 %, low 60 %: 30 MiB to free.
        assert_eq!(pressure(&config(0), full, 5 * MIB), 30 * MIB);
        let calm = DiskSpace {
            total: 100 * MIB,
            available: 30 * MIB,
        };
        assert_eq!(pressure(&config(0), calm, 5 * MIB), 0);
    }

    #[test]
    fn with_a_quota_pressure_is_the_cache_usage() {
        let empty_disk = DiskSpace {
            total: 100 * MIB,
            available: 100 * MIB,
        };
        assert_eq!(pressure(&config(10 * MIB), empty_disk, 9 * MIB), 3 * MIB);
        assert_eq!(pressure(&config(10 * MIB), empty_disk, 8 * MIB), 0);
    }

    #[test]
    fn statvfs_reads_a_real_directory() {
        let space = Statvfs.space(Path::new("/")).unwrap();
        assert!(
            space.total >= space.available && space.total > 0,
            "{space:?}"
        );
    }
}
