//! The AnnouncePeer conversation of one download (reference §1.4):
//! Register → decision → Started → pieces from parents (reported one by one) → Reschedule …
//! → Finished, or back-to-source with its own Started/Finished pair.
//!
//! The decisions are made by [`crate::conversation`]; this is its async shell. It opens the
//! session, carries out the conversation's actions (scheduler reports here, parent streams
//! and fetches through [`Links`]) and feeds back what happens, until a terminal action:
//! finished, failed, or back to source through [`origin`].

use super::finish;
use super::job::{ContentVerified, JobCtx};
use super::origin;
use super::parents::Links;
use super::piece_proto;
use super::request::Scope;
use super::trust::TrustedDigests;
use crate::conversation::{Action, Conversation, Event, PieceFailure, SchedulerLink, Settings};
use crate::error::DaemonError;
use crate::scheduler_client::{PeerIds, PeerSession, PieceDigests};
use damselfly_core::{OriginReason, PieceLayout, PieceSpan};
use damselfly_storage::PieceMetadata;
use damselfly_transfer::TransferError;
use dragonfly_api::common::v2::{Download, Peer, TrafficType};
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::{
    DownloadPeerBackToSourceFailedRequest, DownloadPeerBackToSourceFinishedRequest,
    DownloadPeerBackToSourceStartedRequest, DownloadPeerFailedRequest, DownloadPeerFinishedRequest,
    DownloadPeerStartedRequest, DownloadPieceFailedRequest, DownloadPieceFinishedRequest,
    RegisterPeerRequest, ReschedulePeerRequest,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long to wait for the scheduler to close the stream after our terminal request.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// A range's round ends after this long without news (if `collectedPieceTimeout` is not
/// shorter): its parents were chosen because they hold its pieces and announce them at once,
/// so silence means they will not, and a lazy read should not wait 30 s to learn it.
pub const DEMAND_COLLECTED_PIECE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn download(
    job: &JobCtx<'_>,
    layout: PieceLayout,
    mut pending: BTreeMap<u32, PieceSpan>,
) -> Result<(), DaemonError> {
    let ctx = job.ctx;
    if ctx.schedulers.is_empty() {
        return without_scheduler(job, &mut pending, "none is configured".into()).await;
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
        Err(error) => return without_scheduler(job, &mut pending, error.to_string()).await,
    };
    converse(job, session, pending).await
}

/// Drives the download's [`Conversation`]: carries out its actions and feeds it what the
/// scheduler, the parents, the clock and the daemon's shutdown bring, until an action ends
/// the conversation.
async fn converse(
    job: &JobCtx<'_>,
    mut session: PeerSession,
    pending: BTreeMap<u32, PieceSpan>,
) -> Result<(), DaemonError> {
    let (mut core, first) =
        Conversation::start(Instant::now(), settings(job), pending, rand::random());
    let trust = match session.piece_digests() {
        PieceDigests::Kept => {
            TrustedDigests::from_scheduler(job.ctx.clone(), job.task_id().to_string())
        }
        PieceDigests::Unknown => TrustedDigests::none(),
    };
    let mut shell = Shell {
        links: Links::new(job, trust),
        wake: wake_of(&first),
    };
    let mut actions = VecDeque::from(first);
    loop {
        while let Some(action) = actions.pop_front() {
            if action.is_terminal() {
                let missing = core.missing().clone();
                let fatal = shell.links.take_fatal();
                return conclude(job, session, missing, action, fatal).await;
            }
            shell
                .perform(&mut session, &mut core, action, &mut actions)
                .await;
        }
        let event = shell.next_event(job, &mut session, &core).await;
        if matches!(event, Event::Tick) {
            // The move policy looks at what each fetch wrote, on the round's deadlines.
            if let Some(progress) = shell.links.fetch_progress() {
                actions.extend(shell.feed(&mut core, progress));
            }
        }
        actions.extend(shell.feed(&mut core, event));
    }
}

/// The limits of this download.
fn settings(job: &JobCtx<'_>) -> Settings {
    let config = &job.ctx.config;
    let concurrency = job
        .request
        .concurrent_piece_count
        .unwrap_or(config.download.concurrent_piece_count);
    let collected_piece_timeout = match job.request.scope {
        Scope::Whole => config.download.collected_piece_timeout,
        Scope::Range { .. } => config
            .download
            .collected_piece_timeout
            .min(DEMAND_COLLECTED_PIECE_TIMEOUT),
    };
    Settings {
        concurrency: concurrency.max(1) as usize,
        collected_piece_timeout,
        schedule_timeout: config.scheduler.schedule_timeout,
        max_schedule_count: config.scheduler.max_schedule_count,
    }
}

/// The deadline a batch of actions asks for.
fn wake_of(actions: &[Action]) -> Option<Instant> {
    actions.iter().find_map(|action| match action {
        Action::WakeAt(at) => Some(*at),
        _ => None,
    })
}

/// What the conversation needs of the outside world between its actions.
struct Shell<'a, 'j> {
    links: Links<'a, 'j>,
    /// When to send the conversation a tick: the deadline of its latest batch.
    wake: Option<Instant>,
}

impl Shell<'_, '_> {
    /// Feeds one event, remembering the deadline the answer asks for.
    fn feed(&mut self, core: &mut Conversation, event: Event) -> Vec<Action> {
        let actions = core.on(Instant::now(), event);
        self.wake = wake_of(&actions);
        actions
    }

    /// Carries out an action that does not end the conversation; follow-up actions (those
    /// of the scheduler's buffered messages) go to `queue`.
    async fn perform(
        &mut self,
        session: &mut PeerSession,
        core: &mut Conversation,
        action: Action,
        queue: &mut VecDeque<Action>,
    ) {
        match action {
            Action::ReportStarted => session.send(started_request()).await,
            Action::OpenParent {
                parent,
                grpc,
                interested,
            } => self.links.open(parent, grpc, interested),
            Action::DropParent { parent } => self.links.drop_parent(parent),
            Action::Fetch {
                parent,
                parent_id,
                seed,
                span,
                vortex,
            } => self.links.fetch(parent, parent_id, seed, span, vortex),
            Action::AbortFetch { number } => self.links.abort_fetch(number),
            Action::ReportPieceFinished { number } => {
                if let Some(piece) = self.links.take_landed(number) {
                    session.send(piece_finished(&piece)).await;
                }
            }
            Action::ReportPieceFailed {
                number,
                parent_id,
                failure,
            } => session.send(piece_failed(number, parent_id, failure)).await,
            Action::EndRound => self.links.end_round(),
            Action::DrainScheduler => {
                for decision in session.take_buffered() {
                    queue.extend(self.feed(core, Event::Scheduler(decision)));
                }
                queue.extend(self.feed(core, Event::SchedulerDrained));
            }
            Action::Reschedule {
                failed,
                description,
            } => session.send(reschedule_request(failed, description)).await,
            // Taken when the batch was fed; terminal actions never get here.
            Action::WakeAt(_)
            | Action::BackToSource { .. }
            | Action::Finish
            | Action::Fail { .. } => {}
        }
    }

    /// Waits for what happens next: news of the round, a scheduler message, the deadline,
    /// or the daemon's abort (its stop alone lets the download go on during the grace).
    async fn next_event(
        &mut self,
        job: &JobCtx<'_>,
        session: &mut PeerSession,
        core: &Conversation,
    ) -> Event {
        let aborting = job.ctx.lifecycle.aborting();
        tokio::select! {
            event = self.links.next_event() => event,
            message = session.next_message(), if core.listens_to_scheduler() => match message {
                Ok(decision) => Event::Scheduler(decision),
                Err(error) => Event::SchedulerLost { reason: error.to_string() },
            },
            _ = sleep_until_opt(self.wake) => Event::Tick,
            _ = aborting, if core.awaits_shutdown() => Event::Shutdown,
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Carries out the action that ends the conversation.
async fn conclude(
    job: &JobCtx<'_>,
    mut session: PeerSession,
    mut missing: BTreeMap<u32, PieceSpan>,
    action: Action,
    fatal: Option<TransferError>,
) -> Result<(), DaemonError> {
    match action {
        Action::BackToSource {
            reason,
            link: SchedulerLink::Reachable,
        } => back_to_source(job, session, &mut missing, reason).await,
        Action::BackToSource {
            reason,
            link: SchedulerLink::Lost,
        } => to_origin_unreported(job, &mut missing, reason).await,
        Action::Fail { description } => {
            session
                .finish(failed_request(description.clone()), CLOSE_WAIT)
                .await;
            Err(match fatal {
                Some(error) => error.into(),
                None => DaemonError::io(description, std::io::Error::other("local failure")),
            })
        }
        _ => {
            if let Err(error) = verify_before_report(job, &mut session).await {
                session
                    .finish(failed_request(error.to_string()), CLOSE_WAIT)
                    .await;
                return Err(error);
            }
            session.finish(finished_request(), CLOSE_WAIT).await;
            Ok(())
        }
    }
}

/// Checks the whole-file digest (when the request names one) before the scheduler hears that
/// this peer holds the task. On a mismatch every parent that supplied pieces is reported as a
/// bad parent; the content is discarded when the job fails.
async fn verify_before_report(
    job: &JobCtx<'_>,
    session: &mut PeerSession,
) -> Result<(), DaemonError> {
    if job.request.scope != Scope::Whole {
        // A range holds part of the task: the whole file's digest is checked by whoever
        // completes it.
        return Ok(());
    }
    match finish::verify_content(job.ctx, job.request).await {
        Ok(()) => {
            let _ = job.content_verified.set(ContentVerified);
            Ok(())
        }
        Err(error @ DaemonError::DigestMismatch { .. }) => {
            for (parent_id, number) in finish::suppliers(job.ctx, job.task_id()) {
                warn!(parent = %parent_id, "content failed its digest; reporting the parent");
                session
                    .send(piece_failed(number, parent_id, PieceFailure::Forged))
                    .await;
            }
            Err(error)
        }
        Err(error) => Err(error),
    }
}

/// Back-to-source reported on the session.
async fn back_to_source(
    job: &JobCtx<'_>,
    mut session: PeerSession,
    pending: &mut BTreeMap<u32, PieceSpan>,
    reason: OriginReason,
) -> Result<(), DaemonError> {
    if job.request.disable_back_to_source {
        session
            .finish(failed_request(reason.to_string()), CLOSE_WAIT)
            .await;
        return Err(DaemonError::BackToSourceDisabled {
            url: job.request.url.clone(),
            reason: reason.to_string(),
        });
    }
    info!(remaining = pending.len(), "pieces left for the origin");
    // The scheduler keeps the reason per peer (our description's code reads back).
    let description = reason.to_description();
    job.going_to_origin(reason);
    session
        .send(PeerRequest::DownloadPeerBackToSourceStartedRequest(
            DownloadPeerBackToSourceStartedRequest {
                description: Some(description),
            },
        ))
        .await;
    let mut result = origin::fetch(job, pending, Some(&mut session)).await;
    if result.is_ok() {
        result = verify_before_report(job, &mut session).await;
    }
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
    detail: String,
) -> Result<(), DaemonError> {
    warn!(%detail, url = %job.request.url, "scheduler unreachable");
    to_origin_unreported(job, pending, OriginReason::NoScheduler { detail }).await
}

/// The origin without reports to a scheduler, unless back-to-source is disabled.
async fn to_origin_unreported(
    job: &JobCtx<'_>,
    pending: &mut BTreeMap<u32, PieceSpan>,
    reason: OriginReason,
) -> Result<(), DaemonError> {
    if job.request.disable_back_to_source {
        return Err(DaemonError::BackToSourceDisabled {
            url: job.request.url.clone(),
            reason: reason.to_string(),
        });
    }
    job.going_to_origin(reason);
    origin::fetch(job, pending, None).await
}

fn started_request() -> PeerRequest {
    PeerRequest::DownloadPeerStartedRequest(DownloadPeerStartedRequest {})
}

fn finished_request() -> PeerRequest {
    PeerRequest::DownloadPeerFinishedRequest(DownloadPeerFinishedRequest {})
}

fn piece_finished(piece: &PieceMetadata) -> PeerRequest {
    PeerRequest::DownloadPieceFinishedRequest(DownloadPieceFinishedRequest {
        piece: Some(piece_proto(piece, TrafficType::RemotePeer)),
    })
}

fn failed_request(description: String) -> PeerRequest {
    PeerRequest::DownloadPeerFailedRequest(DownloadPeerFailedRequest {
        description: Some(description),
    })
}

/// A forged piece is not temporary: Dragonfly's scheduler (and ours) then blocklists the
/// parent for this peer.
fn piece_failed(number: u32, parent_id: String, failure: PieceFailure) -> PeerRequest {
    PeerRequest::DownloadPieceFailedRequest(DownloadPieceFailedRequest {
        piece_number: Some(number),
        parent_id,
        temporary: failure == PieceFailure::Temporary,
    })
}

fn reschedule_request(failed: Vec<Peer>, description: String) -> PeerRequest {
    PeerRequest::ReschedulePeerRequest(ReschedulePeerRequest {
        candidate_parents: failed,
        description: Some(description),
    })
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
