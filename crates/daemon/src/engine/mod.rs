//! The download engine: one code path for every entry point (dfget over the socket, the
//! scheduler's seed trigger). Concurrent downloads of one task on this host share one job;
//! every caller follows the job's pieces as they land in storage.

mod finish;
mod job;
mod origin;
mod p2p;
mod parents;
pub mod request;
mod trust;
mod viewer;

use crate::context::Context;
use damselfly_storage::PieceMetadata;
use dragonfly_api::common::v2::{Piece, TrafficType};
use dragonfly_api::dfdaemon::v2::DownloadTaskResponse;
use futures::Stream;
use job::{JobHandle, JobState};
pub use request::{DownloadRequest, TaskRequest, RATE_LIMIT_METADATA};
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

/// Responses buffered towards a slow caller before the viewer waits.
const RESPONSE_QUEUE: usize = 128;

pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<DownloadTaskResponse, tonic::Status>> + Send + 'static>>;

pub struct Engine {
    ctx: Context,
    jobs: Mutex<HashMap<String, JobHandle>>,
    /// Cancels running jobs; fired at shutdown after the grace period.
    cancel: CancellationToken,
}

impl Engine {
    pub fn new(ctx: Context) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            jobs: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
        })
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Starts (or joins) a download and streams its progress: a `DownloadTaskStartedResponse`,
    /// then a `DownloadPieceFinishedResponse` per piece; the stream ends with an error status
    /// if the download fails.
    pub fn download(self: &Arc<Self>, request: DownloadRequest) -> ResponseStream {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let engine = self.clone();
        let span = info_span!("download", url = %request.download.url);
        tokio::spawn(
            async move {
                let _busy = engine.ctx.activity.begin();
                if let Err(error) = viewer::serve(&engine, request, &tx).await {
                    tracing::info!(%error, "download failed");
                    let _ = tx.send(Err(error.into())).await;
                }
            }
            .instrument(span),
        );
        Box::pin(ReceiverStream::new(rx))
    }

    /// Tasks with a job running; GC must not evict them.
    pub fn in_flight_tasks(&self) -> HashSet<String> {
        self.jobs
            .lock()
            .map(|jobs| jobs.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Lets running jobs finish for up to `grace`, then cancels the rest and waits briefly.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.in_flight_tasks().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.in_flight_tasks().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running job of this task, or a new one.
    fn join_or_start(
        self: &Arc<Self>,
        request: &TaskRequest,
    ) -> (String, watch::Receiver<JobState>) {
        let mut jobs = match self.jobs.lock() {
            Ok(jobs) => jobs,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(handle) = jobs.get(&request.task_id) {
            if !handle.state.borrow().is_done() {
                return (handle.peer_id.clone(), handle.state.subscribe());
            }
        }
        let handle = JobHandle::new(self.ctx.host.new_peer_id());
        let result = (handle.peer_id.clone(), handle.state.subscribe());
        jobs.insert(request.task_id.clone(), handle.clone());
        drop(jobs);
        let engine = self.clone();
        let request = request.clone();
        let span = info_span!("job", task_id = %request.task_id, peer_id = %handle.peer_id);
        tokio::spawn(
            async move {
                let _busy = engine.ctx.activity.begin();
                let in_use = engine.in_flight_tasks();
                job::run(&engine.ctx, &request, &handle, &engine.cancel, &in_use).await;
                engine.forget(&request.task_id, &handle);
            }
            .instrument(span),
        );
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

/// Where a stored piece came from.
pub(crate) fn traffic_of(piece: &PieceMetadata) -> TrafficType {
    if piece.parent_id.is_some() {
        TrafficType::RemotePeer
    } else {
        TrafficType::BackToSource
    }
}
