//! containerd: one `certs.d/<registry>/hosts.toml` per registry with the mirror as its first
//! host (containerd 1.6 needs a `[host]` table), optionally a `certs.d/_default/hosts.toml`
//! that sends every other registry to the mirror too, and `config_path` in `config.toml` so
//! the CRI plugin reads that directory.
//!
//! Unlike Dragonfly's dfinit, which writes each `hosts.toml` from scratch, an existing file
//! keeps its comments, its `server` and its other hosts (after the mirror).

use crate::change::{parse_toml, read_optional, FileChange};
use crate::error::DfinitError;
use crate::registry::Registry;
use std::path::{Path, PathBuf};
use toml_edit::{value, Array, DocumentMut, Item, Table};
use url::Url;

/// containerd's usual hosts directory, used when `config.toml` names none.
pub const DEFAULT_CERTS_DIR: &str = "/etc/containerd/certs.d";
/// containerd's usual config file (Dragonfly's `containerRuntime.containerd.configPath`).
pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
/// What the mirror may do unless told otherwise: pull blobs and resolve tags (never push).
pub const DEFAULT_CAPABILITIES: &[&str] = &["pull", "resolve"];
/// The hosts directory containerd falls back to for a registry without its own; the mirror
/// learns the upstream from the `ns=` query parameter containerd adds.
pub const CATCH_ALL_NAMESPACE: &str = "_default";
/// The header naming the upstream, so the mirror knows where to go (Dragonfly's).
const REGISTRY_HEADER: &str = "X-Dragonfly-Registry";
/// The CRI plugin owning `registry.config_path` in a version 1/2 `config.toml`.
const CRI_PLUGIN_V2: &str = "io.containerd.grpc.v1.cri";
/// ... and in a version 3 one (containerd 2.x split the CRI plugin).
const CRI_IMAGES_PLUGIN_V3: &str = "io.containerd.cri.v1.images";
/// The version written into a `config.toml` that has none: containerd 1.x and 2.x read it.
const NEW_CONFIG_VERSION: i64 = 2;

/// How containerd may use the mirror for one registry (a `[host."<mirror>"]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    pub capabilities: Vec<String>,
    /// `skip_verify`: trust the mirror's TLS certificate without checking it.
    pub skip_verify: Option<bool>,
    /// `ca`: certificates to check the mirror's TLS certificate with.
    pub ca: Vec<String>,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            skip_verify: None,
            ca: Vec::new(),
        }
    }
}

/// A registry to mirror and how containerd may use the mirror for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredRegistry {
    pub registry: Registry,
    pub options: HostOptions,
}

/// The `hosts.toml` of one registry with the mirror first; other hosts are kept after it.
pub fn hosts_toml(
    certs_dir: &Path,
    mirrored: &MirroredRegistry,
    mirror: &Url,
) -> Result<FileChange, DfinitError> {
    let path = certs_dir.join(&mirrored.registry.host).join("hosts.toml");
    let before = read_optional(&path)?;
    hosts_toml_edit(path, before, mirrored, mirror)
}

/// [`hosts_toml`] on the file's text (`None`: no file); public for the fuzz targets.
#[doc(hidden)]
pub fn hosts_toml_edit(
    path: PathBuf,
    before: Option<String>,
    mirrored: &MirroredRegistry,
    mirror: &Url,
) -> Result<FileChange, DfinitError> {
    let server = mirrored.registry.server_origin();
    let mut table = mirror_table(&mirrored.options);
    let mut header = Table::new();
    header[REGISTRY_HEADER] = value(&server);
    table["header"] = Item::Table(header);
    mirror_first(path, before, Some(server), mirror, table)
}

/// `_default/hosts.toml`: the mirror for every registry without a `hosts.toml` of its own.
/// No `server` and no header: the mirror takes the upstream from containerd's `ns=`.
pub fn catch_all_hosts_toml(certs_dir: &Path, mirror: &Url) -> Result<FileChange, DfinitError> {
    let path = certs_dir.join(CATCH_ALL_NAMESPACE).join("hosts.toml");
    let before = read_optional(&path)?;
    let table = mirror_table(&HostOptions::default());
    mirror_first(path, before, None, mirror, table)
}

/// Puts `table` first under `[host]` keyed by the mirror, setting `server` if the file has none.
fn mirror_first(
    path: PathBuf,
    before: Option<String>,
    server: Option<String>,
    mirror: &Url,
    table: Table,
) -> Result<FileChange, DfinitError> {
    let mut doc = parse_toml(&path, before.as_deref())?;
    if let Some(server) = server.filter(|_| !doc.contains_key("server")) {
        doc["server"] = value(server);
    }
    let mirror_key = mirror.origin().ascii_serialization();
    let hosts = host_tables(&mut doc, &path)?;
    let others: Vec<(String, Item)> = hosts
        .iter()
        .filter(|(key, _)| *key != mirror_key)
        .map(|(key, item)| (key.to_string(), item.clone()))
        .collect();
    hosts.clear();
    hosts.insert(&mirror_key, Item::Table(table));
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
    let entry = doc.entry("host").or_insert_with(implicit_table);
    entry.as_table_mut().ok_or_else(|| DfinitError::Shape {
        path: path.to_path_buf(),
        reason: "`host` is not a table".into(),
    })
}

fn mirror_table(options: &HostOptions) -> Table {
    let mut table = Table::new();
    table["capabilities"] = value(options.capabilities.iter().collect::<Array>());
    if let Some(skip_verify) = options.skip_verify {
        table["skip_verify"] = value(skip_verify);
    }
    if !options.ca.is_empty() {
        table["ca"] = value(options.ca.iter().collect::<Array>());
    }
    table
}

/// The CRI plugin table that holds `registry.config_path` for this config's version.
fn cri_registry_plugin(doc: &DocumentMut) -> &'static str {
    match doc.get("version").and_then(Item::as_integer) {
        Some(3) => CRI_IMAGES_PLUGIN_V3,
        _ => CRI_PLUGIN_V2,
    }
}

/// The hosts directory `config.toml` already names, if any (the first of a `:` list, the
/// one containerd looks in first); `None` for an absent file too.
pub fn configured_certs_dir(config: &Path) -> Result<Option<PathBuf>, DfinitError> {
    certs_dir_in(config, read_optional(config)?.as_deref())
}

/// [`configured_certs_dir`] on the file's text; public for the fuzz targets.
#[doc(hidden)]
pub fn certs_dir_in(config: &Path, text: Option<&str>) -> Result<Option<PathBuf>, DfinitError> {
    let doc = parse_toml(config, text)?;
    let dir = doc
        .get("plugins")
        .and_then(|plugins| plugins.get(cri_registry_plugin(&doc)))
        .and_then(|cri| cri.get("registry"))
        .and_then(|registry| registry.get("config_path"))
        .and_then(Item::as_str)
        .and_then(|dirs| dirs.split(':').next())
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    Ok(dir)
}

/// Points the CRI plugin at `certs_dir` in `config.toml` (version 2 unless it says 3),
/// keeping the rest.
pub fn config_path(config: &Path, certs_dir: &Path) -> Result<FileChange, DfinitError> {
    config_path_edit(config, read_optional(config)?, certs_dir)
}

/// [`config_path`] on the file's text (`None`: no file); public for the fuzz targets.
#[doc(hidden)]
pub fn config_path_edit(
    config: &Path,
    before: Option<String>,
    certs_dir: &Path,
) -> Result<FileChange, DfinitError> {
    let mut doc = parse_toml(config, before.as_deref())?;
    if !doc.contains_key("version") {
        doc["version"] = value(NEW_CONFIG_VERSION);
    }
    let plugin = cri_registry_plugin(&doc);
    let shape = |reason: &str| DfinitError::Shape {
        path: config.to_path_buf(),
        reason: reason.to_string(),
    };
    let registry = doc
        .entry("plugins")
        .or_insert_with(implicit_table)
        .as_table_mut()
        .ok_or_else(|| shape("`plugins` is not a table"))?
        .entry(plugin)
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

    fn plain(spec: &str) -> MirroredRegistry {
        MirroredRegistry {
            registry: Registry::parse(spec).unwrap(),
            options: HostOptions::default(),
        }
    }

    #[test]
    fn new_hosts_toml_has_server_and_mirror_first() {
        let dir = tempfile::tempdir().unwrap();
        let change = hosts_toml(dir.path(), &plain("docker.io"), &mirror()).unwrap();
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
        let ghcr = plain("ghcr.io");
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
            doc["plugins"][CRI_PLUGIN_V2]["registry"]["config_path"].as_str(),
            Some("/etc/containerd/certs.d")
        );
        std::fs::write(&config, "plugins = 3\n").unwrap();
        assert!(config_path(&config, Path::new("/x")).is_err());
    }

    #[test]
    fn host_options_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mirrored = MirroredRegistry {
            registry: Registry::parse("ghcr.io").unwrap(),
            options: HostOptions {
                capabilities: vec!["pull".into()],
                skip_verify: Some(true),
                ca: vec!["/etc/certs/ca.crt".into()],
            },
        };
        let change = hosts_toml(dir.path(), &mirrored, &mirror()).unwrap();
        assert_eq!(
            change.after,
            "server = \"https://ghcr.io\"\n\n\
             [host.\"http://127.0.0.1:4001\"]\n\
             capabilities = [\"pull\"]\n\
             skip_verify = true\n\
             ca = [\"/etc/certs/ca.crt\"]\n\n\
             [host.\"http://127.0.0.1:4001\".header]\n\
             X-Dragonfly-Registry = \"https://ghcr.io\"\n"
        );
    }

    #[test]
    fn catch_all_has_no_server_and_no_header() {
        let dir = tempfile::tempdir().unwrap();
        let change = catch_all_hosts_toml(dir.path(), &mirror()).unwrap();
        assert!(change.path.ends_with("_default/hosts.toml"));
        assert_eq!(
            change.after,
            "[host.\"http://127.0.0.1:4001\"]\ncapabilities = [\"pull\", \"resolve\"]\n"
        );
    }

    #[test]
    fn version_3_uses_the_images_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "version = 3\n").unwrap();
        assert_eq!(configured_certs_dir(&config).unwrap(), None);
        let change = config_path(&config, Path::new("/etc/containerd/certs.d")).unwrap();
        change.apply().unwrap();
        assert!(
            change.after.contains(CRI_IMAGES_PLUGIN_V3),
            "{}",
            change.after
        );
        assert_eq!(
            configured_certs_dir(&config).unwrap(),
            Some(PathBuf::from("/etc/containerd/certs.d"))
        );
        std::fs::write(
            &config,
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/a:/b\"\n",
        )
        .unwrap();
        assert_eq!(
            configured_certs_dir(&config).unwrap(),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            configured_certs_dir(&dir.path().join("none")).unwrap(),
            None
        );
    }
}
