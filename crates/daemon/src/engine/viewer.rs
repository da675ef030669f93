//! One caller's view of a download: it follows the task's pieces as they land in storage
//! (whoever fetches them), streams them to the caller, and finishes with digest check and
//! export. Every caller of a shared job does the same, so joining late costs nothing.

use super::finish;
use super::job::{JobState, TaskShape};
use super::request::{DownloadRequest, TaskRequest};
use super::{piece_proto, traffic_of, Engine};
use crate::error::DaemonError;
use crate::metrics::{self, Traffic};
use damselfly_storage::{PieceEvent, PieceMetadata};
use dragonfly_api::common::v2::{Piece, TrafficType};
use dragonfly_api::dfdaemon::v2::download_task_response::Response;
use dragonfly_api::dfdaemon::v2::{
    DownloadPieceFinishedResponse, DownloadTaskResponse, DownloadTaskStartedResponse,
};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;
use tracing::{debug, info};

type Sink = mpsc::Sender<Result<DownloadTaskResponse, Status>>;

/// The caller went away; the job goes on for others and the cache.
struct CallerGone;

pub async fn serve(
    engine: &Arc<Engine>,
    request: DownloadRequest,
    sink: &Sink,
) -> Result<(), DaemonError> {
    let request = TaskRequest::parse(request)?;
    info!(task_id = %request.task_id, "download requested");
    let work = serve_task(engine, &request, sink);
    let result = match request.timeout {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(DaemonError::Timeout {
                url: request.url.clone(),
                after: limit,
            })
        }),
        None => work.await,
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(CallerGone)) => {
            debug!("caller left before the end");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Outer error: the download failed; inner error: the caller is gone (not a failure).
async fn serve_task(
    engine: &Arc<Engine>,
    request: &TaskRequest,
    sink: &Sink,
) -> Result<Result<(), CallerGone>, DaemonError> {
    finish::check_output(request)?;
    let ctx = engine.context();
    let host_id = ctx.host.id.clone();
    if let Some(task) = ctx.storage.task(&request.task_id)? {
        if task.is_finished() {
            let viewer = Viewer::new(sink, host_id, request, ctx.host.new_peer_id());
            return local_hit(engine, request, viewer, task.content_length).await;
        }
    }
    let (peer_id, mut state) = engine.join_or_start(request);
    let mut viewer = Viewer::new(sink, host_id, request, peer_id);
    // Subscribe before listing pieces, so none is missed in between.
    let mut events = ctx.storage.subscribe(&request.task_id);
    let shape = wait_started(&mut state).await?;
    let existing = ctx.storage.pieces(&request.task_id)?;
    // Pieces already on disk are in the started message, and also reported one by one:
    // callers count progress from piece messages.
    if viewer.started(&shape, &existing, false).await.is_err()
        || viewer.catch_up(&existing).await.is_err()
    {
        return Ok(Err(CallerGone));
    }
    if follow(engine, request, &mut viewer, &mut events, &mut state)
        .await?
        .is_err()
    {
        return Ok(Err(CallerGone));
    }
    let checked = match &*state.borrow() {
        JobState::Finished(_, checked) => checked.clone(),
        _ => None,
    };
    finish::complete(ctx, request, checked.as_ref()).await?;
    Ok(Ok(()))
}

/// The task is complete on disk: no origin, no scheduler.
async fn local_hit(
    engine: &Arc<Engine>,
    request: &TaskRequest,
    mut viewer: Viewer<'_>,
    content_length: u64,
) -> Result<Result<(), CallerGone>, DaemonError> {
    let ctx = engine.context();
    info!(task_id = %request.task_id, "task is complete locally");
    let pieces = ctx.storage.pieces(&request.task_id)?;
    let shape = TaskShape {
        content_length,
        piece_length: 0,
        response_header: ctx
            .storage
            .task(&request.task_id)?
            .map(|t| t.response_header)
            .unwrap_or_default()
            .into_iter()
            // Caches written before secrets were dropped at the source may hold a Set-Cookie.
            .filter(|(name, _)| !damselfly_core::is_secret_header(name))
            .collect(),
    };
    if viewer.started(&shape, &[], true).await.is_err() {
        return Ok(Err(CallerGone));
    }
    for piece in &pieces {
        metrics::add_traffic(Traffic::LocalPeer, piece.length);
        if viewer.piece(piece, TrafficType::LocalPeer).await.is_err() {
            return Ok(Err(CallerGone));
        }
    }
    finish::complete(ctx, request, None).await?;
    Ok(Ok(()))
}

async fn wait_started(state: &mut watch::Receiver<JobState>) -> Result<TaskShape, DaemonError> {
    loop {
        match &*state.borrow_and_update() {
            JobState::Running(shape) | JobState::Finished(shape, _) => return Ok(shape.clone()),
            JobState::Failed(status) => return Err(DaemonError::Status(status.clone())),
            JobState::Preparing => {}
        }
        if state.changed().await.is_err() {
            return Err(DaemonError::Status(Status::internal(
                "download job vanished",
            )));
        }
    }
}

/// Streams pieces until the job ends.
async fn follow(
    engine: &Arc<Engine>,
    request: &TaskRequest,
    viewer: &mut Viewer<'_>,
    events: &mut broadcast::Receiver<PieceEvent>,
    state: &mut watch::Receiver<JobState>,
) -> Result<Result<(), CallerGone>, DaemonError> {
    let storage = &engine.context().storage;
    loop {
        if let Some(outcome) = job_outcome(state) {
            outcome?;
            break;
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(PieceEvent::Finished(piece)) => {
                    let traffic = traffic_of(&piece);
                    if viewer.piece(&piece, traffic).await.is_err() {
                        return Ok(Err(CallerGone));
                    }
                }
                Ok(PieceEvent::TaskFinished) => break,
                // The job publishes why; wait for it.
                Ok(PieceEvent::TaskFailed) | Err(broadcast::error::RecvError::Closed) => {
                    if state.changed().await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if viewer.catch_up(&storage.pieces(&request.task_id)?).await.is_err() {
                        return Ok(Err(CallerGone));
                    }
                }
            },
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(outcome) = job_outcome(state) {
        outcome?;
    }
    // Pieces whose events raced with the end.
    if viewer
        .catch_up(&storage.pieces(&request.task_id)?)
        .await
        .is_err()
    {
        return Ok(Err(CallerGone));
    }
    Ok(Ok(()))
}

fn job_outcome(state: &mut watch::Receiver<JobState>) -> Option<Result<(), DaemonError>> {
    match &*state.borrow_and_update() {
        JobState::Finished(..) => Some(Ok(())),
        JobState::Failed(status) => Some(Err(DaemonError::Status(status.clone()))),
        _ => None,
    }
}

/// Writes responses to one caller, each piece once.
struct Viewer<'a> {
    sink: &'a Sink,
    host_id: String,
    task_id: String,
    peer_id: String,
    range: Option<dragonfly_api::common::v2::Range>,
    sent: HashSet<u32>,
}

impl<'a> Viewer<'a> {
    fn new(sink: &'a Sink, host_id: String, request: &TaskRequest, peer_id: String) -> Self {
        Self {
            sink,
            host_id,
            task_id: request.task_id.clone(),
            peer_id,
            range: request.range,
            sent: HashSet::new(),
        }
    }

    async fn send(&self, response: Response) -> Result<(), CallerGone> {
        let message = DownloadTaskResponse {
            host_id: self.host_id.clone(),
            task_id: self.task_id.clone(),
            peer_id: self.peer_id.clone(),
            response: Some(response),
        };
        self.sink.send(Ok(message)).await.map_err(|_| CallerGone)
    }

    /// `pieces` are those already on disk (resumed or fetched by an earlier caller).
    async fn started(
        &mut self,
        shape: &TaskShape,
        pieces: &[PieceMetadata],
        is_finished: bool,
    ) -> Result<(), CallerGone> {
        let protos: Vec<Piece> = pieces
            .iter()
            .map(|p| piece_proto(p, traffic_of(p)))
            .collect();
        let started = DownloadTaskStartedResponse {
            content_length: shape.content_length,
            range: self.range,
            response_header: shape.response_header.iter().cloned().collect(),
            pieces: protos,
            is_finished,
        };
        self.send(Response::DownloadTaskStartedResponse(started))
            .await
    }

    async fn piece(
        &mut self,
        piece: &PieceMetadata,
        traffic: TrafficType,
    ) -> Result<(), CallerGone> {
        if !self.sent.insert(piece.number) {
            return Ok(());
        }
        let finished = DownloadPieceFinishedResponse {
            piece: Some(piece_proto(piece, traffic)),
        };
        self.send(Response::DownloadPieceFinishedResponse(finished))
            .await
    }

    async fn catch_up(&mut self, pieces: &[PieceMetadata]) -> Result<(), CallerGone> {
        for piece in pieces {
            self.piece(piece, traffic_of(piece)).await?;
        }
        Ok(())
    }
}
