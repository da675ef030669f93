//! Storage configuration and its defaults (Dragonfly's dfdaemon defaults, see DESIGN.md).

use std::path::PathBuf;
use std::time::Duration;

/// Where dfdaemon keeps its cache unless told otherwise (Dragonfly's `storage.dir`).
pub const DEFAULT_STORAGE_DIR: &str = "/var/lib/dragonfly";

/// Keep the cache across restarts (Dragonfly's `storage.keep` defaults to true in our daemon so
/// a restart does not throw away gigabytes that peers could still use).
pub const DEFAULT_KEEP: bool = true;

/// No byte quota: as in Dragonfly (`gc.policy.diskThreshold` 0), the quota is then a share of
/// the whole file system, and the watermarks below apply to its used space.
pub const DEFAULT_QUOTA_BYTES: u64 = 0;

/// Quota eviction starts when usage exceeds this share of the quota, or of the file system
/// without one (`diskHighThresholdPercent`).
pub const DEFAULT_HIGH_WATERMARK_PERCENT: u8 = 80;

/// Quota eviction stops once usage is at or below this share of the quota
/// (`diskLowThresholdPercent`); the gap keeps GC from running on every new piece.
pub const DEFAULT_LOW_WATERMARK_PERCENT: u8 = 60;

/// Tasks not accessed for this long are evicted (`gc.policy.taskTTL`, 30 days).
pub const DEFAULT_TASK_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// An unfinished task untouched for this long is treated as abandoned and becomes evictable by
/// quota like a finished one (Dragonfly counts it as failed after 24 h).
pub const ABANDONED_TASK_AGE: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Holds `metadata.redb` and `content/`.
    pub dir: PathBuf,
    /// true: keep the cache across restarts; false: wipe our files in `dir` on open.
    pub keep: bool,
    /// Own cache quota in bytes; 0 = a share of the whole file system.
    pub quota_bytes: u64,
    pub high_watermark_percent: u8,
    pub low_watermark_percent: u8,
    /// Time since last access after which a task is evicted.
    pub task_ttl: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_STORAGE_DIR),
            keep: DEFAULT_KEEP,
            quota_bytes: DEFAULT_QUOTA_BYTES,
            high_watermark_percent: DEFAULT_HIGH_WATERMARK_PERCENT,
            low_watermark_percent: DEFAULT_LOW_WATERMARK_PERCENT,
            task_ttl: DEFAULT_TASK_TTL,
        }
    }
}

impl StorageConfig {
    /// Defaults with another directory, the common case in tests and the daemon.
    pub fn with_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ..Self::default()
        }
    }
}
