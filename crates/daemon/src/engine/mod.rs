//! The download engine: one code path for every entry point (dfget over the socket, the
//! scheduler's seed trigger). Concurrent downloads of one task on this host share one job;
//! every caller follows the job's pieces as they land in storage.

pub mod demand;
mod events;
mod finish;
mod job;
mod origin;
mod p2p;
mod parents;
mod ranged;
pub mod request;
pub mod route;
mod trust;
mod viewer;

use crate::context::Context;
use damselfly_core::OriginReason;
use damselfly_storage::PieceMetadata;
use demand::DemandTable;
use dragonfly_api::common::v2::{Piece, TrafficType};
pub use events::{EngineEvent, EngineEvents, PieceSource, Started, TaskShape};
use job::{JobHandle, JobState};
pub use request::{Scope, TaskRequest};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info_span, Instrument};

/// Events buffered towards a slow caller before the viewer waits.
const EVENT_QUEUE: usize = 128;

pub struct Engine {
    ctx: Context,
    /// Whole-task jobs, one per task: every whole download of the task joins it.
    jobs: Mutex<HashMap<String, JobHandle>>,
    /// Ranged jobs running per task (each range has its own job and peer).
    ranged: Mutex<HashMap<String, usize>>,
    demand: DemandTable,
    /// Where each task's latest range got its pieces (see [`route`]).
    routes: route::RangeRoutes,
}

impl Engine {
    pub fn new(ctx: Context) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            jobs: Mutex::new(HashMap::new()),
            ranged: Mutex::new(HashMap::new()),
            demand: DemandTable::default(),
            routes: route::RangeRoutes::default(),
        })
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Where this host's latest range of the task got its pieces, if that is recent.
    pub fn range_route(&self, task_id: &str) -> route::RangeRoute {
        self.routes.get(task_id, std::time::Instant::now())
    }

    /// Starts (or joins) a download and follows it: `Started`, a `Piece` per piece, then
    /// `Finished`, or an error as the last item. The request's timeout bounds this caller
    /// only: a job shared with others goes on for them and for the cache.
    pub fn download(self: &Arc<Self>, request: TaskRequest) -> EngineEvents {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let engine = self.clone();
        let span = info_span!("download", task_id = %request.task_id, url = %request.url);
        // Tracked: a download in flight at shutdown gets the grace to finish.
        self.ctx.lifecycle.spawn(
            async move {
                let _busy = engine.ctx.activity.begin();
                match viewer::serve(&engine, request, &tx).await {
                    Ok(()) => {
                        let _ = tx.send(Ok(EngineEvent::Finished)).await;
                    }
                    Err(error) => {
                        tracing::info!(%error, "download failed");
                        let _ = tx.send(Err(error)).await;
                    }
                }
            }
            .instrument(span),
        );
        Box::pin(ReceiverStream::new(rx))
    }

    /// Tasks with a job running; GC must not evict them.
    pub fn in_flight_tasks(&self) -> HashSet<String> {
        let mut tasks: HashSet<String> = self
            .jobs
            .lock()
            .map(|jobs| jobs.keys().cloned().collect())
            .unwrap_or_default();
        if let Ok(ranged) = self.ranged.lock() {
            tasks.extend(ranged.keys().cloned());
        }
        tasks
    }

    /// A new job for the pieces covering the request's range, with its own peer (as each
    /// ranged download is in Dragonfly); it shares pieces with the task's other jobs through
    /// the task's demand.
    fn start_ranged(self: &Arc<Self>, request: &TaskRequest) -> Joined {
        let handle = JobHandle::new(self.ctx.host.new_peer_id());
        let result = Joined::of(&handle);
        self.count_ranged(&request.task_id, true);
        let span = info_span!("range_job", task_id = %request.task_id, peer_id = %handle.peer_id);
        self.spawn_job(request, handle, span, |engine, request, handle| {
            engine.count_ranged(&request.task_id, false);
            // The prefetch follows the range's job, not its caller: a client that took its
            // bytes and left (its answer may end before the job does) still gets the blob.
            if request.prefetch && matches!(*handle.state.borrow(), JobState::Finished(..)) {
                let limit = engine.ctx.config.proxy.prefetch_bandwidth_limit.as_u64();
                engine.prefetch(request, limit);
            }
        });
        result
    }

    /// Runs one job under the daemon's lifecycle; `done` does the caller's bookkeeping after.
    fn spawn_job(
        self: &Arc<Self>,
        request: &TaskRequest,
        handle: JobHandle,
        span: tracing::Span,
        done: impl FnOnce(&Arc<Engine>, &TaskRequest, &JobHandle) + Send + 'static,
    ) {
        let engine = self.clone();
        let request = request.clone();
        self.ctx.lifecycle.spawn(
            async move {
                let _busy = engine.ctx.activity.begin();
                let in_use = engine.in_flight_tasks();
                let demand = engine.demand.task(&request.task_id);
                job::run(
                    &engine.ctx,
                    &request,
                    &handle,
                    &in_use,
                    demand,
                    &engine.routes,
                )
                .await;
                done(&engine, &request, &handle);
            }
            .instrument(span),
        );
    }

    fn count_ranged(&self, task_id: &str, up: bool) {
        let Ok(mut ranged) = self.ranged.lock() else {
            return;
        };
        let count = ranged.entry(task_id.to_string()).or_default();
        if up {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                ranged.remove(task_id);
            }
        }
    }

    /// After a range was served: the whole task in the background, at the prefetch
    /// bandwidth limit, behind every range's demand. Joins a whole-task job already running.
    fn prefetch(self: &Arc<Self>, request: &TaskRequest, rate_limit: u64) {
        let mut whole = request.clone();
        whole.scope = Scope::Whole;
        whole.range = None;
        whole.prefetch = false;
        whole.output = None;
        whole.timeout = None;
        whole.rate_limit = (rate_limit > 0).then_some(rate_limit);
        whole.download.range = None;
        whole.download.prefetch = false;
        whole.download.is_prefetch = true;
        whole.download.output_path = None;
        let peer_id = self.join_or_start(&whole).peer_id;
        tracing::debug!(%peer_id, "prefetching the whole task");
    }

    /// The running job of this task, or a new one.
    fn join_or_start(self: &Arc<Self>, request: &TaskRequest) -> Joined {
        let mut jobs = match self.jobs.lock() {
            Ok(jobs) => jobs,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(handle) = jobs.get(&request.task_id) {
            if !handle.state.borrow().is_done() {
                return Joined::of(handle);
            }
        }
        let handle = JobHandle::new(self.ctx.host.new_peer_id());
        let result = Joined::of(&handle);
        jobs.insert(request.task_id.clone(), handle.clone());
        drop(jobs);
        let span = info_span!("job", task_id = %request.task_id, peer_id = %handle.peer_id);
        self.spawn_job(request, handle, span, |engine, request, handle| {
            engine.forget(&request.task_id, handle);
        });
        result
    }

    fn forget(&self, task_id: &str, handle: &JobHandle) {
        if let Ok(mut jobs) = self.jobs.lock() {
            if jobs.get(task_id).is_some_and(|h| h.same(handle)) {
                jobs.remove(task_id);
            }
        }
    }
}

/// A caller's hold on a job: its peer, its state and its origin reason.
struct Joined {
    peer_id: String,
    state: watch::Receiver<JobState>,
    origin: Arc<OnceLock<OriginReason>>,
}

impl Joined {
    fn of(handle: &JobHandle) -> Self {
        Self {
            peer_id: handle.peer_id.clone(),
            state: handle.state.subscribe(),
            origin: handle.origin.clone(),
        }
    }
}

/// A stored piece as the wire's `common.v2.Piece`.
pub(crate) fn piece_proto(piece: &PieceMetadata, traffic: TrafficType) -> Piece {
    Piece {
        number: piece.number,
        parent_id: piece.parent_id.clone(),
        offset: piece.offset,
        length: piece.length,
        digest: piece.digest.clone(),
        content: None,
        traffic_type: Some(traffic as i32),
        cost: prost_wkt_types::Duration::try_from(piece.cost).ok(),
        created_at: Some(piece.created_at.into()),
    }
}

/// Where a piece came from, as the wire's `TrafficType`.
pub(crate) fn traffic_type(source: PieceSource) -> TrafficType {
    match source {
        PieceSource::Cache => TrafficType::LocalPeer,
        PieceSource::Parent => TrafficType::RemotePeer,
        PieceSource::Origin => TrafficType::BackToSource,
    }
}
