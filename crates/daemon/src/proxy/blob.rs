//! GETs that go through the swarm: the download engine fetches the task (from peers or the
//! origin, shared with every other caller of the same task), and the response streams the
//! task's bytes from storage in order as its pieces land, so the first byte leaves long before
//! the blob is complete. A `Range` is answered from the pieces covering it.
//!
//! A whole-blob response holds back its last chunk until the engine has checked the blob's
//! digest (named by its URL): on a mismatch the connection is cut short, so the client sees an
//! error instead of a complete body, and the engine drops the cached copy.

use super::access::{Access, AccessCheck};
use super::body::{self, ProxyBody};
use super::guard::Kind;
use super::headers;
use super::hedge::{self, Hedge};
use super::passthrough::forwardable;
use super::range::{parse_ranges, ByteRange, RangeError};
use crate::engine::{Engine, EngineEvent, EngineEvents, Started, TaskRequest};
use crate::error::DownloadError;
use bytes::Bytes;
use damselfly_core::extensions::ORIGIN_REASON_HEADER;
use damselfly_core::id::blob_digest_string;
use damselfly_storage::{ContentReader, PieceMetadata, Storage, StorageError, WriteState};
use dragonfly_api::common::v2::Range;
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, Instrument};
use url::Url;

/// Response header naming the task that served a request (Dragonfly's).
pub const TASK_ID_HEADER: &str = "x-dragonfly-task-id";
/// Response header telling whether the task was already complete here (a cache hit).
pub const TASK_FINISHED_HEADER: &str = "x-dragonfly-task-download-finished";
/// Bytes read from storage and sent per body frame.
const CHUNK_SIZE: u64 = 1024 * 1024;
/// Body frames buffered towards a slow client.
const FRAME_QUEUE: usize = 8;
/// OCI registries name the blob's digest in this response header.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Headers describing the origin's framing of its body, replaced by ours.
const FRAMING_HEADERS: &[&str] = &["content-length", "content-range", "accept-ranges", "date"];

/// What the P2P path needs from the proxy.
pub struct BlobSettings {
    pub enable_task_id_based_blob_digest: bool,
    pub disable_back_to_source: bool,
    /// `proxy.registryMirror.cert` as DER, sent as each download's `certificate_chain`.
    pub certificate_chain: Vec<Vec<u8>>,
    /// `proxy.prefetch`: a Range request fetches the whole blob afterwards.
    pub prefetch: bool,
    /// `proxy.rangeHedge`: a cold range no peer can serve sooner is read from the origin
    /// directly while its pieces fill the cache (see [`super::hedge`]).
    pub range_hedge: bool,
}

/// Why the engine did not serve a request; the caller passes it through instead, so the
/// client gets the origin's own answer (a 401 challenge, a registry 404 body).
pub enum NotServed {
    /// Not started (origin refused, unreachable, unusable request): pass through.
    Fallback(String),
    /// Answer this and do not pass through; the kind is what the proxy counts.
    Answer(Box<Response<ProxyBody>>, Kind),
}

pub async fn serve(
    engine: &Arc<Engine>,
    settings: &BlobSettings,
    access: &AccessCheck,
    parts: &Parts,
    url: &Url,
    filtered_query_params: Vec<String>,
) -> Result<Response<ProxyBody>, NotServed> {
    let ranges = requested_ranges(parts)?;
    let digest = blob_digest_string(url.as_str());
    if digest.is_none() && url.path().contains("/blobs/sha256:") {
        return Err(bad_request(&format!(
            "invalid blob digest in {}",
            url.path()
        )));
    }
    let download = headers::download(parts, url, digest.clone(), filtered_query_params, settings)
        .map_err(|reason| bad_request(&reason))?;
    // The task may be here already, or in flight for another client: only bytes this client
    // may read leave the cache.
    let credentials: Vec<(String, String)> = download
        .request_header
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Access::Refused(reason) = access.check(url, &credentials).await {
        return Err(NotServed::Fallback(reason));
    }
    let prefetch =
        headers::prefetch(parts, settings.prefetch).map_err(|reason| bad_request(&reason))?;
    let request = TaskRequest::parse(download, None)
        .map_err(|error| not_started(settings, DownloadError::rejected(error)))?;
    let known = known_length(engine, &request.task_id);
    let wanted = Wanted {
        prefetch,
        known_length: known,
        digest,
    };
    if ranges.len() > 1 {
        return super::multipart::serve(engine, settings, request, &ranges, wanted).await;
    }
    let range = ranges.first().copied();
    let (request, hedge) = match range.and_then(|r| demand_range(r, known)) {
        Some(demand) => {
            let request = request
                .with_range(demand, prefetch)
                .map_err(|error| not_started(settings, DownloadError::rejected(error)))?;
            let hedge = Hedge::arm(engine, &request, settings.range_hedge && !prefetch);
            (request, hedge)
        }
        None => (request, Hedge::Off),
    };
    let mut events = engine.download(request);
    let started = wait_started(&mut events, settings).await?;
    let storage = engine.context().storage.clone();
    respond(storage, events, started, (range, hedge), wanted.digest)
}

/// What a request asks of the task besides its bytes.
pub struct Wanted {
    /// Fetch the rest of the blob after the range(s).
    pub prefetch: bool,
    /// The blob's length, when this host laid the task out already.
    pub known_length: Option<u64>,
    /// The blob's digest named by the URL.
    pub digest: Option<String>,
}

/// The client's `Range` ranges (none: the whole blob). Another unit or bad syntax goes to
/// the origin, which knows how to answer it.
fn requested_ranges(parts: &Parts) -> Result<Vec<ByteRange>, NotServed> {
    let Some(value) = parts.headers.get(header::RANGE) else {
        return Ok(Vec::new());
    };
    value
        .to_str()
        .ok()
        .and_then(|v| parse_ranges(v).ok())
        .ok_or_else(|| NotServed::Fallback("unsupported Range".into()))
}

fn known_length(engine: &Engine, task_id: &str) -> Option<u64> {
    engine
        .context()
        .storage
        .task(task_id)
        .ok()
        .flatten()
        .map(|task| task.content_length)
        .filter(|&length| length > 0)
}

pub(super) fn bad_request(reason: &str) -> NotServed {
    NotServed::Answer(
        Box::new(body::text(StatusCode::BAD_REQUEST, "bad_request", reason)),
        Kind::BadRequest,
    )
}

/// The bytes the engine fetches first for a client's range: explicit bounds as written; an
/// open end or a suffix only once the blob's length is known here (else the whole blob is
/// downloaded, its bytes streamed from the start of the range as they land).
pub fn demand_range(range: ByteRange, known_length: Option<u64>) -> Option<Range> {
    let (start, end) = match (range, known_length) {
        (
            ByteRange::From {
                first,
                last: Some(last),
            },
            _,
        ) => (first, last.checked_add(1)?),
        (range, Some(total)) => range.resolve(total).ok()?,
        (_, None) => return None,
    };
    (end > start).then(|| Range {
        start,
        length: end - start,
    })
}

/// The first event: the task's length and origin headers, or why it did not start.
pub(super) async fn wait_started(
    events: &mut EngineEvents,
    settings: &BlobSettings,
) -> Result<Started, NotServed> {
    loop {
        match events.next().await {
            Some(Ok(EngineEvent::Started(started))) => return Ok(started),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(not_started(settings, error)),
            None => return Err(not_started(settings, DownloadError::JobLost)),
        }
    }
}

/// A download that did not start goes to the origin instead, unless the operator forbade it,
/// or the content was corrupt (the origin would serve the same wrong bytes): then a 502.
pub(super) fn not_started(settings: &BlobSettings, error: DownloadError) -> NotServed {
    let message = error.to_string();
    if settings.disable_back_to_source || matches!(error, DownloadError::Corrupt(_)) {
        NotServed::Answer(
            Box::new(body::text(StatusCode::BAD_GATEWAY, "p2p", &message)),
            Kind::P2pFailed,
        )
    } else {
        NotServed::Fallback(message)
    }
}

fn respond(
    storage: Storage,
    events: EngineEvents,
    started: Started,
    (range, hedge): (Option<ByteRange>, Hedge),
    digest: Option<String>,
) -> Result<Response<ProxyBody>, NotServed> {
    let task_id = started.task_id.clone();
    let total = started.shape.content_length;
    let (status, start, end) = match range.map(|r| r.resolve(total)) {
        None => (StatusCode::OK, 0, total),
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(Err(RangeError)) => {
            return Err(NotServed::Answer(
                Box::new(unsatisfiable(total, &task_id)),
                Kind::P2p,
            ))
        }
    };
    let headers = response_headers(&started, status, (start, end), digest.as_deref());
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    // A range cannot be checked against the whole blob's digest: no hold-back.
    let pump = Pump::new(
        storage,
        &task_id,
        (start, end),
        status == StatusCode::OK,
        tx,
    )
    .with_hedge(hedge, started.origin.is_some());
    let span = tracing::info_span!("blob_body", %task_id, start, end);
    tokio::spawn(
        async move {
            pump.run(events, started.landed).await;
        }
        .instrument(span),
    );
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(ReceiverStream::new(
        rx,
    ))));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The origin's headers about the object, with our framing of `[start, end)` and Dragonfly's
/// task headers.
pub(super) fn response_headers(
    started: &Started,
    status: StatusCode,
    (start, end): (u64, u64),
    digest: Option<&str>,
) -> HeaderMap {
    let total = started.shape.content_length;
    let mut headers = origin_headers(&started.shape.response_header);
    set(
        &mut headers,
        header::CONTENT_LENGTH.as_str(),
        &(end - start).to_string(),
    );
    set(&mut headers, header::ACCEPT_RANGES.as_str(), "bytes");
    set(&mut headers, TASK_ID_HEADER, &started.task_id);
    let finished = if started.cached { "true" } else { "false" };
    set(&mut headers, TASK_FINISHED_HEADER, finished);
    // Ours alone: an origin's header of that name is not passed on.
    headers.remove(ORIGIN_REASON_HEADER);
    if let Some(reason) = &started.origin {
        set(&mut headers, ORIGIN_REASON_HEADER, &reason.header_value());
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{total}", end.saturating_sub(1));
        set(&mut headers, header::CONTENT_RANGE.as_str(), &value);
    }
    if let Some(digest) = digest {
        if !headers.contains_key(DOCKER_CONTENT_DIGEST) {
            set(&mut headers, DOCKER_CONTENT_DIGEST, digest);
        }
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        set(
            &mut headers,
            header::CONTENT_TYPE.as_str(),
            "application/octet-stream",
        );
    }
    headers
}

pub(super) fn unsatisfiable(total: u64, task_id: &str) -> Response<ProxyBody> {
    let mut response = body::text(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range",
        "the range is outside the blob",
    );
    set(
        response.headers_mut(),
        header::CONTENT_RANGE.as_str(),
        &format!("bytes */{total}"),
    );
    set(response.headers_mut(), TASK_ID_HEADER, task_id);
    response
}

/// The origin's headers about the object, minus framing (we frame the body ourselves).
fn origin_headers(origin: &[(String, String)]) -> HeaderMap {
    let mut raw = HeaderMap::new();
    for (name, value) in origin {
        if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            raw.append(name, value);
        }
    }
    forwardable(&raw)
}

pub(super) fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        header::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}

pub(super) type Frames = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// Resolves when more of the task may be in the file before its next piece lands: the
/// followed origin write moved on or ended, or (following none) an origin write started.
async fn written_more(
    partial: &mut Option<(u64, watch::Receiver<WriteState>)>,
    origin_writes: &mut watch::Receiver<u64>,
) {
    let changed = match partial {
        Some((_, progress)) => progress.changed().await,
        None => origin_writes.changed().await,
    };
    if changed.is_err() {
        // The followed write ended: look again (its piece lands as an engine event). A gone
        // storage never changes again.
        match partial.take() {
            Some(_) => {}
            None => std::future::pending::<()>().await,
        }
    }
}

/// The engine's next event; never resolves once its stream was set aside.
async fn next_event(
    events: &mut Option<EngineEvents>,
) -> Option<Result<EngineEvent, DownloadError>> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// The client went away; the download goes on for the cache and other callers.
struct ClientGone;

/// What woke the pump.
enum Step {
    /// The engine's next event; `None` when its stream ended.
    Event(Option<Result<EngineEvent, DownloadError>>),
    /// More of an origin write may be in the file.
    Written,
    /// A chunk of the origin's answer at its offset; `None` when the hedge ended or failed.
    Hedged(Option<(u64, Bytes)>),
}

/// Whether the pump goes on, or is done (and whether every byte went out).
enum Flow {
    Continue,
    Done(bool),
}

/// Copies the task's bytes `[next, end)` to the client as their pieces land.
pub(super) struct Pump {
    storage: Storage,
    task_id: String,
    next: u64,
    end: u64,
    /// Landed pieces: offset → length.
    pieces: BTreeMap<u64, u64>,
    reader: Option<ContentReader>,
    hold_last: bool,
    /// The chunk held back until the digest is checked.
    pending: Option<Bytes>,
    tx: Frames,
    /// The origin write of the piece holding `next`, if one runs: its piece offset and how
    /// far its bytes are written. Followed so a cold range's bytes go out as they arrive.
    partial: Option<(u64, watch::Receiver<WriteState>)>,
    /// Changes when an origin write starts, so a pump waiting for its piece looks again.
    origin_writes: watch::Receiver<u64>,
    /// The range's bytes read straight from the origin, when no peer serves them sooner.
    hedge: Hedge,
}

impl Pump {
    /// Copies `[start, end)`; `hold_last` keeps the last chunk until the engine checked the
    /// whole blob's digest.
    pub(super) fn new(
        storage: Storage,
        task_id: &str,
        (start, end): (u64, u64),
        hold_last: bool,
        tx: Frames,
    ) -> Self {
        Self {
            origin_writes: storage.watch_piece_writes(),
            storage,
            task_id: task_id.to_string(),
            next: start,
            end,
            pieces: BTreeMap::new(),
            reader: None,
            hold_last,
            pending: None,
            tx,
            partial: None,
            hedge: Hedge::Off,
        }
    }

    /// Lets the pump read its range from the origin (never with `hold_last`); `decided`: the
    /// job went to the origin before the response started.
    pub(super) fn with_hedge(mut self, hedge: Hedge, decided: bool) -> Self {
        if !self.hold_last {
            self.hedge = match hedge {
                Hedge::Armed { source, now } => Hedge::Armed {
                    source,
                    now: now || decided,
                },
                other => other,
            };
        }
        self
    }

    /// Whether every byte went out; on failure the client's body was cut short.
    pub(super) async fn run(mut self, events: EngineEvents, landed: Vec<PieceMetadata>) -> bool {
        for piece in landed {
            self.pieces.insert(piece.offset, piece.length);
        }
        if self.drain().await.is_err() {
            return false;
        }
        if self.covered() {
            return true;
        }
        self.hedge.start(false, (self.next, self.end));
        // The engine's events, until its stream ends while the origin's answer goes on.
        let mut events = Some(events);
        loop {
            let step = tokio::select! {
                event = next_event(&mut events) => Step::Event(event),
                () = written_more(&mut self.partial, &mut self.origin_writes) => Step::Written,
                chunk = self.hedge.next() => Step::Hedged(chunk),
            };
            match self.take(step, &mut events).await {
                Flow::Continue => {}
                Flow::Done(complete) => return complete,
            }
        }
    }

    /// A range is complete once covered: the download goes on without us (prefetch).
    fn covered(&self) -> bool {
        !self.hold_last && self.next >= self.end
    }

    /// Handles one wake-up, then sends what is there.
    async fn take(&mut self, step: Step, events: &mut Option<EngineEvents>) -> Flow {
        match step {
            Step::Written => {}
            Step::Hedged(Some((offset, bytes))) => {
                if let Some(bytes) = hedge::unsent(self.next, offset, bytes) {
                    self.next += bytes.len() as u64;
                    if self.emit(bytes).await.is_err() {
                        return Flow::Done(false);
                    }
                }
            }
            Step::Hedged(None) if events.is_none() => {
                self.abort("the origin's answer and the download both ended early".into())
                    .await;
                return Flow::Done(false);
            }
            Step::Hedged(None) => {}
            Step::Event(event) => {
                if let Some(flow) = self.on_event(event, events).await {
                    return flow;
                }
            }
        }
        if self.drain().await.is_err() {
            return Flow::Done(false);
        }
        if self.covered() {
            return Flow::Done(true);
        }
        Flow::Continue
    }

    /// An engine event; `Some` when it ends the pump.
    async fn on_event(
        &mut self,
        event: Option<Result<EngineEvent, DownloadError>>,
        events: &mut Option<EngineEvents>,
    ) -> Option<Flow> {
        match event {
            Some(Ok(EngineEvent::Piece(piece, _))) => {
                self.pieces.insert(piece.offset, piece.length);
            }
            // The job went to the origin: no peer serves this range sooner than the origin.
            Some(Ok(EngineEvent::Origin(_))) => self.hedge.start(true, (self.next, self.end)),
            // The headers are gone by now: a later origin reason has no way out.
            Some(Ok(EngineEvent::Started(_))) => {}
            // Digest checked: the held-back chunk may go.
            Some(Ok(EngineEvent::Finished)) => return Some(Flow::Done(self.finish().await)),
            // The origin's answer may still complete the range.
            Some(Err(error)) if self.hedge.is_running() => {
                info!(%error, "P2P download failed; the range goes on from the origin");
                *events = None;
            }
            None if self.hedge.is_running() => *events = None,
            Some(Err(error)) => {
                info!(%error, "P2P download failed; cutting the response short");
                self.abort(error.to_string()).await;
                return Some(Flow::Done(false));
            }
            None => {
                self.abort("the download ended without an outcome".into())
                    .await;
                return Some(Flow::Done(false));
            }
        }
        None
    }

    /// The engine is done and the digest matched: release the held chunk, or fail if bytes
    /// are missing.
    async fn finish(&mut self) -> bool {
        if self.next < self.end {
            let message = format!("download ended at byte {} of {}", self.next, self.end);
            self.abort(message).await;
            return false;
        }
        if let Some(last) = self.pending.take() {
            if self.tx.send(Ok(Frame::data(last))).await.is_err() {
                return false;
            }
        }
        debug!("response complete");
        true
    }

    async fn abort(&self, message: String) {
        super::guard::count(Kind::P2pFailed);
        let _ = self.tx.send(Err(std::io::Error::other(message))).await;
    }

    /// Sends every byte from `next` that is in the file: landed pieces, and what an origin
    /// write in progress has written.
    async fn drain(&mut self) -> Result<(), ClientGone> {
        while self.next < self.end {
            let Some(available) = self.available_until(self.next) else {
                break;
            };
            let upto = available.min(self.end);
            while self.next < upto {
                let len = (upto - self.next).min(CHUNK_SIZE);
                let chunk = match self.read(self.next, len).await {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        self.abort(format!("reading the cached task: {error}"))
                            .await;
                        return Err(ClientGone);
                    }
                };
                self.next += len;
                self.emit(chunk).await?;
            }
        }
        Ok(())
    }

    /// End of the bytes from `offset` on that are in the file, if any: the landed piece
    /// holding it, else how far an origin write of that piece has come (origin bytes need no
    /// check; a parent's bytes are never shown before their piece is checked and recorded).
    fn available_until(&mut self, offset: u64) -> Option<u64> {
        if let Some(end) = self.covered_until(offset) {
            self.partial = None;
            return Some(end);
        }
        self.partial = self.storage.piece_progress(&self.task_id, offset);
        let (start, progress) = self.partial.as_mut()?;
        // Marked seen: a fresh receiver counts every advance before it as unseen, and
        // `written_more` would wake at once, again and again, while the write stands still.
        let written = progress.borrow_and_update().written_to;
        (*start <= offset && written > offset).then_some(written)
    }

    /// End of the landed piece holding `offset`, if any.
    fn covered_until(&self, offset: u64) -> Option<u64> {
        let (start, len) = self.pieces.range(..=offset).next_back()?;
        let end = start + len;
        (end > offset).then_some(end)
    }

    async fn emit(&mut self, chunk: Bytes) -> Result<(), ClientGone> {
        let out = if self.hold_last {
            self.pending.replace(chunk)
        } else {
            Some(chunk)
        };
        match out {
            Some(bytes) => self
                .tx
                .send(Ok(Frame::data(bytes)))
                .await
                .map_err(|_| ClientGone),
            None => Ok(()),
        }
    }

    async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes, StorageError> {
        let reader = self
            .reader
            .get_or_insert_with(|| self.storage.content_reader(&self.task_id));
        let size = usize::try_from(len).map_err(std::io::Error::other)?;
        Ok(Bytes::from(reader.read_at(offset, size).await?))
    }
}
