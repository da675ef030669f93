use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("task {0} not found in storage")]
    TaskNotFound(String),

    #[error("invalid task ID {0:?}: expected ASCII letters, digits, '-' or '_'")]
    InvalidTaskId(String),

    #[error("piece {number} of task {task_id} not found in storage")]
    PieceNotFound { task_id: String, number: u32 },

    #[error("piece {number} of task {task_id} has digest {actual}, expected {expected}")]
    DigestMismatch {
        task_id: String,
        number: u32,
        expected: String,
        actual: String,
    },

    #[error("piece {number} of task {task_id}: source ended after {received} of {expected} bytes")]
    ShortRead {
        task_id: String,
        number: u32,
        expected: u64,
        received: u64,
    },

    #[error("piece {number} of task {task_id} does not fit the task layout: {reason}")]
    InvalidPiece {
        task_id: String,
        number: u32,
        reason: String,
    },

    #[error("task {task_id} is not finished: {missing} of its pieces are missing")]
    TaskNotFinished { task_id: String, missing: u32 },

    #[error("task {task_id} has {recorded} bytes of content, but {expected} were announced")]
    ContentLengthMismatch {
        task_id: String,
        expected: u64,
        recorded: u64,
    },

    /// ENOSPC or EDQUOT: the user must free disk space (dfget exit code 7).
    #[error("no space left on device: {0}")]
    NoSpace(String),

    /// Checked before a download starts: the task cannot fit even after evicting every
    /// finished task not in use.
    #[error("not enough disk space: need {need} bytes, free {free} bytes (task {task_id})")]
    NotEnoughSpace {
        task_id: String,
        need: u64,
        free: u64,
    },

    #[error("output {0} already exists")]
    OutputExists(PathBuf),

    #[error("cannot hard link {from} to {to}: {source}")]
    HardLink {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },

    /// The reader handed to `write_piece` failed (network, origin body...), not the disk.
    #[error("reading the piece source failed: {0}")]
    SourceRead(io::Error),

    #[error("storage I/O error: {0}")]
    Io(io::Error),

    #[error("metadata database error: {0}")]
    Db(#[from] redb::Error),

    #[error("corrupt metadata record {key}: {reason}")]
    CorruptMetadata { key: String, reason: String },
}

impl From<io::Error> for StorageError {
    fn from(error: io::Error) -> Self {
        if is_no_space(&error) {
            StorageError::NoSpace(error.to_string())
        } else {
            StorageError::Io(error)
        }
    }
}

impl StorageError {
    /// The disk (or the cache quota) is full: freeing space, not retrying, is the remedy.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self,
            StorageError::NoSpace(_) | StorageError::NotEnoughSpace { .. }
        )
    }
}

/// Disk full and quota exceeded both mean "free some space", so both map to NoSpace.
fn is_no_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
        || error.kind() == io::ErrorKind::StorageFull
}

/// Any redb error type into ours, so call sites can use `map_err(db)`. A full disk under the
/// metadata file is reported as such, so the user sees the same remedy as for content.
pub(crate) fn db(error: impl Into<redb::Error>) -> StorageError {
    match error.into() {
        redb::Error::Io(io) if is_no_space(&io) => StorageError::NoSpace(io.to_string()),
        other => StorageError::Db(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_and_quotas_are_no_space() {
        for code in [libc::ENOSPC, libc::EDQUOT] {
            let error = StorageError::from(io::Error::from_raw_os_error(code));
            assert!(matches!(error, StorageError::NoSpace(_)), "{error}");
        }
        let error = StorageError::from(io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(error, StorageError::Io(_)), "{error}");
    }
}
