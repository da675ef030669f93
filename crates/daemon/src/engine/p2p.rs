//! The AnnouncePeer conversation of one download (reference §1.4):
//! Register → decision → Started → pieces from parents (reported one by one) → Reschedule …
//! → Finished, or back-to-source with its own Started/Finished pair.

use super::job::JobCtx;
use super::{origin, parents};
use crate::error::DaemonError;
use crate::scheduler_client::{Decision, PeerIds, PeerSession};
use damselfly_core::{PieceLayout, PieceSpan};
use dragonfly_api::common::v2::{Download, Peer};
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::{
    DownloadPeerBackToSourceFailedRequest, DownloadPeerBackToSourceFinishedRequest,
    DownloadPeerBackToSourceStartedRequest, DownloadPeerFailedRequest, DownloadPeerFinishedRequest,
    DownloadPeerStartedRequest, RegisterPeerRequest, ReschedulePeerRequest,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{info, warn};

/// How long to wait for the scheduler to close the stream after our terminal request.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Early re-scheduling rounds to get off seed-only parents (see `parents::round`).
const MAX_SEED_ONLY_REFRESHES: u32 = 1;

pub async fn download(
    job: &JobCtx<'_>,
    layout: PieceLayout,
    mut pending: BTreeMap<u32, PieceSpan>,
) -> Result<(), DaemonError> {
    let ctx = job.ctx;
    if ctx.schedulers.is_empty() {
        return without_scheduler(job, &mut pending, "no scheduler is configured").await;
    }
    let ids = PeerIds {
        host_id: ctx.host.id.clone(),
        task_id: job.task_id().to_string(),
        peer_id: job.peer_id.to_string(),
    };
    let register = RegisterPeerRequest {
        download: Some(register_download(job, &layout)),
    };
    let host = ctx.host.to_proto();
    let interval = ctx.config.scheduler.announce_interval;
    let session = match ctx
        .schedulers
        .open_peer_session(ids, register, &host, interval)
        .await
    {
        Ok(session) => session,
        Err(error) => return without_scheduler(job, &mut pending, &error.to_string()).await,
    };
    converse(job, session, &mut pending).await
}

/// The decision loop, as a small state machine over the session.
async fn converse(
    job: &JobCtx<'_>,
    mut session: PeerSession,
    pending: &mut BTreeMap<u32, PieceSpan>,
) -> Result<(), DaemonError> {
    let config = &job.ctx.config.scheduler;
    let mut decisions = 0u32;
    let mut refreshes = 0u32;
    let mut started = false;
    // A decision that arrived in the middle of a round, to act on instead of asking again.
    let mut interrupt: Option<Decision> = None;
    // Parents pushed while no round listened; they join the next round.
    let mut pushed: Vec<Peer> = Vec::new();
    loop {
        let next = match interrupt.take() {
            Some(decision) => Ok(decision),
            None => session.next_decision(config.schedule_timeout).await,
        };
        let decision = match next {
            Ok(decision) => decision,
            Err(error) => return without_scheduler(job, pending, &error.to_string()).await,
        };
        decisions += 1;
        let parents = match decision {
            Decision::BackToSource(description) => {
                let reason = description.unwrap_or_else(|| "scheduler asked for it".into());
                return back_to_source(job, session, pending, &reason).await;
            }
            Decision::Empty | Decision::MetadataOnly if pending.is_empty() => {
                session.send(started_request()).await;
                session.finish(finished_request(), CLOSE_WAIT).await;
                return Ok(());
            }
            Decision::Empty | Decision::MetadataOnly => {
                // The scheduler thinks the task is empty but the origin said otherwise.
                return back_to_source(job, session, pending, "scheduler sent no parents").await;
            }
            Decision::Normal(mut parents) => {
                for peer in pushed.drain(..) {
                    if !parents.iter().any(|p| p.id == peer.id) {
                        parents.push(peer);
                    }
                }
                parents
            }
        };
        if !started {
            session.send(started_request()).await;
            started = true;
        }
        // One early refresh per download, and never with the last decision.
        let may_refresh =
            refreshes < MAX_SEED_ONLY_REFRESHES && decisions + 1 < config.max_schedule_count;
        let outcome = parents::round(job, &mut session, &parents, pending, may_refresh).await;
        if let Some(error) = outcome.fatal {
            let failed = PeerRequest::DownloadPeerFailedRequest(DownloadPeerFailedRequest {
                description: Some(error.to_string()),
            });
            session.finish(failed, CLOSE_WAIT).await;
            return Err(error.into());
        }
        if pending.is_empty() {
            session.finish(finished_request(), CLOSE_WAIT).await;
            return Ok(());
        }
        if let Some(decision) = outcome.interrupt {
            interrupt = Some(decision);
            continue;
        }
        for decision in session.take_buffered() {
            match decision {
                Decision::Normal(peers) => pushed.extend(peers),
                other => interrupt = Some(other),
            }
        }
        if interrupt.is_some() {
            continue;
        }
        if decisions >= config.max_schedule_count {
            let reason = format!("{decisions} scheduling decisions left pieces missing");
            return back_to_source(job, session, pending, &reason).await;
        }
        let description = if outcome.refresh {
            refreshes += 1;
            format!(
                "{} pieces missing; looking for non-seed parents",
                pending.len()
            )
        } else {
            format!("{} pieces missing after a parent round", pending.len())
        };
        info!(
            remaining = pending.len(),
            failed_parents = outcome.failed.len(),
            refresh = outcome.refresh,
            "asking the scheduler for other parents"
        );
        session
            .send(PeerRequest::ReschedulePeerRequest(ReschedulePeerRequest {
                candidate_parents: outcome.failed,
                description: Some(description),
            }))
            .await;
    }
}

/// Back-to-source reported on the session.
async fn back_to_source(
    job: &JobCtx<'_>,
    mut session: PeerSession,
    pending: &mut BTreeMap<u32, PieceSpan>,
    reason: &str,
) -> Result<(), DaemonError> {
    if job.request.disable_back_to_source {
        let failed = PeerRequest::DownloadPeerFailedRequest(DownloadPeerFailedRequest {
            description: Some(reason.to_string()),
        });
        session.finish(failed, CLOSE_WAIT).await;
        return Err(DaemonError::BackToSourceDisabled {
            url: job.request.url.clone(),
            reason: reason.to_string(),
        });
    }
    info!(
        reason,
        remaining = pending.len(),
        "downloading from the origin"
    );
    session
        .send(PeerRequest::DownloadPeerBackToSourceStartedRequest(
            DownloadPeerBackToSourceStartedRequest {
                description: Some(reason.to_string()),
            },
        ))
        .await;
    let result = origin::fetch(job, pending, Some(&mut session)).await;
    let terminal = match &result {
        Ok(()) => PeerRequest::DownloadPeerBackToSourceFinishedRequest(
            DownloadPeerBackToSourceFinishedRequest {},
        ),
        Err(error) => PeerRequest::DownloadPeerBackToSourceFailedRequest(
            DownloadPeerBackToSourceFailedRequest {
                description: Some(error.to_string()),
            },
        ),
    };
    session.finish(terminal, CLOSE_WAIT).await;
    result
}

/// No usable scheduler: straight to the origin, with a warning, unless that is disabled.
async fn without_scheduler(
    job: &JobCtx<'_>,
    pending: &mut BTreeMap<u32, PieceSpan>,
    reason: &str,
) -> Result<(), DaemonError> {
    if job.request.disable_back_to_source {
        return Err(DaemonError::BackToSourceDisabled {
            url: job.request.url.clone(),
            reason: format!("scheduler unavailable: {reason}"),
        });
    }
    warn!(reason, url = %job.request.url, "scheduler unreachable; downloading from the origin");
    origin::fetch(job, pending, None).await
}

fn started_request() -> PeerRequest {
    PeerRequest::DownloadPeerStartedRequest(DownloadPeerStartedRequest {})
}

fn finished_request() -> PeerRequest {
    PeerRequest::DownloadPeerFinishedRequest(DownloadPeerFinishedRequest {})
}

/// The caller's Download plus what we learned from the origin, as the official client sends.
fn register_download(job: &JobCtx<'_>, layout: &PieceLayout) -> Download {
    let mut download = job.request.download.clone();
    download.output_path = None;
    download.actual_content_length = Some(layout.content_length);
    download.actual_piece_length = Some(layout.piece_length);
    download.actual_piece_count = Some(u64::from(layout.piece_count()));
    download.concurrent_piece_count = Some(
        job.request
            .concurrent_piece_count
            .unwrap_or(job.ctx.config.download.concurrent_piece_count),
    );
    if download.filtered_query_params.is_empty() {
        download.filtered_query_params = damselfly_core::id::default_filtered_query_params();
    }
    download
}
