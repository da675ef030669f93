//! Back-to-source: concurrent ranged GETs of the missing pieces, each streamed into storage,
//! or, for origins that ignore Range, one GET of the whole body cut into pieces in order.

use super::demand::{BulkGuard, BulkStep};
use super::job::JobCtx;
use super::piece_proto;
use super::request::Scope;
use crate::error::DaemonError;
use crate::metrics::{self, Traffic};
use crate::scheduler_client::{PeerSession, PieceDigests};
use damselfly_core::digest::{DigestAlgorithm, TRUSTED_PIECE_DIGEST_ALGORITHM};
use damselfly_core::PieceSpan;
use damselfly_storage::WrittenPiece;
use damselfly_transfer::{OriginPiece, TransferError};
use dragonfly_api::common::v2::TrafficType;
use dragonfly_api::errordetails::v2::Backend as BackendDetail;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::download_piece_back_to_source_failed_request::Response as FailureDetail;
use dragonfly_api::scheduler::v2::{
    DownloadPieceBackToSourceFailedRequest, DownloadPieceBackToSourceFinishedRequest,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn, Instrument};

/// Tries per piece for failures that may be transient (connection reset, short body).
const ORIGIN_PIECE_ATTEMPTS: u32 = 3;

/// A bulk job's pieces on their way from the origin, each marked in the task's demand.
type BulkInFlight = HashMap<u32, BulkGuard>;
type PieceResult = (PieceSpan, u32, Result<WrittenPiece, TransferError>);

/// Fetches every piece of `pending` from the origin, removing each as it lands; reports to
/// the scheduler when a session is given.
pub async fn fetch(
    job: &JobCtx<'_>,
    pending: &mut BTreeMap<u32, PieceSpan>,
    mut session: Option<&mut PeerSession>,
) -> Result<(), DaemonError> {
    if !job.origin_ranges.load(Ordering::Relaxed) {
        return fetch_in_order(job, pending, session).await;
    }
    let mut queue: VecDeque<(PieceSpan, u32)> = pending.values().map(|s| (*s, 1)).collect();
    let mut running: JoinSet<PieceResult> = JoinSet::new();
    let mut bulk = BulkInFlight::new();
    let mut demand = job.demand.subscribe();
    let trusted = trusted_hash(session.as_deref());
    loop {
        let blocked = start_pieces(job, &mut queue, pending, &mut running, &mut bulk, trusted)?;
        if running.is_empty() {
            if !blocked {
                return Ok(());
            }
            // Demand of this task is being served first; look again when it changes.
            demand_changed(&mut demand).await?;
            continue;
        }
        let joined = tokio::select! {
            joined = running.join_next() => joined,
            _ = demand.changed(), if blocked => continue,
        };
        let Some(joined) = joined else { continue };
        let (span, attempt, result) =
            joined.map_err(|e| DaemonError::io("origin piece task", std::io::Error::other(e)))?;
        bulk.remove(&span.number); // landed or failed: a range waiting on it looks again
        match result {
            Ok(written) => {
                pending.remove(&span.number);
                landed(job, written, session.as_deref_mut()).await;
            }
            Err(error) => {
                metrics::piece_done(Traffic::BackToSource, false);
                if let Some(session) = session.as_deref_mut() {
                    session.send(failure_report(span.number, &error)).await;
                }
                let transient = error.is_transient();
                let error = DaemonError::from(error);
                if transient && attempt < ORIGIN_PIECE_ATTEMPTS {
                    debug!(piece = span.number, attempt, %error, "origin piece failed, retrying");
                    queue.push_back((span, attempt + 1));
                } else {
                    running.abort_all();
                    return Err(error);
                }
            }
        }
    }
}

async fn demand_changed(demand: &mut watch::Receiver<u64>) -> Result<(), DaemonError> {
    demand.changed().await.map_err(|_| {
        DaemonError::io(
            "waiting for demand",
            std::io::Error::other("the task's demand is gone"),
        )
    })
}

/// A scheduler that keeps trusted piece digests gets each back-to-source piece's trusted
/// digest, computed as the piece is written; for others only the crc32 is worth computing.
fn trusted_hash(session: Option<&PeerSession>) -> Option<DigestAlgorithm> {
    session
        .filter(|s| s.piece_digests() == PieceDigests::Kept)
        .map(|_| TRUSTED_PIECE_DIGEST_ALGORITHM)
}

/// Starts queued pieces up to `concurrency`; returns whether the queue waits for demand.
/// A whole-task (bulk) job starts nothing while ranges of its task are being fetched, and
/// skips the pieces they stored meanwhile (see [`super::demand`]); a range's own job is
/// demand and never waits.
fn start_pieces(
    job: &JobCtx<'_>,
    queue: &mut VecDeque<(PieceSpan, u32)>,
    pending: &mut BTreeMap<u32, PieceSpan>,
    running: &mut JoinSet<PieceResult>,
    in_flight: &mut BulkInFlight,
    trusted: Option<DigestAlgorithm>,
) -> Result<bool, DaemonError> {
    let bulk = job.request.scope == Scope::Whole;
    let concurrency = job.ctx.config.download.back_to_source_concurrency.max(1) as usize;
    while running.len() < concurrency {
        let Some(&(span, attempt)) = queue.front() else {
            return Ok(false);
        };
        if bulk {
            if job.demand.bulk_step(&[span.number]) == BulkStep::Yield {
                return Ok(true);
            }
            if job.ctx.storage.piece(job.task_id(), span.number)?.is_some() {
                queue.pop_front();
                pending.remove(&span.number);
                continue;
            }
            in_flight.insert(span.number, job.demand.start_bulk(span.number));
        }
        queue.pop_front();
        spawn_piece(job, running, span, attempt, trusted);
    }
    Ok(false)
}

/// Counts a piece from the origin and tells the scheduler, so children can fetch it. A
/// scheduler that keeps trusted piece digests gets the piece's trusted (`blake3:`) digest in
/// the report (children check what parents send against it), hashed as the piece was written
/// (read back only for a piece another job had recorded first); others get the stored
/// `crc32:` as before.
async fn landed(job: &JobCtx<'_>, written: WrittenPiece, session: Option<&mut PeerSession>) {
    let piece = &written.piece;
    metrics::add_traffic(Traffic::BackToSource, piece.length);
    job.ctx.uploads.downloaded(piece.length);
    metrics::piece_done(Traffic::BackToSource, true);
    let Some(session) = session else {
        return;
    };
    let mut report = piece_proto(piece, TrafficType::BackToSource);
    if session.piece_digests() == PieceDigests::Kept {
        let span = PieceSpan {
            number: piece.number,
            offset: piece.offset,
            length: piece.length,
        };
        let digest = match written.trusted {
            Some(digest) => Ok(digest.to_string()),
            None => job.ctx.storage.trusted_digest(job.task_id(), span).await,
        };
        match digest {
            Ok(digest) => report.digest = digest,
            // The crc32 report still lets children fetch it, checked by crc32 only.
            Err(error) => {
                warn!(piece = piece.number, %error, "cannot hash the piece for its report")
            }
        }
    }
    session
        .send(PeerRequest::DownloadPieceBackToSourceFinishedRequest(
            DownloadPieceBackToSourceFinishedRequest {
                piece: Some(report),
            },
        ))
        .await;
}

/// Origins that ignore Range: one GET of the whole body, cut into pieces in order (pieces we
/// already hold are read past). Each piece is reported as it lands, so peers fetch it from
/// us while the rest still streams and the origin still serves the task once.
async fn fetch_in_order(
    job: &JobCtx<'_>,
    pending: &mut BTreeMap<u32, PieceSpan>,
    mut session: Option<&mut PeerSession>,
) -> Result<(), DaemonError> {
    let mut attempt = 1;
    loop {
        match stream_pieces(job, pending, session.as_deref_mut()).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() && attempt < ORIGIN_PIECE_ATTEMPTS => {
                debug!(attempt, %error, "origin stream broke, starting it again");
                attempt += 1;
            }
            Err(error) => {
                metrics::piece_done(Traffic::BackToSource, false);
                if let (Some(session), Some(&number)) = (session, pending.keys().next()) {
                    session.send(failure_report(number, &error)).await;
                }
                return Err(error.into());
            }
        }
    }
}

/// One pass over the body, up to the last missing piece.
async fn stream_pieces(
    job: &JobCtx<'_>,
    pending: &mut BTreeMap<u32, PieceSpan>,
    mut session: Option<&mut PeerSession>,
) -> Result<(), TransferError> {
    let Some(&last) = pending.keys().next_back() else {
        return Ok(());
    };
    let request = job.request;
    let storage = &job.ctx.storage;
    let trusted = trusted_hash(session.as_deref());
    let mut body = job
        .backend
        .open_body(&request.url, &request.headers, &job.origin_limiters())
        .await?;
    let mut result = Ok(());
    for number in 0..=last {
        let written = match storage
            .write_streamed_piece(job.task_id(), number, &mut body, trusted)
            .await
        {
            Ok(Some(written)) => written,
            Ok(None) => {
                result = Err(TransferError::Protocol(format!(
                    "{} ended before piece {number}",
                    request.url
                )));
                break;
            }
            Err(error) => {
                result = Err(error.into());
                break;
            }
        };
        if pending.remove(&number).is_some() {
            let piece = &written.piece;
            log_piece(job.task_id(), piece.number, piece.offset, piece.length);
            landed(job, written, session.as_deref_mut()).await;
        }
    }
    body.settle().await;
    result
}

fn log_piece(task_id: &str, number: u32, offset: u64, length: u64) {
    debug!(
        task_id = %task_id,
        piece = number,
        range = %format!("{}-{}", offset, (offset + length).saturating_sub(1)),
        source = "origin",
        "piece downloaded"
    );
}

fn spawn_piece(
    job: &JobCtx<'_>,
    running: &mut JoinSet<PieceResult>,
    span: PieceSpan,
    attempt: u32,
    trusted: Option<DigestAlgorithm>,
) {
    let backend = job.backend.clone();
    let storage = job.ctx.storage.clone();
    let url = job.request.url.clone();
    let headers = job.request.headers.clone();
    let task_id = job.task_id().to_string();
    let limiters = job.origin_limiters();
    let piece_span = tracing::debug_span!("piece", number = span.number, source = "origin");
    running.spawn(
        async move {
            let piece = OriginPiece {
                url: &url,
                headers: &headers,
                storage: &storage,
                task_id: &task_id,
                span,
                limiters: &limiters,
                trusted,
            };
            let result = backend.fetch_piece(&piece).await;
            if result.is_ok() {
                log_piece(&task_id, span.number, span.offset, span.length);
            }
            (span, attempt, result)
        }
        .instrument(piece_span),
    );
}

fn failure_report(number: u32, error: &TransferError) -> PeerRequest {
    let status_code = match error {
        TransferError::OriginStatus { status, .. } => Some(i32::from(*status)),
        _ => None,
    };
    PeerRequest::DownloadPieceBackToSourceFailedRequest(DownloadPieceBackToSourceFailedRequest {
        piece_number: Some(number),
        response: Some(FailureDetail::Backend(BackendDetail {
            message: error.to_string(),
            header: Default::default(),
            status_code,
        })),
    })
}
