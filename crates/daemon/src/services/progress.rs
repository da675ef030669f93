//! The gRPC edge of the engine: a `DownloadTask` request becomes a [`TaskRequest`], and the
//! engine's events become `DownloadTaskResponse`s (a started message, then one per piece); a
//! failure becomes the status its stage and cause call for (DESIGN.md "Errors users see").

use super::BoxStream;
use crate::engine::{piece_proto, traffic_type, EngineEvent, EngineEvents, Started, TaskRequest};
use crate::error::{DaemonError, DownloadError};
use damselfly_core::extensions::ORIGIN_REASON_TRAILER;
use damselfly_core::OriginReason;
use dragonfly_api::common::v2::{Download, Range};
use dragonfly_api::dfdaemon::v2::download_task_response::Response;
use dragonfly_api::dfdaemon::v2::{
    DownloadPieceFinishedResponse, DownloadTaskResponse, DownloadTaskStartedResponse,
};
use futures::StreamExt;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// gRPC metadata carrying a per-download rate limit in bytes/s (the Download message has no
/// such field; see DESIGN.md "Per-task rate limit").
pub const RATE_LIMIT_METADATA: &str = "x-damselfly-rate-limit";

/// The per-task limit in the request metadata; a malformed value is the caller's error.
pub fn rate_limit(metadata: &MetadataMap) -> Result<Option<u64>, DaemonError> {
    let Some(value) = metadata.get(RATE_LIMIT_METADATA) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| DaemonError::InvalidArgument(format!("{RATE_LIMIT_METADATA} is not text")))?;
    let bytes: u64 = text.trim().parse().map_err(|_| {
        DaemonError::InvalidArgument(format!(
            "{RATE_LIMIT_METADATA} must be bytes per second, got {text:?}"
        ))
    })?;
    Ok((bytes > 0).then_some(bytes))
}

/// Normalises the download; an unusable one answers as the stream's only item, as the
/// engine's own failures do, so callers see every error the same way.
pub fn task_request(
    download: Download,
    rate_limit: Option<u64>,
) -> Result<TaskRequest, BoxStream<DownloadTaskResponse>> {
    TaskRequest::parse(download, rate_limit).map_err(|error| {
        let status = Status::from(DownloadError::rejected(error));
        Box::pin(futures::stream::once(async move { Err(status) })) as BoxStream<_>
    })
}

/// The engine's events as `DownloadTaskResponse`s for a caller on `host_id`; `range` is
/// echoed in the started message, as Dragonfly does. A download that took bytes from the
/// origin ends with its reason in the trailers (`ORIGIN_REASON_TRAILER`, next to the OK
/// status), which official clients ignore.
pub fn responses(
    host_id: String,
    range: Option<Range>,
    events: EngineEvents,
) -> BoxStream<DownloadTaskResponse> {
    let stream = events
        .scan(Edge::default(), move |edge, event| {
            let message = match event {
                Err(error) => Some(Err(Status::from(error))),
                Ok(EngineEvent::Started(started)) => {
                    edge.task_id.clone_from(&started.task_id);
                    edge.peer_id.clone_from(&started.peer_id);
                    edge.origin.clone_from(&started.origin);
                    Some(Ok(Response::DownloadTaskStartedResponse(started_message(
                        started, range,
                    ))))
                }
                Ok(EngineEvent::Origin(reason)) => {
                    edge.origin = Some(reason);
                    None
                }
                Ok(EngineEvent::Piece(piece, source)) => Some(Ok(
                    Response::DownloadPieceFinishedResponse(DownloadPieceFinishedResponse {
                        piece: Some(piece_proto(&piece, traffic_type(source))),
                    }),
                )),
                // tonic sends a status item as the trailers and ends the stream; with code OK
                // the call still succeeds.
                Ok(EngineEvent::Finished) => edge.origin.take().map(|r| Err(origin_trailer(&r))),
            };
            let item = message.map(|message| {
                message.map(|response| DownloadTaskResponse {
                    host_id: host_id.clone(),
                    task_id: edge.task_id.clone(),
                    peer_id: edge.peer_id.clone(),
                    response: Some(response),
                })
            });
            std::future::ready(Some(item))
        })
        .filter_map(std::future::ready);
    Box::pin(stream)
}

/// What the edge remembers across events: the IDs (piece events do not repeat them, the
/// started event names them) and the origin reason, sent last.
#[derive(Default)]
struct Edge {
    task_id: String,
    peer_id: String,
    origin: Option<OriginReason>,
}

/// The OK status that ends a download which took bytes from the origin, with the reason.
fn origin_trailer(reason: &OriginReason) -> Status {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(reason.header_value()) {
        metadata.insert(ORIGIN_REASON_TRAILER, value);
    }
    Status::with_metadata(Code::Ok, "", metadata)
}

fn started_message(started: Started, range: Option<Range>) -> DownloadTaskStartedResponse {
    DownloadTaskStartedResponse {
        content_length: started.shape.content_length,
        range,
        response_header: started.shape.response_header.into_iter().collect(),
        pieces: started
            .landed
            .iter()
            .map(|p| piece_proto(p, traffic_type(crate::engine::PieceSource::of(p))))
            .collect(),
        is_finished: started.cached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_metadata() {
        let mut md = MetadataMap::new();
        assert_eq!(rate_limit(&md).unwrap(), None);
        md.insert(RATE_LIMIT_METADATA, "1048576".parse().unwrap());
        assert_eq!(rate_limit(&md).unwrap(), Some(1_048_576));
        md.insert(RATE_LIMIT_METADATA, "fast".parse().unwrap());
        assert!(rate_limit(&md).is_err());
    }
}
