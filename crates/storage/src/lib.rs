//! dfdaemon's local cache: one sparse content file per task and piece/task records in redb.
//!
//! A piece is recorded (and announced to subscribers) only after its bytes are in the content
//! file and its crc32 digest matched, so everything `piece()` returns can be served to peers.
//! Layout on disk (DESIGN.md "Storage"):
//! `{dir}/metadata.redb`, `{dir}/content/tasks/{task_id[0..3]}/{task_id}`.

mod config;
mod content;
mod db;
mod error;
mod eviction;
mod export;
mod metadata;
mod notify;
mod pieces;
mod space;
mod tasks;
mod writers;

pub use config::{
    StorageConfig, ABANDONED_TASK_AGE, DEFAULT_HIGH_WATERMARK_PERCENT, DEFAULT_KEEP,
    DEFAULT_LOW_WATERMARK_PERCENT, DEFAULT_QUOTA_BYTES, DEFAULT_STORAGE_DIR, DEFAULT_TASK_TTL,
};
pub use content::{
    ContentReader, PieceHasher, PieceSums, HASH_BLOCK_SIZE, MAX_POOLED_BUFFERS, WRITE_BUFFER_SIZE,
};
pub use db::DURABLE_COMMIT_INTERVAL;
pub use error::StorageError;
pub use metadata::{ExportMethod, PieceEvent, PieceMetadata, TaskMetadata};
pub use notify::PIECE_EVENT_CAPACITY;
pub use pieces::{
    ArrivingPiece, Forwarding, HeldPiece, PieceCheck, PieceFrom, PieceOrigin, Written, WrittenPiece,
};
pub use space::{DiskSpace, SpaceProbe, Statvfs, RESERVED_FREE_BYTES};
pub use writers::{WriteProgress, WriteState};

use content::{remove_if_exists, BufferPool};
use damselfly_core::StoreId;
use db::{Commit, MetadataDb};
use notify::Notifier;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{info, warn};
use writers::PieceWriters;

/// File name of the metadata database inside the storage dir.
pub const METADATA_FILE: &str = "metadata.redb";
/// Content files live below this directory inside the storage dir.
pub const CONTENT_DIR: &str = "content/tasks";
/// Longest task ID we accept (Dragonfly's are 64 hex digits).
pub const MAX_TASK_ID_LENGTH: usize = 128;

/// Task IDs become file names, so only characters that cannot escape the content dir pass.
pub fn is_valid_task_id(task_id: &str) -> bool {
    !task_id.is_empty()
        && task_id.len() <= MAX_TASK_ID_LENGTH
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The local cache. Cheap to clone: all state is shared.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    config: StorageConfig,
    db: MetadataDb,
    content_root: PathBuf,
    notifier: Notifier,
    /// Sum of recorded piece lengths: the cache's own usage, independent of the disk's.
    usage: AtomicU64,
    buffers: BufferPool,
    /// Who writes which piece now: one writer per piece (see `writers.rs`).
    piece_writers: Arc<PieceWriters>,
    /// Reads the file system's free space (injected so tests need no full disk).
    space: Arc<dyn SpaceProbe>,
    /// This store on relay paths (see [`Storage::store_id`]).
    store_id: StoreId,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Persist the piece records committed without fsync, so a clean shutdown loses nothing.
        if let Err(e) = self.db.flush() {
            warn!(error = %e, "flushing storage metadata on shutdown failed");
        }
    }
}

impl Storage {
    pub fn open(config: StorageConfig) -> Result<Storage, StorageError> {
        Self::open_with_probe(config, Arc::new(Statvfs))
    }

    /// [`Storage::open`] with another reading of the disk's free space.
    pub fn open_with_probe(
        config: StorageConfig,
        space: Arc<dyn SpaceProbe>,
    ) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(&config.dir)?;
        if !config.keep {
            wipe_own_files(&config.dir)?;
        }
        let content_root = config.dir.join(CONTENT_DIR);
        std::fs::create_dir_all(&content_root)?;
        let db = MetadataDb::open(&config.dir.join(METADATA_FILE))?;
        let storage = Storage {
            inner: Arc::new(Inner {
                config,
                db,
                content_root,
                notifier: Notifier::default(),
                usage: AtomicU64::new(0),
                buffers: BufferPool::default(),
                piece_writers: Arc::default(),
                space,
                store_id: StoreId::random(),
            }),
        };
        storage.forget_tasks_without_content()?;
        let usage = storage.inner.db.recorded_bytes()?;
        storage.inner.usage.store(usage, Ordering::Relaxed);
        info!(dir = %storage.inner.config.dir.display(), usage, "storage opened");
        Ok(storage)
    }

    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// This store's identity on relay paths (new each time the storage is opened): a
    /// cut-through copy whose path passed through it is refused, as its own bytes would
    /// feed it.
    pub fn store_id(&self) -> &StoreId {
        &self.inner.store_id
    }

    /// A record whose content file vanished (deleted by hand, crash during delete) can never
    /// be served, so it is dropped rather than trusted.
    fn forget_tasks_without_content(&self) -> Result<(), StorageError> {
        for task in self.inner.db.tasks()? {
            if !self.content_path(&task.id).exists() {
                warn!(task_id = %task.id, "content file missing, forgetting the task");
                self.inner.db.remove_task(&task.id, Commit::Lazy)?;
            }
        }
        Ok(())
    }

    /// `{dir}/content/tasks/{id[0..3]}/{id}`. Characters that could leave the content dir
    /// are replaced, so even an ID from the network cannot name another file.
    pub fn content_path(&self, task_id: &str) -> PathBuf {
        let safe: String = task_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let prefix: String = safe.chars().take(3).collect();
        self.inner.content_root.join(prefix).join(safe)
    }

    /// Makes every metadata change so far durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.inner.db.flush()
    }
}

/// Removes only what this crate created, so a misconfigured dir (say `$HOME`) is not emptied.
fn wipe_own_files(dir: &Path) -> Result<(), StorageError> {
    remove_if_exists(&dir.join(METADATA_FILE))?;
    match std::fs::remove_dir_all(dir.join("content")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
