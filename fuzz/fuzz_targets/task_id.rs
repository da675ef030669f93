//! Task-ID inputs a client or a remote DownloadTask chooses: the URL (one per line, the rest of
//! the lines are tag, application, content string). Task IDs are 64 lower-case hex
//! characters unless the URL names a blob digest, and a filtered query parameter (a URL
//! signature) never changes the task a URL names.
#![no_main]
use damselfly_core::id::{blob_digest_string, default_filtered_query_params, normalize_url};
use damselfly_core::{TaskIdRule, TaskIdSpec};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use url::Url;

static FILTERED: LazyLock<Vec<String>> = LazyLock::new(default_filtered_query_params);

fn is_hex_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn spec<'a>(url: &'a str, fields: &[&'a str], blob: bool) -> TaskIdSpec<'a> {
    TaskIdSpec {
        url,
        tag: fields.first().copied(),
        application: fields.get(1).copied(),
        filtered_query_params: &FILTERED,
        content_for_calculating_task_id: fields.get(2).copied(),
        enable_task_id_based_blob_digest: blob,
        ..Default::default()
    }
}

/// The same URL with a signature appended: must name the same task.
fn signed(url: &str) -> Option<String> {
    let mut url = Url::parse(url).ok()?;
    url.query_pairs_mut().append_pair("X-Amz-Signature", "f00d");
    Some(url.into())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let url = lines.next().unwrap_or_default();
    let fields: Vec<&str> = lines.collect();
    for blob in [false, true] {
        let spec = spec(url, &fields, blob);
        let Ok(id) = spec.task_id() else {
            assert_eq!(spec.rule(), TaskIdRule::Url, "only a URL rule can fail");
            continue;
        };
        match spec.rule() {
            TaskIdRule::Content | TaskIdRule::Url => assert!(is_hex_id(&id), "task ID {id:?}"),
            TaskIdRule::BlobDigest => {
                let digest = blob_digest_string(url).expect("a blob URL has a digest");
                assert!(digest.ends_with(&format!(":{id}")), "{id} vs {digest}");
            }
        }
        if spec.rule() != TaskIdRule::Url {
            continue;
        }
        // Compared on the URL as the parser spells it: a respelling alone can change the rule
        // (the blob pattern is matched on the raw text, as upstream does).
        let Ok(base) = Url::parse(url).map(String::from) else {
            continue;
        };
        if let Some(signed) = signed(&base) {
            let id = TaskIdSpec {
                url: &base,
                ..spec.clone()
            }
            .task_id();
            let again = TaskIdSpec {
                url: &signed,
                ..spec.clone()
            }
            .task_id();
            assert_eq!(again.ok(), id.ok(), "{base:?} signed as {signed:?}");
        }
    }
    if let Ok(normal) = normalize_url(url, &FILTERED) {
        assert!(
            Url::parse(&normal).is_ok(),
            "{url:?} normalised to unparsable {normal:?}"
        );
    }
});
