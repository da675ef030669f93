//! Back-to-source: concurrent ranged GETs of the missing pieces, each streamed into storage.

use super::job::JobCtx;
use super::piece_proto;
use crate::error::DaemonError;
use crate::metrics::{self, Traffic};
use crate::scheduler_client::PeerSession;
use damselfly_core::PieceSpan;
use damselfly_storage::PieceMetadata;
use damselfly_transfer::TransferError;
use dragonfly_api::common::v2::TrafficType;
use dragonfly_api::errordetails::v2::Backend as BackendDetail;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::download_piece_back_to_source_failed_request::Response as FailureDetail;
use dragonfly_api::scheduler::v2::{
    DownloadPieceBackToSourceFailedRequest, DownloadPieceBackToSourceFinishedRequest,
};
use std::collections::{BTreeMap, VecDeque};
use tokio::task::JoinSet;
use tracing::{debug, Instrument};

/// Tries per piece for failures that may be transient (connection reset, short body).
const ORIGIN_PIECE_ATTEMPTS: u32 = 3;

type PieceResult = (PieceSpan, u32, Result<PieceMetadata, TransferError>);

/// Fetches every piece of `pending` from the origin, removing each as it lands; reports to
/// the scheduler when a session is given.
pub async fn fetch(
    job: &JobCtx<'_>,
    pending: &mut BTreeMap<u32, PieceSpan>,
    mut session: Option<&mut PeerSession>,
) -> Result<(), DaemonError> {
    let concurrency = job.ctx.config.download.back_to_source_concurrency.max(1) as usize;
    let mut queue: VecDeque<(PieceSpan, u32)> = pending.values().map(|s| (*s, 1)).collect();
    let mut running: JoinSet<PieceResult> = JoinSet::new();
    loop {
        while running.len() < concurrency {
            let Some((span, attempt)) = queue.pop_front() else {
                break;
            };
            spawn_piece(job, &mut running, span, attempt);
        }
        let Some(joined) = running.join_next().await else {
            return Ok(());
        };
        let (span, attempt, result) = joined.map_err(|e| {
            DaemonError::Status(tonic::Status::internal(format!("origin piece task: {e}")))
        })?;
        match result {
            Ok(piece) => {
                pending.remove(&span.number);
                metrics::add_traffic(Traffic::BackToSource, piece.length);
                metrics::piece_done(Traffic::BackToSource, true);
                if let Some(session) = session.as_deref_mut() {
                    let piece = piece_proto(&piece, TrafficType::BackToSource);
                    session
                        .send(PeerRequest::DownloadPieceBackToSourceFinishedRequest(
                            DownloadPieceBackToSourceFinishedRequest { piece: Some(piece) },
                        ))
                        .await;
                }
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

fn spawn_piece(
    job: &JobCtx<'_>,
    running: &mut JoinSet<PieceResult>,
    span: PieceSpan,
    attempt: u32,
) {
    let backend = job.ctx.backend.clone();
    let storage = job.ctx.storage.clone();
    let url = job.request.url.clone();
    let headers = job.request.headers.clone();
    let task_id = job.task_id().to_string();
    let limiters = job.origin_limiters();
    let piece_span = tracing::debug_span!("piece", number = span.number, source = "origin");
    running.spawn(
        async move {
            let result = backend
                .fetch_piece(&url, &headers, &storage, &task_id, span, &limiters)
                .await;
            if result.is_ok() {
                debug!(
                    task_id = %task_id,
                    piece = span.number,
                    range = %format!("{}-{}", span.offset, span.end().saturating_sub(1)),
                    source = "origin",
                    "piece downloaded"
                );
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
