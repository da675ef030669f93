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
mod metadata;
mod notify;
mod space;

pub use config::{
    StorageConfig, ABANDONED_TASK_AGE, DEFAULT_HIGH_WATERMARK_PERCENT, DEFAULT_KEEP,
    DEFAULT_LOW_WATERMARK_PERCENT, DEFAULT_QUOTA_BYTES, DEFAULT_STORAGE_DIR, DEFAULT_TASK_TTL,
};
pub use content::{MAX_POOLED_BUFFERS, WRITE_BUFFER_SIZE};
pub use db::DURABLE_COMMIT_INTERVAL;
pub use error::StorageError;
pub use metadata::{ExportMethod, PieceEvent, PieceMetadata, TaskMetadata};
pub use notify::PIECE_EVENT_CAPACITY;
pub use space::{DiskSpace, SpaceProbe, Statvfs, RESERVED_FREE_BYTES};

use content::{remove_if_exists, stream_into_file, temporary_sibling, BufferPool, Streamed};
use damselfly_core::digest::format_crc32;
use damselfly_core::PieceSpan;
use db::{Commit, MetadataDb};
use notify::Notifier;
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

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
    /// Reads the file system's free space (injected so tests need no full disk).
    space: Arc<dyn SpaceProbe>,
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
                space,
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

    pub fn task(&self, task_id: &str) -> Result<Option<TaskMetadata>, StorageError> {
        self.inner.db.task(task_id)
    }

    pub fn list_tasks(&self) -> Result<Vec<TaskMetadata>, StorageError> {
        self.inner.db.tasks()
    }

    fn require_task(&self, task_id: &str) -> Result<TaskMetadata, StorageError> {
        self.task(task_id)?
            .ok_or_else(|| StorageError::TaskNotFound(task_id.to_string()))
    }

    /// Creates (or resumes, if same content_length and piece_length) the task and its sparse
    /// content file. A task with another length is reset: its pieces are forgotten.
    /// `content_length` 0 means "unknown yet" for [`Storage::write_streamed_piece`].
    pub async fn prepare_task(
        &self,
        task_id: &str,
        content_length: u64,
        piece_length: u64,
        response_header: Vec<(String, String)>,
    ) -> Result<TaskMetadata, StorageError> {
        if !is_valid_task_id(task_id) {
            return Err(StorageError::InvalidTaskId(task_id.to_string()));
        }
        if piece_length == 0 {
            return Err(StorageError::InvalidPiece {
                task_id: task_id.to_string(),
                number: 0,
                reason: "piece length 0".to_string(),
            });
        }
        let now = SystemTime::now();
        let existing = self.task(task_id)?;
        let resumable = existing
            .as_ref()
            .is_some_and(|t| t.content_length == content_length && t.piece_length == piece_length);
        let path = self.content_path(task_id);
        let file_existed = path.exists();
        if resumable && file_existed {
            return self.resume_task(task_id, response_header, now);
        }
        if existing.is_some() {
            debug!(task_id, "task layout changed or content lost, resetting it");
            let bytes = self.inner.db.remove_pieces(task_id, Commit::Lazy)?;
            self.release_usage(bytes);
        }
        create_sparse_file(&path, content_length).await?;
        let task = TaskMetadata {
            id: task_id.to_string(),
            content_length,
            piece_length,
            response_header,
            created_at: now,
            accessed_at: now,
            finished_at: None,
            failed_at: None,
            url: existing.and_then(|t| t.url),
        };
        self.inner.db.put_task(&task, Commit::Lazy)?;
        debug!(task_id, content_length, piece_length, "task prepared");
        Ok(task)
    }

    fn resume_task(
        &self,
        task_id: &str,
        response_header: Vec<(String, String)>,
        now: SystemTime,
    ) -> Result<TaskMetadata, StorageError> {
        let task = self.inner.db.update_task(task_id, Commit::Lazy, |task| {
            task.accessed_at = now;
            task.failed_at = None;
            if !response_header.is_empty() {
                task.response_header = response_header;
            }
            Ok(())
        })?;
        debug!(task_id, finished = task.is_finished(), "task resumed");
        Ok(task)
    }

    /// Marks the task finished (every piece of its layout must be recorded) once its content
    /// is synced to disk, commits the metadata durably and notifies `TaskFinished`. Blocks
    /// for the fsync.
    pub fn finish_task(&self, task_id: &str) -> Result<TaskMetadata, StorageError> {
        let task = self.require_task(task_id)?;
        let missing = self.missing_piece_count(&task)?;
        if missing > 0 {
            return Err(StorageError::TaskNotFinished {
                task_id: task_id.to_string(),
                missing,
            });
        }
        // "Finished" lets a restarted daemon serve the task to peers without checking it, so
        // the bytes and the file's directory entry reach the disk before the record does:
        // a power loss can then cost the task, never serve holes as content.
        sync_content(&self.content_path(task_id))?;
        let now = SystemTime::now();
        let task = self
            .inner
            .db
            .update_task(task_id, Commit::Durable, |task| {
                task.finished_at = Some(now);
                task.accessed_at = now;
                task.failed_at = None;
                Ok(())
            })?;
        self.inner
            .notifier
            .publish(task_id, PieceEvent::TaskFinished);
        make_read_only(&self.content_path(task_id));
        debug!(task_id, "task finished");
        Ok(task)
    }

    fn missing_piece_count(&self, task: &TaskMetadata) -> Result<u32, StorageError> {
        let recorded: HashSet<u32> = self
            .inner
            .db
            .pieces(&task.id)?
            .into_iter()
            .map(|p| p.number)
            .collect();
        let layout = task.layout();
        let missing = layout
            .spans()
            .filter(|s| !recorded.contains(&s.number))
            .count();
        Ok(u32::try_from(missing).unwrap_or(u32::MAX))
    }

    pub fn fail_task(&self, task_id: &str) -> Result<(), StorageError> {
        let now = SystemTime::now();
        self.inner.db.update_task(task_id, Commit::Lazy, |task| {
            task.failed_at = Some(now);
            Ok(())
        })?;
        self.inner.notifier.publish(task_id, PieceEvent::TaskFailed);
        debug!(task_id, "task failed");
        Ok(())
    }

    /// Remembers where the task's content comes from (see [`TaskMetadata::url`]).
    pub fn set_task_url(&self, task_id: &str, url: &str) -> Result<(), StorageError> {
        self.inner.db.update_task(task_id, Commit::Lazy, |task| {
            if task.url.as_deref() != Some(url) {
                task.url = Some(url.to_string());
            }
            Ok(())
        })?;
        Ok(())
    }

    /// accessed_at = now, which keeps the task away from TTL and LRU eviction.
    pub fn touch_task(&self, task_id: &str) -> Result<(), StorageError> {
        self.touch_task_at(task_id, SystemTime::now())
    }

    /// [`Storage::touch_task`] as if the time were `now`.
    pub fn touch_task_at(&self, task_id: &str, now: SystemTime) -> Result<(), StorageError> {
        self.inner.db.update_task(task_id, Commit::Lazy, |task| {
            task.accessed_at = now;
            Ok(())
        })?;
        Ok(())
    }

    /// Forgets the task and removes its content; subscribers see `TaskFailed`.
    pub async fn delete_task(&self, task_id: &str) -> Result<(), StorageError> {
        self.remove_task(task_id).await.map(|_| ())
    }

    /// [`Storage::delete_task`], returning the recorded bytes it released.
    async fn remove_task(&self, task_id: &str) -> Result<u64, StorageError> {
        let path = self.content_path(task_id);
        let file_existed = path.exists();
        let removed = match self.inner.db.remove_task(task_id, Commit::Lazy) {
            // On a full disk even the delete's commit needs a page: the content goes first
            // to make room, then the record (a record without content is dropped at open).
            Err(error) if error.is_no_space() => {
                remove_content(path.clone()).await?;
                self.inner.db.remove_task(task_id, Commit::Lazy)?
            }
            other => other?,
        };
        let (task, bytes) = removed;
        self.release_usage(bytes);
        remove_content(path).await?;
        self.inner.notifier.publish(task_id, PieceEvent::TaskFailed);
        if task.is_none() && !file_existed {
            return Err(StorageError::TaskNotFound(task_id.to_string()));
        }
        debug!(task_id, bytes, "task deleted");
        Ok(bytes)
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

    /// Streams exactly `span.length` bytes from `reader` into the content file at
    /// `span.offset`, computing crc32 on the way. If `expected_digest` is Some and non-empty and
    /// differs: Err(StorageError::DigestMismatch) and nothing recorded. Otherwise records the
    /// piece and broadcasts PieceEvent::Finished. Short reads are an error. A piece that is
    /// already recorded is returned as is, without reading: a served piece is never rewritten.
    /// The recorded cost is `cost` (time spent before the bytes flowed) plus the streaming time.
    pub async fn write_piece<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        span: PieceSpan,
        reader: R,
        expected_digest: Option<&str>,
        parent_id: Option<&str>,
        cost: Duration,
    ) -> Result<PieceMetadata, StorageError> {
        let check = match expected_digest {
            Some(digest) => PieceCheck::Crc32(digest),
            None => PieceCheck::Nothing,
        };
        self.write_piece_checked(task_id, span, reader, check, parent_id, cost)
            .await
    }

    /// [`Storage::write_piece`] with the piece's check spelled out: with
    /// [`PieceCheck::Trusted`], the bytes written are read back and hashed before the piece is
    /// recorded, so a piece that does not match is never recorded, announced or served (its
    /// unrecorded bytes in the content file are overwritten by the next attempt).
    pub async fn write_piece_checked<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        span: PieceSpan,
        reader: R,
        check: PieceCheck<'_>,
        parent_id: Option<&str>,
        cost: Duration,
    ) -> Result<PieceMetadata, StorageError> {
        let started = Instant::now();
        let task = self.require_task(task_id)?;
        check_span(&task, span)?;
        if let Some(existing) = self.piece(task_id, span.number)? {
            debug!(
                task_id,
                number = span.number,
                "piece already recorded, not rewriting it"
            );
            return Ok(existing);
        }
        let streamed = self
            .stream_span(task_id, span.offset, span.length, reader)
            .await?;
        if streamed.bytes < span.length {
            return Err(StorageError::ShortRead {
                task_id: task_id.to_string(),
                number: span.number,
                expected: span.length,
                received: streamed.bytes,
            });
        }
        let digest = format_crc32(streamed.crc32);
        match check {
            PieceCheck::Nothing => {}
            PieceCheck::Crc32(expected) => {
                check_digest(task_id, span.number, Some(expected), &digest)?
            }
            PieceCheck::Trusted(expected) => {
                let actual = self.trusted_digest(task_id, span).await?;
                check_digest(task_id, span.number, Some(expected), &actual)?
            }
        }
        let piece = PieceMetadata {
            number: span.number,
            offset: span.offset,
            length: span.length,
            digest,
            parent_id: parent_id.map(str::to_string),
            cost: cost + started.elapsed(),
            created_at: SystemTime::now(),
        };
        self.record_piece(task_id, piece)
    }

    /// The trusted (`sha256:`) digest of what the content file holds at `span`: computed by
    /// a back-to-source peer for its report, and by a child before it records a piece.
    pub async fn trusted_digest(
        &self,
        task_id: &str,
        span: PieceSpan,
    ) -> Result<String, StorageError> {
        let path = self.content_path(task_id);
        tokio::task::spawn_blocking(move || -> io::Result<String> {
            use damselfly_core::digest::{DigestAlgorithm, DigestHasher};
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path)?;
            let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256);
            let mut buffer = vec![0u8; WRITE_BUFFER_SIZE];
            let mut done = 0u64;
            while done < span.length {
                let want = usize::try_from(span.length - done)
                    .map_or(buffer.len(), |left| left.min(buffer.len()));
                file.read_exact_at(&mut buffer[..want], span.offset + done)?;
                hasher.update(&buffer[..want]);
                done += want as u64;
            }
            Ok(hasher.finalize().to_string())
        })
        .await
        .map_err(|e| io::Error::other(format!("piece hash task failed: {e}")))?
        .map_err(StorageError::from)
    }

    /// Writes piece `span` with `fill`, a blocking function that gets the task's content file
    /// and writes the span itself, returning the CRC-32 of what it wrote, or `None` when it
    /// wrote nothing and the caller should use [`Storage::write_piece`] instead. For fast paths
    /// that move bytes from a socket to the file without an async reader in between. The
    /// span is checked and the piece recorded as by `write_piece`.
    pub async fn write_piece_with<F, E>(
        &self,
        task_id: &str,
        span: PieceSpan,
        parent_id: Option<&str>,
        fill: F,
    ) -> Result<Option<PieceMetadata>, E>
    where
        F: FnOnce(&std::fs::File) -> Result<Option<u32>, E> + Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let started = Instant::now();
        let task = self.require_task(task_id)?;
        check_span(&task, span)?;
        if let Some(existing) = self.piece(task_id, span.number)? {
            return Ok(Some(existing));
        }
        let path = self.content_path(task_id);
        let filled = tokio::task::spawn_blocking(move || {
            let file = open_for_write(&path).map_err(StorageError::from)?;
            fill(&file)
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(format!("piece write task failed: {e}"))))?;
        let Some(crc32) = filled? else {
            return Ok(None);
        };
        let piece = PieceMetadata {
            number: span.number,
            offset: span.offset,
            length: span.length,
            digest: format_crc32(crc32),
            parent_id: parent_id.map(str::to_string),
            cost: started.elapsed(),
            created_at: SystemTime::now(),
        };
        Ok(Some(self.record_piece(task_id, piece)?))
    }

    /// Writes piece `number` of a task whose length may be unknown (content_length 0): reads up
    /// to `piece_length` bytes, stopping at EOF, and records what came. Ok(None) when the
    /// reader was already at EOF. Used for origins that cannot serve ranges.
    pub async fn write_streamed_piece<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        number: u32,
        reader: R,
        parent_id: Option<&str>,
    ) -> Result<Option<PieceMetadata>, StorageError> {
        let started = Instant::now();
        let task = self.require_task(task_id)?;
        let offset = piece_offset(&task, number)?;
        if let Some(existing) = self.piece(task_id, number)? {
            let drained = self.drain(reader, existing.length).await?;
            return Ok((drained > 0).then_some(existing));
        }
        let streamed = self
            .stream_span(task_id, offset, task.piece_length, reader)
            .await?;
        if streamed.bytes == 0 {
            return Ok(None);
        }
        let span = PieceSpan {
            number,
            offset,
            length: streamed.bytes,
        };
        check_span(&task, span)?;
        let piece = PieceMetadata {
            number,
            offset,
            length: streamed.bytes,
            digest: format_crc32(streamed.crc32),
            parent_id: parent_id.map(str::to_string),
            cost: started.elapsed(),
            created_at: SystemTime::now(),
        };
        self.record_piece(task_id, piece).map(Some)
    }

    /// Sets the length of a task prepared with content_length 0, once the stream has ended.
    /// A task whose length was announced keeps it, and a different total is an error.
    pub fn set_content_length(
        &self,
        task_id: &str,
        content_length: u64,
    ) -> Result<TaskMetadata, StorageError> {
        self.inner.db.update_task(task_id, Commit::Lazy, |task| {
            if task.content_length != 0 && task.content_length != content_length {
                return Err(StorageError::ContentLengthMismatch {
                    task_id: task.id.clone(),
                    expected: task.content_length,
                    recorded: content_length,
                });
            }
            task.content_length = content_length;
            Ok(())
        })
    }

    async fn stream_span<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        offset: u64,
        max_len: u64,
        reader: R,
    ) -> Result<Streamed, StorageError> {
        let path = self.content_path(task_id);
        let file = tokio::task::spawn_blocking(move || open_for_write(&path))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
        stream_into_file(Arc::new(file), offset, max_len, reader, &self.inner.buffers).await
    }

    /// Reads and discards up to `len` bytes; returns how many there were.
    async fn drain<R: AsyncRead + Unpin>(&self, reader: R, len: u64) -> Result<u64, StorageError> {
        let mut limited = reader.take(len);
        let mut buffer = self.inner.buffers.take();
        let mut total = 0u64;
        loop {
            let n = limited
                .read(&mut buffer)
                .await
                .map_err(StorageError::SourceRead)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        self.inner.buffers.give(buffer);
        Ok(total)
    }

    fn record_piece(
        &self,
        task_id: &str,
        piece: PieceMetadata,
    ) -> Result<PieceMetadata, StorageError> {
        let newly_recorded = self.inner.db.record_piece(task_id, &piece)?;
        if newly_recorded {
            self.inner.usage.fetch_add(piece.length, Ordering::Relaxed);
        }
        debug!(
            task_id,
            number = piece.number,
            offset = piece.offset,
            length = piece.length,
            digest = %piece.digest,
            source = piece.parent_id.as_deref().unwrap_or("origin"),
            "piece recorded"
        );
        self.inner
            .notifier
            .publish(task_id, PieceEvent::Finished(piece.clone()));
        Ok(piece)
    }

    fn release_usage(&self, bytes: u64) {
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .inner
            .usage
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    pub fn piece(&self, task_id: &str, number: u32) -> Result<Option<PieceMetadata>, StorageError> {
        self.inner.db.piece(task_id, number)
    }

    /// Recorded pieces of the task, sorted by number.
    pub fn pieces(&self, task_id: &str) -> Result<Vec<PieceMetadata>, StorageError> {
        self.inner.db.pieces(task_id)
    }

    fn require_piece(&self, task_id: &str, number: u32) -> Result<PieceMetadata, StorageError> {
        match self.piece(task_id, number)? {
            Some(piece) => Ok(piece),
            None if self.task(task_id)?.is_none() => {
                Err(StorageError::TaskNotFound(task_id.to_string()))
            }
            None => Err(StorageError::PieceNotFound {
                task_id: task_id.to_string(),
                number,
            }),
        }
    }

    /// An open file positioned at the piece (reader limited to its length).
    pub async fn read_piece(
        &self,
        task_id: &str,
        number: u32,
    ) -> Result<(PieceMetadata, tokio::io::Take<tokio::fs::File>), StorageError> {
        let piece = self.require_piece(task_id, number)?;
        let mut file = tokio::fs::File::open(self.content_path(task_id)).await?;
        file.seek(io::SeekFrom::Start(piece.offset)).await?;
        Ok((piece.clone(), file.take(piece.length)))
    }

    /// The recorded piece and the content file, for senders that copy with `sendfile`/`pread`
    /// at `piece.offset` instead of going through an async reader.
    pub fn open_piece(
        &self,
        task_id: &str,
        number: u32,
    ) -> Result<(PieceMetadata, std::fs::File), StorageError> {
        let piece = self.require_piece(task_id, number)?;
        let file = std::fs::File::open(self.content_path(task_id))?;
        Ok((piece, file))
    }

    /// Piece events for one task (subscribe BEFORE listing pieces to not miss any).
    pub fn subscribe(&self, task_id: &str) -> broadcast::Receiver<PieceEvent> {
        self.inner.notifier.subscribe(task_id)
    }

    /// Links (same fs) or copies the finished content to `output`; error if it exists and
    /// !overwrite. The output appears atomically (built under a temporary name, then renamed),
    /// so a failure never leaves a partial file.
    pub async fn export(
        &self,
        task_id: &str,
        output: &Path,
        overwrite: bool,
        force_hard_link: bool,
    ) -> Result<ExportMethod, StorageError> {
        let task = self.require_task(task_id)?;
        if !task.is_finished() {
            return Err(StorageError::TaskNotFinished {
                task_id: task_id.to_string(),
                missing: self.missing_piece_count(&task)?,
            });
        }
        if !overwrite && output.symlink_metadata().is_ok() {
            return Err(StorageError::OutputExists(output.to_path_buf()));
        }
        let source = self.content_path(task_id);
        let output = output.to_path_buf();
        let method =
            tokio::task::spawn_blocking(move || export_file(&source, &output, force_hard_link))
                .await
                .map_err(|e| io::Error::other(e.to_string()))??;
        self.touch_task(task_id)?;
        debug!(task_id, ?method, "task exported");
        Ok(method)
    }

    /// Makes every metadata change so far durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.inner.db.flush()
    }
}

fn piece_offset(task: &TaskMetadata, number: u32) -> Result<u64, StorageError> {
    u64::from(number)
        .checked_mul(task.piece_length)
        .ok_or_else(|| StorageError::InvalidPiece {
            task_id: task.id.clone(),
            number,
            reason: "offset overflows".to_string(),
        })
}

/// A span must be exactly the task layout's piece; while the length is unknown (0) it must
/// start at its piece offset and be at most one piece long.
fn check_span(task: &TaskMetadata, span: PieceSpan) -> Result<(), StorageError> {
    let invalid = |reason: String| StorageError::InvalidPiece {
        task_id: task.id.clone(),
        number: span.number,
        reason,
    };
    if task.content_length > 0 {
        let expected = task.layout().span(span.number);
        return match expected {
            Some(expected) if expected == span => Ok(()),
            Some(expected) => Err(invalid(format!("expected {expected:?}, got {span:?}"))),
            None => Err(invalid(format!(
                "beyond content length {}",
                task.content_length
            ))),
        };
    }
    if piece_offset(task, span.number)? != span.offset
        || span.length == 0
        || span.length > task.piece_length
    {
        return Err(invalid(format!(
            "{span:?} with piece length {}",
            task.piece_length
        )));
    }
    Ok(())
}

/// What a piece must match before it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceCheck<'a> {
    /// Nothing (bytes from the origin, which is the source of truth).
    Nothing,
    /// The `crc32:` digest the parent sent with the piece: catches corruption, not a liar.
    Crc32(&'a str),
    /// A `sha256:` digest from a source the child trusts (the back-to-source peer, relayed by
    /// the scheduler): a parent cannot forge bytes to fit it.
    Trusted(&'a str),
}

/// Digests are compared as strings, as Dragonfly does; an empty expected digest is accepted
/// with a warning (peers that registered a piece by hard link send none).
fn check_digest(
    task_id: &str,
    number: u32,
    expected: Option<&str>,
    actual: &str,
) -> Result<(), StorageError> {
    match expected {
        Some("") => {
            warn!(
                task_id,
                number, "parent sent no piece digest, accepting the piece unverified"
            );
            Ok(())
        }
        Some(expected) if expected != actual => {
            warn!(task_id, number, expected, actual, "piece digest mismatch");
            Err(StorageError::DigestMismatch {
                task_id: task_id.to_string(),
                number,
                expected: expected.to_string(),
                actual: actual.to_string(),
            })
        }
        _ => Ok(()),
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

/// Creates a fresh content file with the task's length as a hole. An old file is unlinked
/// rather than truncated: outputs hard-linked to it keep their bytes.
async fn create_sparse_file(path: &Path, length: u64) -> Result<(), StorageError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        remove_if_exists(&path)?;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        file.set_len(length)
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))??;
    Ok(())
}

async fn remove_content(path: PathBuf) -> Result<(), StorageError> {
    tokio::task::spawn_blocking(move || remove_if_exists(&path))
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
    Ok(())
}

/// fsync of the content file and of the directory holding its name. Blocking: callers on an
/// async runtime run [`Storage::finish_task`] on a blocking thread.
fn sync_content(path: &Path) -> Result<(), StorageError> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Exported outputs are hard links to the content file; read-only permissions make a user's
/// accidental write to the output fail instead of silently corrupting what peers download
/// (root bypasses this, so it is a guard, not a guarantee).
fn make_read_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)) {
        debug!(path = %path.display(), error = %e, "cannot make content read-only");
    }
}

/// A copy is independent of the cache, so it gets ordinary permissions rather than the
/// read-only mode of the finished content file.
fn copy_as_regular_file(source: &Path, target: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(source, target)?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o644))
}

fn open_for_write(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open(path)
}

fn export_file(
    source: &Path,
    output: &Path,
    force_hard_link: bool,
) -> Result<ExportMethod, StorageError> {
    let staged = temporary_sibling(output);
    let method = match std::fs::hard_link(source, &staged) {
        Ok(()) => ExportMethod::HardLink,
        Err(source_error) if force_hard_link => {
            return Err(StorageError::HardLink {
                from: source.to_path_buf(),
                to: output.to_path_buf(),
                source: source_error,
            })
        }
        Err(link_error) => {
            debug!(error = %link_error, "hard link impossible, copying");
            if let Err(e) = copy_as_regular_file(source, &staged) {
                remove_if_exists(&staged).ok();
                return Err(e.into());
            }
            ExportMethod::Copy
        }
    };
    let renamed = std::fs::rename(&staged, output);
    // rename() of two links to the same file succeeds without removing the source name.
    remove_if_exists(&staged).ok();
    renamed?;
    Ok(method)
}
