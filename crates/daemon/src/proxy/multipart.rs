//! Range requests with several ranges, answered `206 multipart/byteranges` (RFC 9110
//! §14.6): each part is a boundary line, its `Content-Type` and `Content-Range`, a blank line
//! and its bytes; a closing boundary ends the body. Each range is its own ranged download
//! (its pieces demanded at once, all ranges in parallel); the body copies them in the
//! client's order as their pieces land.

use super::blob::{
    demand_range, not_started, response_headers, set, unsatisfiable, wait_started, BlobSettings,
    NotServed, Pump, Wanted,
};
use super::body::ProxyBody;
use super::guard::Kind;
use super::range::ByteRange;
use crate::engine::{Engine, EngineEvents, Started, TaskRequest};
use crate::error::DownloadError;
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

/// Body frames buffered towards a slow client.
const FRAME_QUEUE: usize = 8;

/// The boundary between parts. Blob bytes may contain anything, and the parts are framed
/// by their `Content-Range` lengths, so a fixed token is as safe as a random one.
pub const BOUNDARY: &str = "damselfly-byteranges-3d6b1f0a9c";

/// The response's `Content-Type`.
pub fn content_type() -> String {
    format!("multipart/byteranges; boundary={BOUNDARY}")
}

/// What precedes the bytes `[start, end)` of a blob of `total` bytes.
pub fn part_header(content_type: &str, (start, end): (u64, u64), total: u64) -> String {
    format!(
        "\r\n--{BOUNDARY}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {start}-{}/{total}\r\n\r\n",
        end.saturating_sub(1)
    )
}

/// What follows the last part.
pub fn closing() -> String {
    format!("\r\n--{BOUNDARY}--\r\n")
}

/// The body's exact length, so the client gets a `Content-Length`.
pub fn body_length(content_type: &str, parts: &[(u64, u64)], total: u64) -> u64 {
    let framing: u64 = parts
        .iter()
        .map(|&part| part_header(content_type, part, total).len() as u64 + (part.1 - part.0))
        .sum();
    framing + closing().len() as u64
}

/// RFC 9110 §14.2: a server may coalesce or refuse ranges that overlap; we serve them as
/// asked, but ignore parts that are empty or beyond the end (unsatisfiable ones), so a
/// request is refused (416) only when no part can be served.
pub fn satisfiable(parts: &[Option<(u64, u64)>]) -> Vec<(u64, u64)> {
    parts
        .iter()
        .flatten()
        .copied()
        .filter(|(s, e)| s < e)
        .collect()
}

/// One part being downloaded: its bytes and its download.
struct Part {
    window: (u64, u64),
    events: EngineEvents,
    started: Started,
}

/// Answers several ranges of one blob. The blob's length comes from this host's copy or from
/// the first range with explicit bounds; without either (`bytes=-5,-10` of a blob never seen
/// here) the origin answers.
pub async fn serve(
    engine: &Arc<Engine>,
    settings: &BlobSettings,
    request: TaskRequest,
    ranges: &[ByteRange],
    wanted: Wanted,
) -> Result<Response<ProxyBody>, NotServed> {
    let total = match wanted.known_length {
        Some(total) => total,
        None => {
            let Some(first) = ranges.iter().find_map(|&r| demand_range(r, None)) else {
                return Err(NotServed::Fallback(
                    "several ranges of a blob of unknown length".into(),
                ));
            };
            let part = start_part(engine, settings, &request, first, false).await?;
            part.started.shape.content_length
        }
    };
    let windows = satisfiable(
        &ranges
            .iter()
            .map(|r| r.resolve(total).ok())
            .collect::<Vec<_>>(),
    );
    if windows.is_empty() {
        return Err(NotServed::Answer(
            Box::new(unsatisfiable(total, &request.task_id)),
            Kind::P2p,
        ));
    }
    let mut parts = Vec::with_capacity(windows.len());
    for &(start, end) in &windows {
        let range = dragonfly_api::common::v2::Range {
            start,
            length: end - start,
        };
        parts.push(start_part(engine, settings, &request, range, wanted.prefetch).await?);
    }
    Ok(respond(engine, parts, total, wanted.digest.as_deref()))
}

async fn start_part(
    engine: &Arc<Engine>,
    settings: &BlobSettings,
    request: &TaskRequest,
    range: dragonfly_api::common::v2::Range,
    prefetch: bool,
) -> Result<Part, NotServed> {
    let request = request
        .clone()
        .with_range(range, prefetch)
        .map_err(|error| not_started(settings, DownloadError::rejected(error)))?;
    let mut events = engine.download(request);
    let started = wait_started(&mut events, settings).await?;
    Ok(Part {
        window: (range.start, range.start + range.length),
        events,
        started,
    })
}

fn respond(
    engine: &Arc<Engine>,
    parts: Vec<Part>,
    total: u64,
    digest: Option<&str>,
) -> Response<ProxyBody> {
    let first = &parts[0].started;
    let windows: Vec<(u64, u64)> = parts.iter().map(|p| p.window).collect();
    let part_type = first
        .shape
        .response_header
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map_or("application/octet-stream".to_string(), |(_, v)| v.clone());
    let length = body_length(&part_type, &windows, total);
    let mut headers = response_headers(first, StatusCode::OK, (0, length), digest);
    set(&mut headers, header::CONTENT_TYPE.as_str(), &content_type());
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let storage = engine.context().storage.clone();
    let task_id = first.task_id.clone();
    let span = tracing::info_span!("byteranges_body", %task_id, parts = parts.len());
    tokio::spawn(
        async move {
            for part in parts {
                let head = part_header(&part_type, part.window, total);
                if tx.send(Ok(Frame::data(Bytes::from(head)))).await.is_err() {
                    return;
                }
                let pump = Pump::new(storage.clone(), &task_id, part.window, false, tx.clone());
                if !pump.run(part.events, part.started.landed).await {
                    return;
                }
            }
            let _ = tx.send(Ok(Frame::data(Bytes::from(closing())))).await;
        }
        .instrument(span),
    );
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(ReceiverStream::new(
        rx,
    ))));
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a body on the boundary and reads each part back: what a client does.
    fn parse(body: &[u8]) -> Vec<(String, Vec<u8>)> {
        let text = String::from_utf8_lossy(body).to_string();
        let delimiter = format!("\r\n--{BOUNDARY}");
        let mut parts = Vec::new();
        for chunk in text.split(&delimiter).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let (head, bytes) = chunk.split_once("\r\n\r\n").unwrap();
            let range = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Range: "))
                .unwrap()
                .to_string();
            parts.push((range, bytes.as_bytes().to_vec()));
        }
        parts
    }

    #[test]
    fn a_body_reads_back_part_by_part_and_its_length_is_exact() {
        let blob: Vec<u8> = (0..100u8).collect();
        let parts = [(0u64, 10u64), (50, 51), (90, 100)];
        let mut body = Vec::new();
        for &(start, end) in &parts {
            body.extend(part_header("application/octet-stream", (start, end), 100).as_bytes());
            body.extend(&blob[start as usize..end as usize]);
        }
        body.extend(closing().as_bytes());
        assert_eq!(
            body.len() as u64,
            body_length("application/octet-stream", &parts, 100)
        );
        let read = parse(&body);
        assert_eq!(read.len(), 3);
        assert_eq!(read[0], ("bytes 0-9/100".into(), blob[0..10].to_vec()));
        assert_eq!(read[1], ("bytes 50-50/100".into(), vec![50]));
        assert_eq!(read[2], ("bytes 90-99/100".into(), blob[90..100].to_vec()));
    }

    #[test]
    fn unsatisfiable_parts_are_left_out() {
        assert_eq!(
            satisfiable(&[Some((0, 5)), None, Some((7, 7))]),
            vec![(0, 5)]
        );
        assert!(satisfiable(&[None]).is_empty());
    }
}
