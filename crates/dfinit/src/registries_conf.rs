//! CRI-O and podman: a `[[registry.mirror]]` entry (first, `insecure = true` because the
//! mirror speaks plain HTTP) under each registry's `[[registry]]` in `registries.conf` (v2).
//!
//! Unlike Dragonfly's dfinit, which replaces the whole file with its own entries, the rest of
//! the file (comments, other registries, other mirrors, other settings) is kept.

use crate::change::{parse_toml, read_optional, FileChange};
use crate::error::DfinitError;
use crate::registry::{host_port, Registry};
use std::path::Path;
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};
use url::Url;

/// The system-wide file of containers-registries.conf(5).
pub const DEFAULT_REGISTRIES_CONF: &str = "/etc/containers/registries.conf";
/// Registries tried for a short image name (`busybox`): Dragonfly's default, written when
/// dfinit.yaml has a crio/podman section without `unqualifiedSearchRegistries`.
pub const DEFAULT_UNQUALIFIED_SEARCH_REGISTRIES: &[&str] = &[
    "registry.fedoraproject.org",
    "registry.access.redhat.com",
    "docker.io",
];
const SEARCH_KEY: &str = "unqualified-search-registries";

/// One `[[registry]]`: images named under `prefix` (default: `location`) come from `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfRegistry {
    pub prefix: Option<String>,
    pub location: String,
}

impl ConfRegistry {
    /// The name an entry is found by: containers-registries.conf(5) defaults `prefix` to
    /// `location`.
    fn key(&self) -> &str {
        self.prefix.as_deref().unwrap_or(&self.location)
    }
}

impl From<&Registry> for ConfRegistry {
    fn from(registry: &Registry) -> Self {
        Self {
            prefix: None,
            location: registry.host.clone(),
        }
    }
}

/// What to do with `unqualified-search-registries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchRegistries {
    /// Set it to this list (dfinit.yaml named one).
    Replace(Vec<String>),
    /// Set it only where the file has none, so short names resolve as under Dragonfly
    /// without overriding the site's own list.
    IfMissing(Vec<String>),
}

pub fn registries_conf(
    path: &Path,
    registries: &[ConfRegistry],
    search: Option<&SearchRegistries>,
    mirror: &Url,
) -> Result<FileChange, DfinitError> {
    registries_conf_edit(path, read_optional(path)?, registries, search, mirror)
}

/// [`registries_conf`] on the file's text (`None`: no file); public for the fuzz targets.
#[doc(hidden)]
pub fn registries_conf_edit(
    path: &Path,
    before: Option<String>,
    registries: &[ConfRegistry],
    search: Option<&SearchRegistries>,
    mirror: &Url,
) -> Result<FileChange, DfinitError> {
    let mut doc = parse_toml(path, before.as_deref())?;
    match search {
        Some(SearchRegistries::Replace(list)) => set_search(&mut doc, list),
        Some(SearchRegistries::IfMissing(list)) if !doc.contains_key(SEARCH_KEY) => {
            set_search(&mut doc, list)
        }
        _ => {}
    }
    let location = host_port(mirror);
    for registry in registries {
        let entry = registry_entry(&mut doc, path, registry)?;
        put_mirror_first(entry, path, &location)?;
    }
    Ok(FileChange {
        path: path.to_path_buf(),
        before,
        after: doc.to_string(),
    })
}

fn set_search(doc: &mut DocumentMut, list: &[String]) {
    // A top-level key must precede the [[registry]] tables; toml_edit places values first.
    doc[SEARCH_KEY] = value(list.iter().collect::<Array>());
}

fn shape(path: &Path, reason: &str) -> DfinitError {
    DfinitError::Shape {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The `[[registry]]` found by `wanted`'s prefix, appended if there is none. An explicit
/// prefix also sets `location` (a remap the operator asked for); a bare location leaves a
/// found entry's own `location` alone.
fn registry_entry<'a>(
    doc: &'a mut DocumentMut,
    path: &Path,
    wanted: &ConfRegistry,
) -> Result<&'a mut Table, DfinitError> {
    let list = doc
        .entry("registry")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| shape(path, "`registry` is not a list of [[registry]] tables"))?;
    let key_of = |t: &Table| {
        ["prefix", "location"]
            .iter()
            .find_map(|key| t.get(key).and_then(|v| v.as_str()))
            .map(str::to_string)
    };
    let found = list
        .iter()
        .position(|t| key_of(t).as_deref() == Some(wanted.key()));
    let index = match found {
        Some(index) => index,
        None => {
            let mut table = Table::new();
            if let Some(prefix) = &wanted.prefix {
                table["prefix"] = value(prefix);
            }
            list.push(table);
            list.len() - 1
        }
    };
    let entry = list
        .get_mut(index)
        .ok_or_else(|| shape(path, "registry entry vanished"))?;
    if wanted.prefix.is_some() || !entry.contains_key("location") {
        entry["location"] = value(&wanted.location);
    }
    // An entry found by its `location` has no prefix: without one, moving `location` would
    // also move what the entry matches, and the next run would not find it (fuzz finding).
    if let Some(prefix) = wanted
        .prefix
        .as_deref()
        .filter(|_| !entry.contains_key("prefix"))
    {
        entry["prefix"] = value(prefix);
    }
    Ok(entry)
}

fn put_mirror_first(entry: &mut Table, path: &Path, location: &str) -> Result<(), DfinitError> {
    let mirrors = entry
        .entry("mirror")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| shape(path, "`mirror` is not a list of [[registry.mirror]] tables"))?;
    let others: Vec<Table> = mirrors
        .iter()
        .filter(|t| t.get("location").and_then(|v| v.as_str()) != Some(location))
        .cloned()
        .collect();
    let mut ours = Table::new();
    ours["location"] = value(location);
    ours["insecure"] = value(true);
    mirrors.clear();
    mirrors.push(ours);
    for table in others {
        mirrors.push(table);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remap_of_an_entry_found_by_location_keeps_its_prefix() {
        let before = "[[registry]]\nlocation = \"quay.io/lib\"\n";
        let remap = [ConfRegistry {
            prefix: Some("quay.io/lib".into()),
            location: "mirror.test/lib".into(),
        }];
        let mirror = Url::parse("http://127.0.0.1:4001").unwrap();
        let path = Path::new("registries.conf");
        let edit = |text: &str| {
            registries_conf_edit(path, Some(text.into()), &remap, None, &mirror).unwrap()
        };
        let first = edit(before);
        assert!(
            first.after.contains("prefix = \"quay.io/lib\""),
            "{}",
            first.after
        );
        assert!(
            edit(&first.after).is_noop(),
            "a second run changes the file"
        );
    }

    #[test]
    fn adds_mirrors_keeps_the_rest_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.conf");
        std::fs::write(
            &path,
            "# site settings\nunqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"mirror.internal\"\n",
        )
        .unwrap();
        let registries: Vec<ConfRegistry> = ["docker.io", "127.0.0.1:5000=http://127.0.0.1:5000"]
            .iter()
            .map(|spec| ConfRegistry::from(&Registry::parse(spec).unwrap()))
            .collect();
        let mirror = Url::parse("http://127.0.0.1:4001").unwrap();
        let change = registries_conf(&path, &registries, None, &mirror).unwrap();
        assert!(change.after.contains("# site settings"));
        let doc: DocumentMut = change.after.parse().unwrap();
        let list = doc["registry"].as_array_of_tables().unwrap();
        assert_eq!(list.len(), 2);
        let hub_mirrors = list.get(0).unwrap()["mirror"].as_array_of_tables().unwrap();
        assert_eq!(hub_mirrors.len(), 2);
        assert_eq!(
            hub_mirrors.get(0).unwrap()["location"].as_str(),
            Some("127.0.0.1:4001")
        );
        assert_eq!(
            hub_mirrors.get(0).unwrap()["insecure"].as_bool(),
            Some(true)
        );
        assert_eq!(
            list.get(1).unwrap()["location"].as_str(),
            Some("127.0.0.1:5000")
        );
        change.apply().unwrap();
        assert!(registries_conf(&path, &registries, None, &mirror)
            .unwrap()
            .is_noop());
    }

    #[test]
    fn search_list_and_prefixed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.conf");
        std::fs::write(&path, "unqualified-search-registries = [\"quay.io\"]\n").unwrap();
        let mirror = Url::parse("http://127.0.0.1:4001").unwrap();
        let hub = [ConfRegistry {
            prefix: Some("docker.io".into()),
            location: "mirror.gcr.io".into(),
        }];
        let keep = SearchRegistries::IfMissing(vec!["docker.io".into()]);
        let change = registries_conf(&path, &hub, Some(&keep), &mirror).unwrap();
        assert!(change
            .after
            .starts_with("unqualified-search-registries = [\"quay.io\"]\n"));
        assert!(change
            .after
            .contains("[[registry]]\nprefix = \"docker.io\"\nlocation = \"mirror.gcr.io\"\n"));
        let replace = SearchRegistries::Replace(vec!["docker.io".into()]);
        let change = registries_conf(&path, &[], Some(&replace), &mirror).unwrap();
        assert_eq!(
            change.after,
            "unqualified-search-registries = [\"docker.io\"]\n"
        );
    }
}
