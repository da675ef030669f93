//! The `common.v2.Download` of a P2P request: the URL, the client's headers for the origin, and
//! Dragonfly's `X-Dragonfly-*` request headers that shape the task (tag, application,
//! priority, piece length, filtered query params, task ID inputs).

use super::blob::BlobSettings;
use super::passthrough::forwardable;
use dragonfly_api::common::v2::Download;
use http::header::HeaderMap;
use http::request::Parts;
use std::collections::HashMap;
use url::Url;

const TAG: &str = "x-dragonfly-tag";
const APPLICATION: &str = "x-dragonfly-application";
const PRIORITY: &str = "x-dragonfly-priority";
const PIECE_LENGTH: &str = "x-dragonfly-piece-length";
const FILTERED_QUERY_PARAMS: &str = "x-dragonfly-filtered-query-params";
const CONTENT_FOR_TASK_ID: &str = "x-dragonfly-content-for-calculating-task-id";
const BLOB_DIGEST_TASK_ID: &str = "x-dragonfly-enable-task-id-based-blob-digest";
/// `true|false`: whether a Range request prefetches the whole blob (overrides
/// `proxy.prefetch`), Dragonfly's header.
const PREFETCH: &str = "x-dragonfly-prefetch";
/// Request headers not sent to the origin by the engine: it asks for pieces with its own
/// `Range`, and piece bytes must be stored as they are (no content coding).
const ENGINE_DROPPED_HEADERS: &[&str] = &["range", "if-range", "accept-encoding", "content-length"];

/// The download for `url`; an unusable `X-Dragonfly-*` value is the client's error (400).
pub fn download(
    parts: &Parts,
    url: &Url,
    digest: Option<String>,
    filtered_query_params: Vec<String>,
    settings: &BlobSettings,
) -> Result<Download, String> {
    let headers = &parts.headers;
    let filtered_query_params = match text(headers, FILTERED_QUERY_PARAMS) {
        Some(list) => list.split(',').map(|p| p.trim().to_string()).collect(),
        None => filtered_query_params,
    };
    let enable_task_id_based_blob_digest = match text(headers, BLOB_DIGEST_TASK_ID) {
        Some(value) => parse(BLOB_DIGEST_TASK_ID, &value)?,
        None => settings.enable_task_id_based_blob_digest,
    };
    Ok(Download {
        url: url.to_string(),
        digest,
        request_header: engine_headers(headers),
        filtered_query_params,
        tag: text(headers, TAG),
        application: text(headers, APPLICATION),
        priority: optional(headers, PRIORITY)?.unwrap_or_default(),
        piece_length: optional(headers, PIECE_LENGTH)?,
        content_for_calculating_task_id: text(headers, CONTENT_FOR_TASK_ID),
        enable_task_id_based_blob_digest,
        disable_back_to_source: settings.disable_back_to_source,
        certificate_chain: settings.certificate_chain.clone(),
        ..Default::default()
    })
}

/// Whether a Range request prefetches the rest of the blob: the request's
/// `X-Dragonfly-Prefetch`, else `proxy.prefetch`.
pub fn prefetch(parts: &Parts, default: bool) -> Result<bool, String> {
    Ok(optional(&parts.headers, PREFETCH)?.unwrap_or(default))
}

/// The client's headers the origin must see (credentials, Accept, User-Agent).
fn engine_headers(headers: &HeaderMap) -> HashMap<String, String> {
    forwardable(headers)
        .iter()
        .filter(|(name, _)| !ENGINE_DROPPED_HEADERS.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn optional<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, String> {
    text(headers, name).map(|v| parse(name, &v)).transpose()
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid {name} header: {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder();
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const SETTINGS: BlobSettings = BlobSettings {
        enable_task_id_based_blob_digest: true,
        disable_back_to_source: false,
        certificate_chain: Vec::new(),
        prefetch: false,
        range_hedge: true,
    };

    #[test]
    fn dragonfly_headers_shape_the_download() {
        let url = Url::parse("http://r/v2/a/blobs/x?ns=r").unwrap();
        let p = parts(&[
            ("authorization", "Bearer t"),
            ("range", "bytes=0-1"),
            ("x-dragonfly-tag", "t1"),
            ("x-dragonfly-priority", "3"),
            ("x-dragonfly-piece-length", "8388608"),
            ("x-dragonfly-filtered-query-params", "ns, sig"),
            ("x-dragonfly-enable-task-id-based-blob-digest", "false"),
        ]);
        let d = download(&p, &url, None, vec![], &SETTINGS).unwrap();
        assert_eq!(d.tag.as_deref(), Some("t1"));
        assert_eq!(d.priority, 3);
        assert_eq!(d.piece_length, Some(8 * 1024 * 1024));
        assert_eq!(d.filtered_query_params, vec!["ns", "sig"]);
        assert!(!d.enable_task_id_based_blob_digest);
        assert_eq!(
            d.request_header.get("authorization").map(String::as_str),
            Some("Bearer t")
        );
        assert!(!d.request_header.contains_key("range"));
        assert!(!d.request_header.contains_key("x-dragonfly-tag"));

        let bad = parts(&[("x-dragonfly-piece-length", "big")]);
        assert!(download(&bad, &url, None, vec![], &SETTINGS).is_err());
    }

    #[test]
    fn prefetch_header_overrides_the_config() {
        assert_eq!(prefetch(&parts(&[]), true), Ok(true));
        assert_eq!(
            prefetch(&parts(&[("x-dragonfly-prefetch", "false")]), true),
            Ok(false)
        );
        assert_eq!(
            prefetch(&parts(&[("x-dragonfly-prefetch", "true")]), false),
            Ok(true)
        );
        assert!(prefetch(&parts(&[("x-dragonfly-prefetch", "maybe")]), false).is_err());
    }
}
