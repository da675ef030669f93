//! An existing containerd `config.toml` or `hosts.toml`, edited by dfinit. An edit that
//! succeeds must leave TOML that the same edit leaves unchanged (running dfinit twice changes
//! nothing), with the mirror first and `config_path` readable back.
#![no_main]
use damselfly_dfinit::containerd::{
    certs_dir_in, config_path_edit, hosts_toml_edit, HostOptions, MirroredRegistry,
};
use damselfly_dfinit::registry::Registry;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use url::Url;

const CERTS_DIR: &str = "/etc/containerd/certs.d";
static MIRROR: LazyLock<Url> = LazyLock::new(|| Url::parse("http://127.0.0.1:4001").unwrap());
static REGISTRY: LazyLock<MirroredRegistry> = LazyLock::new(|| MirroredRegistry {
    registry: Registry::parse("docker.io").unwrap(),
    options: HostOptions::default(),
});

fn config_toml(text: &str) {
    let path = Path::new("config.toml");
    let _ = certs_dir_in(path, Some(text));
    let Ok(change) = config_path_edit(path, Some(text.to_string()), Path::new(CERTS_DIR)) else {
        return;
    };
    let found = certs_dir_in(path, Some(&change.after)).expect("edited config.toml parses");
    assert_eq!(
        found.as_deref(),
        Some(Path::new(CERTS_DIR)),
        "{:?}",
        change.after
    );
    let again = config_path_edit(path, Some(change.after.clone()), Path::new(CERTS_DIR))
        .expect("edited config.toml edits again");
    assert!(
        again.is_noop(),
        "second edit changed {:?} to {:?}",
        change.after,
        again.after
    );
}

fn hosts_toml(text: &str) {
    let path = PathBuf::from("hosts.toml");
    let edit =
        |before: &str| hosts_toml_edit(path.clone(), Some(before.into()), &REGISTRY, &MIRROR);
    let Ok(change) = edit(text) else {
        return;
    };
    let doc: toml_edit::DocumentMut = change.after.parse().expect("edited hosts.toml parses");
    // containerd tries the host tables in order; a stray value under [host] is not a host.
    let first = doc["host"]
        .as_table()
        .and_then(|hosts| hosts.iter().find(|(_, item)| item.is_table()));
    assert_eq!(first.map(|(key, _)| key), Some("http://127.0.0.1:4001"));
    let again = edit(&change.after).expect("edited hosts.toml edits again");
    assert!(
        again.is_noop(),
        "second edit changed {:?} to {:?}",
        change.after,
        again.after
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    config_toml(text);
    hosts_toml(text);
});
