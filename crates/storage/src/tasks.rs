//! Tasks: prepare (or resume) a content file, record a task finished or failed, touch, delete.

use crate::content::remove_if_exists;
use crate::db::Commit;
use crate::export::make_read_only;
use crate::{is_valid_task_id, PieceEvent, Storage, StorageError, TaskMetadata};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tracing::debug;

impl Storage {
    pub fn task(&self, task_id: &str) -> Result<Option<TaskMetadata>, StorageError> {
        self.inner.db.task(task_id)
    }

    pub fn list_tasks(&self) -> Result<Vec<TaskMetadata>, StorageError> {
        self.inner.db.tasks()
    }

    pub(crate) fn require_task(&self, task_id: &str) -> Result<TaskMetadata, StorageError> {
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

    pub(crate) fn resume_task(
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

    pub(crate) fn missing_piece_count(&self, task: &TaskMetadata) -> Result<u32, StorageError> {
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
    pub(crate) async fn remove_task(&self, task_id: &str) -> Result<u64, StorageError> {
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
}

/// Creates a fresh content file with the task's length as a hole. An old file is unlinked
/// rather than truncated: outputs hard-linked to it keep their bytes.
pub(crate) async fn create_sparse_file(path: &Path, length: u64) -> Result<(), StorageError> {
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

pub(crate) async fn remove_content(path: PathBuf) -> Result<(), StorageError> {
    tokio::task::spawn_blocking(move || remove_if_exists(&path))
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
    Ok(())
}

/// fsync of the content file and of the directory holding its name. Blocking: callers on an
/// async runtime run [`Storage::finish_task`] on a blocking thread.
pub(crate) fn sync_content(path: &Path) -> Result<(), StorageError> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
