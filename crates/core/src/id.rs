//! Host, peer and task identifiers, as the Dragonfly client (`dragonflyoss/client`) derives them.

use crate::error::CoreError;
use regex::Regex;
use sha2::{Digest as _, Sha256};
use std::sync::LazyLock;
use url::Url;

/// Query parameters that carry signatures or credentials: they change on every signed URL
/// but do not change the content, so they are left out of the task ID by default.
/// Same list and order as the official client (30 names, duplicates dropped).
pub const DEFAULT_FILTERED_QUERY_PARAMS: &[&str] = &[
    // S3
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    // GCS
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    // OSS
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
    // OBS
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    // COS
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    // containerd's mirror namespace
    "ns",
];

/// The default filter list as owned strings, for config defaults and CLI flags.
pub fn default_filtered_query_params() -> Vec<String> {
    DEFAULT_FILTERED_QUERY_PARAMS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

const SEED_SUFFIX: &str = "-seed";

/// `{ip}-{hostname}`, with `-seed` on seed peers.
pub fn host_id(ip: &str, hostname: &str, seed: bool) -> String {
    let mut id = format!("{ip}-{hostname}");
    if seed {
        id.push_str(SEED_SUFFIX);
    }
    id
}

/// `{ip}-{hostname}-{uuid4}`, with `-seed` on seed peers; a new one per download.
pub fn peer_id(ip: &str, hostname: &str, seed: bool) -> String {
    peer_id_with_uuid(ip, hostname, &uuid::Uuid::new_v4(), seed)
}

fn peer_id_with_uuid(ip: &str, hostname: &str, uuid: &uuid::Uuid, seed: bool) -> String {
    let mut id = format!("{ip}-{hostname}-{}", uuid.hyphenated());
    if seed {
        id.push_str(SEED_SUFFIX);
    }
    id
}

/// Which of the three standard task-ID rules a request falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskIdRule {
    /// sha256 of an explicit content string.
    Content,
    /// The encoded digest of an OCI `/v2/<name>/blobs/<alg>:<hex>` URL, as is.
    BlobDigest,
    /// sha256 over the normalised URL and the request's tag, application, revision and
    /// fixed piece length.
    Url,
}

/// The inputs of a standard task ID.
#[derive(Debug, Clone, Default)]
pub struct TaskIdSpec<'a> {
    pub url: &'a str,
    pub tag: Option<&'a str>,
    pub application: Option<&'a str>,
    /// Hub revision (Hugging Face, ModelScope, OpenCSG); `None` for plain URLs.
    pub revision: Option<&'a str>,
    /// Only a piece length the user fixed; an automatic one is never hashed.
    pub piece_length: Option<u64>,
    /// Exact, case-sensitive names of query parameters to drop before hashing.
    pub filtered_query_params: &'a [String],
    pub content_for_calculating_task_id: Option<&'a str>,
    pub enable_task_id_based_blob_digest: bool,
}

impl TaskIdSpec<'_> {
    /// The rule that applies; the first matching case wins, as upstream.
    pub fn rule(&self) -> TaskIdRule {
        if self.content_for_calculating_task_id.is_some() {
            TaskIdRule::Content
        } else if self.enable_task_id_based_blob_digest && is_blob_url(self.url) {
            TaskIdRule::BlobDigest
        } else {
            TaskIdRule::Url
        }
    }

    /// The standard task ID: 64 lower-case hex characters (128 for a sha512 blob).
    pub fn task_id(&self) -> Result<String, CoreError> {
        match self.rule() {
            TaskIdRule::Content => Ok(sha256_hex(
                self.content_for_calculating_task_id.unwrap_or_default(),
            )),
            TaskIdRule::BlobDigest => blob_digest_from_url(self.url),
            TaskIdRule::Url => {
                let normalized = normalize_url(self.url, self.filtered_query_params)?;
                let mut hasher = Sha256::new();
                hasher.update(normalized.as_bytes());
                for field in [self.tag, self.application, self.revision]
                    .into_iter()
                    .flatten()
                {
                    hasher.update(field.as_bytes());
                }
                if let Some(piece_length) = self.piece_length {
                    hasher.update(piece_length.to_string().as_bytes());
                }
                hasher.update(b"STANDARD");
                Ok(hex::encode(hasher.finalize()))
            }
        }
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The URL string that is hashed: WHATWG-parsed, filtered query params dropped, the
/// remaining query re-serialised form-urlencoded, and trailing `/` trimmed on a root path.
pub fn normalize_url(raw: &str, filtered_query_params: &[String]) -> Result<String, CoreError> {
    let mut url = Url::parse(raw).map_err(|e| CoreError::InvalidUrl {
        url: raw.to_string(),
        reason: e.to_string(),
    })?;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| !filtered_query_params.iter().any(|f| f == key))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut serialized = String::from(url);
    let root_path = Url::parse(&serialized)
        .map(|u| u.path() == "/")
        .unwrap_or(false);
    if root_path && serialized.ends_with('/') {
        let trimmed_len = serialized.trim_end_matches('/').len();
        serialized.truncate(trimmed_len);
    }
    Ok(serialized)
}

/// Upstream's pattern, matched on the whole URL: the last `/blobs/` wins (greedy groups).
static BLOB_URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(.*)://(.*)/v2/(.*)/blobs/([^?]+)(?:\?.*)?$").expect("static regex is valid")
});

/// Splits an OCI blob URL into its digest algorithm and encoded value.
fn split_blob_digest(url: &str) -> Option<(&str, &str)> {
    // Matched on the text before the query and fragment: a blob path inside a query string
    // must not turn a URL into a blob, or a signature parameter would change its task.
    let head = url.split(['?', '#']).next().unwrap_or_default();
    let digest_text = BLOB_URL.captures(head)?.get(4)?.as_str();
    let (algorithm, encoded) = digest_text.split_once(':')?;
    let (expected_len, digit): (usize, fn(&u8) -> bool) = match algorithm {
        "sha256" => (64, u8::is_ascii_hexdigit),
        "sha512" => (128, u8::is_ascii_hexdigit),
        "crc32" => (10, u8::is_ascii_digit),
        _ => return None,
    };
    // Only digest characters: the encoded value becomes the task ID as is, so a URL whose
    // fragment or path text merely has the right length must not name a task (fuzz finding).
    (encoded.len() == expected_len && encoded.as_bytes().iter().all(digit))
        .then_some((algorithm, encoded))
}

/// Whether the URL names an OCI blob by a digest that can serve as the task ID.
pub fn is_blob_url(url: &str) -> bool {
    split_blob_digest(url).is_some()
}

/// The task ID of an OCI blob URL: the encoded digest itself, unhashed.
pub fn blob_digest_from_url(url: &str) -> Result<String, CoreError> {
    split_blob_digest(url)
        .map(|(_, encoded)| encoded.to_string())
        .ok_or_else(|| CoreError::NotBlobUrl(url.to_string()))
}

/// The `algorithm:encoded` digest named by an OCI blob URL, for whole-blob verification.
pub fn blob_digest_string(url: &str) -> Option<String> {
    split_blob_digest(url).map(|(alg, enc)| format!("{alg}:{enc}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_id(
        url: &str,
        piece_length: Option<u64>,
        tag: Option<&str>,
        app: Option<&str>,
        rev: Option<&str>,
        filtered: &[&str],
    ) -> String {
        let filtered: Vec<String> = filtered.iter().map(|s| s.to_string()).collect();
        TaskIdSpec {
            url,
            tag,
            application: app,
            revision: rev,
            piece_length,
            filtered_query_params: &filtered,
            ..Default::default()
        }
        .task_id()
        .unwrap()
    }

    #[test]
    fn blob_digests_are_digits_only() {
        let hex = "ab".repeat(32);
        assert!(is_blob_url(&format!("https://r/v2/a/blobs/sha256:{hex}")));
        assert!(is_blob_url(&format!(
            "https://r/v2/a/blobs/sha256:{hex}?ns=r#f"
        )));
        for fake in [
            format!("https://r/v2/a/blobs/sha256:{}zz", "ab".repeat(31)),
            format!("https://r/v2/a/blobs/sha256:{}/%", "ab".repeat(31)),
            "https://r/v2/a/blobs/crc32:12345678ab".to_string(),
            format!("https://r/?q/v2/a/blobs/sha256:{hex}"),
        ] {
            assert!(!is_blob_url(&fake), "{fake}");
        }
    }

    #[test]
    fn upstream_url_vectors() {
        let u = "https://example.com";
        let cases = [
            (
                url_id(u, Some(1024), Some("foo"), Some("bar"), Some("v1.0"), &[]),
                "5844f27a257287e9b734256bb25603d8005422ced8c0377f15063ec11963b25f",
            ),
            (
                url_id(u, None, Some("foo"), Some("bar"), None, &[]),
                "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca",
            ),
            (
                url_id(u, None, Some("foo"), None, None, &[]),
                "3c3f230ef9f191dd2821510346a7bc138e4894bee9aee184ba250a3040701d2a",
            ),
            (
                url_id(u, None, None, Some("bar"), None, &[]),
                "c9f9261b7305c24371244f9f149f5d4589ed601348fdf22d7f6f4b10658fdba2",
            ),
            (
                url_id(u, Some(1024), None, None, None, &[]),
                "9f7c9aafbc6f30f8f41a96ca77eeae80c5b60964b3034b0ee43ccf7b2f9e52b8",
            ),
            (
                url_id(
                    "https://example.com?foo=foo&bar=bar",
                    None,
                    None,
                    None,
                    None,
                    &["foo", "bar"],
                ),
                "457b4328cde278e422c9e243f7bfd1e97f511fec43a80f535cf6b0ef6b086776",
            ),
            (
                url_id(u, None, None, None, Some("v1.0"), &[]),
                "b171331534b80e0bf91da38ebbfcdbf4d177898f4b9beac44f14733e3f004d4e",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn empty_tag_equals_absent_tag() {
        let u = "https://example.com/files/data.tar.gz";
        assert_eq!(
            url_id(u, None, Some(""), None, None, &[]),
            url_id(u, None, None, None, None, &[])
        );
    }

    #[test]
    fn content_and_blob_rules() {
        let spec = TaskIdSpec {
            url: "https://ignored.example.com/x",
            content_for_calculating_task_id: Some("This is a test file"),
            ..Default::default()
        };
        assert_eq!(spec.rule(), TaskIdRule::Content);
        assert_eq!(
            spec.task_id().unwrap(),
            "e2d0fe1585a63ec6009c8016ff8dda8b17719a637405a4e23c0ff81339148249"
        );
        let hexd = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";
        let blob = format!("https://registry.example.com/v2/myorg/myrepo/blobs/sha256:{hexd}");
        let spec = TaskIdSpec {
            url: &blob,
            enable_task_id_based_blob_digest: true,
            ..Default::default()
        };
        assert_eq!(spec.task_id().unwrap(), hexd);
    }

    #[test]
    fn blob_url_extraction() {
        let b = "b2c366cce7e68013d5441c6326d5a3e1b12aeb5ed58564d0fd3fa089bc29cb6e";
        for u in [
            format!("http://registry.example.com/v2/library/ubuntu/blobs/sha256:{b}"),
            format!("https://registry.io/v2/org/team/project/blobs/sha256:{b}"),
            format!("http://localhost:5000/v2/myrepo/blobs/sha256:{b}"),
            format!("https://index.docker.io/v2/library/alpine/blobs/sha256:{b}?ns=docker.io"),
            format!("http://localhost:5000/v2/myrepo/blobs/sha256:{b}?id=12345"),
        ] {
            assert_eq!(blob_digest_from_url(&u).unwrap(), b, "{u}");
        }
        let s512 = "94381a28e8c039fedfa78de025158a068226c3ccd041b22c2c8e73fc993584e9b167d9ae32bc8b372c66701c808ab134e0768c8f16b9a3e61eec1ccf8faa9db8";
        assert_eq!(
            blob_digest_from_url(&format!(
                "https://registry.example.com/v2/myorg/myrepo/blobs/sha512:{s512}"
            ))
            .unwrap(),
            s512
        );
        for bad in [
            "http://registry.example.com/blobs/sha256:abc",
            "http://registry.example.com/v2/repo/manifests/sha256:abc",
            "registry.example.com/v2/repo/blobs/sha256:abc",
            "http://registry.example.com/v2/blobs/sha256:abc",
            "",
            "not-a-url",
            "http://registry.example.com/v2/repo/blobs/invalid-digest",
        ] {
            assert!(blob_digest_from_url(bad).is_err(), "{bad}");
        }
        let oci =
            format!("https://index.docker.io/v2/library/alpine/blobs/sha256:{b}?ns=docker.io");
        assert_eq!(
            url_id(&oci, None, None, None, None, DEFAULT_FILTERED_QUERY_PARAMS),
            "b08c29dce50db743009665920304d65092906dedd0619d1ee8be69cb8f1a6fc8"
        );
    }

    #[test]
    fn extra_vectors() {
        let s3 = |sig: &str| {
            format!("https://my-bucket.s3.us-west-2.amazonaws.com/models/llama/model.safetensors?versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20250101%2Fus-west-2%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}")
        };
        let d = DEFAULT_FILTERED_QUERY_PARAMS;
        let want = "36223cc7a9dcd1e6156e65921abaa135deed989244b09e1af46e284b3e6ad1c2";
        assert_eq!(
            url_id(&s3(&"aa".repeat(32)), None, None, None, None, d),
            want
        );
        assert_eq!(
            url_id(&s3(&"bb".repeat(32)), None, None, None, None, d),
            want
        );
        assert_eq!(
            url_id(&s3(&"aa".repeat(32)), None, None, None, None, &[]),
            "87d927fb1590f3c5ee9b01760ed6da2cae691ff43ed35f2fd11321e18a9a4d63"
        );
        let u = "https://example.com/files/data.tar.gz";
        let rows = [
            (
                url_id(u, None, None, None, None, d),
                "8565438f0b1b787497d7ef715b72ff12232a08e10e18470348e3d0cc5babbf52",
            ),
            (
                url_id(u, None, Some("v1"), Some("trainer"), None, d),
                "ce6bb4e8e4a959e58bf6ea28ea9ce41fa4cf7ee137449d1ba1fd6febd3aa7048",
            ),
            (
                url_id(u, Some(4194304), None, None, None, d),
                "88549968b72dd131729e04279f63da190f78c8f28bad4b62399b7347e3b429b2",
            ),
            (
                url_id(u, Some(16777216), Some("v1"), Some("trainer"), None, d),
                "058d3d1ec3ea076b4c07476845689b09aa1a2532b36d9fbb37174b29b48d67ed",
            ),
            (
                url_id(
                    "https://huggingface.co/org/model/resolve/main/model.bin",
                    Some(8388608),
                    None,
                    None,
                    Some("main"),
                    &[],
                ),
                "044d3806771eda8209e57692cdbe501b3b34397888a532f337eec8e7dc2f8c27",
            ),
            (
                url_id("https://example.com/", Some(1024), None, None, None, &[]),
                "9f7c9aafbc6f30f8f41a96ca77eeae80c5b60964b3034b0ee43ccf7b2f9e52b8",
            ),
        ];
        for (got, want) in rows {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn url_normalisation() {
        let d: Vec<String> = default_filtered_query_params();
        let cases = [
            ("https://example.com/", "https://example.com"),
            ("HTTPS://Example.COM:443", "https://example.com"),
            ("http://example.com:8080/", "http://example.com:8080"),
            ("https://example.com/dir/", "https://example.com/dir/"),
            ("https://example.com/a/./b/../c", "https://example.com/a/c"),
            ("https://example.com/a/%2e%2E/b", "https://example.com/b"),
            ("https://example.com/?", "https://example.com"),
            ("https://example.com/?x=1", "https://example.com/?x=1"),
            (
                "https://example.com?b=2&a=1&b=3",
                "https://example.com/?b=2&a=1&b=3",
            ),
            (
                "https://example.com/p?flag&q=a%20b+c&r=x/y:z~",
                "https://example.com/p?flag=&q=a+b+c&r=x%2Fy%3Az%7E",
            ),
            (
                "https://example.com/p?a=%zz&b=%2f&c=%FF",
                "https://example.com/p?a=%25zz&b=%2F&c=%EF%BF%BD",
            ),
            (
                "https://example.com/p?a=1&&b=2",
                "https://example.com/p?a=1&b=2",
            ),
            (
                "https://example.com/p?q=a;b=c",
                "https://example.com/p?q=a%3Bb%3Dc",
            ),
            (
                "https://example.com/p?Signature=s&signature=t",
                "https://example.com/p?signature=t",
            ),
            ("https://example.com/p#frag", "https://example.com/p#frag"),
            (
                "https://example.com/p?Expires=1#frag",
                "https://example.com/p#frag",
            ),
            (
                "https://example.com/#section/",
                "https://example.com/#section",
            ),
            (
                "s3://Bucket/key/?X-Amz-Signature=1&a=b",
                "s3://Bucket/key/?a=b",
            ),
            ("s3://bucket/", "s3://bucket"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_url(input, &d).unwrap(), want, "{input}");
        }
        assert!(normalize_url("not a url", &d).is_err());
    }

    #[test]
    fn host_and_peer_ids() {
        assert_eq!(
            host_id("127.0.0.1", "localhost", false),
            "127.0.0.1-localhost"
        );
        assert_eq!(
            host_id("127.0.0.1", "localhost", true),
            "127.0.0.1-localhost-seed"
        );
        assert!(peer_id("127.0.0.1", "localhost", false).starts_with("127.0.0.1-localhost-"));
        let seed = peer_id("127.0.0.1", "localhost", true);
        assert!(seed.starts_with("127.0.0.1-localhost-") && seed.ends_with("-seed"));
        let uuid = uuid::Uuid::parse_str("8f2e6c3e-6c1a-4c5e-9f0a-1b2c3d4e5f60").unwrap();
        assert_eq!(
            peer_id_with_uuid("10.0.0.5", "node-a", &uuid, true),
            "10.0.0.5-node-a-8f2e6c3e-6c1a-4c5e-9f0a-1b2c3d4e5f60-seed"
        );
    }
}
