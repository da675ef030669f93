//! The engine's request: a `common.v2.Download` checked and normalised once (task ID from the
//! filtered query parameters, digest, output, timeout, origin trust), whichever edge it came
//! from (the gRPC services, the proxy).

use crate::error::DaemonError;
use damselfly_core::{id::default_filtered_query_params, Digest, TaskIdSpec};
use damselfly_transfer::OriginTrust;
use dragonfly_api::common::v2::{Download, Range};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A validated download, as the engine takes it.
#[derive(Clone)]
pub struct TaskRequest {
    pub task_id: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// A piece length the caller fixed (part of the task ID).
    pub piece_length: Option<u64>,
    pub digest: Option<Digest>,
    pub output: Option<PathBuf>,
    pub overwrite: bool,
    pub force_hard_link: bool,
    pub timeout: Option<Duration>,
    pub range: Option<Range>,
    /// What the caller needs: the whole task, or the pieces covering `range` first.
    pub scope: Scope,
    /// After a ranged download, fetch the rest of the task in the background
    /// (`Download.prefetch`, the proxy's `proxy.prefetch`).
    pub prefetch: bool,
    pub disable_back_to_source: bool,
    pub need_back_to_source: bool,
    pub concurrent_piece_count: Option<u32>,
    pub rate_limit: Option<u64>,
    /// Which origin certificates this download accepts.
    pub trust: OriginTrust,
    /// The original message, forwarded verbatim to the scheduler in RegisterPeerRequest (a
    /// Dragonfly scheduler reads its fields, and hands them to the seed peer it triggers).
    pub download: Download,
}

impl TaskRequest {
    /// `rate_limit` is this download's own limit in bytes/s (`None` or 0: host-wide only).
    pub fn parse(download: Download, rate_limit: Option<u64>) -> Result<Self, DaemonError> {
        let url = check_url(&download.url)?;
        let piece_length = download
            .piece_length
            .filter(|&l| l > 0)
            .map(damselfly_core::piece::check_fixed_piece_length)
            .transpose()
            .map_err(|e| DaemonError::InvalidArgument(e.to_string()))?;
        let task_id = task_id_of(&download, piece_length)?;
        let digest = parse_digest(download.digest.as_deref())?;
        let output = parse_output(download.output_path.as_deref())?;
        let scope = Scope::of(download.range.as_ref())?;
        let timeout = download
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .filter(|t| !t.is_zero());
        let mut headers: Vec<(String, String)> = download
            .request_header
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.sort();
        Ok(Self {
            task_id,
            url,
            headers,
            piece_length,
            digest,
            output,
            overwrite: download.overwrite,
            force_hard_link: download.force_hard_link,
            timeout,
            range: download.range,
            scope,
            prefetch: download.prefetch,
            disable_back_to_source: download.disable_back_to_source,
            need_back_to_source: download.need_back_to_source,
            concurrent_piece_count: download.concurrent_piece_count.filter(|&c| c > 0),
            rate_limit: rate_limit.filter(|&r| r > 0),
            trust: origin_trust(&download),
            download,
        })
    }
}

/// What a download must bring to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every piece; the task is recorded finished and its digest checked.
    Whole,
    /// The pieces covering `[start, start + length)`, fetched first and only (a lazy read).
    /// The task ID stays the whole task's (a range is not part of it, as in Dragonfly), so
    /// the pieces serve later ranges and other hosts; the task stays unfinished.
    Range { start: u64, length: u64 },
}

impl Scope {
    fn of(range: Option<&Range>) -> Result<Self, DaemonError> {
        match range {
            None => Ok(Scope::Whole),
            Some(range) if range.length == 0 => Err(DaemonError::InvalidArgument(format!(
                "empty range at byte {}: a range must cover at least one byte",
                range.start
            ))),
            Some(range) => Ok(Scope::Range {
                start: range.start,
                length: range.length,
            }),
        }
    }

    /// The byte window `[start, end)` a caller wants, clipped to the content.
    pub fn window(self, content_length: u64) -> (u64, u64) {
        match self {
            Scope::Whole => (0, content_length),
            Scope::Range { start, length } => (
                start.min(content_length),
                start.saturating_add(length).min(content_length),
            ),
        }
    }
}

/// Dragonfly's fields: `certificate_chain` holds CA certificates (DER) for the origin, and
/// `object_storage.insecure_skip_verify` (dfget `--storage-insecure-skip-verify`) turns
/// verification off; we honour it for HTTPS origins too, since it is the only switch a caller has.
fn origin_trust(download: &Download) -> OriginTrust {
    let insecure = download
        .object_storage
        .as_ref()
        .and_then(|o| o.insecure_skip_verify)
        .unwrap_or(false);
    if insecure {
        OriginTrust::Insecure
    } else {
        OriginTrust::with_cas(download.certificate_chain.clone())
    }
}

/// Debug output ends up in logs: header names only, never their values (credentials).
impl std::fmt::Debug for TaskRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRequest")
            .field("task_id", &self.task_id)
            .field("url", &self.url)
            .field(
                "header_names",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("piece_length", &self.piece_length)
            .field("trust", &self.trust_label())
            .finish_non_exhaustive()
    }
}

impl TaskRequest {
    /// The same download narrowed to `range` (the task ID does not change: a range is not
    /// part of it), prefetching the rest afterwards when `prefetch` is set.
    pub fn with_range(mut self, range: Range, prefetch: bool) -> Result<Self, DaemonError> {
        self.scope = Scope::of(Some(&range))?;
        self.range = Some(range);
        self.prefetch = prefetch;
        self.download.range = Some(range);
        self.download.prefetch = prefetch;
        Ok(self)
    }

    fn trust_label(&self) -> &'static str {
        match self.trust {
            OriginTrust::System => "system",
            OriginTrust::WithCas(_) => "system+download CAs",
            OriginTrust::Insecure => "insecure",
        }
    }
}

/// The task ID of a download, as Dragonfly computes it (see `damselfly_core::id`).
fn task_id_of(download: &Download, piece_length: Option<u64>) -> Result<String, DaemonError> {
    let filtered = if download.filtered_query_params.is_empty() {
        default_filtered_query_params()
    } else {
        download.filtered_query_params.clone()
    };
    let revision = download
        .hugging_face
        .as_ref()
        .map(|h| h.revision.as_str())
        .or_else(|| download.model_scope.as_ref().map(|m| m.revision.as_str()))
        .or_else(|| download.open_csg.as_ref().map(|o| o.revision.as_str()))
        .filter(|r| !r.is_empty());
    TaskIdSpec {
        url: &download.url,
        tag: download.tag.as_deref().filter(|t| !t.is_empty()),
        application: download.application.as_deref().filter(|a| !a.is_empty()),
        revision,
        piece_length,
        filtered_query_params: &filtered,
        content_for_calculating_task_id: download.content_for_calculating_task_id.as_deref(),
        enable_task_id_based_blob_digest: download.enable_task_id_based_blob_digest,
    }
    .task_id()
    .map_err(|e| DaemonError::InvalidArgument(format!("invalid URL {}: {e}", download.url)))
}

/// The expected digest, if one is given.
fn parse_digest(text: Option<&str>) -> Result<Option<Digest>, DaemonError> {
    let Some(text) = text.filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    Digest::from_str(text).map(Some).map_err(|_| {
        DaemonError::InvalidArgument(format!(
            "invalid digest {text:?}: expected sha256:<64 hex>, sha512:<128 hex> or crc32:<digits>"
        ))
    })
}

/// The output path, if one is given; it must be absolute (the daemon's working directory is
/// not the caller's).
fn parse_output(path: Option<&str>) -> Result<Option<PathBuf>, DaemonError> {
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(DaemonError::InvalidArgument(format!(
            "output path {} must be absolute",
            path.display()
        )));
    }
    Ok(Some(path))
}

/// Only HTTP(S) origins have a backend here; anything else is refused up front.
fn check_url(raw: &str) -> Result<String, DaemonError> {
    let parsed = url::Url::parse(raw)
        .map_err(|e| DaemonError::InvalidArgument(format!("invalid URL {raw:?}: {e}")))?;
    match parsed.scheme() {
        "http" | "https" => Ok(raw.to_string()),
        other => Err(DaemonError::InvalidArgument(format!(
            "unsupported URL scheme {other:?} in {raw}: only http and https are supported"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn download(url: &str) -> Download {
        Download {
            url: url.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_and_validates() {
        let mut d = download("http://127.0.0.1:1/file.bin");
        d.digest = Some(format!("sha256:{}", "A".repeat(64)));
        d.output_path = Some("/tmp/out".into());
        d.timeout = prost_wkt_types::Duration::try_from(Duration::from_secs(5)).ok();
        let r = TaskRequest::parse(d, None).unwrap();
        assert_eq!(r.task_id.len(), 64);
        assert_eq!(r.digest.unwrap().encoded, "a".repeat(64));
        assert_eq!(r.timeout, Some(Duration::from_secs(5)));

        for bad in [
            download("not a url"),
            download("ftp://host/x"),
            Download {
                digest: Some("md5:abc".into()),
                ..download("http://h/x")
            },
            Download {
                output_path: Some("relative/out".into()),
                ..download("http://h/x")
            },
            // A 1-byte piece length would cut a 1 GiB file into a billion piece records.
            Download {
                piece_length: Some(1),
                ..download("http://h/x")
            },
            Download {
                piece_length: Some(damselfly_core::piece::MAX_FIXED_PIECE_LENGTH + 1),
                ..download("http://h/x")
            },
        ] {
            let err = TaskRequest::parse(bad, None).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        }
    }

    #[test]
    fn default_filter_applies_to_signed_urls() {
        let a = TaskRequest::parse(download("http://h/x?X-Amz-Signature=1"), None);
        let b = TaskRequest::parse(download("http://h/x?X-Amz-Signature=2"), None);
        assert_eq!(a.unwrap().task_id, b.unwrap().task_id);
    }

    #[test]
    fn trust_comes_from_dragonfly_fields() {
        let plain = TaskRequest::parse(download("https://h/x"), None).unwrap();
        assert_eq!(plain.trust, OriginTrust::System);
        let with_ca = Download {
            certificate_chain: vec![vec![1, 2], vec![1, 2]],
            ..download("https://h/x")
        };
        let parsed = TaskRequest::parse(with_ca, None).unwrap();
        assert_eq!(parsed.trust, OriginTrust::WithCas(vec![vec![1, 2]]));
        let insecure = Download {
            object_storage: Some(dragonfly_api::common::v2::ObjectStorage {
                insecure_skip_verify: Some(true),
                ..Default::default()
            }),
            ..download("https://h/x")
        };
        let parsed = TaskRequest::parse(insecure, None).unwrap();
        assert!(parsed.trust.is_insecure());
    }

    #[test]
    fn debug_output_has_no_credentials() {
        let mut d = download("https://h/x");
        d.request_header
            .insert("Authorization".into(), "Bearer secret-token".into());
        let text = format!("{:?}", TaskRequest::parse(d, Some(1)).unwrap());
        assert!(text.contains("Authorization"), "{text}");
        assert!(!text.contains("secret-token"), "{text}");
    }
}
