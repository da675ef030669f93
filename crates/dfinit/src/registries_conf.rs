//! CRI-O and podman: a `[[registry.mirror]]` entry (first, `insecure = true` because the
//! mirror speaks plain HTTP) under each registry's `[[registry]]` in `registries.conf` (v2).

use crate::change::{parse_toml, read_optional, FileChange};
use crate::error::DfinitError;
use crate::registry::{host_port, Registry};
use std::path::Path;
use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};
use url::Url;

/// The system-wide file of containers-registries.conf(5).
pub const DEFAULT_REGISTRIES_CONF: &str = "/etc/containers/registries.conf";

pub fn registries_conf(
    path: &Path,
    registries: &[Registry],
    mirror: &Url,
) -> Result<FileChange, DfinitError> {
    let before = read_optional(path)?;
    let mut doc = parse_toml(path, before.as_deref())?;
    let location = host_port(mirror);
    for registry in registries {
        let entry = registry_entry(&mut doc, path, &registry.host)?;
        put_mirror_first(entry, path, &location)?;
    }
    Ok(FileChange {
        path: path.to_path_buf(),
        before,
        after: doc.to_string(),
    })
}

fn shape(path: &Path, reason: &str) -> DfinitError {
    DfinitError::Shape {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The `[[registry]]` whose location (or prefix) is `host`, appended if there is none.
fn registry_entry<'a>(
    doc: &'a mut DocumentMut,
    path: &Path,
    host: &str,
) -> Result<&'a mut Table, DfinitError> {
    let list = doc
        .entry("registry")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| shape(path, "`registry` is not a list of [[registry]] tables"))?;
    let names = |t: &Table| {
        ["location", "prefix"]
            .iter()
            .any(|key| t.get(key).and_then(|v| v.as_str()) == Some(host))
    };
    let found = list.iter().position(names);
    let index = match found {
        Some(index) => index,
        None => {
            let mut table = Table::new();
            table["location"] = value(host);
            list.push(table);
            list.len() - 1
        }
    };
    list.get_mut(index)
        .ok_or_else(|| shape(path, "registry entry vanished"))
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
    fn adds_mirrors_keeps_the_rest_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.conf");
        std::fs::write(
            &path,
            "# site settings\nunqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"mirror.internal\"\n",
        )
        .unwrap();
        let registries = [
            Registry::parse("docker.io").unwrap(),
            Registry::parse("127.0.0.1:5000=http://127.0.0.1:5000").unwrap(),
        ];
        let mirror = Url::parse("http://127.0.0.1:4001").unwrap();
        let change = registries_conf(&path, &registries, &mirror).unwrap();
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
        assert!(registries_conf(&path, &registries, &mirror)
            .unwrap()
            .is_noop());
    }
}
