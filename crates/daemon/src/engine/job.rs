//! One download of one task on this host, shared by every caller asking for it meanwhile.
//! States: Preparing → Running(shape) → Finished | Failed(error).
//! A job is bounded by its own I/O timeouts and by shutdown, never by one caller's timeout:
//! every caller applies its own (see `viewer`).

use super::demand::TaskDemand;
use super::events::TaskShape;
use super::request::{Scope, TaskRequest};
use super::route::{RangeRoute, RangeRoutes};
use super::{finish, origin, p2p, ranged};
use crate::context::{limiter, Context};
use crate::error::{DaemonError, DownloadError};
use crate::metrics;
use damselfly_core::{Digest, OriginReason, PieceLayout, PieceSpan};
use damselfly_transfer::{Backend, RateLimiter};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub enum JobState {
    Preparing,
    Running(TaskShape),
    /// With the whole-file digest the job checked, if its request named one.
    Finished(TaskShape, Option<Digest>),
    Failed(DownloadError),
}

impl JobState {
    pub fn is_done(&self) -> bool {
        matches!(self, JobState::Finished(..) | JobState::Failed(_))
    }
}

#[derive(Clone)]
pub struct JobHandle {
    pub peer_id: String,
    pub state: Arc<watch::Sender<JobState>>,
    /// Why the job went to the origin, once it did (a job goes there at most once).
    pub origin: Arc<OnceLock<OriginReason>>,
}

impl JobHandle {
    pub fn new(peer_id: String) -> Self {
        Self {
            peer_id,
            state: Arc::new(watch::channel(JobState::Preparing).0),
            origin: Arc::new(OnceLock::new()),
        }
    }

    pub fn same(&self, other: &JobHandle) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

/// What the download steps share.
pub struct JobCtx<'a> {
    pub ctx: &'a Context,
    pub request: &'a TaskRequest,
    /// The origin client with this download's certificate trust.
    pub backend: Backend,
    pub peer_id: &'a str,
    /// This download's own limit (from the caller), on top of the host-wide ones.
    pub task_limiter: RateLimiter,
    /// The origin answers Range requests (learned from the stat); without, back-to-source
    /// streams the whole body once and cuts the pieces from it in order.
    pub origin_ranges: AtomicBool,
    /// Tasks with a running job when this one started; making room never evicts them.
    pub in_use: &'a HashSet<String>,
    /// Set once the assembled content matched the request's whole-file digest (or there
    /// is none), so it is hashed once.
    pub content_verified: OnceLock<ContentVerified>,
    /// The task's demand on this host: ranged jobs claim pieces in it, bulk jobs yield to it.
    pub demand: Arc<TaskDemand>,
    /// Why this job's bytes come from the origin, shared with its callers.
    pub origin: &'a OnceLock<OriginReason>,
    /// The job's state, bumped when it goes to the origin so its callers hear why at once.
    pub state: &'a watch::Sender<JobState>,
    /// Where this host's latest range of each task got its pieces.
    pub routes: &'a RangeRoutes,
}

/// The content matched the request's digest.
#[derive(Debug)]
pub struct ContentVerified;

impl JobCtx<'_> {
    pub fn task_id(&self) -> &str {
        &self.request.task_id
    }

    /// Records why the job goes to the origin (the first reason stands), counts it and logs
    /// it; callers see it with the origin's pieces.
    pub fn going_to_origin(&self, reason: OriginReason) {
        info!(reason = %reason, "downloading from the origin");
        let code = reason.code();
        let route = RangeRoute::of_origin(&reason);
        if self.origin.set(reason).is_ok() {
            metrics::back_to_source(code);
        }
        if self.request.scope != Scope::Whole {
            self.routes.record(self.task_id(), route, Instant::now());
            // A range's caller (the proxy) may answer from the origin itself meanwhile.
            self.state.send_modify(|_| {});
        }
    }

    /// Limiters for bytes from parents.
    pub fn peer_limiters(&self) -> Vec<RateLimiter> {
        vec![self.ctx.limits.download.clone(), self.task_limiter.clone()]
    }

    /// Limiters for bytes from the origin.
    pub fn origin_limiters(&self) -> Vec<RateLimiter> {
        vec![
            self.ctx.limits.download.clone(),
            self.ctx.limits.back_to_source.clone(),
            self.task_limiter.clone(),
        ]
    }
}

/// Runs the job to its end and publishes the outcome; never panics the caller.
pub async fn run(
    ctx: &Context,
    request: &TaskRequest,
    handle: &JobHandle,
    in_use: &HashSet<String>,
    demand: Arc<TaskDemand>,
    routes: &RangeRoutes,
) {
    let started = Instant::now();
    metrics::task_started();
    let backend = match ctx.backend.with_trust(&request.trust) {
        Ok(backend) => backend,
        Err(error) => {
            let error = DownloadError::not_started(error);
            return publish_failure(ctx, request, handle, error).await;
        }
    };
    if request.trust.is_insecure() {
        warn!(url = %request.url, "origin certificate not verified: the download asked for insecure_skip_verify");
    }
    let job = JobCtx {
        ctx,
        request,
        in_use,
        backend,
        peer_id: &handle.peer_id,
        task_limiter: limiter(request.rate_limit.unwrap_or(0)),
        origin_ranges: AtomicBool::new(true),
        content_verified: OnceLock::new(),
        demand,
        origin: &handle.origin,
        state: &handle.state,
        routes,
    };
    let outcome = tokio::select! {
        result = download(&job, &handle.state) => result,
        _ = ctx.lifecycle.aborting() => Err(DownloadError::ShuttingDown),
    };
    match outcome {
        Ok(shape) if request.scope != Scope::Whole => {
            metrics::task_finished();
            debug!(seconds = started.elapsed().as_secs_f64(), "range fetched");
            handle.state.send_replace(JobState::Finished(shape, None));
        }
        Ok(shape) => {
            let elapsed = started.elapsed();
            metrics::task_finished();
            metrics::task_duration(elapsed.as_secs_f64());
            info!(
                bytes = shape.content_length,
                seconds = elapsed.as_secs_f64(),
                "task finished"
            );
            let checked = request.digest.clone();
            handle
                .state
                .send_replace(JobState::Finished(shape, checked));
        }
        Err(error) => publish_failure(ctx, request, handle, error).await,
    }
}

async fn publish_failure(
    ctx: &Context,
    request: &TaskRequest,
    handle: &JobHandle,
    error: DownloadError,
) {
    metrics::task_failed();
    warn!(%error, "task failed");
    record_failure(ctx, request, &error).await;
    handle.state.send_replace(JobState::Failed(error));
}

/// A full disk drops the task's partial pieces, so they do not keep the disk full for the
/// next download; any other failure keeps them for a retry to resume. A failed range leaves
/// the task as it was: other ranges and bulk jobs of it go on.
async fn record_failure(ctx: &Context, request: &TaskRequest, error: &DownloadError) {
    let task_id = request.task_id.as_str();
    if matches!(error, DownloadError::Corrupt(_)) {
        // Content that is not what the caller asked for is never kept or served.
        finish::discard(ctx, task_id).await;
        return;
    }
    if error.cause().is_some_and(DaemonError::is_no_space) {
        match ctx.storage.delete_task(task_id).await {
            Ok(()) => ctx.schedulers.delete_task(&ctx.host.id, task_id).await,
            Err(e) => warn!(error = %e, "cannot free the pieces of a task that filled the disk"),
        }
        return;
    }
    if request.scope != Scope::Whole {
        return;
    }
    if let Err(e) = ctx.storage.fail_task(task_id) {
        // A task that never got prepared has nothing to mark.
        tracing::debug!(error = %e, "cannot mark task failed");
    }
}

/// Makes room for the task before its bytes flow, evicting old finished tasks if needed;
/// schedulers are told the evicted tasks are gone from this host.
async fn make_room(job: &JobCtx<'_>) -> Result<(), DaemonError> {
    let ctx = job.ctx;
    let evicted = ctx.storage.ensure_space(job.task_id(), job.in_use).await?;
    for task_id in evicted {
        info!(%task_id, "evicted to make room");
        ctx.schedulers.delete_task(&ctx.host.id, &task_id).await;
    }
    Ok(())
}

/// fsyncs the content before recording the task finished, off the async workers.
async fn finish(job: &JobCtx<'_>) -> Result<(), DaemonError> {
    let storage = job.ctx.storage.clone();
    let task_id = job.task_id().to_string();
    tokio::task::spawn_blocking(move || storage.finish_task(&task_id))
        .await
        .map_err(|e| DaemonError::io("finishing the task", std::io::Error::other(e)))??;
    Ok(())
}

/// Stat, prepare, fetch the missing pieces (P2P or origin), check, finish; each failure is
/// named by its stage.
async fn download(
    job: &JobCtx<'_>,
    state: &watch::Sender<JobState>,
) -> Result<TaskShape, DownloadError> {
    let (shape, missing) = start(job, state)
        .await
        .map_err(DownloadError::not_started)?;
    if job.request.scope != Scope::Whole {
        // A range is done once its pieces are here; the task stays unfinished.
        if let Some((layout, missing)) = missing {
            ranged::fetch(job, layout, missing)
                .await
                .map_err(DownloadError::transfer)?;
        }
        return Ok(shape);
    }
    if let Some((layout, missing)) = missing {
        fetch_missing(job, layout, missing)
            .await
            .map_err(DownloadError::transfer)?;
    }
    // The whole-file digest is checked before the task is recorded finished (P2P downloads
    // checked it before they told the scheduler).
    if job.content_verified.get().is_none() {
        finish::verify_content(job.ctx, job.request)
            .await
            .map_err(DownloadError::transfer)?;
    }
    finish(job).await.map_err(DownloadError::transfer)?;
    Ok(shape)
}

/// Pieces still to fetch, with their layout; `None` once the body is already stored.
type Missing = Option<(PieceLayout, BTreeMap<u32, PieceSpan>)>;

/// Asks the origin for the task's shape, prepares storage and makes room: after this, bytes
/// flow. Origins without a length are streamed whole here (there is no shape before the end).
/// A range wants only the pieces covering it.
async fn start(
    job: &JobCtx<'_>,
    state: &watch::Sender<JobState>,
) -> Result<(TaskShape, Missing), DaemonError> {
    let laid = {
        // One job of a task prepares its storage at a time: two creating the content file
        // together would lose each other's pieces.
        let _preparing = job.demand.prepare.lock().await;
        match prepared_shape(job)? {
            Some((shape, layout)) => Laid::Pieces(shape, layout),
            None => stat_and_prepare(job).await?,
        }
    };
    let (shape, layout) = match laid {
        Laid::Pieces(shape, layout) => (shape, layout),
        Laid::Streamed(headers) => return Ok((whole_body(job, state, &headers).await?, None)),
    };
    state.send_replace(JobState::Running(shape.clone()));
    let missing = missing_pieces(job, &layout)?;
    if goes_straight_to_origin(job, &layout) && !missing.is_empty() {
        // Known before the first byte, so the proxy can name it in its response headers.
        job.going_to_origin(OriginReason::SmallFile);
    }
    if missing.is_empty() {
        return Ok((shape, None));
    }
    make_room(job).await?;
    Ok((shape, Some((layout, missing))))
}

/// A range of a task this host already laid out needs no origin round trip for its shape:
/// every range of a lazily read blob after the first starts at once.
fn prepared_shape(job: &JobCtx<'_>) -> Result<Option<(TaskShape, PieceLayout)>, DaemonError> {
    if job.request.scope == Scope::Whole {
        return Ok(None);
    }
    let Some(task) = job.ctx.storage.task(job.task_id())? else {
        return Ok(None);
    };
    let fixed_matches = job
        .request
        .piece_length
        .is_none_or(|l| l == task.piece_length);
    if task.content_length == 0 || !fixed_matches {
        return Ok(None);
    }
    let shape = TaskShape {
        content_length: task.content_length,
        piece_length: task.piece_length,
        response_header: task.response_header.clone(),
    };
    Ok(Some((shape, task.layout())))
}

/// How the task's content is laid out.
enum Laid {
    Pieces(TaskShape, PieceLayout),
    /// The origin gives no length: one stream of the whole body, with these headers.
    Streamed(Vec<(String, String)>),
}

/// Stats the origin and lays the task out in storage.
async fn stat_and_prepare(job: &JobCtx<'_>) -> Result<Laid, DaemonError> {
    let ctx = job.ctx;
    let request = job.request;
    let stat = job.backend.stat(&request.url, &request.headers).await?;
    job.origin_ranges
        .store(stat.supports_range, Ordering::Relaxed);
    // A known length is enough for a layout, so peers can share the task even when the
    // origin ignores Range; only an unknown length forces one blind stream.
    let Some(content_length) = stat.content_length else {
        return Ok(Laid::Streamed(stat.headers));
    };
    let layout = PieceLayout::new(content_length, request.piece_length);
    let task = ctx
        .storage
        .prepare_task(
            job.task_id(),
            content_length,
            layout.piece_length,
            stat.headers.clone(),
        )
        .await?;
    ctx.storage.set_task_url(job.task_id(), &request.url)?;
    let shape = TaskShape {
        content_length,
        piece_length: task.piece_length,
        response_header: stat.headers,
    };
    Ok(Laid::Pieces(shape, task.layout()))
}

/// Small content goes straight to the origin (a single piece gains nothing from a swarm).
fn goes_straight_to_origin(job: &JobCtx<'_>, layout: &PieceLayout) -> bool {
    layout.is_small() && !job.request.disable_back_to_source
}

/// Small content from the origin (its reason recorded in `start`), the rest through the
/// scheduler.
pub(super) async fn fetch_missing(
    job: &JobCtx<'_>,
    layout: PieceLayout,
    mut missing: BTreeMap<u32, PieceSpan>,
) -> Result<(), DaemonError> {
    if goes_straight_to_origin(job, &layout) {
        return origin::fetch(job, &mut missing, None).await;
    }
    p2p::download(job, layout, missing).await
}

/// The pieces among `wanted` (keyed by number) not yet stored on this host. Only their
/// records are looked up: a range of a big task needs its one or two, not every piece's.
pub(super) fn not_stored(
    job: &JobCtx<'_>,
    layout: &PieceLayout,
    wanted: &BTreeMap<u32, PieceSpan>,
) -> Result<BTreeMap<u32, PieceSpan>, DaemonError> {
    let (Some(first), Some(last)) = (wanted.values().next(), wanted.values().next_back()) else {
        return Ok(BTreeMap::new());
    };
    let window = (first.offset, last.offset.saturating_add(last.length));
    let have: HashSet<u32> = job
        .ctx
        .storage
        .pieces_overlapping(job.task_id(), window, layout.piece_length)?
        .into_iter()
        .map(|p| p.number)
        .collect();
    Ok(wanted
        .iter()
        .filter(|(n, _)| !have.contains(n))
        .map(|(n, s)| (*n, *s))
        .collect())
}

/// The pieces the job wants (its range's, or all) that this host lacks.
fn missing_pieces(
    job: &JobCtx<'_>,
    layout: &PieceLayout,
) -> Result<BTreeMap<u32, PieceSpan>, DaemonError> {
    let wanted: BTreeMap<u32, PieceSpan> = match job.request.scope {
        Scope::Whole => layout.spans().map(|s| (s.number, s)).collect(),
        Scope::Range { start, length } => layout
            .spans_for_range(start, length)
            .map(|s| (s.number, s))
            .collect(),
    };
    not_stored(job, layout, &wanted)
}

/// Origins without a length: one streamed GET, cut into pieces on the way.
/// There is no layout to share before the body ends, so this never goes P2P.
async fn whole_body(
    job: &JobCtx<'_>,
    state: &watch::Sender<JobState>,
    headers: &[(String, String)],
) -> Result<TaskShape, DaemonError> {
    let request = job.request;
    if request.disable_back_to_source {
        return Err(DaemonError::BackToSourceDisabled {
            url: request.url.clone(),
            reason: OriginReason::NoContentLength.to_string(),
        });
    }
    job.going_to_origin(OriginReason::NoContentLength);
    let piece_length = request
        .piece_length
        .unwrap_or(damselfly_core::MIN_PIECE_LENGTH);
    // Length 0 = "unknown yet": pieces are cut as the body streams.
    job.ctx
        .storage
        .prepare_task(job.task_id(), 0, piece_length, headers.to_vec())
        .await?;
    job.ctx.storage.set_task_url(job.task_id(), &request.url)?;
    make_room(job).await?;
    let (content_length, pieces) = job
        .backend
        .fetch_all(
            &request.url,
            &request.headers,
            &job.ctx.storage,
            job.task_id(),
            piece_length,
            &job.origin_limiters(),
        )
        .await?;
    job.ctx
        .storage
        .set_content_length(job.task_id(), content_length)?;
    for piece in &pieces {
        metrics::add_traffic(metrics::Traffic::BackToSource, piece.length);
        job.ctx.uploads.downloaded(piece.length);
        metrics::piece_done(metrics::Traffic::BackToSource, true);
    }
    let shape = TaskShape {
        content_length,
        piece_length,
        response_header: headers.to_vec(),
    };
    state.send_replace(JobState::Running(shape.clone()));
    Ok(shape)
}
