//! One caller's view of a download: it follows the task's pieces as they land in storage
//! (whoever fetches them), streams them to the caller as engine events, and finishes with
//! digest check and export. Every caller of a shared job does the same, so joining late costs
//! nothing; each caller's timeout bounds its own view, not the shared job.

use super::events::{EngineEvent, PieceSource, Started, TaskShape};
use super::finish;
use super::job::JobState;
use super::request::{Scope, TaskRequest};
use super::Engine;
use crate::error::DownloadError;
use crate::metrics::{self, Traffic};
use damselfly_core::OriginReason;
use damselfly_storage::{PieceEvent, PieceMetadata, TaskMetadata};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info};

type Sink = mpsc::Sender<Result<EngineEvent, DownloadError>>;

/// The caller went away; the job goes on for others and the cache.
struct CallerGone;

pub async fn serve(
    engine: &Arc<Engine>,
    request: TaskRequest,
    sink: &Sink,
) -> Result<(), DownloadError> {
    info!("download requested");
    let work = serve_task(engine, &request, sink);
    let result = match request.timeout {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(DownloadError::TimedOut {
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
) -> Result<Result<(), CallerGone>, DownloadError> {
    finish::check_output(request).map_err(DownloadError::rejected)?;
    let ctx = engine.context();
    let stored = ctx
        .storage
        .task(&request.task_id)
        .map_err(DownloadError::not_started)?;
    if let Some(task) = stored {
        if task.is_finished() {
            let viewer = Viewer::new(sink, request, ctx.host.new_peer_id());
            return local_hit(engine, request, viewer, task).await;
        }
    }
    let joined = match request.scope {
        Scope::Whole => engine.join_or_start(request),
        Scope::Range { .. } => engine.start_ranged(request),
    };
    let mut state = joined.state;
    let mut viewer = Viewer::new(sink, request, joined.peer_id);
    viewer.origin = Some(joined.origin);
    // Subscribe before listing pieces, so none is missed in between.
    let mut events = ctx.storage.subscribe(&request.task_id);
    let shape = wait_started(&mut state).await?;
    viewer.window = request.scope.window(shape.content_length);
    viewer.piece_length = shape.piece_length;
    let existing: Vec<PieceMetadata> = ctx
        .storage
        .pieces_overlapping(&request.task_id, viewer.window, shape.piece_length)
        .map_err(DownloadError::transfer)?
        .into_iter()
        .filter(|p| viewer.shows(p))
        .collect();
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
    complete(engine, request, checked.as_ref(), viewer.window).await?;
    Ok(Ok(()))
}

/// The caller's end: a whole task is checked against its digest and exported; a range (whose
/// bytes cannot be checked against the whole file's digest) is exported alone.
async fn complete(
    engine: &Arc<Engine>,
    request: &TaskRequest,
    checked: Option<&damselfly_core::Digest>,
    window: (u64, u64),
) -> Result<(), DownloadError> {
    match request.scope {
        Scope::Whole => finish::complete(engine.context(), request, checked).await,
        Scope::Range { .. } => finish::complete_range(engine.context(), request, window).await,
    }
}

/// The task is complete on disk: no origin, no scheduler.
async fn local_hit(
    engine: &Arc<Engine>,
    request: &TaskRequest,
    mut viewer: Viewer<'_>,
    task: TaskMetadata,
) -> Result<Result<(), CallerGone>, DownloadError> {
    let ctx = engine.context();
    info!("task is complete locally");
    let window = request.scope.window(task.content_length);
    let pieces = ctx
        .storage
        .pieces_overlapping(&request.task_id, window, task.piece_length)
        .map_err(DownloadError::not_started)?;
    let shape = TaskShape {
        content_length: task.content_length,
        piece_length: 0,
        response_header: task
            .response_header
            .into_iter()
            // Caches written before secrets were dropped at the source may hold a Set-Cookie.
            .filter(|(name, _)| !damselfly_core::is_secret_header(name))
            .collect(),
    };
    viewer.window = window;
    if viewer.started(&shape, &[], true).await.is_err() {
        return Ok(Err(CallerGone));
    }
    let shown: Vec<&PieceMetadata> = pieces.iter().filter(|p| viewer.shows(p)).collect();
    for piece in shown {
        metrics::add_traffic(Traffic::LocalPeer, piece.length);
        if viewer.piece(piece, PieceSource::Cache).await.is_err() {
            return Ok(Err(CallerGone));
        }
    }
    complete(engine, request, None, viewer.window).await?;
    Ok(Ok(()))
}

async fn wait_started(state: &mut watch::Receiver<JobState>) -> Result<TaskShape, DownloadError> {
    loop {
        match &*state.borrow_and_update() {
            JobState::Running(shape) | JobState::Finished(shape, _) => return Ok(shape.clone()),
            JobState::Failed(error) => return Err(error.clone()),
            JobState::Preparing => {}
        }
        if state.changed().await.is_err() {
            return Err(DownloadError::JobLost);
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
) -> Result<Result<(), CallerGone>, DownloadError> {
    let storage = &engine.context().storage;
    let (window, piece_length) = (viewer.window, viewer.piece_length);
    let landed = || {
        storage
            .pieces_overlapping(&request.task_id, window, piece_length)
            .map_err(DownloadError::transfer)
    };
    loop {
        if let Some(outcome) = job_outcome(state) {
            outcome?;
            break;
        }
        // Every look at the state marks its changes seen (here, and in `wait_started` before
        // the caller was told it started): the bump that says the job went to the origin may
        // be one of them, so the reason is looked for on every turn, not only on a change.
        if viewer.early_origin(request).await.is_err() {
            return Ok(Err(CallerGone));
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(PieceEvent::Finished(piece)) => {
                    if viewer.piece(&piece, PieceSource::of(&piece)).await.is_err() {
                        return Ok(Err(CallerGone));
                    }
                }
                Ok(PieceEvent::TaskFinished) => break,
                // Shown only once it lands.
                Ok(PieceEvent::Arriving(_)) => {}
                // The job publishes why; wait for it.
                Ok(PieceEvent::TaskFailed) | Err(broadcast::error::RecvError::Closed) => {
                    if state.changed().await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if viewer.catch_up(&landed()?).await.is_err() {
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
    if viewer.catch_up(&landed()?).await.is_err() {
        return Ok(Err(CallerGone));
    }
    Ok(Ok(()))
}

fn job_outcome(state: &mut watch::Receiver<JobState>) -> Option<Result<(), DownloadError>> {
    match &*state.borrow_and_update() {
        JobState::Finished(..) => Some(Ok(())),
        JobState::Failed(error) => Some(Err(error.clone())),
        _ => None,
    }
}

/// Writes events to one caller, each piece once.
struct Viewer<'a> {
    sink: &'a Sink,
    task_id: String,
    peer_id: String,
    sent: HashSet<u32>,
    /// The bytes `[start, end)` the caller asked for: pieces outside are not its news.
    window: (u64, u64),
    /// The task's piece length once known (0 before): which pieces the window holds.
    piece_length: u64,
    /// The job's origin reason until this caller was told it.
    origin: Option<Arc<OnceLock<OriginReason>>>,
}

impl<'a> Viewer<'a> {
    fn new(sink: &'a Sink, request: &TaskRequest, peer_id: String) -> Self {
        Self {
            sink,
            task_id: request.task_id.clone(),
            peer_id,
            sent: HashSet::new(),
            window: (0, u64::MAX),
            piece_length: 0,
            origin: None,
        }
    }

    fn shows(&self, piece: &PieceMetadata) -> bool {
        let (start, end) = self.window;
        piece.offset < end && piece.offset.saturating_add(piece.length) > start
    }

    /// The job's origin reason if it is known and this caller was not told yet.
    fn untold_origin(&mut self) -> Option<OriginReason> {
        let reason = self.origin.as_ref()?.get()?.clone();
        self.origin = None;
        Some(reason)
    }

    async fn send(&self, event: EngineEvent) -> Result<(), CallerGone> {
        self.sink.send(Ok(event)).await.map_err(|_| CallerGone)
    }

    /// `landed` are the pieces already on disk (resumed or fetched by an earlier caller).
    async fn started(
        &mut self,
        shape: &TaskShape,
        landed: &[PieceMetadata],
        cached: bool,
    ) -> Result<(), CallerGone> {
        let origin = self.untold_origin();
        self.send(EngineEvent::Started(Started {
            task_id: self.task_id.clone(),
            peer_id: self.peer_id.clone(),
            shape: shape.clone(),
            landed: landed.to_vec(),
            cached,
            origin,
        }))
        .await
    }

    async fn piece(
        &mut self,
        piece: &PieceMetadata,
        source: PieceSource,
    ) -> Result<(), CallerGone> {
        if !self.shows(piece) || !self.sent.insert(piece.number) {
            return Ok(());
        }
        if source == PieceSource::Origin {
            if let Some(reason) = self.untold_origin() {
                self.send(EngineEvent::Origin(reason)).await?;
            }
        }
        self.send(EngineEvent::Piece(piece.clone(), source)).await
    }

    /// A range's caller hears that its job went to the origin as soon as it did, before any
    /// piece: the proxy may then answer the range from the origin itself (`proxy::hedge`).
    async fn early_origin(&mut self, request: &TaskRequest) -> Result<(), CallerGone> {
        if request.scope == Scope::Whole {
            return Ok(());
        }
        match self.untold_origin() {
            Some(reason) => self.send(EngineEvent::Origin(reason)).await,
            None => Ok(()),
        }
    }

    async fn catch_up(&mut self, pieces: &[PieceMetadata]) -> Result<(), CallerGone> {
        for piece in pieces {
            self.piece(piece, PieceSource::of(piece)).await?;
        }
        Ok(())
    }
}
