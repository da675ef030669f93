//! Talking to schedulers: the consistent-hash ring picks a task's scheduler (same ring as the
//! official client, so our daemons and official ones agree), and a scheduler that is down
//! (connect error or `Unavailable`) hands over to the next one in failover order.

use crate::error::DaemonError;
use damselfly_core::digest::is_trusted_piece_digest;
use damselfly_core::extensions::{
    has_feature, FEATURES_METADATA_KEY, FEATURE_PARENT_PUSH, FEATURE_PIECE_DIGESTS,
};
use damselfly_core::SchedulerRing;
use dragonfly_api::common::v2::{Host, Peer, Task};
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::announce_peer_response::Response as PeerResponse;
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient;
use dragonfly_api::scheduler::v2::{
    AnnounceHostRequest, AnnouncePeerRequest, AnnouncePeerResponse, DeleteHostRequest,
    DeleteTaskRequest, ListHostsRequest, RegisterPeerRequest, StatTaskRequest,
};
use futures::FutureExt;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_client::HealthClient;
use tracing::{debug, info, warn};

/// Connection setup limit: a scheduler that does not accept within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Limit on unary calls and on the AnnouncePeer call until response headers (the official
/// client uses 10 s for the same purpose).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests queued towards the scheduler per download; piece reports are small and the
/// scheduler reads them as fast as they come.
const PEER_REQUEST_QUEUE: usize = 1024;
/// Attempts of the first AnnounceHost to each scheduler, and the pause between them.
const STARTUP_ANNOUNCE_ATTEMPTS: u32 = 3;
const STARTUP_ANNOUNCE_BACKOFF: Duration = Duration::from_millis(500);

/// The schedulers in use, and one lazily connected channel per scheduler address. The set
/// can change at run time (names resolved again, the dynconfig file edited): each call takes
/// the ring as it is when the call starts.
pub struct Schedulers {
    ring: RwLock<Arc<SchedulerRing>>,
    channels: Mutex<HashMap<SocketAddr, Channel>>,
    /// Schedulers that accepted this host's AnnounceHost; the others are tried again at each
    /// scheduler refresh instead of waiting for the next `announceInterval`.
    announced: Mutex<HashSet<SocketAddr>>,
    /// Schedulers that answered "unknown host" (they restarted without the link breaking
    /// where a watcher saw it); their watchers announce what this host holds again.
    lost_host: Mutex<HashSet<SocketAddr>>,
    host_lost: tokio::sync::Notify,
    /// `scheduler.caCert/cert/key`; `None`: plain text.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Schedulers {
    pub fn new(addrs: &[SocketAddr], tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            ring: RwLock::new(Arc::new(SchedulerRing::new(addrs))),
            channels: Mutex::new(HashMap::new()),
            announced: Mutex::new(HashSet::new()),
            lost_host: Mutex::new(HashSet::new()),
            host_lost: tokio::sync::Notify::new(),
            tls,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ring().addrs().is_empty()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.ring().addrs().to_vec()
    }

    fn ring(&self) -> Arc<SchedulerRing> {
        match self.ring.read() {
            Ok(ring) => ring.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Uses `addrs` from now on (sorted, so the ring does not depend on resolver order);
    /// returns the schedulers that were not in use before, which need this host announced.
    /// Channels to schedulers that left are closed.
    pub fn replace(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut sorted = addrs.to_vec();
        sorted.sort();
        sorted.dedup();
        let previous = self.addrs();
        let added = sorted
            .iter()
            .filter(|addr| !previous.contains(addr))
            .copied()
            .collect();
        let ring = Arc::new(SchedulerRing::new(&sorted));
        match self.ring.write() {
            Ok(mut current) => *current = ring,
            Err(poisoned) => *poisoned.into_inner() = ring,
        }
        if let Ok(mut channels) = self.channels.lock() {
            channels.retain(|addr, _| sorted.contains(addr));
        }
        if let Ok(mut announced) = self.announced.lock() {
            announced.retain(|addr| sorted.contains(addr));
        }
        added
    }

    /// Schedulers on the ring that have not accepted this host yet.
    pub fn unannounced(&self) -> Vec<SocketAddr> {
        let announced = match self.announced.lock() {
            Ok(announced) => announced.clone(),
            Err(_) => HashSet::new(),
        };
        self.addrs()
            .into_iter()
            .filter(|addr| !announced.contains(addr))
            .collect()
    }

    /// The scheduler that owns the task on the ring (before any failover).
    pub fn owner(&self, task_id: &str) -> Option<SocketAddr> {
        self.ring().owner(task_id)
    }

    /// Forgets that `addr` accepted this host: its connection broke, so it may have restarted
    /// without us; the host (and what it holds) is announced again once it answers.
    pub fn forget_announced(&self, addr: SocketAddr) {
        if let Ok(mut announced) = self.announced.lock() {
            announced.remove(&addr);
        }
    }

    /// Notes that `addr` did not know this host any more, and wakes the watchers.
    fn note_host_lost(&self, addr: SocketAddr) {
        if let Ok(mut lost) = self.lost_host.lock() {
            lost.insert(addr);
        }
        self.host_lost.notify_waiters();
    }

    /// Whether `addr` lost this host since the last call (clears the mark).
    pub fn take_host_lost(&self, addr: SocketAddr) -> bool {
        self.lost_host
            .lock()
            .map(|mut lost| lost.remove(&addr))
            .unwrap_or(false)
    }

    /// Resolves when some scheduler answered "unknown host"; see [`Self::take_host_lost`].
    pub async fn host_lost(&self) {
        self.host_lost.notified().await;
    }

    /// The gRPC health service of a scheduler, on the same connection as its other calls.
    pub fn health_client(&self, addr: SocketAddr) -> Result<HealthClient<Channel>, DaemonError> {
        Ok(HealthClient::new(self.channel(addr)?))
    }

    fn client(&self, addr: SocketAddr) -> Result<SchedulerClient<Channel>, DaemonError> {
        Ok(new_client(self.channel(addr)?))
    }

    fn channel(&self, addr: SocketAddr) -> Result<Channel, DaemonError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| DaemonError::NoScheduler("channel cache poisoned".into()))?;
        if let Some(channel) = channels.get(&addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| DaemonError::NoScheduler(format!("{addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let channel = damselfly_tls::grpc::lazy_channel(endpoint, self.tls.as_ref());
        channels.insert(addr, channel.clone());
        Ok(channel)
    }

    /// AnnounceHost to one scheduler.
    pub async fn announce_host_to(
        &self,
        addr: SocketAddr,
        host: Host,
        interval: Duration,
    ) -> Result<(), DaemonError> {
        let mut client = self.client(addr)?;
        let mut request = tonic::Request::new(AnnounceHostRequest {
            host: Some(host),
            interval: prost_wkt_types::Duration::try_from(interval).ok(),
        });
        request.set_timeout(REQUEST_TIMEOUT);
        client
            .announce_host(request)
            .await
            .map_err(|status| DaemonError::Scheduler { addr, status })?;
        if let Ok(mut announced) = self.announced.lock() {
            announced.insert(addr);
        }
        Ok(())
    }

    /// AnnounceHost to every scheduler, a few attempts each; returns how many accepted.
    /// Used at startup: a daemon with no scheduler still runs (downloads go to the origin).
    pub async fn announce_host_all_with_retries(&self, host: &Host, interval: Duration) -> usize {
        let attempts = self.addrs().into_iter().map(|addr| async move {
            for attempt in 1..=STARTUP_ANNOUNCE_ATTEMPTS {
                match self.announce_host_to(addr, host.clone(), interval).await {
                    Ok(()) => {
                        info!(scheduler = %addr, host_id = %host.id, "announced host");
                        return true;
                    }
                    Err(e) if attempt == STARTUP_ANNOUNCE_ATTEMPTS => {
                        warn!(scheduler = %addr, error = %e, "cannot announce host; downloads that need this scheduler will go to the origin");
                    }
                    Err(e) => {
                        debug!(scheduler = %addr, attempt, error = %e, "announce host failed, retrying");
                        tokio::time::sleep(STARTUP_ANNOUNCE_BACKOFF * attempt).await;
                    }
                }
            }
            false
        });
        futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// Periodic re-announcement: one attempt per scheduler; failures are logged.
    pub async fn announce_host_all(&self, host: &Host, interval: Duration) {
        let calls = self.addrs().into_iter().map(|addr| async move {
            if let Err(e) = self.announce_host_to(addr, host.clone(), interval).await {
                warn!(scheduler = %addr, error = %e, "announce host failed");
            }
        });
        futures::future::join_all(calls).await;
    }

    /// Each host's measured upload (`ListHosts`, `Network.tx_bandwidth`, bits per second) as
    /// every scheduler sees it, the highest where they differ: a host's children may report
    /// to different schedulers. A scheduler that does not answer is skipped.
    pub async fn host_uploads(&self) -> HashMap<String, u64> {
        let calls = self.addrs().into_iter().map(|addr| async move {
            let mut client = self.client(addr).ok()?;
            let mut request = tonic::Request::new(ListHostsRequest { r#type: None });
            request.set_timeout(REQUEST_TIMEOUT);
            match client.list_hosts(request).await {
                Ok(response) => Some(response.into_inner().hosts),
                Err(status) => {
                    debug!(scheduler = %addr, %status, "list hosts failed");
                    None
                }
            }
        });
        let mut rates = HashMap::new();
        for host in futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(tx) = host.network.and_then(|n| n.tx_bandwidth) {
                let rate = rates.entry(host.id).or_insert(0);
                *rate = tx.max(*rate);
            }
        }
        rates
    }

    /// DeleteHost on every scheduler (shutdown); errors are only logged, as upstream.
    pub async fn delete_host_all(&self, host_id: &str) {
        let calls = self.addrs().into_iter().map(|addr| async move {
            let result = async {
                let mut client = self.client(addr)?;
                let mut request = tonic::Request::new(DeleteHostRequest {
                    host_id: host_id.to_string(),
                });
                request.set_timeout(REQUEST_TIMEOUT);
                client
                    .delete_host(request)
                    .await
                    .map_err(|status| DaemonError::Scheduler { addr, status })
            }
            .await;
            match result {
                Ok(_) => debug!(scheduler = %addr, "deleted host"),
                Err(e) => debug!(scheduler = %addr, error = %e, "delete host failed"),
            }
        });
        futures::future::join_all(calls).await;
    }

    /// DeleteTask on the task's scheduler (GC eviction); errors are only logged.
    pub async fn delete_task(&self, host_id: &str, task_id: &str) {
        let result = self
            .call_with_failover(task_id, |mut client| {
                let mut request = tonic::Request::new(DeleteTaskRequest {
                    host_id: host_id.to_string(),
                    task_id: task_id.to_string(),
                });
                request.set_timeout(REQUEST_TIMEOUT);
                async move { client.delete_task(request).await.map(|_| ()) }
            })
            .await;
        if let Err(e) = result {
            debug!(task_id, error = %e, "scheduler DeleteTask failed");
        }
    }

    /// StatTask on the task's scheduler.
    pub async fn stat_task(&self, host_id: &str, task_id: &str) -> Result<Task, DaemonError> {
        self.call_with_failover(task_id, |mut client| {
            let mut request = tonic::Request::new(StatTaskRequest {
                host_id: host_id.to_string(),
                task_id: task_id.to_string(),
            });
            request.set_timeout(REQUEST_TIMEOUT);
            async move { client.stat_task(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// The task's trusted piece digests (piece number → trusted digest) from the
    /// scheduler that keeps them; empty from a scheduler that keeps none.
    pub async fn trusted_piece_digests(
        &self,
        host_id: &str,
        task_id: &str,
    ) -> Result<HashMap<u32, String>, DaemonError> {
        let task = self
            .call_with_failover(task_id, |mut client| {
                let mut request = tonic::Request::new(StatTaskRequest {
                    host_id: host_id.to_string(),
                    task_id: task_id.to_string(),
                });
                request.set_timeout(REQUEST_TIMEOUT);
                request
                    .metadata_mut()
                    .insert(FEATURES_METADATA_KEY, features_value());
                async move { client.stat_task(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(task
            .pieces
            .into_iter()
            .filter(|p| is_trusted_piece_digest(&p.digest))
            .map(|p| (p.number, p.digest))
            .collect())
    }

    async fn call_with_failover<T, F, Fut>(&self, task_id: &str, call: F) -> Result<T, DaemonError>
    where
        F: Fn(SchedulerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut last = DaemonError::NoScheduler("no scheduler configured".into());
        for addr in self.ring().failover_order(task_id) {
            match call(self.client(addr)?).await {
                Ok(value) => return Ok(value),
                Err(status) if is_down(&status) => {
                    debug!(scheduler = %addr, %status, "scheduler down, trying the next one");
                    last = DaemonError::Scheduler { addr, status };
                }
                Err(status) => return Err(DaemonError::Scheduler { addr, status }),
            }
        }
        Err(last)
    }

    /// Opens AnnouncePeer on the task's scheduler (failing over), sending RegisterPeer first.
    /// A scheduler that does not know our host (it restarted) gets the host re-announced once.
    pub async fn open_peer_session(
        &self,
        ids: PeerIds,
        register: RegisterPeerRequest,
        host: &Host,
        announce_interval: Duration,
    ) -> Result<PeerSession, DaemonError> {
        let mut last = DaemonError::NoScheduler("no scheduler configured".into());
        for addr in self.ring().failover_order(&ids.task_id) {
            for attempt in 0..2 {
                match self.try_open(addr, &ids, register.clone()).await {
                    Ok(session) => return Ok(session),
                    Err(status) if status.code() == Code::NotFound && attempt == 0 => {
                        debug!(scheduler = %addr, "scheduler does not know this host; re-announcing");
                        self.note_host_lost(addr);
                        if let Err(e) = self
                            .announce_host_to(addr, host.clone(), announce_interval)
                            .await
                        {
                            last = e;
                            break;
                        }
                    }
                    Err(status) => {
                        let down = is_down(&status);
                        last = DaemonError::Scheduler { addr, status };
                        if !down {
                            return Err(last);
                        }
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    async fn try_open(
        &self,
        addr: SocketAddr,
        ids: &PeerIds,
        register: RegisterPeerRequest,
    ) -> Result<PeerSession, Status> {
        let mut client = self
            .client(addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(PEER_REQUEST_QUEUE);
        let first = ids.request(PeerRequest::RegisterPeerRequest(register));
        tx.send(first)
            .await
            .map_err(|_| Status::internal("request queue closed"))?;
        // Official schedulers ignore the metadata; ours then pushes mesh parents mid-round.
        let mut call = tonic::Request::new(ReceiverStream::new(rx));
        call.metadata_mut()
            .insert(FEATURES_METADATA_KEY, features_value());
        let call = client.announce_peer(call);
        let response = tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| Status::unavailable("AnnouncePeer: no response headers in time"))??;
        let digests = if offers(response.metadata(), FEATURE_PIECE_DIGESTS) {
            PieceDigests::Kept
        } else {
            PieceDigests::Unknown
        };
        Ok(PeerSession {
            ids: ids.clone(),
            scheduler: addr,
            tx: Some(tx),
            responses: response.into_inner(),
            send_failed: false,
            digests,
        })
    }
}

/// The extensions this daemon speaks, for the `x-damselfly-features` metadata.
fn features_value() -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    // Both names are ASCII constants, so the value always parses.
    format!("{FEATURE_PARENT_PUSH},{FEATURE_PIECE_DIGESTS}")
        .parse()
        .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(FEATURE_PARENT_PUSH))
}

/// Whether the scheduler's response metadata lists `feature`.
fn offers(metadata: &tonic::metadata::MetadataMap, feature: &str) -> bool {
    metadata
        .get(FEATURES_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|list| has_feature(list, feature))
}

/// Whether the scheduler of a session keeps trusted piece digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceDigests {
    /// A Damselfly scheduler: report back-to-source pieces with their trusted digest, and
    /// ask it for the digests of pieces from parents.
    Kept,
    /// An official scheduler (or one that did not say): `crc32:` only, as before.
    Unknown,
}

/// Decisions carry whole peer lists; the default 4 MiB message limit is not ours to impose.
fn new_client(channel: Channel) -> SchedulerClient<Channel> {
    SchedulerClient::new(channel)
        .max_decoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE)
        .max_encoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE)
}

/// Connect errors surface as `Unavailable` (or `Unknown` with a transport error inside).
fn is_down(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    ) || (status.code() == Code::Unknown && status.message().contains("transport"))
}

/// The three IDs every AnnouncePeer request carries.
#[derive(Debug, Clone)]
pub struct PeerIds {
    pub host_id: String,
    pub task_id: String,
    pub peer_id: String,
}

impl PeerIds {
    fn request(&self, request: PeerRequest) -> AnnouncePeerRequest {
        AnnouncePeerRequest {
            host_id: self.host_id.clone(),
            task_id: self.task_id.clone(),
            peer_id: self.peer_id.clone(),
            request: Some(request),
        }
    }
}

/// A scheduling decision.
#[derive(Debug)]
pub enum Decision {
    Empty,
    Normal(Vec<Peer>),
    BackToSource(Option<String>),
    MetadataOnly,
}

/// One AnnouncePeer stream: requests go out through a queue, decisions come back.
pub struct PeerSession {
    ids: PeerIds,
    scheduler: SocketAddr,
    tx: Option<mpsc::Sender<AnnouncePeerRequest>>,
    responses: Streaming<AnnouncePeerResponse>,
    send_failed: bool,
    digests: PieceDigests,
}

impl PeerSession {
    pub fn scheduler(&self) -> SocketAddr {
        self.scheduler
    }

    /// Whether the scheduler keeps trusted piece digests.
    pub fn piece_digests(&self) -> PieceDigests {
        self.digests
    }

    /// Sends a report. A scheduler that went away must not fail the download, so errors are
    /// logged once and further reports dropped.
    pub async fn send(&mut self, request: PeerRequest) {
        if self.send_failed {
            return;
        }
        let Some(tx) = &self.tx else { return };
        if tx.send(self.ids.request(request)).await.is_err() {
            self.send_failed = true;
            debug!(scheduler = %self.scheduler, task_id = %self.ids.task_id, "scheduler stream closed; reports dropped");
        }
    }

    /// Waits for the next decision, ignoring nothing: any other outcome is an error that sends
    /// the download to the origin.
    pub async fn next_decision(&mut self, timeout: Duration) -> Result<Decision, DaemonError> {
        let scheduler = self.scheduler;
        tokio::time::timeout(timeout, self.next_message())
            .await
            .map_err(|_| DaemonError::Scheduler {
                addr: scheduler,
                status: Status::deadline_exceeded("no scheduling decision in time"),
            })?
    }

    /// The next message from the scheduler, however long it takes: a decision we asked for,
    /// or a parent the mesh pushed while we download. Cancel-safe, so a round can wait for it
    /// beside its pieces.
    pub async fn next_message(&mut self) -> Result<Decision, DaemonError> {
        let scheduler = self.scheduler;
        let message = self
            .responses
            .message()
            .await
            .map_err(|status| DaemonError::Scheduler {
                addr: scheduler,
                status,
            })?;
        let Some(AnnouncePeerResponse {
            response: Some(response),
        }) = message
        else {
            return Err(DaemonError::Scheduler {
                addr: scheduler,
                status: Status::unavailable("scheduler closed the stream without a decision"),
            });
        };
        Ok(match response {
            PeerResponse::EmptyTaskResponse(_) => Decision::Empty,
            PeerResponse::NormalTaskResponse(r) => Decision::Normal(r.candidate_parents),
            PeerResponse::NeedBackToSourceResponse(r) => Decision::BackToSource(r.description),
            PeerResponse::MetadataOnlyResponse(_) => Decision::MetadataOnly,
        })
    }

    /// Messages the scheduler already sent that no round read: parents it pushed while we
    /// were between rounds. Read before a Reschedule, so that its answer is not mistaken for
    /// one of them.
    pub fn take_buffered(&mut self) -> Vec<Decision> {
        let mut buffered = Vec::new();
        while let Some(Ok(decision)) = self.next_message().now_or_never() {
            buffered.push(decision);
        }
        buffered
    }

    /// Sends the terminal request, half-closes, and waits (bounded) for the scheduler to end
    /// the stream, as the protocol asks.
    pub async fn finish(mut self, terminal: PeerRequest, wait: Duration) {
        self.send(terminal).await;
        self.tx = None;
        let drain = async { while let Ok(Some(_)) = self.responses.message().await {} };
        if tokio::time::timeout(wait, drain).await.is_err() {
            debug!(scheduler = %self.scheduler, task_id = %self.ids.task_id, "scheduler did not close the stream in time");
        }
    }
}
