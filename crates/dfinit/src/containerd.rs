//! containerd: one `certs.d/<registry>/hosts.toml` per registry with the mirror as its first
//! host (containerd 1.6 needs a `[host]` table), plus, when asked, `config_path` in
//! `config.toml` so the CRI plugin reads that directory.

use crate::change::{parse_toml, read_optional, FileChange};
use crate::error::DfinitError;
use crate::registry::Registry;
use std::path::Path;
use toml_edit::{value, Array, DocumentMut, Item, Table};
use url::Url;

/// containerd's usual hosts directory.
pub const DEFAULT_CERTS_DIR: &str = "/etc/containerd/certs.d";
/// What the mirror may do: pull blobs and resolve tags (never push).
const CAPABILITIES: &[&str] = &["pull", "resolve"];
/// The header naming the upstream, so the mirror knows where to go (Dragonfly's).
const REGISTRY_HEADER: &str = "X-Dragonfly-Registry";
/// The CRI plugin's table in a version 2 `config.toml`.
const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";

/// The `hosts.toml` of one registry with the mirror first; other hosts are kept after it.
pub fn hosts_toml(
    certs_dir: &Path,
    registry: &Registry,
    mirror: &Url,
) -> Result<FileChange, DfinitError> {
    let path = certs_dir.join(&registry.host).join("hosts.toml");
    let before = read_optional(&path)?;
    let mut doc = parse_toml(&path, before.as_deref())?;
    if !doc.contains_key("server") {
        doc["server"] = value(registry.server_origin());
    }
    let mirror_key = mirror.origin().ascii_serialization();
    let hosts = host_tables(&mut doc, &path)?;
    let others: Vec<(String, Item)> = hosts
        .iter()
        .filter(|(key, _)| *key != mirror_key)
        .map(|(key, item)| (key.to_string(), item.clone()))
        .collect();
    hosts.clear();
    hosts.insert(&mirror_key, Item::Table(mirror_table(registry)));
    for (key, item) in others {
        hosts.insert(&key, item);
    }
    Ok(FileChange {
        path,
        before,
        after: doc.to_string(),
    })
}

fn host_tables<'a>(doc: &'a mut DocumentMut, path: &Path) -> Result<&'a mut Table, DfinitError> {
    let entry = doc.entry("host").or_insert_with(|| {
        let mut table = Table::new();
        table.set_implicit(true);
        Item::Table(table)
    });
    entry.as_table_mut().ok_or_else(|| DfinitError::Shape {
        path: path.to_path_buf(),
        reason: "`host` is not a table".into(),
    })
}

fn mirror_table(registry: &Registry) -> Table {
    let mut table = Table::new();
    table["capabilities"] = value(CAPABILITIES.iter().copied().collect::<Array>());
    let mut header = Table::new();
    header[REGISTRY_HEADER] = value(registry.server_origin());
    table["header"] = Item::Table(header);
    table
}

/// Points the CRI plugin at `certs_dir` in a version 2 `config.toml`, keeping the rest.
pub fn config_path(config: &Path, certs_dir: &Path) -> Result<FileChange, DfinitError> {
    let before = read_optional(config)?;
    let mut doc = parse_toml(config, before.as_deref())?;
    if !doc.contains_key("version") {
        doc["version"] = value(2);
    }
    let shape = |reason: &str| DfinitError::Shape {
        path: config.to_path_buf(),
        reason: reason.to_string(),
    };
    let registry = doc
        .entry("plugins")
        .or_insert_with(implicit_table)
        .as_table_mut()
        .ok_or_else(|| shape("`plugins` is not a table"))?
        .entry(CRI_PLUGIN)
        .or_insert_with(implicit_table)
        .as_table_mut()
        .ok_or_else(|| shape("the CRI plugin entry is not a table"))?
        .entry("registry")
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| shape("the CRI registry entry is not a table"))?;
    registry["config_path"] = value(certs_dir.display().to_string());
    Ok(FileChange {
        path: config.to_path_buf(),
        before,
        after: doc.to_string(),
    })
}

fn implicit_table() -> Item {
    let mut table = Table::new();
    table.set_implicit(true);
    Item::Table(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror() -> Url {
        Url::parse("http://127.0.0.1:4001").unwrap()
    }

    #[test]
    fn new_hosts_toml_has_server_and_mirror_first() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Registry::parse("docker.io").unwrap();
        let change = hosts_toml(dir.path(), &hub, &mirror()).unwrap();
        assert!(change.path.ends_with("docker.io/hosts.toml"));
        let doc: DocumentMut = change.after.parse().unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://index.docker.io"));
        let host = &doc["host"]["http://127.0.0.1:4001"];
        assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        assert_eq!(
            host["header"][REGISTRY_HEADER].as_str(),
            Some("https://index.docker.io")
        );
    }

    #[test]
    fn existing_hosts_toml_keeps_its_rest_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ghcr.io/hosts.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "# mine\nserver = \"https://ghcr.io\"\n\n[host.\"https://cache.internal\"]\n  capabilities = [\"pull\"]\n",
        )
        .unwrap();
        let ghcr = Registry::parse("ghcr.io").unwrap();
        let change = hosts_toml(dir.path(), &ghcr, &mirror()).unwrap();
        assert!(change.after.contains("# mine"));
        let ours = change.after.find("127.0.0.1:4001").unwrap();
        let theirs = change.after.find("cache.internal").unwrap();
        assert!(
            ours < theirs,
            "the mirror must come first:\n{}",
            change.after
        );
        change.apply().unwrap();
        assert!(hosts_toml(dir.path(), &ghcr, &mirror()).unwrap().is_noop());
    }

    #[test]
    fn config_path_is_set_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "version = 2\n[grpc]\n  address = \"/run/c.sock\"\n",
        )
        .unwrap();
        let change = config_path(&config, Path::new("/etc/containerd/certs.d")).unwrap();
        let doc: DocumentMut = change.after.parse().unwrap();
        assert_eq!(doc["grpc"]["address"].as_str(), Some("/run/c.sock"));
        assert_eq!(
            doc["plugins"][CRI_PLUGIN]["registry"]["config_path"].as_str(),
            Some("/etc/containerd/certs.d")
        );
        std::fs::write(&config, "plugins = 3\n").unwrap();
        assert!(config_path(&config, Path::new("/x")).is_err());
    }
}
