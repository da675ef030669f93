//! Export: the finished content as the caller's output file, hard-linked or copied.

use crate::content::{remove_if_exists, temporary_sibling};
use crate::{ExportMethod, Storage, StorageError};
use std::io;
use std::path::Path;
use tracing::debug;

impl Storage {
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
}

/// Exported outputs are hard links to the content file; read-only permissions make a user's
/// accidental write to the output fail instead of silently corrupting what peers download
/// (root bypasses this, so it is a guard, not a guarantee).
pub(crate) fn make_read_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)) {
        debug!(path = %path.display(), error = %e, "cannot make content read-only");
    }
}

/// A copy is independent of the cache, so it gets ordinary permissions rather than the
/// read-only mode of the finished content file.
pub(crate) fn copy_as_regular_file(source: &Path, target: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(source, target)?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o644))
}

pub(crate) fn open_for_write(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open(path)
}

pub(crate) fn export_file(
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
