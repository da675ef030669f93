//! The network side of a round of parents: one `SyncPieces` stream per parent and the Vortex
//! piece fetches, their news turned into [`conversation::Event`]s. Which parent to open or
//! drop and which piece to fetch from whom is decided by [`crate::conversation`]; this module
//! only carries it out.
//!
//! [`conversation::Event`]: crate::conversation::Event

use super::job::JobCtx;
use super::trust::TrustedDigests;
use crate::conversation::{Event, Fault, ParentKey};
use crate::metrics::{self, PieceCheckKind, Traffic};
use damselfly_core::digest::is_trusted_piece_digest;
use damselfly_core::extensions::{
    has_feature, FEATURES_METADATA_KEY, FEATURE_CUT_THROUGH, RATION_EXCLUSIVE, RATION_METADATA_KEY,
};
use damselfly_core::PieceSpan;
use damselfly_storage::{PieceMetadata, StorageError};
use damselfly_transfer::{FetchedPiece, PieceFetcher, PieceServer, TransferError};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::SyncPiecesRequest;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, Instrument};

/// Connection setup limit towards a parent's gRPC port.
const PARENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Availability messages queued from all SyncPieces streams of a round.
const SYNC_QUEUE: usize = 1024;

/// What a fetch task hands back: the piece, its parent, whether that parent is a seed (for
/// the traffic metrics), and the result.
type FetchResult = (u32, ParentKey, bool, Result<FetchedPiece, TransferError>);

/// The streams and fetches of the current round.
pub struct Links<'a, 'j> {
    job: &'a JobCtx<'j>,
    /// Ends every stream of the round; a child of the daemon's abort (not of its stop:
    /// a download in flight at shutdown goes on from its parents during the grace).
    round_stop: CancellationToken,
    /// Ends one parent's stream, so a rationing seed stops handing it pieces.
    parent_stops: HashMap<ParentKey, CancellationToken>,
    news_tx: mpsc::Sender<Event>,
    news: mpsc::Receiver<Event>,
    running: JoinSet<FetchResult>,
    /// How to abort each running fetch, by piece.
    fetches: HashMap<u32, AbortHandle>,
    /// Pieces stored and not yet reported to the scheduler.
    landed: HashMap<u32, PieceMetadata>,
    /// The last local failure, for the error the download returns.
    fatal: Option<TransferError>,
    /// What parents' pieces are checked against.
    trust: Arc<TrustedDigests>,
}

impl<'a, 'j> Links<'a, 'j> {
    pub fn new(job: &'a JobCtx<'j>, trust: TrustedDigests) -> Self {
        let (news_tx, news) = mpsc::channel(SYNC_QUEUE);
        Self {
            trust: Arc::new(trust),
            job,
            round_stop: job.ctx.lifecycle.abort_child(),
            parent_stops: HashMap::new(),
            news_tx,
            news,
            running: JoinSet::new(),
            fetches: HashMap::new(),
            landed: HashMap::new(),
            fatal: None,
        }
    }

    /// Opens the parent's SyncPieces stream.
    pub fn open(&mut self, parent: ParentKey, grpc: SocketAddr, interested: Vec<u32>) {
        let stop = self.round_stop.child_token();
        self.parent_stops.insert(parent, stop.clone());
        let mut request = tonic::Request::new(SyncPiecesRequest {
            host_id: self.job.ctx.host.id.clone(),
            task_id: self.job.task_id().to_string(),
            interested_piece_numbers: interested,
        });
        if self.job.ctx.config.download.asks_for_cut_through() {
            request.metadata_mut().insert(
                FEATURES_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static(FEATURE_CUT_THROUGH),
            );
        }
        let link = ParentLink {
            parent,
            grpc,
            tls: self.job.ctx.tls.upload_client.clone(),
        };
        tokio::spawn(sync_parent(
            link,
            request,
            self.job.ctx.pieces.clone(),
            self.news_tx.clone(),
            stop,
        ));
    }

    /// Closes the parent's SyncPieces stream; its fetches in flight go on.
    pub fn drop_parent(&mut self, parent: ParentKey) {
        if let Some(stop) = self.parent_stops.get(&parent) {
            stop.cancel();
        }
    }

    /// Closes every stream and aborts every fetch: the round is over, and nothing it started
    /// may reach the next one (whose parent keys start again from zero).
    pub fn end_round(&mut self) {
        self.round_stop.cancel();
        self.round_stop = self.job.ctx.lifecycle.abort_child();
        self.parent_stops.clear();
        (self.news_tx, self.news) = mpsc::channel(SYNC_QUEUE);
        // Dropping the set aborts its tasks; a fresh one never yields their results.
        self.running = JoinSet::new();
        self.fetches.clear();
    }

    /// Fetches a piece from a parent's Vortex server (TCP or QUIC) into storage.
    pub fn fetch(
        &mut self,
        parent: ParentKey,
        parent_id: String,
        seed: bool,
        span: PieceSpan,
        vortex: PieceServer,
    ) {
        let pieces = self.job.ctx.pieces.clone();
        let storage = self.job.ctx.storage.clone();
        let task_id = self.job.task_id().to_string();
        let limiters = self.job.peer_limiters();
        let timeout = self.job.ctx.config.download.piece_timeout;
        let trust = Arc::clone(&self.trust);
        let span_info = tracing::debug_span!("piece", number = span.number, source = %parent_id);
        let fetch = async move {
            debug!(piece = span.number, "piece requested");
            let trusted = trust.digest_of(span.number).await;
            let result = pieces
                .download_piece(
                    vortex,
                    &parent_id,
                    trusted.as_deref(),
                    &task_id,
                    span,
                    &storage,
                    &limiters,
                    timeout,
                )
                .await;
            if result.is_ok() {
                debug!(
                    task_id = %task_id,
                    piece = span.number,
                    range = %format!("{}-{}", span.offset, span.end().saturating_sub(1)),
                    source = %parent_id,
                    "piece downloaded"
                );
            }
            (span.number, parent, seed, result)
        };
        let handle = self.running.spawn(fetch.instrument(span_info));
        self.fetches.insert(span.number, handle);
    }

    /// How far the write of each piece in flight has come, for the move policy; `None` with
    /// nothing in flight.
    pub fn fetch_progress(&self) -> Option<Event> {
        if self.fetches.is_empty() {
            return None;
        }
        let storage = &self.job.ctx.storage;
        let written_to = self
            .fetches
            .keys()
            .map(|&number| {
                // Nothing published: the fetch has not written a byte (its request waits at
                // the parent, or for the piece's previous writer).
                let written_to = storage
                    .piece_write_progress(self.job.task_id(), number)
                    .map_or(0, |progress| progress.borrow().written_to);
                (number, written_to)
            })
            .collect();
        Some(Event::FetchProgress { written_to })
    }

    /// Aborts the fetch of `number` (it moved to a faster parent).
    pub fn abort_fetch(&mut self, number: u32) {
        if let Some(handle) = self.fetches.remove(&number) {
            handle.abort();
        }
    }

    /// The next news of the round: a fetch that ended or a SyncPieces message. Waits forever
    /// when there is none to come; cancel-safe, for a `select!`.
    pub async fn next_event(&mut self) -> Event {
        loop {
            tokio::select! {
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    // A fetch task that panicked or was aborted has nothing to report.
                    if let Ok(result) = joined {
                        return self.settle(result);
                    }
                }
                Some(event) = self.news.recv() => return event,
            }
        }
    }

    /// Counts a finished fetch and keeps what the report or the error needs.
    fn settle(&mut self, (number, parent, seed, result): FetchResult) -> Event {
        self.fetches.remove(&number);
        let traffic = Traffic::RemotePeer { seed };
        match result {
            Ok(FetchedPiece { piece, delivery }) => {
                metrics::add_traffic(traffic, piece.length);
                self.job.ctx.uploads.downloaded(piece.length);
                metrics::piece_done(traffic, true);
                let cost = piece.cost;
                self.landed.insert(number, piece);
                Event::PieceFetched {
                    parent,
                    number,
                    cost,
                    delivery,
                }
            }
            Err(error) => {
                metrics::piece_done(traffic, false);
                let fault = fault_of(&error);
                let description = error.to_string();
                if fault == Fault::Local {
                    self.fatal = Some(error);
                }
                Event::PieceFailed {
                    parent,
                    number,
                    fault,
                    error: description,
                }
            }
        }
    }

    /// The stored piece to report as finished.
    pub fn take_landed(&mut self, number: u32) -> Option<PieceMetadata> {
        self.landed.remove(&number)
    }

    /// The local failure that failed the download.
    pub fn take_fatal(&mut self) -> Option<TransferError> {
        self.fatal.take()
    }
}

/// Whose fault a failed fetch was: our own disk (no other parent can fix it), a parent whose
/// bytes failed a digest check (a liar or a corrupted disk: it is kept out of the task), or a
/// parent that simply failed this time.
fn fault_of(error: &TransferError) -> Fault {
    match error {
        TransferError::Storage(
            StorageError::NoSpace(_) | StorageError::Io(_) | StorageError::Db(_),
        ) => Fault::Local,
        TransferError::Storage(StorageError::DigestMismatch { expected, .. }) => {
            let check = if is_trusted_piece_digest(expected) {
                PieceCheckKind::Trusted
            } else {
                PieceCheckKind::Crc32
            };
            metrics::piece_rejected(check);
            Fault::Forged
        }
        TransferError::ArrivalStopped { .. } => Fault::Withdrawn,
        _ => Fault::Parent,
    }
}

/// Where a parent's upload server is and how to reach it.
struct ParentLink {
    parent: ParentKey,
    grpc: SocketAddr,
    /// `upload.client.*`: the parent must prove the address we dial.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Streams one parent's piece availability into the round.
async fn sync_parent(
    link: ParentLink,
    request: tonic::Request<SyncPiecesRequest>,
    pieces: PieceFetcher,
    news: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    let parent = link.parent;
    let error = tokio::select! {
        result = stream_pieces(link, request, &pieces, &news) => result.err(),
        _ = stop.cancelled() => return,
    };
    let _ = news.send(Event::SyncEnded { parent, error }).await;
}

/// Forwards the parent's announcements until its stream ends; `Err` with why it broke.
async fn stream_pieces(
    link: ParentLink,
    request: tonic::Request<SyncPiecesRequest>,
    pieces: &PieceFetcher,
    news: &mpsc::Sender<Event>,
) -> Result<(), String> {
    let ParentLink { parent, grpc, tls } = link;
    let endpoint = Endpoint::from_shared(format!("http://{grpc}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(PARENT_CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = damselfly_tls::grpc::channel(endpoint, tls.as_ref())
        .await
        .map_err(|e| format!("connect {grpc}: {e}"))?;
    let mut client = DfdaemonUploadClient::new(channel)
        .max_decoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE)
        .max_encoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE);
    let response = client
        .sync_pieces(request)
        .await
        .map_err(|s| s.to_string())?;
    let rationed = response
        .metadata()
        .get(RATION_METADATA_KEY)
        .is_some_and(|v| v.as_bytes() == RATION_EXCLUSIVE.as_bytes());
    let cut_through = offers_cut_through(response.metadata());
    if rationed && news.send(Event::RationExclusive { parent }).await.is_err() {
        return Ok(()); // the round is over
    }
    let mut stream = response.into_inner();
    while let Some(piece) = stream.message().await.map_err(|s| s.to_string())? {
        let ip = piece.ip.parse::<IpAddr>().unwrap_or(grpc.ip());
        let port = |p: Option<i32>| p.and_then(|p| u16::try_from(p).ok());
        let Some(vortex) =
            pieces.choose(ip, port(piece.tcp_port), port(piece.quic_port), cut_through)
        else {
            return Err(format!("parent {grpc} announced no usable piece port"));
        };
        let event = Event::PieceAvailable {
            parent,
            number: piece.number,
            vortex,
        };
        if news.send(event).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Whether the parent said it forwards pieces still arriving (it answered our request's
/// feature in its SyncPieces response metadata; official parents never do).
fn offers_cut_through(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get(FEATURES_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|list| has_feature(list, FEATURE_CUT_THROUGH))
}
