//! An existing docker `daemon.json`, edited by dfinit: the result is JSON with our mirror
//! first in `registry-mirrors`, and editing it again changes nothing.
#![no_main]
use damselfly_dfinit::docker::daemon_json_edit;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::LazyLock;
use url::Url;

static MIRROR: LazyLock<Url> = LazyLock::new(|| Url::parse("http://127.0.0.1:4001").unwrap());

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("daemon.json");
    let Ok(change) = daemon_json_edit(path, Some(text.to_string()), &MIRROR) else {
        return;
    };
    let json: serde_json::Value = serde_json::from_str(&change.after).expect("edited JSON parses");
    assert_eq!(json["registry-mirrors"][0], "http://127.0.0.1:4001");
    let again = daemon_json_edit(path, Some(change.after.clone()), &MIRROR).expect("edits again");
    assert!(
        again.is_noop(),
        "second edit changed {:?} to {:?}",
        change.after,
        again.after
    );
});
