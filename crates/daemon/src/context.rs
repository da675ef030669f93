//! Everything a request handler needs, in one place, shared behind one `Arc`.

use crate::config::{DaemonConfig, LinkFiles};
use crate::error::DaemonError;
use crate::host::HostInfo;
use crate::lifecycle::Lifecycle;
use crate::ration::SeedRation;
use crate::scheduler_client::Schedulers;
use damselfly_storage::Storage;
use damselfly_transfer::{Backend, PieceFetcher, RateLimiter, UploadSlots};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Host-wide bandwidth limiters.
#[derive(Clone)]
pub struct Limits {
    /// Every byte downloaded (from parents and the origin).
    pub download: RateLimiter,
    /// Origin bytes only, on top of `download`.
    pub back_to_source: RateLimiter,
    /// Bytes served to other peers (applied by the Vortex server).
    pub upload: RateLimiter,
}

/// Limiter from a configured bytes/s value; 0 means unlimited.
pub fn limiter(bytes_per_sec: u64) -> RateLimiter {
    if bytes_per_sec == 0 {
        RateLimiter::unlimited()
    } else {
        RateLimiter::new(bytes_per_sec)
    }
}

/// rustls configs of the gRPC links, built once at startup; `None`: plain text.
#[derive(Clone, Default)]
pub struct TlsLinks {
    /// The upload gRPC server (`upload.server.*`).
    pub upload_server: Option<Arc<rustls::ServerConfig>>,
    /// SyncPieces to parents (`upload.client.*`).
    pub upload_client: Option<Arc<rustls::ClientConfig>>,
    /// Calls to schedulers (`scheduler.caCert/cert/key`).
    pub scheduler: Option<Arc<rustls::ClientConfig>>,
}

impl TlsLinks {
    /// Loads every configured triple, failing on the first unreadable file.
    pub fn load(files: &LinkFiles) -> Result<Self, DaemonError> {
        let client = |f: &Option<damselfly_tls::TlsFiles>| {
            f.as_ref().map(damselfly_tls::client_config).transpose()
        };
        Ok(Self {
            upload_server: files
                .upload_server
                .as_ref()
                .map(damselfly_tls::server_config)
                .transpose()?,
            upload_client: client(&files.upload_client)?,
            scheduler: client(&files.scheduler)?,
        })
    }
}

pub struct DaemonContext {
    pub config: DaemonConfig,
    pub tls: TlsLinks,
    pub host: HostInfo,
    pub storage: Storage,
    pub backend: Backend,
    /// Fetches pieces from parents over `download.protocol`.
    pub pieces: PieceFetcher,
    pub schedulers: Schedulers,
    pub limits: Limits,
    pub activity: Arc<Activity>,
    /// A seed peer's super-seeding state; None on normal peers.
    pub ration: Option<Arc<SeedRation>>,
    /// Turns to send pieces; told what comes in, so it knows a thin uplink.
    pub uploads: Arc<UploadSlots>,
    /// Stop, grace, abort: what every spawned task follows (see `lifecycle`).
    pub lifecycle: Lifecycle,
}

pub type Context = Arc<DaemonContext>;

/// Download/upload activity, for `--idle-exit`.
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Marks work in progress until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActivityGuard(self.clone())
    }

    /// How long nothing has happened; `None` while something is in progress.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let idle = self
            .now_ms()
            .saturating_sub(self.last_ms.load(Ordering::Relaxed));
        Some(Duration::from_millis(idle))
    }
}

pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}
