//! docker: `registry-mirrors` in `daemon.json` (Docker uses mirrors for Docker Hub only).
//!
//! Dragonfly's dfinit sets `proxies` (`http-proxy`/`https-proxy`) instead, which sends all of
//! the daemon's HTTP through dfdaemon, logins and other hosts included, and needs dfdaemon to
//! intercept HTTPS to help at all. A registry mirror touches image pulls only, so dfinit
//! keeps to `registry-mirrors`, for the same `containerRuntime.docker` section.

use crate::change::{read_optional, FileChange};
use crate::error::DfinitError;
use serde_json::{Map, Value};
use std::path::Path;
use url::Url;

/// Docker's usual daemon config.
pub const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";
const MIRRORS_KEY: &str = "registry-mirrors";

/// Puts the mirror first in `registry-mirrors`, keeping every other key and mirror.
pub fn daemon_json(path: &Path, mirror: &Url) -> Result<FileChange, DfinitError> {
    daemon_json_edit(path, read_optional(path)?, mirror)
}

/// [`daemon_json`] on the file's text (`None`: no file); public for the fuzz targets.
#[doc(hidden)]
pub fn daemon_json_edit(
    path: &Path,
    before: Option<String>,
    mirror: &Url,
) -> Result<FileChange, DfinitError> {
    let shape = |reason: &str| DfinitError::Shape {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut root = match before.as_deref().filter(|t| !t.trim().is_empty()) {
        None => Value::Object(Map::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| DfinitError::Parse {
            path: path.to_path_buf(),
            format: "JSON",
            reason: e.to_string(),
        })?,
    };
    let object = root
        .as_object_mut()
        .ok_or_else(|| shape("the top level is not an object"))?;
    let ours = mirror.origin().ascii_serialization();
    let mirrors = object
        .entry(MIRRORS_KEY)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| shape("registry-mirrors is not a list"))?;
    mirrors.retain(|m| m.as_str().map(|s| s.trim_end_matches('/')) != Some(ours.as_str()));
    mirrors.insert(0, Value::String(ours));
    let mut after = serde_json::to_string_pretty(&root).map_err(|e| shape(&e.to_string()))?;
    after.push('\n');
    Ok(FileChange {
        path: path.to_path_buf(),
        before,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_keys_in_order_and_puts_the_mirror_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.json");
        std::fs::write(
            &path,
            r#"{"log-driver": "json-file", "registry-mirrors": ["https://m.example"], "debug": true}"#,
        )
        .unwrap();
        let mirror = Url::parse("http://127.0.0.1:4001").unwrap();
        let change = daemon_json(&path, &mirror).unwrap();
        let log = change.after.find("log-driver").unwrap();
        let debug = change.after.find("debug").unwrap();
        assert!(log < debug, "key order changed:\n{}", change.after);
        let value: Value = serde_json::from_str(&change.after).unwrap();
        assert_eq!(
            value["registry-mirrors"],
            serde_json::json!(["http://127.0.0.1:4001", "https://m.example"])
        );
        change.apply().unwrap();
        assert!(daemon_json(&path, &mirror).unwrap().is_noop());
        std::fs::write(&path, "[1]").unwrap();
        assert!(daemon_json(&path, &mirror).is_err());
        std::fs::write(&path, "{not json").unwrap();
        assert!(daemon_json(&path, &mirror).is_err());
    }
}
