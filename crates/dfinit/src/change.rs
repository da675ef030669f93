//! A planned edit of one file: its text before and after, shown as a diff (dry run) or written
//! in place atomically (a temporary file beside it, then a rename).

use crate::error::DfinitError;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    /// `None`: the file does not exist yet.
    pub before: Option<String>,
    pub after: String,
}

impl FileChange {
    pub fn is_noop(&self) -> bool {
        self.before.as_deref() == Some(self.after.as_str())
    }

    /// A unified diff of the change (empty when there is none).
    pub fn diff(&self) -> String {
        if self.is_noop() {
            return String::new();
        }
        let before = self.before.as_deref().unwrap_or("");
        let old_name = match self.before {
            Some(_) => self.path.display().to_string(),
            None => "/dev/null".to_string(),
        };
        similar::TextDiff::from_lines(before, &self.after)
            .unified_diff()
            .header(&old_name, &self.path.display().to_string())
            .to_string()
    }

    /// Writes the new text (creating parent directories); nothing happens for a no-op.
    pub fn apply(&self) -> Result<(), DfinitError> {
        if self.is_noop() {
            return Ok(());
        }
        let write_error = |source| DfinitError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_error)?;
        }
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = self
            .path
            .with_file_name(format!(".{file_name}.dfinit-{}", std::process::id()));
        std::fs::write(&staging, &self.after).map_err(write_error)?;
        if let Ok(meta) = std::fs::metadata(&self.path) {
            // Keep the permissions the user gave the file.
            let _ = std::fs::set_permissions(&staging, meta.permissions());
        }
        std::fs::rename(&staging, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&staging);
            write_error(e)
        })
    }
}

/// The file's text, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, DfinitError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DfinitError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses TOML keeping its layout; an absent file is an empty document.
pub fn parse_toml(path: &Path, text: Option<&str>) -> Result<toml_edit::DocumentMut, DfinitError> {
    text.unwrap_or("")
        .parse::<toml_edit::DocumentMut>()
        .map_err(|e| DfinitError::Parse {
            path: path.to_path_buf(),
            format: "TOML",
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_apply_and_noop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file.txt");
        let change = FileChange {
            path: path.clone(),
            before: None,
            after: "a\nb\n".into(),
        };
        assert!(change.diff().contains("+++"));
        assert!(change.diff().contains("+b"));
        change.apply().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
        let again = FileChange {
            path: path.clone(),
            before: read_optional(&path).unwrap(),
            after: "a\nb\n".into(),
        };
        assert!(again.is_noop());
        assert!(again.diff().is_empty());
        assert!(read_optional(&dir.path().join("none")).unwrap().is_none());
    }
}
