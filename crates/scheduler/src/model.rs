//! The scheduler's data model: hosts, tasks, peers, seed trigger bookkeeping, and the values
//! that scheduling rounds hand back to the service.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use damselfly_core::OriginReason;
use dragonfly_api::common::v2 as pb;
use tonic::Status;

use crate::config::{ParentGraph, SchedulingConfig};
use crate::fsm::{PeerState, SizeScope, TaskState};

/// Pieces a child fetches in parallel when the register request does not say (client default).
pub const DEFAULT_CONCURRENT_PIECE_COUNT: u32 = 8;
/// A seed that failed a task is not triggered again for it during this long (Dragonfly's
/// `SeedPeerFailedTimeout`), so a broken seed does not stall every new peer.
pub const SEED_PEER_FAILED_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A peer, task or host id, interned: the maps, sets and edges that name a peer share one
/// allocation of its id (a clone is a reference count), where each held its own `String`
/// copy before, about six per kept peer. Looked up by `&str` (`Arc<str>: Borrow<str>`).
pub type Id = Arc<str>;

/// Scheduling knobs copied from the config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub back_to_source_count: usize,
    pub retry_back_to_source_limit: u32,
    pub retry_limit: u32,
    pub candidate_parent_limit: usize,
    pub filter_parent_limit: usize,
    /// Mesh instead of Dragonfly's DAG (see `config::ParentGraph`).
    pub mesh: bool,
    pub mesh_parent_limit: usize,
    pub seed_peer_enable: bool,
    pub seed_peer_wait_timeout: Duration,
}

impl Policy {
    pub fn new(config: &SchedulingConfig, seed_peer_enable: bool) -> Self {
        Self {
            back_to_source_count: config.back_to_source_count as usize,
            retry_back_to_source_limit: config.retry_back_to_source_limit,
            retry_limit: config.retry_limit,
            candidate_parent_limit: config.candidate_parent_limit,
            filter_parent_limit: config.filter_parent_limit,
            mesh: config.parent_graph == ParentGraph::Mesh,
            mesh_parent_limit: config.mesh_parent_limit,
            seed_peer_enable,
            seed_peer_wait_timeout: config.seed_peer_wait_timeout,
        }
    }
}

/// Host type as announced: 0 is a normal peer, anything else a seed (super/strong/weak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostType {
    Normal,
    Seed(u32),
}

impl HostType {
    pub fn from_pb(value: u32) -> Self {
        if value == 0 {
            Self::Normal
        } else {
            Self::Seed(value)
        }
    }

    pub fn is_seed(self) -> bool {
        matches!(self, Self::Seed(_))
    }
}

/// One announced machine.
#[derive(Debug, Clone)]
pub struct Host {
    pub id: Id,
    pub host_type: HostType,
    /// The host exactly as announced; handed out in candidate parents and ListHosts.
    pub announced: pb::Host,
    pub last_announce: Instant,
    /// Bandwidth reserved by active edges whose parent runs on this host, bits per second.
    pub assigned_tx_bandwidth: u64,
    pub active_children: u32,
    pub peers: BTreeSet<Id>,
    /// What its children say it served lately (piece reports).
    pub upload: crate::upload::UploadMeter,
    /// Bytes its peers moved, for the console.
    pub traffic: crate::state::HostTraffic,
}

impl Host {
    pub(crate) fn max_tx_bandwidth(&self) -> u64 {
        self.announced
            .network
            .as_ref()
            .map_or(0, |n| n.max_tx_bandwidth)
    }

    pub(crate) fn idc(&self) -> Option<&str> {
        self.announced
            .network
            .as_ref()
            .and_then(|n| n.idc.as_deref())
    }

    pub(crate) fn location(&self) -> Option<&str> {
        self.announced
            .network
            .as_ref()
            .and_then(|n| n.location.as_deref())
    }
}

/// Where the seed peer of a task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedTrigger {
    /// Never triggered (or the last trigger finished).
    Idle,
    /// `DownloadTask` was sent to the seed host; its peer has not registered yet.
    InFlight { host_id: String, since: Instant },
    /// The seed peer registered and fetches from the origin.
    Registered { host_id: String },
    /// The trigger or the seed download failed.
    Failed { at: Instant },
}

/// One piece of content (a URL plus options), shared by all its peers.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: Id,
    pub state: TaskState,
    pub task_type: i32,
    pub url: String,
    pub digest: Option<String>,
    pub tag: Option<String>,
    pub application: Option<String>,
    pub filtered_query_params: Vec<String>,
    pub request_header: HashMap<String, String>,
    pub content_length: Option<u64>,
    pub piece_length: Option<u64>,
    pub piece_count: Option<u32>,
    pub peers: crate::task_peers::TaskPeers,
    pub back_to_source_peers: HashSet<Id>,
    /// Piece number → its trusted digest (`blake3:`, or earlier peers' `sha256:`) from a peer
    /// that fetched it from the origin.
    pub piece_digests: BTreeMap<u32, crate::state::TrustedDigest>,
    pub seed: SeedTrigger,
    /// Where its bytes came from, for the console (the edges are on each child's peer).
    pub flow: crate::state::TaskFlow,
    /// The best measured upload among its normal hosts, and when it was measured: the top-up
    /// of slow parents (`state::topup`) looks at it for every child, so it is computed once
    /// per [`crate::state::TOP_UP_INTERVAL`] for the whole task, not once per child.
    pub fastest_upload: Option<(Instant, Option<u64>)>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// One download of a task by a host.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: Id,
    pub task_id: Id,
    pub host_id: Id,
    pub state: PeerState,
    pub priority: i32,
    pub range: Option<pb::Range>,
    /// Set when the peer must fetch from the origin, with why (the register asked for it, a
    /// seed host, priority LEVEL3, no seed for a new task).
    pub need_back_to_source: Option<OriginReason>,
    /// Why the peer went to the origin, once it did: our decision's reason, replaced by the
    /// daemon's own description when it reports `DownloadPeerBackToSourceStarted`.
    pub origin_reason: Option<OriginReason>,
    pub disable_back_to_source: bool,
    pub concurrent_piece_count: u32,
    pub finished_pieces: crate::piece_set::PieceSet,
    /// The last [`crate::scoring::PIECE_COST_WINDOW`] piece costs, microseconds (a quarter
    /// of a `Duration`'s size; every kept peer has them).
    pub piece_costs: VecDeque<u32>,
    /// Parents this one gave up on (rescheduled away, failed pieces). Not itself: the parent
    /// filter skips the peer's own id anyway, and an entry per kept peer costs a table and a
    /// copy of its id.
    pub blocklist: HashSet<String>,
    /// Parent id → bandwidth reserved on the parent's host for this edge.
    pub parents: crate::parents::Parents,
    pub children: BTreeSet<Id>,
    /// The peer's daemon takes extra `NormalTaskResponse`s in the middle of a download (it
    /// said so in the AnnouncePeer metadata), so the mesh may push it new parents.
    pub takes_pushes: bool,
    /// Mesh parents made while the peer had its decision but had not started its round yet:
    /// pushed once it reports Started, so it never takes one for its decision.
    pub deferred_pushes: Vec<pb::Peer>,
    /// When the scheduler last looked for fast parents for it (`state::topup`).
    pub topped_up_at: Option<Instant>,
    /// What it took from the origin and from each parent, for the console.
    pub flow: crate::state::PeerFlow,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub touched: Instant,
}

/// A seed download the service must start outside the lock.
#[derive(Clone)]
pub struct SeedJob {
    pub task_id: String,
    pub host_id: String,
    pub endpoint: String,
    pub download: pb::Download,
}

/// Without the download's headers: they may hold the requester's credentials.
impl std::fmt::Debug for SeedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedJob")
            .field("task_id", &self.task_id)
            .field("host_id", &self.host_id)
            .field("endpoint", &self.endpoint)
            .field("url", &self.download.url)
            .finish_non_exhaustive()
    }
}

/// Result of a successful registration.
#[derive(Debug)]
pub struct Registered {
    pub scope: SizeScope,
    pub seed_job: Option<SeedJob>,
}

/// One scheduling round's outcome.
#[derive(Debug)]
pub enum Step {
    Decided(Decision),
    /// A triggered seed is on its way: wait without counting the round.
    Wait,
    /// Nothing found: count the round and try again.
    Retry,
}

/// What the peer is told.
#[derive(Debug)]
pub enum Decision {
    Normal(Vec<pb::Peer>),
    BackToSource(String),
    Fail(Status),
}

/// A parent to push to a peer in the middle of its download: the mesh's reverse edge.
#[derive(Debug, Clone)]
pub struct Push {
    /// The peer that gets a new parent.
    pub to: Id,
    pub parent: pb::Peer,
}

/// The four requests that end a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Finished,
    Failed,
    BackToSourceFinished,
    BackToSourceFailed,
}

/// Counts for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub hosts: usize,
    pub tasks: usize,
    pub peers: usize,
}

impl Task {
    pub(crate) fn new(id: Id, now: SystemTime) -> Self {
        Self {
            id,
            state: TaskState::Pending,
            task_type: pb::TaskType::Standard as i32,
            url: String::new(),
            digest: None,
            tag: None,
            application: None,
            filtered_query_params: Vec::new(),
            request_header: HashMap::new(),
            content_length: None,
            piece_length: None,
            piece_count: None,
            peers: Default::default(),
            back_to_source_peers: HashSet::new(),
            piece_digests: BTreeMap::new(),
            seed: SeedTrigger::Idle,
            flow: Default::default(),
            fastest_upload: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Takes the metadata a registering peer knows; a later peer may know more (the content
    /// length once the first peer stat'ed the origin).
    pub(crate) fn update_from(&mut self, download: &pb::Download, now: SystemTime) {
        self.task_type = download.r#type;
        self.url = download.url.clone();
        self.digest = download.digest.clone().or(self.digest.take());
        self.tag = download.tag.clone();
        self.application = download.application.clone();
        self.filtered_query_params = download.filtered_query_params.clone();
        // Credentials are for the seed the scheduler triggers (it gets the peer's own
        // request); the stored task is answered to anyone who asks, so it keeps none.
        self.request_header = damselfly_core::without_secrets(&download.request_header)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if download.actual_content_length.is_some() {
            self.content_length = download.actual_content_length;
        }
        if download.actual_piece_length.is_some() {
            self.piece_length = download.actual_piece_length;
        }
        if let Some(count) = download.actual_piece_count {
            self.piece_count = Some(u32::try_from(count).unwrap_or(u32::MAX));
        }
        self.updated_at = now;
    }
}

impl Peer {
    /// `task_id` and `host_id` are the interned keys of the task's and host's maps.
    pub(crate) fn new(
        id: &str,
        task_id: Id,
        host_id: Id,
        download: &pb::Download,
        wall: SystemTime,
        now: Instant,
    ) -> Self {
        Self {
            id: Id::from(id),
            task_id,
            host_id,
            state: PeerState::Pending,
            priority: download.priority,
            range: download.range,
            need_back_to_source: None,
            origin_reason: None,
            disable_back_to_source: download.disable_back_to_source,
            concurrent_piece_count: download
                .concurrent_piece_count
                .filter(|c| *c > 0)
                .unwrap_or(DEFAULT_CONCURRENT_PIECE_COUNT),
            finished_pieces: Default::default(),
            piece_costs: VecDeque::new(),
            blocklist: HashSet::new(),
            parents: Default::default(),
            children: BTreeSet::new(),
            takes_pushes: false,
            deferred_pushes: Vec::new(),
            topped_up_at: None,
            flow: Default::default(),
            created_at: wall,
            updated_at: wall,
            touched: now,
        }
    }

    pub(crate) fn touch(&mut self) {
        self.updated_at = SystemTime::now();
        self.touched = Instant::now();
    }
}

/// Dragonfly's bad-parent rule on the peer's cost window, read in place.
pub(crate) fn is_bad_by_costs(peer: &Peer) -> bool {
    crate::scoring::is_bad_by_cost_seconds(
        peer.piece_costs
            .iter()
            .map(|&micros| Duration::from_micros(u64::from(micros)).as_secs_f64()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduler keeps every peer until it expires (finished peers are parents), so a
    /// field added to `Peer` costs that much per peer at 50,000 peers.
    #[test]
    fn a_kept_peer_stays_small() {
        assert!(
            std::mem::size_of::<Peer>() <= MAX_PEER_SIZE,
            "Peer is {} bytes",
            std::mem::size_of::<Peer>()
        );
        // Its ids are shared, not copied.
        let task: Id = "t".repeat(64).into();
        let host: Id = "h".repeat(30).into();
        let peer = Peer::new(
            "p",
            task.clone(),
            host.clone(),
            &pb::Download::default(),
            SystemTime::now(),
            Instant::now(),
        );
        assert!(Arc::ptr_eq(&peer.task_id, &task) && Arc::ptr_eq(&peer.host_id, &host));
    }

    const MAX_PEER_SIZE: usize = 448;
}
