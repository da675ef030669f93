//! One round of downloading from the parents the scheduler gave us.
//!
//! A `SyncPieces` stream per parent tells which pieces it has (and, for a parent still
//! downloading, each piece as it lands). The dispatcher keeps up to `concurrent_piece_count`
//! pieces in flight, choosing piece and parent with [`crate::dispatch`]. A failed piece is
//! reported and retried from another parent; a parent that keeps failing is dropped. A
//! Damselfly scheduler may push more parents while the round runs (the mesh's reverse
//! edges); they join the round at once. The round ends when nothing is missing, or when no
//! live parent can serve what is missing.

use super::job::JobCtx;
use super::piece_proto;
use crate::dispatch::{next_assignment, seed_budget, ParentLoad, SeedGrace};
use crate::metrics::{self, Traffic};
use crate::scheduler_client::{Decision, PeerSession};
use damselfly_core::extensions::{RATION_EXCLUSIVE, RATION_METADATA_KEY};
use damselfly_core::PieceSpan;
use damselfly_storage::{PieceMetadata, StorageError};
use damselfly_transfer::TransferError;
use dragonfly_api::common::v2::{Peer, TrafficType};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::SyncPiecesRequest;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::{DownloadPieceFailedRequest, DownloadPieceFinishedRequest};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, info, Instrument};

/// Failed pieces after which a parent is dropped for the rest of the round.
const MAX_PARENT_FAILURES: u32 = 2;
/// Connection setup limit towards a parent's gRPC port.
const PARENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Availability messages queued from all SyncPieces streams of a round.
const SYNC_QUEUE: usize = 1024;
/// A round fed only by seed parents ends early after this long, so the scheduler can add the
/// normal peers that meanwhile hold pieces: the swarm then trades among itself instead of
/// every peer pulling the whole task through the seed's uplink.
const SEED_ONLY_REFRESH_AFTER: Duration = Duration::from_millis(500);
/// Below this many missing pieces a refresh is not worth a scheduling round.
const MIN_PENDING_FOR_REFRESH: usize = 8;

/// How a round ended.
pub struct RoundOutcome {
    /// Parents that failed us, for the ReschedulePeerRequest.
    pub failed: Vec<Peer>,
    /// The round ended early to look for non-seed parents.
    pub refresh: bool,
    /// A local failure (disk full, storage broken) that no other parent can fix.
    pub fatal: Option<TransferError>,
    /// A decision other than more parents arrived mid-round; the caller acts on it instead
    /// of asking for a new one.
    pub interrupt: Option<Decision>,
}

/// News from a parent's SyncPieces stream.
enum SyncEvent {
    /// The parent is a seed that rations its announcements: what it shows us was given to us
    /// alone, or is a piece the swarm has not brought us within the seed's share window.
    Rationed { parent: usize },
    Piece {
        parent: usize,
        number: u32,
        vortex: SocketAddr,
    },
    Ended {
        parent: usize,
        error: Option<String>,
    },
}

type FetchResult = (u32, usize, Result<PieceMetadata, TransferError>);

/// A candidate parent with the address of its gRPC upload server.
struct Parent {
    peer: Peer,
    grpc: SocketAddr,
    /// Learned from SyncPieces (`ip` + `tcp_port`).
    vortex: Option<SocketAddr>,
    load: ParentLoad,
    failures: u32,
    alive: bool,
    rationed: bool,
    /// Ends this parent's SyncPieces stream when it is dropped, so a rationing seed stops
    /// handing it pieces it will never fetch.
    sync_stop: CancellationToken,
    /// Its SyncPieces stream is open.
    syncing: bool,
}

impl Parent {
    fn from_peer(peer: &Peer) -> Option<Self> {
        let host = peer.host.as_ref()?;
        let ip: IpAddr = host.ip.parse().ok()?;
        let port = u16::try_from(host.port).ok().filter(|&p| p != 0)?;
        let network = host.network.as_ref();
        Some(Self {
            peer: peer.clone(),
            grpc: SocketAddr::new(ip, port),
            vortex: None,
            load: ParentLoad {
                seed: host.r#type != 0,
                max_tx_bandwidth: network.map_or(0, |n| n.max_tx_bandwidth),
                tx_bandwidth: network.and_then(|n| n.tx_bandwidth).unwrap_or(0),
                in_flight: 0,
            },
            failures: 0,
            alive: true,
            rationed: false,
            sync_stop: CancellationToken::new(),
            syncing: false,
        })
    }
}

/// The dispatcher's state for one round.
struct Round<'a, 'j> {
    job: &'a JobCtx<'j>,
    parents: Vec<Parent>,
    /// Missing pieces nobody is fetching right now.
    idle: BTreeSet<u32>,
    /// Which live parents have which missing piece.
    holders: BTreeMap<u32, Vec<usize>>,
    running: JoinSet<FetchResult>,
    rng: StdRng,
    fatal: Option<TransferError>,
    grace: SeedGrace,
    /// Where new parents' SyncPieces streams report; kept so pushed parents can join.
    events: mpsc::Sender<SyncEvent>,
    stop: CancellationToken,
}

/// Downloads what it can of `pending` from `candidates`. With `may_refresh`, a round whose
/// parents are all seeds ends early (in-flight pieces still land) so the caller can ask for
/// more parents.
pub async fn round(
    job: &JobCtx<'_>,
    session: &mut PeerSession,
    candidates: &[Peer],
    pending: &mut BTreeMap<u32, PieceSpan>,
    may_refresh: bool,
) -> RoundOutcome {
    let parents: Vec<Parent> = candidates.iter().filter_map(Parent::from_peer).collect();
    if parents.is_empty() {
        return RoundOutcome {
            failed: candidates.to_vec(),
            refresh: false,
            fatal: None,
            interrupt: None,
        };
    }
    let seeds_only = parents.iter().all(|p| p.load.seed);
    let refresh_at = (may_refresh && seeds_only).then(|| Instant::now() + SEED_ONLY_REFRESH_AFTER);
    let mut refresh = false;
    let mut interrupt = None;
    let mut listening = true;
    let stop = job.ctx.shutdown.child_token();
    let (tx, mut events) = mpsc::channel(SYNC_QUEUE);
    let mut round = Round {
        job,
        idle: pending.keys().copied().collect(),
        holders: BTreeMap::new(),
        running: JoinSet::new(),
        rng: StdRng::from_rng(&mut rand::rng()),
        parents: Vec::new(),
        fatal: None,
        grace: SeedGrace::default(),
        events: tx,
        stop: stop.clone(),
    };
    for parent in parents {
        round.add_parent(parent, pending);
    }
    let concurrency = job
        .request
        .concurrent_piece_count
        .unwrap_or(job.ctx.config.download.concurrent_piece_count)
        .max(1) as usize;
    let stall_limit = job.ctx.config.download.collected_piece_timeout;
    let mut last_news = Instant::now();
    loop {
        if refresh || interrupt.is_some() {
            // Let in-flight pieces land; start no new ones.
            match round.running.join_next().await {
                Some(Ok(result)) => {
                    round.settle(session, pending, result).await;
                    continue;
                }
                Some(Err(_)) => continue,
                None => break,
            }
        }
        if round.fatal.is_some() {
            break;
        }
        round.dispatch(pending, concurrency);
        if pending.is_empty() || !round.parents.iter().any(|p| p.alive) {
            break;
        }
        if round.running.is_empty() && !round.parents.iter().any(|p| p.syncing) {
            break; // nobody can tell us about more pieces
        }
        let ripening = (round.running.len() < concurrency)
            .then(|| round.next_seed_ripening())
            .flatten();
        tokio::select! {
            Some(joined) = round.running.join_next(), if !round.running.is_empty() => {
                if let Ok(result) = joined {
                    round.settle(session, pending, result).await;
                    last_news = Instant::now();
                }
            }
            Some(event) = events.recv() => match event {
                SyncEvent::Rationed { parent } => {
                    if let Some(p) = round.parents.get_mut(parent) {
                        p.rationed = true;
                    }
                }
                SyncEvent::Piece { parent, number, vortex } => {
                    round.learn(parent, number, vortex, pending);
                    last_news = Instant::now();
                }
                SyncEvent::Ended { parent, error } => {
                    round.sync_ended(parent);
                    if let Some(error) = error {
                        debug!(parent = %round.parents[parent].peer.id, %error, "SyncPieces failed");
                        round.drop_parent(parent);
                    }
                }
            },
            message = session.next_message(), if listening => match message {
                Ok(Decision::Normal(peers)) => {
                    round.join(&peers, pending);
                    last_news = Instant::now();
                }
                Ok(other) => interrupt = Some(other),
                // The caller meets the broken stream when it asks for the next decision.
                Err(_) => listening = false,
            },
            _ = tokio::time::sleep_until(last_news + stall_limit), if round.running.is_empty() => {
                info!(remaining = pending.len(), "parents offered no missing piece in time");
                break;
            }
            _ = sleep_until_opt(ripening), if ripening.is_some() => {}
            _ = sleep_until_opt(refresh_at), if refresh_at.is_some() && !refresh => {
                if pending.len() >= MIN_PENDING_FOR_REFRESH {
                    debug!(remaining = pending.len(), "only seed parents; asking for more");
                    refresh = true;
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    stop.cancel();
    round.running.abort_all();
    let failed = round
        .parents
        .into_iter()
        .filter(|p| !p.alive || p.failures > 0)
        .map(|p| p.peer)
        .collect();
    RoundOutcome {
        failed,
        refresh: refresh && !pending.is_empty(),
        fatal: round.fatal,
        interrupt,
    }
}

/// Failures of our own disk, which no other parent can fix.
fn is_local_failure(error: &TransferError) -> bool {
    matches!(
        error,
        TransferError::Storage(
            StorageError::NoSpace(_) | StorageError::Io(_) | StorageError::Db(_)
        )
    )
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Round<'_, '_> {
    /// Opens the parent's SyncPieces stream and adds it to the round.
    fn add_parent(&mut self, mut parent: Parent, pending: &BTreeMap<u32, PieceSpan>) {
        parent.sync_stop = self.stop.child_token();
        parent.syncing = true;
        let request = SyncPiecesRequest {
            host_id: self.job.ctx.host.id.clone(),
            task_id: self.job.task_id().to_string(),
            interested_piece_numbers: pending.keys().copied().collect(),
        };
        tokio::spawn(sync_parent(
            self.parents.len(),
            parent.grpc,
            request,
            self.events.clone(),
            parent.sync_stop.clone(),
        ));
        self.parents.push(parent);
    }

    /// Parents pushed by the scheduler join the round; ones we already have are skipped.
    fn join(&mut self, peers: &[Peer], pending: &BTreeMap<u32, PieceSpan>) {
        for peer in peers {
            if self.parents.iter().any(|p| p.peer.id == peer.id) {
                continue;
            }
            if let Some(parent) = Parent::from_peer(peer) {
                debug!(parent = %peer.id, "pushed parent joins the round");
                self.add_parent(parent, pending);
            }
        }
    }

    /// Starts fetches until the concurrency limit or until no piece can start.
    fn dispatch(&mut self, pending: &BTreeMap<u32, PieceSpan>, concurrency: usize) {
        while self.running.len() < concurrency {
            let loads: Vec<ParentLoad> = self.parents.iter().map(|p| p.load.clone()).collect();
            let alive: Vec<bool> = self.parents.iter().map(|p| p.alive).collect();
            let seed_in_flight: usize = loads
                .iter()
                .filter(|l| l.seed)
                .map(|l| l.in_flight as usize)
                .sum();
            let seed_slots_free = seed_in_flight < seed_budget(&loads, &alive, concurrency);
            let normal_alive = loads.iter().zip(&alive).any(|(l, &a)| a && !l.seed);
            let now = std::time::Instant::now();
            let grace = &self.grace;
            let seed_may_serve =
                |number: u32| seed_slots_free && (!normal_alive || grace.is_ripe(number, now));
            let Some((number, parent)) = next_assignment(
                &self.idle,
                &self.holders,
                &loads,
                &seed_may_serve,
                &mut self.rng,
            ) else {
                return;
            };
            self.idle.remove(&number);
            let Some(span) = pending.get(&number) else {
                continue;
            };
            let Some(vortex) = self.parents[parent].vortex else {
                // Cannot happen (a holder always told us its address); never lose the piece.
                self.idle.insert(number);
                self.drop_parent(parent);
                continue;
            };
            self.parents[parent].load.in_flight += 1;
            self.spawn_fetch(*span, parent, vortex);
        }
    }

    /// When a piece held back for a normal parent may go to a seed after all.
    fn next_seed_ripening(&self) -> Option<Instant> {
        let now = std::time::Instant::now();
        self.grace
            .next_ripening(&self.idle, now)
            .map(Instant::from_std)
    }

    fn spawn_fetch(&mut self, span: PieceSpan, parent: usize, vortex: SocketAddr) {
        let storage = self.job.ctx.storage.clone();
        let task_id = self.job.task_id().to_string();
        let parent_id = self.parents[parent].peer.id.clone();
        let limiters = self.job.peer_limiters();
        let timeout = self.job.ctx.config.download.piece_timeout;
        let span_info = tracing::debug_span!("piece", number = span.number, source = %parent_id);
        self.running.spawn(
            async move {
                let result = damselfly_transfer::download_piece_vortex(
                    vortex, &task_id, span, &parent_id, &storage, &limiters, timeout,
                )
                .await;
                if result.is_ok() {
                    debug!(
                        task_id = %task_id,
                        piece = span.number,
                        range = %format!("{}-{}", span.offset, span.end().saturating_sub(1)),
                        source = %parent_id,
                        "piece downloaded"
                    );
                }
                (span.number, parent, result)
            }
            .instrument(span_info),
        );
    }

    /// A parent has a piece.
    fn learn(
        &mut self,
        parent: usize,
        number: u32,
        vortex: SocketAddr,
        pending: &BTreeMap<u32, PieceSpan>,
    ) {
        let Some(p) = self.parents.get_mut(parent) else {
            return;
        };
        if !p.alive {
            return;
        }
        p.vortex = Some(vortex);
        if p.load.seed && p.rationed {
            self.grace
                .offered_exclusively(number, std::time::Instant::now());
        } else if p.load.seed {
            self.grace.seen_at_seed(number, std::time::Instant::now());
        } else if pending.contains_key(&number) {
            self.grace.normal_progress(std::time::Instant::now());
        }
        if pending.contains_key(&number) {
            let holders = self.holders.entry(number).or_default();
            if !holders.contains(&parent) {
                holders.push(parent);
            }
        }
    }

    /// A fetch ended: record and report it.
    async fn settle(
        &mut self,
        session: &mut PeerSession,
        pending: &mut BTreeMap<u32, PieceSpan>,
        (number, parent, result): FetchResult,
    ) {
        let p = &mut self.parents[parent];
        p.load.in_flight = p.load.in_flight.saturating_sub(1);
        let traffic = Traffic::RemotePeer { seed: p.load.seed };
        match result {
            Ok(piece) => {
                pending.remove(&number);
                self.holders.remove(&number);
                self.grace.piece_took(piece.cost);
                metrics::add_traffic(traffic, piece.length);
                metrics::piece_done(traffic, true);
                let piece = piece_proto(&piece, TrafficType::RemotePeer);
                session
                    .send(PeerRequest::DownloadPieceFinishedRequest(
                        DownloadPieceFinishedRequest { piece: Some(piece) },
                    ))
                    .await;
            }
            Err(error) if is_local_failure(&error) => {
                metrics::piece_done(traffic, false);
                self.fatal = Some(error);
            }
            Err(error) => {
                metrics::piece_done(traffic, false);
                p.failures += 1;
                let parent_id = p.peer.id.clone();
                debug!(piece = number, parent = %parent_id, %error, "piece from parent failed");
                session
                    .send(PeerRequest::DownloadPieceFailedRequest(
                        DownloadPieceFailedRequest {
                            piece_number: Some(number),
                            parent_id,
                            temporary: true,
                        },
                    ))
                    .await;
                if let Some(holders) = self.holders.get_mut(&number) {
                    holders.retain(|&h| h != parent);
                }
                if self.parents[parent].failures >= MAX_PARENT_FAILURES {
                    self.drop_parent(parent);
                }
                if pending.contains_key(&number) {
                    self.idle.insert(number);
                }
            }
        }
    }

    /// A parent's SyncPieces stream ended (or we ended it).
    fn sync_ended(&mut self, parent: usize) {
        if let Some(p) = self.parents.get_mut(parent) {
            p.syncing = false;
        }
    }

    fn drop_parent(&mut self, parent: usize) {
        if let Some(p) = self.parents.get_mut(parent) {
            p.alive = false;
            p.sync_stop.cancel();
        }
        self.sync_ended(parent);
        for holders in self.holders.values_mut() {
            holders.retain(|&h| h != parent);
        }
    }
}

/// Streams one parent's piece availability into the round.
async fn sync_parent(
    parent: usize,
    grpc: SocketAddr,
    request: SyncPiecesRequest,
    events: mpsc::Sender<SyncEvent>,
    stop: CancellationToken,
) {
    let work = async {
        let channel = Endpoint::from_shared(format!("http://{grpc}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(PARENT_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connect {grpc}: {e}"))?;
        let mut client = DfdaemonUploadClient::new(channel);
        let response = client
            .sync_pieces(request)
            .await
            .map_err(|s| s.to_string())?;
        let rationed = response
            .metadata()
            .get(RATION_METADATA_KEY)
            .is_some_and(|v| v.as_bytes() == RATION_EXCLUSIVE.as_bytes());
        if rationed && events.send(SyncEvent::Rationed { parent }).await.is_err() {
            return Ok(());
        }
        let mut stream = response.into_inner();
        while let Some(piece) = stream.message().await.map_err(|s| s.to_string())? {
            let ip = piece.ip.parse::<IpAddr>().unwrap_or(grpc.ip());
            let Some(port) = piece.tcp_port.and_then(|p| u16::try_from(p).ok()) else {
                return Err(format!("parent {grpc} announced no TCP piece port"));
            };
            let event = SyncEvent::Piece {
                parent,
                number: piece.number,
                vortex: SocketAddr::new(ip, port),
            };
            if events.send(event).await.is_err() {
                return Ok(());
            }
        }
        Ok::<(), String>(())
    };
    let error = tokio::select! {
        result = work => result.err(),
        _ = stop.cancelled() => return,
    };
    let _ = events.send(SyncEvent::Ended { parent, error }).await;
}
