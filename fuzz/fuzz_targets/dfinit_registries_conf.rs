//! An existing CRI-O/podman `registries.conf`, edited by dfinit (a plain registry and a
//! prefix remap, default search list): editing the result again changes nothing.
#![no_main]
use damselfly_dfinit::registries_conf::{registries_conf_edit, ConfRegistry, SearchRegistries};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::LazyLock;
use url::Url;

static MIRROR: LazyLock<Url> = LazyLock::new(|| Url::parse("http://127.0.0.1:4001").unwrap());

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let registries = [
        ConfRegistry {
            prefix: None,
            location: "docker.io".into(),
        },
        ConfRegistry {
            prefix: Some("quay.io/lib".into()),
            location: "mirror.test/lib".into(),
        },
    ];
    let search = SearchRegistries::IfMissing(vec!["docker.io".into()]);
    let path = Path::new("registries.conf");
    let edit = |before: &str| {
        registries_conf_edit(
            path,
            Some(before.into()),
            &registries,
            Some(&search),
            &MIRROR,
        )
    };
    let Ok(change) = edit(text) else {
        return;
    };
    let _: toml_edit::DocumentMut = change.after.parse().expect("edited registries.conf parses");
    let again = edit(&change.after).expect("edited registries.conf edits again");
    assert!(
        again.is_noop(),
        "second edit changed {:?} to {:?}",
        change.after,
        again.after
    );
});
