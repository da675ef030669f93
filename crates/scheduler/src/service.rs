//! The `scheduler.v2.Scheduler` gRPC service and the per-stream AnnouncePeer session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dragonfly_api::common::v2 as pb;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::announce_peer_response::Response as PeerResponse;
use dragonfly_api::scheduler::v2::scheduler_server::Scheduler;
use dragonfly_api::scheduler::v2::*;
use futures::StreamExt;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{instrument, Instrument};

use crate::auth::{Authority, Caller};
use crate::config::SchedulerConfig;
use crate::console::{Change, Events};
use crate::fsm::{PeerEvent, SizeScope};
use crate::metrics::{self, metrics};
use crate::preheat::{self, Jobs, PreheatSpec};
use crate::seed;
use crate::state::{Decision, PieceOrigin, Policy, Push, State, Step, Terminal};
use crate::wake::Wakers;
use crate::SchedulerError;
use damselfly_core::extensions::{
    has_feature, FEATURES_METADATA_KEY, FEATURE_PARENT_PUSH, FEATURE_PIECE_DIGESTS,
};

type ResponseSender = mpsc::Sender<Result<AnnouncePeerResponse, Status>>;

/// Responses buffered per AnnouncePeer stream: the session's own decision, one at a time, and
/// mesh parents pushed to it (a push that finds the buffer full is withdrawn).
pub const PEER_STREAM_BUFFER: usize = 16;
/// Jitter applied to `retryInterval` (±20 %), so waiting peers do not retry in lockstep.
pub const RETRY_JITTER: f64 = 0.2;

/// State shared by the service, the sessions, the seed triggers and the GC loop.
pub struct Shared {
    pub config: SchedulerConfig,
    state: Mutex<State>,
    stop: watch::Receiver<bool>,
    /// Wakes peers waiting for a parent when their task's swarm changed (a peer registered,
    /// started, landed a piece or finished), so they do not sit out a whole `retryInterval`.
    changed: Wakers,
    /// Response streams of the peers that take pushed parents, by peer id.
    pushers: Mutex<HashMap<String, ResponseSender>>,
    /// Which certificate announced which host (mTLS only).
    pub authority: Authority,
    /// Client TLS for the seed trigger (`seedPeer.tls`); `None`: plain text.
    pub seed_tls: Option<Arc<rustls::ClientConfig>>,
    /// Preheat jobs (gRPC `PreheatImage`/`PreheatFile` and the HTTP API).
    pub preheat: Jobs,
    /// Change notices for the console's live view.
    pub console: Events,
}

impl Shared {
    pub fn new(config: SchedulerConfig, stop: watch::Receiver<bool>) -> Self {
        let policy = Policy::new(&config.scheduler, config.seed_peer.enable);
        Self {
            config,
            state: Mutex::new(State::new(policy)),
            stop,
            changed: Wakers::default(),
            pushers: Mutex::new(HashMap::new()),
            authority: Authority::default(),
            seed_tls: None,
            preheat: Jobs::default(),
            console: Events::default(),
        }
    }

    /// Uses `tls` to connect to seed peers.
    pub fn with_seed_tls(mut self, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        self.seed_tls = tls;
        self
    }

    /// Runs `f` under the state lock and refreshes the gauges. `f` is synchronous, so the lock
    /// can never be held across an await. A poisoned lock is taken over: every mutation keeps
    /// the maps consistent on its own.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let result = f(&mut guard);
        metrics().set_counts(guard.counts());
        result
    }

    /// Tells the peers waiting in `task_id` to look for parents again.
    pub fn swarm_changed(&self, task_id: &str) {
        self.changed.changed(task_id);
    }

    fn with_pushers<R>(&self, f: impl FnOnce(&mut HashMap<String, ResponseSender>) -> R) -> R {
        let mut guard = self.pushers.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Sends the mesh edges of the last decisions to their peers. A push that cannot be
    /// queued (stream gone or full) is withdrawn, so the graph never holds an edge its child
    /// does not know about.
    fn deliver_pushes(&self) {
        let pushes = self.with_state(State::take_pushes);
        self.deliver(pushes);
    }

    /// Sends `pushes`, taken from the state's outbox (see [`Shared::deliver_pushes`]).
    fn deliver(&self, pushes: Vec<Push>) {
        if pushes.is_empty() {
            return;
        }
        let undelivered: Vec<Push> = self.with_pushers(|pushers| {
            pushes
                .into_iter()
                .filter(|push| {
                    let Some(tx) = pushers.get(&*push.to) else {
                        return true;
                    };
                    let response = AnnouncePeerResponse {
                        response: Some(PeerResponse::NormalTaskResponse(NormalTaskResponse {
                            candidate_parents: vec![push.parent.clone()],
                        })),
                    };
                    let sent = tx.try_send(Ok(response)).is_ok();
                    if sent {
                        metrics().decision(metrics::DECISION_PUSHED);
                        tracing::debug!(to = %push.to, parent = %push.parent.id, "mesh parent pushed");
                    }
                    !sent
                })
                .collect()
        });
        if !undelivered.is_empty() {
            self.with_state(|s| undelivered.iter().for_each(|p| s.withdraw_push(p)));
        }
    }

    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }
}

/// Resolves once the scheduler is shutting down.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means shutdown.
    let _ = stop.wait_for(|s| *s).await;
}

/// `retryInterval` with ±[`RETRY_JITTER`].
fn jittered(interval: Duration) -> Duration {
    let factor = rand::rng().random_range((1.0 - RETRY_JITTER)..(1.0 + RETRY_JITTER));
    interval.mul_f64(factor)
}

/// The gRPC service.
#[derive(Clone)]
pub struct SchedulerService {
    shared: Arc<Shared>,
}

impl SchedulerService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// A call that acts for `host_id` must come from the identity that announced it.
    fn authorize<T>(&self, request: &Request<T>, host_id: &str) -> Result<(), Status> {
        let caller = Caller::of(request)?;
        self.shared.authority.check_host(&caller, host_id)
    }

    /// Reads may leave the host out; when they name one, it must be the caller's.
    fn authorize_stat<T>(&self, request: &Request<T>, host_id: &str) -> Result<(), Status> {
        if host_id.is_empty() {
            return Caller::of(request).map(|_| ());
        }
        self.authorize(request, host_id)
    }
}

fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is not supported by the Damselfly scheduler"
    ))
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty")));
    }
    Ok(())
}

/// The three ids every AnnouncePeer message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerIds {
    host_id: String,
    task_id: String,
    peer_id: String,
}

impl PeerIds {
    fn from_request(request: &AnnouncePeerRequest) -> Result<Self, Status> {
        require("AnnouncePeerRequest.host_id", &request.host_id)?;
        require("AnnouncePeerRequest.task_id", &request.task_id)?;
        require("AnnouncePeerRequest.peer_id", &request.peer_id)?;
        Ok(Self {
            host_id: request.host_id.clone(),
            task_id: request.task_id.clone(),
            peer_id: request.peer_id.clone(),
        })
    }

    /// Later messages on a stream must talk about the peer the stream registered.
    fn check(&self, request: &AnnouncePeerRequest) -> Result<(), Status> {
        if request.peer_id != self.peer_id
            || request.task_id != self.task_id
            || request.host_id != self.host_id
        {
            return Err(Status::invalid_argument(format!(
                "AnnouncePeer stream registered peer {} of task {} on host {}, but a message names peer {:?} of task {:?} on host {:?}",
                self.peer_id, self.task_id, self.host_id, request.peer_id, request.task_id, request.host_id
            )));
        }
        Ok(())
    }
}

fn request_name(request: &PeerRequest) -> &'static str {
    match request {
        PeerRequest::RegisterPeerRequest(_) => "RegisterPeerRequest",
        PeerRequest::DownloadPeerStartedRequest(_) => "DownloadPeerStartedRequest",
        PeerRequest::DownloadPeerBackToSourceStartedRequest(_) => {
            "DownloadPeerBackToSourceStartedRequest"
        }
        PeerRequest::ReschedulePeerRequest(_) => "ReschedulePeerRequest",
        PeerRequest::DownloadPeerFinishedRequest(_) => "DownloadPeerFinishedRequest",
        PeerRequest::DownloadPeerBackToSourceFinishedRequest(_) => {
            "DownloadPeerBackToSourceFinishedRequest"
        }
        PeerRequest::DownloadPeerFailedRequest(_) => "DownloadPeerFailedRequest",
        PeerRequest::DownloadPeerBackToSourceFailedRequest(_) => {
            "DownloadPeerBackToSourceFailedRequest"
        }
        PeerRequest::DownloadPieceFinishedRequest(_) => "DownloadPieceFinishedRequest",
        PeerRequest::DownloadPieceBackToSourceFinishedRequest(_) => {
            "DownloadPieceBackToSourceFinishedRequest"
        }
        PeerRequest::DownloadPieceFailedRequest(_) => "DownloadPieceFailedRequest",
        PeerRequest::DownloadPieceBackToSourceFailedRequest(_) => {
            "DownloadPieceBackToSourceFailedRequest"
        }
    }
}

fn traffic_label(traffic_type: Option<i32>) -> &'static str {
    match traffic_type.and_then(|t| pb::TrafficType::try_from(t).ok()) {
        Some(pb::TrafficType::BackToSource) => "back_to_source",
        Some(pb::TrafficType::LocalPeer) => "local_peer",
        Some(pb::TrafficType::RemotePeer) | None => "remote_peer",
    }
}

/// Whether the session goes on after a message.
enum Flow {
    Continue,
    Close,
}

/// One AnnouncePeer stream: register, decisions, reports, and the close after a terminal
/// request.
struct PeerSession {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<AnnouncePeerResponse, Status>>,
    stop: watch::Receiver<bool>,
    /// Shared, so each message's handling takes a reference count, not three copies.
    ids: Option<Arc<PeerIds>>,
    /// The daemon said it takes pushed parents (`x-damselfly-features`).
    takes_pushes: bool,
    /// Who opened the stream; it may register peers only for its own host.
    caller: Caller,
}

impl PeerSession {
    async fn run(mut self, mut inbound: Streaming<AnnouncePeerRequest>) {
        let mut closed_cleanly = false;
        loop {
            let next = tokio::select! {
                message = inbound.next() => message,
                () = stopped(&mut self.stop) => break,
            };
            let request = match next {
                None => break,
                Some(Err(status)) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "AnnouncePeer inbound stream broke");
                    break;
                }
                Some(Ok(request)) => request,
            };
            match self.handle(request).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => {
                    closed_cleanly = true;
                    break;
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "AnnouncePeer ends with an error");
                    // The peer may already be gone; nothing else to do then.
                    let _ = self.tx.send(Err(status)).await;
                    break;
                }
            }
        }
        if let Some(ids) = &self.ids {
            // Only our own entry: a re-registration of the peer on a new stream replaced it.
            self.shared.with_pushers(|p| {
                if p.get(&ids.peer_id)
                    .is_some_and(|tx| tx.same_channel(&self.tx))
                {
                    p.remove(&ids.peer_id);
                }
            });
        }
        if !closed_cleanly {
            if let Some(ids) = &self.ids {
                tracing::info!("AnnouncePeer stream ended before a terminal request; peer is no longer a parent");
                self.shared.with_state(|s| s.abandon(&ids.peer_id));
            }
        }
        // Dropping `tx` ends the response stream with an OK status: that is the close the
        // official client waits for.
    }

    async fn handle(&mut self, mut request: AnnouncePeerRequest) -> Result<Flow, Status> {
        let Some(inner) = request.request.take() else {
            return Err(Status::invalid_argument(
                "AnnouncePeerRequest carries no request",
            ));
        };
        match self.ids.clone() {
            None => match inner {
                PeerRequest::RegisterPeerRequest(register) => {
                    let ids = PeerIds::from_request(&request)?;
                    self.shared
                        .authority
                        .check_host(&self.caller, &ids.host_id)?;
                    let span = tracing::Span::current();
                    span.record("host_id", ids.host_id.as_str());
                    span.record("task_id", ids.task_id.as_str());
                    span.record("peer_id", ids.peer_id.as_str());
                    // Boxed, as the rounds below: their futures (timers, wake-ups) are
                    // large, and the future of every message would otherwise carry (and
                    // move) their size, for piece reports that never wait.
                    Box::pin(self.register(ids, register)).await?;
                    Ok(Flow::Continue)
                }
                other => Err(Status::invalid_argument(format!(
                    "the first AnnouncePeer message must be RegisterPeerRequest, got {}",
                    request_name(&other)
                ))),
            },
            Some(ids) => {
                ids.check(&request)?;
                let flow = self.dispatch(&ids, inner).await;
                self.shared.swarm_changed(&ids.task_id);
                self.shared
                    .console
                    .publish_with(|| Change::Task(ids.task_id.clone()));
                flow
            }
        }
    }

    async fn register(
        &mut self,
        ids: PeerIds,
        register: RegisterPeerRequest,
    ) -> Result<(), Status> {
        let Some(download) = register.download else {
            metrics().register_peer(false);
            return Err(Status::invalid_argument(
                "RegisterPeerRequest.download is missing",
            ));
        };
        let metadata_only = download.metadata_only;
        let now = Instant::now();
        let outcome = self
            .shared
            .with_state(|s| s.register(&ids.host_id, &ids.task_id, &ids.peer_id, download, now));
        metrics().register_peer(outcome.is_ok());
        let registered = outcome?;
        self.ids = Some(Arc::new(ids.clone()));
        if self.takes_pushes {
            self.shared.with_state(|s| s.set_takes_pushes(&ids.peer_id));
            let tx = self.tx.clone();
            self.shared
                .with_pushers(|p| p.insert(ids.peer_id.clone(), tx));
        }
        self.shared.swarm_changed(&ids.task_id);
        self.shared
            .console
            .publish(Change::Task(ids.task_id.clone()));
        tracing::info!(scope = ?registered.scope, "peer registered");
        if let Some(job) = registered.seed_job {
            metrics().seed_trigger("started");
            let timeout = self.shared.config.seed_peer.task_download_timeout;
            seed::spawn_trigger(self.shared.clone(), job, timeout);
        }
        if metadata_only {
            // It reports pieces it holds and finishes; scheduling it would only waste a round.
            metrics().decision(metrics::DECISION_METADATA_ONLY);
            return self
                .send(PeerResponse::MetadataOnlyResponse(MetadataOnlyResponse {}))
                .await;
        }
        if registered.scope == SizeScope::Empty {
            metrics().decision(metrics::DECISION_EMPTY);
            return self
                .send(PeerResponse::EmptyTaskResponse(EmptyTaskResponse {}))
                .await;
        }
        let decided = self.schedule(&ids).await;
        if decided.is_ok() {
            metrics().decided_in(now.elapsed().as_secs_f64());
        }
        decided
    }

    /// Scheduling rounds until a decision: waits for a triggered seed without counting, counts
    /// empty rounds toward retryBackToSourceLimit / retryLimit.
    async fn schedule(&mut self, ids: &PeerIds) -> Result<(), Status> {
        let shared = self.shared.clone();
        let mut rounds = 0u32;
        let interval = shared.config.scheduler.retry_interval;
        let mut round_ends = tokio::time::Instant::now() + jittered(interval);
        loop {
            // Armed before looking, so a change between the look and the wait is not lost.
            let changed = shared.changed.of(&ids.task_id).notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let step = shared.with_state(|s| s.schedule_once(&ids.peer_id, rounds, now));
            let retry = match step {
                Step::Decided(decision) => return self.send_decision(decision).await,
                Step::Wait => {
                    tracing::debug!("waiting for the triggered seed peer");
                    false
                }
                Step::Retry => {
                    tracing::debug!(rounds, "no candidate parent yet");
                    true
                }
            };
            // Only a full retryInterval without a parent counts as a round; a change in the
            // swarm just makes us look again sooner.
            tokio::select! {
                () = tokio::time::sleep_until(round_ends) => {
                    if retry {
                        rounds += 1;
                    }
                    round_ends = tokio::time::Instant::now() + jittered(interval);
                }
                () = &mut changed => {}
                () = stopped(&mut self.stop) => {
                    return Err(Status::unavailable("the scheduler is shutting down"));
                }
            }
        }
    }

    async fn send_decision(&mut self, decision: Decision) -> Result<(), Status> {
        match decision {
            Decision::Normal(parents) => {
                metrics().decision(metrics::DECISION_NORMAL);
                let ids: Vec<&str> = parents.iter().map(|p| p.id.as_str()).collect();
                tracing::info!(parents = ?ids, "candidate parents scheduled");
                let sent = self
                    .send(PeerResponse::NormalTaskResponse(NormalTaskResponse {
                        candidate_parents: parents,
                    }))
                    .await;
                // The reverse edges were made with the decision, whether or not this peer is
                // still there to hear it.
                self.shared.deliver_pushes();
                sent
            }
            Decision::BackToSource(description) => {
                metrics().decision(metrics::DECISION_BACK_TO_SOURCE);
                tracing::info!(reason = %description, "peer sent back to source");
                self.send(PeerResponse::NeedBackToSourceResponse(
                    NeedBackToSourceResponse {
                        description: Some(description),
                    },
                ))
                .await
            }
            Decision::Fail(status) => {
                metrics().decision(metrics::DECISION_FAILED);
                Err(status)
            }
        }
    }

    async fn send(&self, response: PeerResponse) -> Result<(), Status> {
        self.tx
            .send(Ok(AnnouncePeerResponse {
                response: Some(response),
            }))
            .await
            .map_err(|_| Status::cancelled("the peer closed the AnnouncePeer stream"))
    }

    async fn dispatch(&mut self, ids: &PeerIds, request: PeerRequest) -> Result<Flow, Status> {
        let peer_id = ids.peer_id.as_str();
        match request {
            PeerRequest::RegisterPeerRequest(_) => Err(Status::invalid_argument(
                "RegisterPeerRequest sent twice on one AnnouncePeer stream",
            )),
            PeerRequest::DownloadPeerStartedRequest(_) => {
                let flow = self.event(peer_id, PeerEvent::Download);
                // Mesh parents made while this peer waited to start reach it now.
                self.shared.deliver_pushes();
                flow
            }
            PeerRequest::DownloadPeerBackToSourceStartedRequest(started) => {
                let flow = self.event(peer_id, PeerEvent::DownloadBackToSource)?;
                let description = started.description.as_deref();
                self.shared
                    .with_state(|s| s.origin_reported(peer_id, description))?;
                Ok(flow)
            }
            PeerRequest::ReschedulePeerRequest(reschedule) => {
                Box::pin(self.reschedule(ids, reschedule)).await
            }
            PeerRequest::DownloadPeerFinishedRequest(_) => {
                self.terminal(peer_id, Terminal::Finished, "finished")
            }
            PeerRequest::DownloadPeerBackToSourceFinishedRequest(_) => self.terminal(
                peer_id,
                Terminal::BackToSourceFinished,
                "back_to_source_finished",
            ),
            PeerRequest::DownloadPeerFailedRequest(failed) => {
                tracing::info!(reason = ?failed.description, "peer download failed");
                self.terminal(peer_id, Terminal::Failed, "failed")
            }
            PeerRequest::DownloadPeerBackToSourceFailedRequest(failed) => {
                tracing::info!(reason = ?failed.description, "peer back-to-source failed");
                self.terminal(
                    peer_id,
                    Terminal::BackToSourceFailed,
                    "back_to_source_failed",
                )
            }
            PeerRequest::DownloadPieceFinishedRequest(finished) => {
                self.piece(peer_id, finished.piece, "remote_peer")
            }
            PeerRequest::DownloadPieceBackToSourceFinishedRequest(finished) => {
                self.piece_from_origin(peer_id, finished.piece)
            }
            PeerRequest::DownloadPieceFailedRequest(failed) => self.piece_failed(peer_id, &failed),
            PeerRequest::DownloadPieceBackToSourceFailedRequest(failed) => {
                tracing::debug!(piece = ?failed.piece_number, "piece from origin failed");
                self.shared.with_state(|s| s.touch_peer(peer_id))?;
                Ok(Flow::Continue)
            }
        }
    }

    /// The peer gives up on the parents it names and asks for new ones.
    async fn reschedule(
        &mut self,
        ids: &PeerIds,
        reschedule: ReschedulePeerRequest,
    ) -> Result<Flow, Status> {
        let give_up: Vec<String> = reschedule
            .candidate_parents
            .iter()
            .map(|p| p.id.clone())
            .collect();
        tracing::info!(blocklisted = ?give_up, reason = ?reschedule.description, "reschedule");
        self.shared
            .with_state(|s| s.prepare_reschedule(&ids.peer_id, &give_up))?;
        self.schedule(ids).await?;
        Ok(Flow::Continue)
    }

    fn piece_failed(
        &self,
        peer_id: &str,
        failed: &DownloadPieceFailedRequest,
    ) -> Result<Flow, Status> {
        tracing::debug!(piece = ?failed.piece_number, parent_id = %failed.parent_id, temporary = failed.temporary, "piece failed");
        self.shared
            .with_state(|s| s.piece_failed(peer_id, &failed.parent_id, failed.temporary))?;
        Ok(Flow::Continue)
    }

    fn event(&self, peer_id: &str, event: PeerEvent) -> Result<Flow, Status> {
        self.shared.with_state(|s| s.peer_event(peer_id, event))?;
        Ok(Flow::Continue)
    }

    fn terminal(&self, peer_id: &str, terminal: Terminal, label: &str) -> Result<Flow, Status> {
        let now = Instant::now();
        self.shared
            .with_state(|s| s.finish(peer_id, terminal, now))?;
        metrics().download_peer(label);
        tracing::info!(result = label, "peer download ended; closing the stream");
        Ok(Flow::Close)
    }

    /// A piece the peer fetched from the origin: its digest may become the piece's trusted
    /// digest (`state/digests.rs`).
    fn piece_from_origin(&self, peer_id: &str, piece: Option<pb::Piece>) -> Result<Flow, Status> {
        if let Some(piece) = &piece {
            let kept = self
                .shared
                .with_state(|s| s.piece_digest_reported(peer_id, piece));
            tracing::debug!(number = piece.number, ?kept, "piece digest from the origin");
        }
        self.piece(peer_id, piece, "back_to_source")
    }

    fn piece(
        &self,
        peer_id: &str,
        piece: Option<pb::Piece>,
        default_label: &str,
    ) -> Result<Flow, Status> {
        let Some(piece) = piece else {
            return Err(Status::invalid_argument("piece report without a piece"));
        };
        let origin = if default_label == "back_to_source" {
            PieceOrigin::Origin
        } else {
            PieceOrigin::of(&piece)
        };
        // One lock per report: the fast parents for a child whose parents turned out slow
        // (`state::topup`) leave the outbox with it.
        let pushes = self.shared.with_state(|s| {
            s.piece_report(peer_id, &piece, &origin, Instant::now())?;
            Ok::<_, Status>(s.take_pushes())
        })?;
        self.shared.deliver(pushes);
        let label = if default_label == "back_to_source" {
            default_label
        } else {
            traffic_label(piece.traffic_type)
        };
        metrics().traffic(label, piece.length);
        tracing::debug!(number = piece.number, parent_id = ?piece.parent_id, length = piece.length, "piece finished");
        Ok(Flow::Continue)
    }
}

type Unsupported<T> = futures::stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type AnnouncePeerStream = ReceiverStream<Result<AnnouncePeerResponse, Status>>;

    /// Returns the response stream at once (the client's timeout covers the call until
    /// headers) and runs the session in its own task.
    #[instrument(skip_all)]
    async fn announce_peer(
        &self,
        request: Request<Streaming<AnnouncePeerRequest>>,
    ) -> Result<Response<Self::AnnouncePeerStream>, Status> {
        metrics().announce_peer();
        let caller = Caller::of(&request)?;
        let takes_pushes = request
            .metadata()
            .get(FEATURES_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|list| has_feature(list, FEATURE_PARENT_PUSH));
        let (tx, rx) = mpsc::channel(PEER_STREAM_BUFFER);
        let session = PeerSession {
            shared: self.shared.clone(),
            tx,
            stop: self.shared.stop_signal(),
            ids: None,
            takes_pushes,
            caller,
        };
        let span = tracing::info_span!(
            "announce_peer_session",
            host_id = tracing::field::Empty,
            task_id = tracing::field::Empty,
            peer_id = tracing::field::Empty
        );
        tokio::spawn(session.run(request.into_inner()).instrument(span));
        let mut response = Response::new(ReceiverStream::new(rx));
        // Tells a Damselfly daemon it may report `sha256:` piece digests; official clients
        // ignore response metadata.
        response.metadata_mut().insert(
            FEATURES_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(FEATURE_PIECE_DIGESTS),
        );
        Ok(response)
    }

    #[instrument(skip_all, fields(host_id = %request.get_ref().host_id, task_id = %request.get_ref().task_id, peer_id = %request.get_ref().peer_id))]
    async fn stat_peer(
        &self,
        request: Request<StatPeerRequest>,
    ) -> Result<Response<pb::Peer>, Status> {
        self.authorize_stat(&request, &request.get_ref().host_id)?;
        let request = request.into_inner();
        require("peer_id", &request.peer_id)?;
        self.shared
            .with_state(|s| s.stat_peer(&request.peer_id))
            .map(Response::new)
    }

    #[instrument(skip_all, fields(host_id = %request.get_ref().host_id, task_id = %request.get_ref().task_id, peer_id = %request.get_ref().peer_id))]
    async fn delete_peer(
        &self,
        request: Request<DeletePeerRequest>,
    ) -> Result<Response<()>, Status> {
        self.authorize(&request, &request.get_ref().host_id)?;
        let request = request.into_inner();
        require("peer_id", &request.peer_id)?;
        self.shared
            .with_state(|s| s.delete_peer(&request.peer_id))?;
        self.shared.console.publish(Change::Task(request.task_id));
        tracing::info!("peer deleted");
        Ok(Response::new(()))
    }

    #[instrument(skip_all, fields(host_id = %request.get_ref().host_id, task_id = %request.get_ref().task_id))]
    async fn stat_task(
        &self,
        request: Request<StatTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.authorize_stat(&request, &request.get_ref().host_id)?;
        let wants_digests = request
            .metadata()
            .get(FEATURES_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|list| has_feature(list, FEATURE_PIECE_DIGESTS));
        let request = request.into_inner();
        require("task_id", &request.task_id)?;
        self.shared
            .with_state(|s| {
                let mut task = s.stat_task(&request.task_id)?;
                // Only for daemons that asked: official peers keep seeing no pieces here.
                if wants_digests {
                    task.pieces = s.trusted_pieces(&request.task_id);
                }
                Ok(task)
            })
            .map(Response::new)
    }

    #[instrument(skip_all, fields(host_id = %request.get_ref().host_id, task_id = %request.get_ref().task_id))]
    async fn delete_task(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        self.authorize(&request, &request.get_ref().host_id)?;
        let request = request.into_inner();
        require("host_id", &request.host_id)?;
        require("task_id", &request.task_id)?;
        self.shared
            .with_state(|s| s.delete_task(&request.host_id, &request.task_id))?;
        self.shared.console.publish(Change::Task(request.task_id));
        tracing::info!("task deleted from host");
        Ok(Response::new(()))
    }

    #[instrument(skip_all, fields(host_id = tracing::field::Empty))]
    async fn announce_host(
        &self,
        request: Request<AnnounceHostRequest>,
    ) -> Result<Response<()>, Status> {
        metrics().announce_host();
        let caller = Caller::of(&request)?;
        let Some(host) = request.into_inner().host else {
            return Err(Status::invalid_argument(
                "AnnounceHostRequest.host is missing",
            ));
        };
        if let Err(status) = self.shared.authority.admit_host(&caller, &host) {
            tracing::warn!(message = status.message(), "AnnounceHost refused");
            return Err(status);
        }
        tracing::Span::current().record("host_id", host.id.as_str());
        let now = Instant::now();
        let (id, ip, port, host_type) = (host.id.clone(), host.ip.clone(), host.port, host.r#type);
        self.shared.with_state(|s| s.announce_host(host, now))?;
        tracing::debug!(%id, %ip, port, host_type, "host announced");
        self.shared.console.publish(Change::Host(id));
        Ok(Response::new(()))
    }

    #[instrument(skip_all)]
    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        let host_type = request.into_inner().r#type;
        let hosts = self
            .shared
            .with_state(|s| s.list_hosts(host_type, Instant::now()));
        Ok(Response::new(ListHostsResponse { hosts }))
    }

    #[instrument(skip_all, fields(host_id = %request.get_ref().host_id))]
    async fn delete_host(
        &self,
        request: Request<DeleteHostRequest>,
    ) -> Result<Response<()>, Status> {
        self.authorize(&request, &request.get_ref().host_id)?;
        let request = request.into_inner();
        require("host_id", &request.host_id)?;
        self.shared
            .with_state(|s| s.delete_host(&request.host_id))?;
        self.shared.authority.forget(&request.host_id);
        self.shared.console.publish(Change::All);
        tracing::info!("host deleted");
        Ok(Response::new(()))
    }

    type AnnounceCachePeerStream = Unsupported<AnnounceCachePeerResponse>;

    async fn announce_cache_peer(
        &self,
        _request: Request<Streaming<AnnounceCachePeerRequest>>,
    ) -> Result<Response<Self::AnnounceCachePeerStream>, Status> {
        Err(unimplemented("AnnounceCachePeer"))
    }

    async fn stat_cache_peer(
        &self,
        _request: Request<StatCachePeerRequest>,
    ) -> Result<Response<pb::CachePeer>, Status> {
        Err(unimplemented("StatCachePeer"))
    }

    async fn delete_cache_peer(
        &self,
        _request: Request<DeleteCachePeerRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("DeleteCachePeer"))
    }

    async fn stat_cache_task(
        &self,
        _request: Request<StatCacheTaskRequest>,
    ) -> Result<Response<pb::CacheTask>, Status> {
        Err(unimplemented("StatCacheTask"))
    }

    async fn delete_cache_task(
        &self,
        _request: Request<DeleteCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("DeleteCacheTask"))
    }

    type AnnouncePersistentPeerStream = Unsupported<AnnouncePersistentPeerResponse>;

    async fn announce_persistent_peer(
        &self,
        _request: Request<Streaming<AnnouncePersistentPeerRequest>>,
    ) -> Result<Response<Self::AnnouncePersistentPeerStream>, Status> {
        Err(unimplemented("AnnouncePersistentPeer"))
    }

    async fn stat_persistent_peer(
        &self,
        _request: Request<StatPersistentPeerRequest>,
    ) -> Result<Response<pb::PersistentPeer>, Status> {
        Err(unimplemented("StatPersistentPeer"))
    }

    async fn delete_persistent_peer(
        &self,
        _request: Request<DeletePersistentPeerRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("DeletePersistentPeer"))
    }

    async fn upload_persistent_task_started(
        &self,
        _request: Request<UploadPersistentTaskStartedRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("UploadPersistentTaskStarted"))
    }

    async fn upload_persistent_task_finished(
        &self,
        _request: Request<UploadPersistentTaskFinishedRequest>,
    ) -> Result<Response<pb::PersistentTask>, Status> {
        Err(unimplemented("UploadPersistentTaskFinished"))
    }

    async fn upload_persistent_task_failed(
        &self,
        _request: Request<UploadPersistentTaskFailedRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("UploadPersistentTaskFailed"))
    }

    async fn stat_persistent_task(
        &self,
        _request: Request<StatPersistentTaskRequest>,
    ) -> Result<Response<pb::PersistentTask>, Status> {
        Err(unimplemented("StatPersistentTask"))
    }

    async fn delete_persistent_task(
        &self,
        _request: Request<DeletePersistentTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("DeletePersistentTask"))
    }

    type AnnouncePersistentCachePeerStream = Unsupported<AnnouncePersistentCachePeerResponse>;

    async fn announce_persistent_cache_peer(
        &self,
        _request: Request<Streaming<AnnouncePersistentCachePeerRequest>>,
    ) -> Result<Response<Self::AnnouncePersistentCachePeerStream>, Status> {
        Err(unimplemented("AnnouncePersistentCachePeer"))
    }

    async fn stat_persistent_cache_peer(
        &self,
        _request: Request<StatPersistentCachePeerRequest>,
    ) -> Result<Response<pb::PersistentCachePeer>, Status> {
        Err(unimplemented("StatPersistentCachePeer"))
    }

    async fn delete_persistent_cache_peer(
        &self,
        _request: Request<DeletePersistentCachePeerRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("DeletePersistentCachePeer"))
    }

    async fn upload_persistent_cache_task_started(
        &self,
        _request: Request<UploadPersistentCacheTaskStartedRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("UploadPersistentCacheTaskStarted"))
    }

    async fn upload_persistent_cache_task_finished(
        &self,
        _request: Request<UploadPersistentCacheTaskFinishedRequest>,
    ) -> Result<Response<pb::PersistentCacheTask>, Status> {
        Err(unimplemented("UploadPersistentCacheTaskFinished"))
    }

    async fn upload_persistent_cache_task_failed(
        &self,
        _request: Request<UploadPersistentCacheTaskFailedRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("UploadPersistentCacheTaskFailed"))
    }

    async fn stat_persistent_cache_task(
        &self,
        _request: Request<StatPersistentCacheTaskRequest>,
    ) -> Result<Response<pb::PersistentCacheTask>, Status> {
        Err(unimplemented("StatPersistentCacheTask"))
    }

    async fn delete_persistent_cache_task(
        &self,
        _request: Request<DeletePersistentCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unimplemented("DeletePersistentCacheTask"))
    }

    #[instrument(skip_all, fields(url = %request.get_ref().url))]
    async fn preheat_image(
        &self,
        request: Request<PreheatImageRequest>,
    ) -> Result<Response<()>, Status> {
        Caller::of(&request)?;
        let spec = PreheatSpec::from_image_request(request.into_inner()).map_err(to_status)?;
        self.start_preheat(spec).await
    }

    #[instrument(skip_all, fields(url = %request.get_ref().url))]
    async fn stat_image(
        &self,
        request: Request<StatImageRequest>,
    ) -> Result<Response<StatImageResponse>, Status> {
        Caller::of(&request)?;
        preheat::stat_image(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    #[instrument(skip_all, fields(url = %request.get_ref().url))]
    async fn preheat_file(
        &self,
        request: Request<PreheatFileRequest>,
    ) -> Result<Response<()>, Status> {
        Caller::of(&request)?;
        let spec = PreheatSpec::from_file_request(request.into_inner()).map_err(to_status)?;
        self.start_preheat(spec).await
    }

    #[instrument(skip_all, fields(url = %request.get_ref().url))]
    async fn stat_file(
        &self,
        request: Request<StatFileRequest>,
    ) -> Result<Response<StatFileResponse>, Status> {
        Caller::of(&request)?;
        preheat::stat_file(&self.shared, request.into_inner())
            .map(Response::new)
            .map_err(to_status)
    }
}

impl SchedulerService {
    /// Answers once the job is created (for an image: its manifest resolved), as Dragonfly
    /// does; the job ID rides in the response metadata for clients that want to follow it
    /// over the HTTP API.
    async fn start_preheat(&self, spec: PreheatSpec) -> Result<Response<()>, Status> {
        let id = preheat::start(self.shared.clone(), spec)
            .await
            .map_err(to_status)?;
        let mut response = Response::new(());
        if let Ok(value) = tonic::metadata::MetadataValue::try_from(id.as_str()) {
            response
                .metadata_mut()
                .insert(PREHEAT_JOB_ID_METADATA_KEY, value);
        }
        Ok(response)
    }
}

/// Response metadata naming the preheat job a `PreheatImage`/`PreheatFile` call started.
pub const PREHEAT_JOB_ID_METADATA_KEY: &str = "x-damselfly-preheat-job-id";

/// The gRPC status for a preheat error.
fn to_status(error: SchedulerError) -> Status {
    match &error {
        SchedulerError::InvalidPreheat(_) => Status::invalid_argument(error.to_string()),
        SchedulerError::ImageResolve(_) | SchedulerError::NoPreheatHost(_) => {
            Status::failed_precondition(error.to_string())
        }
        SchedulerError::TooManyJobs(_) => Status::resource_exhausted(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}
