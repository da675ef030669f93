//! The gRPC side: connecting to the daemon's unix socket, checking that it answers, and the
//! `DfdaemonDownload.DownloadTask` call with its response stream.

use crate::error::DfgetError;
use crate::progress::{Progress, Traffic};
use damselfly_core::extensions::ORIGIN_REASON_TRAILER;
use dragonfly_api::common::v2::{Download, ObjectStorage, Range, TaskType};
use dragonfly_api::dfdaemon::v2::dfdaemon_download_client::DfdaemonDownloadClient;
use dragonfly_api::dfdaemon::v2::download_task_response::Response;
use dragonfly_api::dfdaemon::v2::{DownloadTaskRequest, DownloadTaskResponse};
use hyper_util::rt::TokioIo;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// gRPC metadata key of the per-task rate limit (docs/DESIGN.md, "Per-task rate limit").
pub const RATE_LIMIT_METADATA: &str = "x-damselfly-rate-limit";

/// How long one health probe may take; a live daemon answers in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The authority is never used: every connection goes to the unix socket.
const DUMMY_URI: &str = "http://[::]:50051";

/// What a probe found on a socket path.
#[derive(Debug)]
pub enum Probe {
    /// A gRPC server answered.
    Alive(Channel),
    /// No socket, or nobody listening on it (stale file): safe to start a daemon there.
    Absent,
    /// Something accepts connections but does not answer gRPC in time (maybe still starting).
    Unresponsive,
    /// The socket cannot be used at all, e.g. permission denied.
    Unusable(String),
}

/// Opens an HTTP/2 channel whose every connection is a fresh `UnixStream` to `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { UnixStream::connect(socket).await.map(TokioIo::new) }
    });
    Endpoint::from_static(DUMMY_URI)
        .connect_timeout(PROBE_TIMEOUT)
        .connect_with_connector(connector)
        .await
}

/// Does a gRPC server answer on `socket`? Any gRPC answer counts, even "health service not
/// implemented": it proves a server is serving, which is all dfget needs to know.
pub async fn probe(socket: &Path) -> Probe {
    match UnixStream::connect(socket).await {
        Ok(_) => {}
        Err(e) if is_absent(&e) => return Probe::Absent,
        Err(e) => return Probe::Unusable(format!("cannot connect to {}: {e}", socket.display())),
    }
    let Ok(Ok(channel)) = tokio::time::timeout(PROBE_TIMEOUT, connect(socket)).await else {
        return Probe::Unresponsive;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, health.check(request)).await {
        Ok(Ok(_)) => Probe::Alive(channel),
        Ok(Err(status)) if std::error::Error::source(&status).is_none() => Probe::Alive(channel),
        Ok(Err(_)) | Err(_) => Probe::Unresponsive,
    }
}

/// Connection errors that mean "no daemon here" rather than "a daemon we may not use".
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// Everything the download request is built from, already validated.
#[derive(Debug, Clone)]
pub struct DownloadSpec {
    pub url: String,
    pub output: PathBuf,
    pub digest: Option<String>,
    /// Only these bytes: (start, length).
    pub range: Option<(u64, u64)>,
    pub headers: Vec<(String, String)>,
    pub tag: Option<String>,
    pub application: Option<String>,
    pub filtered_query_params: Vec<String>,
    pub content_for_calculating_task_id: Option<String>,
    pub piece_length: Option<u64>,
    pub priority: i32,
    pub disable_back_to_source: bool,
    /// Sent as `object_storage.insecure_skip_verify`, where Dragonfly's dfget puts it.
    pub insecure_skip_verify: bool,
    pub timeout: Duration,
    pub rate_limit: Option<u64>,
    pub overwrite: bool,
    pub force_hard_link: bool,
}

impl DownloadSpec {
    pub fn to_download(&self) -> Download {
        Download {
            url: self.url.clone(),
            digest: self.digest.clone(),
            r#type: TaskType::Standard as i32,
            tag: self.tag.clone(),
            application: self.application.clone(),
            priority: self.priority,
            filtered_query_params: self.filtered_query_params.clone(),
            request_header: merge_headers(&self.headers),
            piece_length: self.piece_length,
            output_path: Some(self.output.to_string_lossy().into_owned()),
            timeout: Some(to_proto_duration(self.timeout)),
            disable_back_to_source: self.disable_back_to_source,
            force_hard_link: self.force_hard_link,
            content_for_calculating_task_id: self.content_for_calculating_task_id.clone(),
            overwrite: self.overwrite,
            object_storage: self.insecure_skip_verify.then(|| ObjectStorage {
                insecure_skip_verify: Some(true),
                ..Default::default()
            }),
            range: self.range.map(|(start, length)| Range { start, length }),
            ..Default::default()
        }
    }

    /// The request with its metadata; the rate limit travels as metadata because the
    /// Dragonfly `Download` message has no field for it.
    pub fn to_request(&self) -> tonic::Request<DownloadTaskRequest> {
        let mut request = tonic::Request::new(DownloadTaskRequest {
            download: Some(self.to_download()),
        });
        if let Some(rate) = self.rate_limit {
            request
                .metadata_mut()
                .insert(RATE_LIMIT_METADATA, rate.into());
        }
        request
    }
}

/// The proto has one value per header name; repeated `-H` of one name are joined the way
/// HTTP folds repeated fields.
fn merge_headers(headers: &[(String, String)]) -> std::collections::HashMap<String, String> {
    let mut merged = std::collections::HashMap::<String, String>::new();
    for (name, value) in headers {
        merged
            .entry(name.clone())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    merged
}

fn to_proto_duration(d: Duration) -> prost_wkt_types::Duration {
    prost_wkt_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Always below 10^9, so it fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Runs the download call to its end, feeding progress. Dropping the returned future drops
/// the response stream, which resets the HTTP/2 stream and cancels the download daemon-side.
pub async fn download(
    channel: Channel,
    socket: &Path,
    spec: &DownloadSpec,
    progress: &Progress,
) -> Result<Traffic, DfgetError> {
    let mut client = DfdaemonDownloadClient::new(channel)
        .max_decoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE)
        .max_encoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE);
    let mut stream = client
        .download_task(spec.to_request())
        .await
        .map_err(|s| DfgetError::from_status(&s, socket))?
        .into_inner();
    let mut traffic = Traffic::default();
    loop {
        match stream.message().await {
            Ok(Some(message)) => apply(&mut traffic, progress, message),
            Ok(None) => break,
            Err(status) => return Err(DfgetError::from_status(&status, socket)),
        }
    }
    // Read after the end; a daemon that sends no reason (an official one) leaves it unset.
    if let Ok(Some(trailers)) = stream.trailers().await {
        traffic.origin_reason = trailers
            .get(ORIGIN_REASON_TRAILER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
    }
    traffic.settle();
    progress.update(&traffic);
    Ok(traffic)
}

fn apply(traffic: &mut Traffic, progress: &Progress, message: DownloadTaskResponse) {
    match message.response {
        Some(Response::DownloadTaskStartedResponse(started)) => {
            tracing::debug!(
                task_id = %message.task_id,
                peer_id = %message.peer_id,
                content_length = started.content_length,
                "download started"
            );
            traffic.content_length = Some(started.content_length);
            traffic.complete_at_start = started.is_finished;
            progress.started(traffic);
        }
        Some(Response::DownloadPieceFinishedResponse(finished)) => {
            if let Some(piece) = finished.piece {
                tracing::debug!(number = piece.number, length = piece.length, parent = ?piece.parent_id, "piece finished");
                traffic.record(&piece);
                progress.update(traffic);
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DownloadSpec {
        DownloadSpec {
            url: "http://example.com/f".into(),
            output: PathBuf::from("/tmp/f"),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            range: None,
            headers: vec![
                ("Accept".into(), "a".into()),
                ("X-Auth".into(), "t".into()),
                ("Accept".into(), "b".into()),
            ],
            tag: Some("tag".into()),
            application: None,
            filtered_query_params: vec!["Expires".into()],
            content_for_calculating_task_id: None,
            piece_length: Some(8 << 20),
            priority: 3,
            disable_back_to_source: true,
            insecure_skip_verify: true,
            timeout: Duration::from_millis(1500),
            rate_limit: Some(1234),
            overwrite: true,
            force_hard_link: false,
        }
    }

    #[test]
    fn download_message_carries_every_option() {
        let d = spec().to_download();
        assert_eq!(d.url, "http://example.com/f");
        assert_eq!(d.r#type, TaskType::Standard as i32);
        assert_eq!(d.output_path.as_deref(), Some("/tmp/f"));
        assert_eq!(d.digest, spec().digest);
        assert_eq!(d.tag.as_deref(), Some("tag"));
        assert_eq!(d.priority, 3);
        assert_eq!(d.piece_length, Some(8 << 20));
        assert_eq!(d.filtered_query_params, vec!["Expires"]);
        assert!(d.disable_back_to_source && d.overwrite && !d.force_hard_link);
        let storage = d.object_storage.clone().unwrap_or_default();
        assert_eq!(storage.insecure_skip_verify, Some(true));
        let timeout = d.timeout.unwrap_or_default();
        assert_eq!((timeout.seconds, timeout.nanos), (1, 500_000_000));
        assert_eq!(
            d.request_header.get("Accept").map(String::as_str),
            Some("a, b")
        );
        assert_eq!(
            d.request_header.get("X-Auth").map(String::as_str),
            Some("t")
        );
    }

    #[test]
    fn rate_limit_goes_into_metadata() {
        let request = spec().to_request();
        let value = request.metadata().get(RATE_LIMIT_METADATA);
        assert_eq!(value.and_then(|v| v.to_str().ok()), Some("1234"));
        let mut no_limit = spec();
        no_limit.rate_limit = None;
        assert!(no_limit
            .to_request()
            .metadata()
            .get(RATE_LIMIT_METADATA)
            .is_none());
    }

    #[tokio::test]
    async fn probe_of_a_missing_socket_is_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("none.sock");
        assert!(matches!(probe(&socket).await, Probe::Absent));
        // A stale socket file nobody listens on is absent too.
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
        assert!(matches!(probe(&socket).await, Probe::Absent));
    }
}
