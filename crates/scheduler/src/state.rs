//! The scheduler's in-memory world: hosts, tasks, peers and the per-task DAG of parent→child
//! edges. Everything here is synchronous and runs under one mutex held by the service; no
//! method awaits, so the lock is never held across a suspension point.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use dragonfly_api::common::v2 as pb;
use rand::seq::SliceRandom;
use tonic::Status;

use crate::fsm::{PeerEvent, PeerState, SizeScope, TaskEvent, TaskState};
pub use crate::model::*;
use crate::scoring::{self, ChildFeatures, HostKind, ParentFeatures};

/// Hosts, tasks and peers.
#[derive(Debug)]
pub struct State {
    policy: Policy,
    hosts: HashMap<String, Host>,
    tasks: HashMap<String, Task>,
    peers: HashMap<String, Peer>,
    /// Mesh edges made by the last decisions, for the service to push to their peers.
    outbox: Vec<Push>,
}

fn not_found_peer(peer_id: &str) -> Status {
    Status::not_found(format!("peer {peer_id} is not known to this scheduler"))
}

fn not_found_task(task_id: &str) -> Status {
    Status::not_found(format!("task {task_id} is not known to this scheduler"))
}

fn not_found_host(host_id: &str) -> Status {
    Status::not_found(format!(
        "host {host_id} is not known to this scheduler; call AnnounceHost first"
    ))
}

/// `http://ip:port` with IPv6 brackets.
pub fn host_endpoint(ip: &str, port: i32) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

/// How the first download of a task is done, from the peer's priority (Dragonfly semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstDownload {
    /// LEVEL0 and LEVEL4–6: a seed peer fetches it first when one is known.
    SeedFirst,
    /// LEVEL3: this peer goes to the origin itself.
    BackToSource,
}

/// LEVEL1 forbids the download; LEVEL2 refuses a first download that would need the origin.
fn first_download_rule(priority: i32, task_id: &str) -> Result<FirstDownload, Status> {
    match pb::Priority::try_from(priority) {
        Ok(pb::Priority::Level1) => Err(Status::failed_precondition(format!(
            "priority LEVEL1 forbids downloading task {task_id}"
        ))),
        Ok(pb::Priority::Level2) => Err(Status::not_found(format!(
            "task {task_id} is not in the P2P network and priority LEVEL2 forbids a first download from the origin"
        ))),
        Ok(pb::Priority::Level3) => Ok(FirstDownload::BackToSource),
        _ => Ok(FirstDownload::SeedFirst),
    }
}

/// FNV-1a: a stable hash so a task keeps mapping to the same seed host across restarts.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl State {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            hosts: HashMap::new(),
            tasks: HashMap::new(),
            peers: HashMap::new(),
            outbox: Vec::new(),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            hosts: self.hosts.len(),
            tasks: self.tasks.len(),
            peers: self.peers.len(),
        }
    }

    // ---- hosts ----------------------------------------------------------------------------

    /// Stores or refreshes a host. Load bookkeeping survives re-announces.
    pub fn announce_host(&mut self, host: pb::Host, now: Instant) -> Result<(), Status> {
        if host.id.is_empty() {
            return Err(Status::invalid_argument("AnnounceHost: host.id is empty"));
        }
        if host.ip.is_empty() {
            return Err(Status::invalid_argument(format!(
                "AnnounceHost: host {} has no ip",
                host.id
            )));
        }
        if !(0..=i32::from(u16::MAX)).contains(&host.port) || host.port == 0 {
            return Err(Status::invalid_argument(format!(
                "AnnounceHost: host {} has invalid port {}",
                host.id, host.port
            )));
        }
        let host_type = HostType::from_pb(host.r#type);
        match self.hosts.get_mut(&host.id) {
            Some(existing) => {
                existing.host_type = host_type;
                existing.announced = host;
                existing.last_announce = now;
            }
            None => {
                let id = host.id.clone();
                self.hosts.insert(
                    id.clone(),
                    Host {
                        id,
                        host_type,
                        announced: host,
                        last_announce: now,
                        assigned_tx_bandwidth: 0,
                        active_children: 0,
                        peers: BTreeSet::new(),
                    },
                );
            }
        }
        Ok(())
    }

    pub fn host(&self, host_id: &str) -> Option<&Host> {
        self.hosts.get(host_id)
    }

    pub fn list_hosts(&self, host_type: Option<u32>) -> Vec<pb::Host> {
        let mut hosts: Vec<pb::Host> = self
            .hosts
            .values()
            .filter(|h| host_type.is_none_or(|t| h.announced.r#type == t))
            .map(|h| h.announced.clone())
            .collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        hosts
    }

    /// Removes a host and every peer on it.
    pub fn delete_host(&mut self, host_id: &str) -> Result<(), Status> {
        let host = self
            .hosts
            .get(host_id)
            .ok_or_else(|| not_found_host(host_id))?;
        let peers: Vec<String> = host.peers.iter().cloned().collect();
        for peer_id in peers {
            self.remove_peer(&peer_id);
        }
        self.hosts.remove(host_id);
        Ok(())
    }

    // ---- registration ---------------------------------------------------------------------

    /// Creates the task (or refreshes it) and the peer, and decides whether this peer must go
    /// to the origin or a seed peer should be triggered.
    pub fn register(
        &mut self,
        host_id: &str,
        task_id: &str,
        peer_id: &str,
        download: pb::Download,
        now: Instant,
    ) -> Result<Registered, Status> {
        let host_type = self
            .hosts
            .get(host_id)
            .map(|h| h.host_type)
            .ok_or_else(|| not_found_host(host_id))?;
        if download.r#type != pb::TaskType::Standard as i32 {
            return Err(Status::invalid_argument(format!(
                "RegisterPeerRequest: task type {} is not served by AnnouncePeer; only STANDARD tasks are",
                download.r#type
            )));
        }
        if self.peers.contains_key(peer_id) {
            // A re-registration (the daemon retried on a new stream) starts the peer afresh.
            self.remove_peer(peer_id);
        }
        let wall = SystemTime::now();
        let task = self
            .tasks
            .entry(task_id.to_string())
            .or_insert_with(|| Task::new(task_id, wall));
        task.update_from(&download, wall);
        let scope = SizeScope::classify(task.content_length, task.piece_count);

        let mut peer = Peer::new(peer_id, task_id, host_id, &download, wall, now);
        peer.state = peer
            .state
            .on(PeerEvent::Register(scope))
            .map_err(|e| Status::internal(e.to_string()))?;

        let mut seed_job = None;
        if scope != SizeScope::Empty {
            if download.need_back_to_source || host_type.is_seed() {
                peer.need_back_to_source = true;
            } else if self.task_needs_source(task_id) {
                match first_download_rule(download.priority, task_id) {
                    Err(status) => {
                        self.drop_task_if_unused(task_id);
                        return Err(status);
                    }
                    Ok(FirstDownload::BackToSource) => peer.need_back_to_source = true,
                    Ok(FirstDownload::SeedFirst) => {
                        seed_job = self.plan_seed(task_id, host_id, &download, now);
                        if seed_job.is_none() && !self.seed_on_its_way(task_id, now) {
                            // No seed to fetch it: this first peer is the task's source.
                            peer.need_back_to_source = true;
                        }
                    }
                }
            }
        }
        if host_type.is_seed() {
            self.note_seed_registered(task_id, host_id);
        }
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.state = task.state.on(TaskEvent::Download);
            task.peers.insert(peer_id.to_string());
        }
        if let Some(host) = self.hosts.get_mut(host_id) {
            host.peers.insert(peer_id.to_string());
        }
        self.peers.insert(peer_id.to_string(), peer);
        Ok(Registered { scope, seed_job })
    }

    fn drop_task_if_unused(&mut self, task_id: &str) {
        if self.tasks.get(task_id).is_some_and(|t| t.peers.is_empty()) {
            self.tasks.remove(task_id);
        }
    }

    /// Nobody has, or is fetching, the content (Dragonfly: task pending, failed or left, or
    /// succeeded without an available peer).
    fn task_needs_source(&self, task_id: &str) -> bool {
        let Some(task) = self.tasks.get(task_id) else {
            return true;
        };
        match task.state {
            TaskState::Pending | TaskState::Failed | TaskState::Leave => true,
            TaskState::Succeeded => !self.has_provider(task, None),
            TaskState::Running => false,
        }
    }

    /// Some peer of the task (other than `except`) holds the content or is producing it.
    fn has_provider(&self, task: &Task, except: Option<&str>) -> bool {
        task.peers
            .iter()
            .filter(|id| Some(id.as_str()) != except)
            .filter_map(|id| self.peers.get(id))
            .any(|p| self.is_provider(p))
    }

    fn is_provider(&self, peer: &Peer) -> bool {
        match peer.state {
            PeerState::BackToSource | PeerState::Succeeded => true,
            // Registered and about to be sent to the origin (its session has not run its
            // scheduling round yet): counting it closes the race where two peers registering
            // together would both go back to source.
            PeerState::Received(_) => peer.need_back_to_source,
            PeerState::Running => !peer.parents.is_empty() || self.is_seed_host(&peer.host_id),
            _ => false,
        }
    }

    fn is_seed_host(&self, host_id: &str) -> bool {
        self.hosts
            .get(host_id)
            .is_some_and(|h| h.host_type.is_seed())
    }

    /// Picks the seed host for the task and marks the trigger in flight, unless one is already
    /// on its way or the seed failed this task recently.
    fn plan_seed(
        &mut self,
        task_id: &str,
        requester: &str,
        download: &pb::Download,
        now: Instant,
    ) -> Option<SeedJob> {
        if !self.policy.seed_peer_enable {
            return None;
        }
        let task = self.tasks.get(task_id)?;
        match &task.seed {
            SeedTrigger::InFlight { .. } => return None,
            SeedTrigger::Failed { at } if now.duration_since(*at) < SEED_PEER_FAILED_TIMEOUT => {
                return None
            }
            _ => {}
        }
        let seed = self.pick_seed_host(task_id, requester)?;
        let endpoint = host_endpoint(&seed.announced.ip, seed.announced.port);
        let host_id = seed.id.clone();
        let mut download = download.clone();
        // The seed fetches from the origin and keeps the content in its cache only.
        download.need_back_to_source = true;
        download.output_path = None;
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.seed = SeedTrigger::InFlight {
                host_id: host_id.clone(),
                since: now,
            };
        }
        Some(SeedJob {
            task_id: task_id.to_string(),
            host_id,
            endpoint,
            download,
        })
    }

    /// Seed hosts sorted by id; the task id hash picks one, so a task sticks to one seed.
    fn pick_seed_host(&self, task_id: &str, requester: &str) -> Option<&Host> {
        let mut seeds: Vec<&Host> = self
            .hosts
            .values()
            .filter(|h| h.host_type.is_seed() && h.id != requester)
            .collect();
        if seeds.is_empty() {
            return None;
        }
        seeds.sort_by(|a, b| a.id.cmp(&b.id));
        let index = (stable_hash(task_id) % seeds.len() as u64) as usize;
        seeds.get(index).copied()
    }

    fn note_seed_registered(&mut self, task_id: &str, host_id: &str) {
        if let Some(task) = self.tasks.get_mut(task_id) {
            if matches!(&task.seed, SeedTrigger::InFlight { host_id: h, .. } if h == host_id) {
                task.seed = SeedTrigger::Registered {
                    host_id: host_id.to_string(),
                };
            }
        }
    }

    /// A triggered seed peer has not registered yet and the wait budget is not spent.
    pub fn seed_on_its_way(&self, task_id: &str, now: Instant) -> bool {
        self.tasks.get(task_id).is_some_and(|t| match &t.seed {
            SeedTrigger::InFlight { since, .. } => {
                now.duration_since(*since) < self.policy.seed_peer_wait_timeout
            }
            _ => false,
        })
    }

    /// The trigger RPC failed: remember it so peers stop waiting and later ones skip the seed.
    pub fn seed_trigger_failed(&mut self, task_id: &str, host_id: &str, now: Instant) {
        if let Some(task) = self.tasks.get_mut(task_id) {
            let ours = match &task.seed {
                SeedTrigger::InFlight { host_id: h, .. }
                | SeedTrigger::Registered { host_id: h } => h == host_id,
                _ => false,
            };
            if ours {
                task.seed = SeedTrigger::Failed { at: now };
            }
        }
    }

    /// The seed finished its download; a later trigger for this task may happen again.
    pub fn seed_trigger_done(&mut self, task_id: &str, host_id: &str) {
        if let Some(task) = self.tasks.get_mut(task_id) {
            if matches!(&task.seed, SeedTrigger::InFlight { host_id: h, .. } | SeedTrigger::Registered { host_id: h } if h == host_id)
            {
                task.seed = SeedTrigger::Idle;
            }
        }
    }

    // ---- scheduling -----------------------------------------------------------------------

    /// One round of Dragonfly's `ScheduleCandidateParents`. `rounds` counts earlier rounds
    /// that found nothing (waiting for a seed does not count).
    pub fn schedule_once(&mut self, peer_id: &str, rounds: u32, now: Instant) -> Step {
        let Some(peer) = self.peers.get(peer_id) else {
            return Step::Decided(Decision::Fail(not_found_peer(peer_id)));
        };
        if peer.state.is_terminal() {
            return Step::Decided(Decision::Fail(Status::failed_precondition(format!(
                "peer {peer_id} is {}; it cannot be scheduled",
                peer.state.name()
            ))));
        }
        let task_id = peer.task_id.clone();
        let can_back_to_source =
            !peer.disable_back_to_source && self.task_has_source_slot(&task_id);
        if can_back_to_source && peer.need_back_to_source {
            return self.send_back_to_source(peer_id, "peer needs back-to-source");
        }
        if can_back_to_source && rounds >= self.policy.retry_back_to_source_limit {
            return self.send_back_to_source(
                peer_id,
                &format!("no parent found in {rounds} scheduling rounds"),
            );
        }
        if rounds >= self.policy.retry_limit {
            return Step::Decided(Decision::Fail(Status::failed_precondition(format!(
                "scheduling exceeded retryLimit: no parent found for peer {peer_id} in {rounds} rounds"
            ))));
        }
        let parents = self.find_candidate_parents(peer_id);
        if !parents.is_empty() {
            let chosen = self.attach_parents(peer_id, &parents);
            if self.policy.mesh {
                self.link_back(peer_id, &parents);
            }
            return Step::Decided(Decision::Normal(chosen));
        }
        if self.seed_on_its_way(&task_id, now) {
            return Step::Wait;
        }
        let nobody_has_it = self
            .tasks
            .get(&task_id)
            .is_some_and(|t| !self.has_provider(t, Some(peer_id)));
        if can_back_to_source && nobody_has_it {
            return self.send_back_to_source(peer_id, "no peer holds or fetches the task");
        }
        Step::Retry
    }

    /// The task may still send another peer to the origin (`backToSourceCount`).
    fn task_has_source_slot(&self, task_id: &str) -> bool {
        self.tasks
            .get(task_id)
            .is_some_and(|t| t.back_to_source_peers.len() < self.policy.back_to_source_count)
    }

    fn send_back_to_source(&mut self, peer_id: &str, why: &str) -> Step {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return Step::Decided(Decision::Fail(not_found_peer(peer_id)));
        };
        match peer.state.on(PeerEvent::DownloadBackToSource) {
            Ok(next) => peer.state = next,
            Err(e) => {
                return Step::Decided(Decision::Fail(Status::failed_precondition(e.to_string())))
            }
        }
        peer.need_back_to_source = true;
        let task_id = peer.task_id.clone();
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.back_to_source_peers.insert(peer_id.to_string());
            task.state = task.state.on(TaskEvent::Download);
        }
        Step::Decided(Decision::BackToSource(why.to_string()))
    }

    /// Filter, sample, score and cut to `candidateParentLimit`. Returns parent ids, best first.
    ///
    /// In a DAG (Dragonfly's rule) seeds are parents of last resort: a seed usually sits next
    /// to the origin, and its uplink is the swarm's scarcest link, so when a normal peer can
    /// feed the child the seed serves only children that have no one else. In a mesh the
    /// child gets the best seed on top of its normal parents: a Damselfly seed shows each
    /// child different pieces (`daemon::ration`) and the mesh spreads them, so each piece
    /// still leaves the seed about once, while the seed feeds many peers at a time.
    pub fn find_candidate_parents(&self, peer_id: &str) -> Vec<String> {
        let Some(child) = self.peers.get(peer_id) else {
            return Vec::new();
        };
        let Some(task) = self.tasks.get(&child.task_id) else {
            return Vec::new();
        };
        let (seeds, normal): (Vec<&Peer>, Vec<&Peer>) = task
            .peers
            .iter()
            .filter_map(|id| self.peers.get(id))
            .filter(|p| self.is_eligible_parent(child, p))
            .partition(|p| self.is_seed_host(&p.host_id));
        let limit = self.policy.candidate_parent_limit;
        if self.policy.mesh {
            let mut chosen = self.rank_parents(child, task, normal, limit);
            chosen.extend(self.rank_parents(child, task, seeds, 1));
            return chosen;
        }
        let pool = if normal.is_empty() { seeds } else { normal };
        self.rank_parents(child, task, pool, limit)
    }

    /// Samples `filterParentLimit` of `pool`, scores them, and keeps the best `limit`.
    fn rank_parents(
        &self,
        child: &Peer,
        task: &Task,
        mut pool: Vec<&Peer>,
        limit: usize,
    ) -> Vec<String> {
        pool.shuffle(&mut rand::rng());
        pool.truncate(self.policy.filter_parent_limit);
        let total_pieces = task.piece_count.unwrap_or(0);
        let features: Vec<ParentFeatures> = pool
            .iter()
            .map(|p| self.parent_features(p, total_pieces))
            .collect();
        scoring::rank(&features, &self.child_features(child), limit)
            .into_iter()
            .filter_map(|i| pool.get(i).map(|p| p.id.clone()))
            .collect()
    }

    /// Dragonfly's filter: one rule per line, each with its reason.
    fn is_eligible_parent(&self, child: &Peer, parent: &Peer) -> bool {
        let Some(host) = self.hosts.get(&parent.host_id) else {
            return false;
        };
        parent.id != child.id
            && !child.blocklist.contains(&parent.id)
            // Same host: the child already has whatever that host has.
            && parent.host_id != child.host_id
            && !host.announced.disable_shared
            // A peer that was just given parents has not reported Started yet, but it will
            // within milliseconds: peers registering together should see each other.
            && (!parent.state.cannot_serve()
                || (matches!(parent.state, PeerState::Received(_)) && !parent.parents.is_empty()))
            // A normal peer without parents that is neither fetching the origin nor done has
            // nothing to give yet. Seeds are fine while running.
            && (host.host_type.is_seed()
                || !parent.parents.is_empty()
                || matches!(parent.state, PeerState::BackToSource | PeerState::Succeeded))
            && !scoring::is_bad_by_costs(&cost_samples(parent))
            // A mesh lets peers feed each other both ways; a DAG does not.
            && (self.policy.mesh || !self.creates_cycle(&parent.id, &child.id))
    }

    /// Adding parent→child closes a cycle when the parent already descends from the child.
    fn creates_cycle(&self, parent_id: &str, child_id: &str) -> bool {
        let mut stack = vec![child_id];
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if id == parent_id {
                return true;
            }
            if !seen.insert(id) {
                continue;
            }
            if let Some(peer) = self.peers.get(id) {
                stack.extend(peer.children.iter().map(String::as_str));
            }
        }
        false
    }

    fn parent_features(&self, parent: &Peer, total_pieces: u32) -> ParentFeatures {
        let host = self.hosts.get(&parent.host_id);
        let host_kind = match host.map(|h| h.host_type) {
            Some(HostType::Seed(_)) => match parent.state {
                PeerState::Running | PeerState::BackToSource | PeerState::Succeeded => {
                    HostKind::ActiveSeed
                }
                _ => HostKind::IdleSeed,
            },
            _ => HostKind::Normal,
        };
        let finished = match parent.state {
            PeerState::Succeeded if total_pieces > 0 => total_pieces,
            _ => u32::try_from(parent.finished_pieces.len()).unwrap_or(u32::MAX),
        };
        ParentFeatures {
            max_tx_bandwidth: host.map_or(0, Host::max_tx_bandwidth),
            assigned_tx_bandwidth: host.map_or(0, |h| h.assigned_tx_bandwidth),
            active_children: host.map_or(0, |h| h.active_children),
            finished_pieces: finished,
            total_pieces,
            host_kind,
            idc: host.and_then(Host::idc),
            location: host.and_then(Host::location),
        }
    }

    fn child_features(&self, child: &Peer) -> ChildFeatures {
        let host = self.hosts.get(&child.host_id);
        ChildFeatures {
            idc: host.and_then(Host::idc),
            location: host.and_then(Host::location),
        }
    }

    /// Adds the DAG edges, reserves bandwidth, and builds the response messages.
    fn attach_parents(&mut self, child_id: &str, parents: &[String]) -> Vec<pb::Peer> {
        for parent_id in parents {
            self.add_edge(parent_id, child_id);
        }
        parents
            .iter()
            .filter_map(|id| self.peers.get(id))
            .map(|p| self.peer_pb(p))
            .collect()
    }

    /// The mesh's reverse edges: each normal parent that is itself downloading from parents
    /// (and takes pushes, and has room) gets the new child as a parent too, so peers that
    /// download together trade both ways. Without this the first peers would carry the task
    /// to everyone, as in a DAG, since a peer learns of later peers only when rescheduled.
    fn link_back(&mut self, child_id: &str, parents: &[String]) {
        let Some(child) = self.peers.get(child_id) else {
            return;
        };
        if child.parents.is_empty() {
            return;
        }
        let child_pb = self.peer_pb(child);
        for parent_id in parents {
            if !self.takes_back_edge(parent_id, child_id) {
                continue;
            }
            self.add_edge(child_id, parent_id);
            let Some(peer) = self.peers.get_mut(parent_id) else {
                continue;
            };
            if peer.state == PeerState::Running {
                self.outbox.push(Push {
                    to: parent_id.clone(),
                    parent: child_pb.clone(),
                });
            } else {
                peer.deferred_pushes.push(child_pb.clone());
            }
        }
    }

    /// A peer that has its decision (Received) or runs its round takes reverse edges; the
    /// pushes to a Received peer wait until it reports Started (see `deferred_pushes`).
    fn takes_back_edge(&self, peer_id: &str, new_parent: &str) -> bool {
        let (Some(peer), Some(parent)) = (self.peers.get(peer_id), self.peers.get(new_parent))
        else {
            return false;
        };
        let normal_parents = peer
            .parents
            .keys()
            .filter_map(|id| self.peers.get(id))
            .filter(|p| !self.is_seed_host(&p.host_id))
            .count();
        peer.takes_pushes
            && !self.is_seed_host(&peer.host_id)
            && matches!(peer.state, PeerState::Running | PeerState::Received(_))
            && !peer.parents.is_empty()
            && !peer.parents.contains_key(new_parent)
            && normal_parents < self.policy.mesh_parent_limit
            // The same filter as any parent: blocklist, host, sharing, costs.
            && self.is_eligible_parent(peer, parent)
    }

    /// Mesh edges to push since the last call.
    pub fn take_pushes(&mut self) -> Vec<Push> {
        std::mem::take(&mut self.outbox)
    }

    /// A push could not be delivered: its edge goes.
    pub fn withdraw_push(&mut self, push: &Push) {
        self.remove_edge(&push.parent.id, &push.to);
    }

    /// The peer's daemon said it takes pushed parents.
    pub fn set_takes_pushes(&mut self, peer_id: &str) {
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.takes_pushes = true;
        }
    }

    fn add_edge(&mut self, parent_id: &str, child_id: &str) {
        let piece_length = self
            .peers
            .get(child_id)
            .and_then(|c| self.tasks.get(&c.task_id))
            .and_then(|t| t.piece_length)
            .unwrap_or(damselfly_core::MIN_PIECE_LENGTH);
        let Some(child) = self.peers.get_mut(child_id) else {
            return;
        };
        if child.parents.contains_key(parent_id) {
            return;
        }
        let bandwidth = scoring::edge_bandwidth(piece_length, child.concurrent_piece_count);
        child.parents.insert(parent_id.to_string(), bandwidth);
        let Some(parent) = self.peers.get_mut(parent_id) else {
            return;
        };
        parent.children.insert(child_id.to_string());
        if let Some(host) = self.hosts.get_mut(&parent.host_id) {
            host.assigned_tx_bandwidth = host.assigned_tx_bandwidth.saturating_add(bandwidth);
            host.active_children = host.active_children.saturating_add(1);
        }
    }

    fn remove_edge(&mut self, parent_id: &str, child_id: &str) {
        let bandwidth = self
            .peers
            .get_mut(child_id)
            .and_then(|c| c.parents.remove(parent_id));
        let Some(parent) = self.peers.get_mut(parent_id) else {
            return;
        };
        parent.children.remove(child_id);
        if let (Some(bandwidth), Some(host)) = (bandwidth, self.hosts.get_mut(&parent.host_id)) {
            host.assigned_tx_bandwidth = host.assigned_tx_bandwidth.saturating_sub(bandwidth);
            host.active_children = host.active_children.saturating_sub(1);
        }
    }

    /// Releases every parent of the peer (it finished, failed, left or is rescheduled).
    fn release_parents(&mut self, child_id: &str) {
        let parents: Vec<String> = self
            .peers
            .get_mut(child_id)
            .map(|c| {
                c.deferred_pushes.clear();
                c.parents.keys().cloned().collect()
            })
            .unwrap_or_default();
        for parent_id in parents {
            self.remove_edge(&parent_id, child_id);
        }
    }

    // ---- reports --------------------------------------------------------------------------

    fn peer_mut(&mut self, peer_id: &str) -> Result<&mut Peer, Status> {
        self.peers
            .get_mut(peer_id)
            .ok_or_else(|| not_found_peer(peer_id))
    }

    /// Applies a state event and refreshes the peer's clock.
    pub fn peer_event(&mut self, peer_id: &str, event: PeerEvent) -> Result<(), Status> {
        let peer = self.peer_mut(peer_id)?;
        peer.state = peer
            .state
            .on(event)
            .map_err(|e| Status::failed_precondition(format!("peer {peer_id}: {e}")))?;
        peer.touch();
        let deferred = std::mem::take(&mut peer.deferred_pushes);
        if event == PeerEvent::Download {
            // Its round runs now: the mesh parents made meanwhile can reach it, those whose
            // edge still stands.
            let still: Vec<Push> = deferred
                .into_iter()
                .filter(|p| peer.parents.contains_key(&p.id))
                .map(|parent| Push {
                    to: peer_id.to_string(),
                    parent,
                })
                .collect();
            self.outbox.extend(still);
        } else {
            for parent in deferred {
                self.remove_edge(&parent.id, peer_id);
            }
        }
        if event == PeerEvent::DownloadBackToSource {
            let task_id = self.peer_mut(peer_id)?.task_id.clone();
            if let Some(task) = self.tasks.get_mut(&task_id) {
                task.back_to_source_peers.insert(peer_id.to_string());
            }
        }
        Ok(())
    }

    /// Records a finished piece (its number and cost).
    pub fn piece_finished(&mut self, peer_id: &str, piece: &pb::Piece) -> Result<(), Status> {
        let peer = self.peer_mut(peer_id)?;
        if peer.state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "peer {peer_id} is {} and cannot report pieces",
                peer.state.name()
            )));
        }
        peer.finished_pieces.insert(piece.number);
        let cost = piece
            .cost
            .and_then(|c| Duration::try_from(c).ok())
            .unwrap_or_default();
        peer.piece_costs.push_back(cost);
        while peer.piece_costs.len() > scoring::PIECE_COST_WINDOW {
            peer.piece_costs.pop_front();
        }
        peer.touch();
        Ok(())
    }

    /// A piece from a parent failed. A non-temporary failure blocklists that parent; a
    /// temporary one (the parent simply does not have the piece yet) does not.
    pub fn piece_failed(
        &mut self,
        peer_id: &str,
        parent_id: &str,
        temporary: bool,
    ) -> Result<(), Status> {
        let peer = self.peer_mut(peer_id)?;
        if !temporary && !parent_id.is_empty() {
            peer.blocklist.insert(parent_id.to_string());
        }
        peer.touch();
        Ok(())
    }

    /// Touches the peer (piece reports from the origin that failed).
    pub fn touch_peer(&mut self, peer_id: &str) -> Result<(), Status> {
        self.peer_mut(peer_id)?.touch();
        Ok(())
    }

    /// Blocklists the parents the peer gave up on and drops all its in-edges before the next
    /// scheduling round.
    pub fn prepare_reschedule(&mut self, peer_id: &str, give_up: &[String]) -> Result<(), Status> {
        let peer = self.peer_mut(peer_id)?;
        if peer.state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "peer {peer_id} is {}; it cannot be rescheduled",
                peer.state.name()
            )));
        }
        peer.blocklist.extend(give_up.iter().cloned());
        peer.touch();
        self.release_parents(peer_id);
        Ok(())
    }

    /// Ends the download: state, task state, seed bookkeeping, released bandwidth.
    pub fn finish(
        &mut self,
        peer_id: &str,
        terminal: Terminal,
        now: Instant,
    ) -> Result<(), Status> {
        let event = match terminal {
            Terminal::Finished | Terminal::BackToSourceFinished => PeerEvent::Succeed,
            Terminal::Failed | Terminal::BackToSourceFailed => PeerEvent::Fail,
        };
        self.peer_event(peer_id, event)?;
        self.release_parents(peer_id);
        let Some(peer) = self.peers.get(peer_id) else {
            return Ok(());
        };
        let (task_id, host_id) = (peer.task_id.clone(), peer.host_id.clone());
        let task_event = match terminal {
            Terminal::Finished | Terminal::BackToSourceFinished => Some(TaskEvent::Succeed),
            Terminal::BackToSourceFailed => Some(TaskEvent::Fail),
            Terminal::Failed => None,
        };
        let seed_failed = event == PeerEvent::Fail && self.is_seed_host(&host_id);
        if let Some(task) = self.tasks.get_mut(&task_id) {
            if let Some(task_event) = task_event {
                task.state = task.state.on(task_event);
            }
            task.updated_at = SystemTime::now();
        }
        if seed_failed {
            self.seed_trigger_failed(&task_id, &host_id, now);
        }
        Ok(())
    }

    /// The stream ended without a terminal request: the peer cannot be relied on as a parent.
    pub fn abandon(&mut self, peer_id: &str) {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return;
        };
        if peer.state.is_terminal() {
            return;
        }
        if let Ok(next) = peer.state.on(PeerEvent::Fail) {
            peer.state = next;
        }
        self.release_parents(peer_id);
    }

    // ---- queries and deletes --------------------------------------------------------------

    pub fn stat_peer(&self, peer_id: &str) -> Result<pb::Peer, Status> {
        self.peers
            .get(peer_id)
            .map(|p| self.peer_pb(p))
            .ok_or_else(|| not_found_peer(peer_id))
    }

    pub fn stat_task(&self, task_id: &str) -> Result<pb::Task, Status> {
        self.tasks
            .get(task_id)
            .map(|t| self.task_pb(t))
            .ok_or_else(|| not_found_task(task_id))
    }

    pub fn peer(&self, peer_id: &str) -> Option<&Peer> {
        self.peers.get(peer_id)
    }

    pub fn task(&self, task_id: &str) -> Option<&Task> {
        self.tasks.get(task_id)
    }

    pub fn delete_peer(&mut self, peer_id: &str) -> Result<(), Status> {
        if !self.peers.contains_key(peer_id) {
            return Err(not_found_peer(peer_id));
        }
        self.remove_peer(peer_id);
        Ok(())
    }

    /// Dragonfly semantics: the host evicted the task, so its peers of that task leave.
    pub fn delete_task(&mut self, host_id: &str, task_id: &str) -> Result<(), Status> {
        let task = self
            .tasks
            .get(task_id)
            .ok_or_else(|| not_found_task(task_id))?;
        let leaving: Vec<String> = task
            .peers
            .iter()
            .filter(|id| self.peers.get(*id).is_some_and(|p| p.host_id == host_id))
            .cloned()
            .collect();
        for peer_id in leaving {
            self.remove_peer(&peer_id);
        }
        Ok(())
    }

    /// Drops a peer and every edge touching it.
    fn remove_peer(&mut self, peer_id: &str) {
        self.release_parents(peer_id);
        let children: Vec<String> = self
            .peers
            .get(peer_id)
            .map(|p| p.children.iter().cloned().collect())
            .unwrap_or_default();
        for child_id in children {
            self.remove_edge(peer_id, &child_id);
        }
        let Some(peer) = self.peers.remove(peer_id) else {
            return;
        };
        if let Some(task) = self.tasks.get_mut(&peer.task_id) {
            task.peers.remove(peer_id);
            task.back_to_source_peers.remove(peer_id);
            if task.peers.is_empty() {
                task.state = task.state.on(TaskEvent::Leave);
            }
        }
        if let Some(host) = self.hosts.get_mut(&peer.host_id) {
            host.peers.remove(peer_id);
        }
    }

    // ---- expiry ---------------------------------------------------------------------------

    /// Hosts silent for longer than `ttl` go, with their peers. Returns how many went.
    pub fn gc_hosts(&mut self, now: Instant, ttl: Duration) -> usize {
        let expired: Vec<String> = self
            .hosts
            .values()
            .filter(|h| now.duration_since(h.last_announce) > ttl)
            .map(|h| h.id.clone())
            .collect();
        for host_id in &expired {
            tracing::info!(host_id = %host_id, "host expired: no announce within hostTTL");
            // The id came from the map just above, so the delete cannot miss.
            let _ = self.delete_host(host_id);
        }
        expired.len()
    }

    /// Peers untouched for longer than `ttl`, or that left, go.
    pub fn gc_peers(&mut self, now: Instant, ttl: Duration) -> usize {
        let expired: Vec<String> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Leave || now.duration_since(p.touched) > ttl)
            .map(|p| p.id.clone())
            .collect();
        for peer_id in &expired {
            tracing::debug!(peer_id = %peer_id, "peer expired");
            self.remove_peer(peer_id);
        }
        expired.len()
    }

    /// Tasks without peers go (unless a seed trigger for them is still on its way).
    pub fn gc_tasks(&mut self, now: Instant) -> usize {
        let expired: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.peers.is_empty() && !self.seed_on_its_way(&t.id, now))
            .map(|t| t.id.clone())
            .collect();
        for task_id in &expired {
            self.tasks.remove(task_id);
        }
        expired.len()
    }

    // ---- messages -------------------------------------------------------------------------

    fn peer_pb(&self, peer: &Peer) -> pb::Peer {
        let task = self.tasks.get(&peer.task_id).map(|t| self.task_pb(t));
        let host = self.hosts.get(&peer.host_id).map(|h| h.announced.clone());
        pb::Peer {
            id: peer.id.clone(),
            range: peer.range,
            priority: peer.priority,
            pieces: Vec::new(),
            cost: None,
            state: peer.state.name().to_string(),
            task,
            host,
            need_back_to_source: peer.need_back_to_source,
            created_at: Some(peer.created_at.into()),
            updated_at: Some(peer.updated_at.into()),
            concurrent_piece_count: Some(peer.concurrent_piece_count),
        }
    }

    fn task_pb(&self, task: &Task) -> pb::Task {
        let scope = SizeScope::classify(task.content_length, task.piece_count);
        pb::Task {
            id: task.id.clone(),
            r#type: task.task_type,
            url: task.url.clone(),
            digest: task.digest.clone(),
            tag: task.tag.clone(),
            application: task.application.clone(),
            filtered_query_params: task.filtered_query_params.clone(),
            request_header: task.request_header.clone(),
            content_length: task.content_length.unwrap_or(0),
            piece_count: task.piece_count.unwrap_or(0),
            size_scope: scope.to_pb() as i32,
            pieces: Vec::new(),
            state: task.state.name().to_string(),
            peer_count: u32::try_from(task.peers.len()).unwrap_or(u32::MAX),
            has_available_peer: self.has_provider(task, None),
            created_at: Some(task.created_at.into()),
            updated_at: Some(task.updated_at.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SchedulingConfig;

    fn state() -> State {
        State::new(Policy::new(&SchedulingConfig::default(), true))
    }

    fn host(id: &str, host_type: u32) -> pb::Host {
        pb::Host {
            id: id.into(),
            r#type: host_type,
            ip: "127.0.0.1".into(),
            port: 4000,
            download_port: 4000,
            ..Default::default()
        }
    }

    fn download() -> pb::Download {
        pb::Download {
            url: "http://o/f".into(),
            actual_content_length: Some(64 << 20),
            actual_piece_length: Some(4 << 20),
            actual_piece_count: Some(16),
            concurrent_piece_count: Some(8),
            ..Default::default()
        }
    }

    fn with_peers(n: usize) -> State {
        let mut s = state();
        let now = Instant::now();
        for i in 0..n {
            s.announce_host(host(&format!("h{i}"), 0), now).unwrap();
            s.register(&format!("h{i}"), "t", &format!("p{i}"), download(), now)
                .unwrap();
        }
        s
    }

    #[test]
    fn cycle_is_detected() {
        let mut s = with_peers(3);
        s.add_edge("p0", "p1");
        s.add_edge("p1", "p2");
        assert!(s.creates_cycle("p2", "p0"));
        assert!(s.creates_cycle("p1", "p0"));
        assert!(!s.creates_cycle("p0", "p2"));
    }

    #[test]
    fn edges_reserve_and_release_bandwidth() {
        let mut s = with_peers(3);
        let per_edge = scoring::edge_bandwidth(4 << 20, 8);
        s.add_edge("p0", "p1");
        s.add_edge("p0", "p2");
        assert_eq!(s.host("h0").unwrap().assigned_tx_bandwidth, 2 * per_edge);
        assert_eq!(s.host("h0").unwrap().active_children, 2);
        s.peer_event("p1", PeerEvent::Download).unwrap();
        s.finish("p1", Terminal::Finished, Instant::now()).unwrap();
        assert_eq!(s.host("h0").unwrap().assigned_tx_bandwidth, per_edge);
        s.delete_peer("p2").unwrap();
        assert_eq!(s.host("h0").unwrap().assigned_tx_bandwidth, 0);
        assert_eq!(s.host("h0").unwrap().active_children, 0);
    }

    #[test]
    fn first_peer_goes_to_source_without_seed() {
        let mut s = state();
        s.announce_host(host("h0", 0), Instant::now()).unwrap();
        s.announce_host(host("h1", 0), Instant::now()).unwrap();
        s.register("h0", "t", "p0", download(), Instant::now())
            .unwrap();
        assert!(s.peer("p0").unwrap().need_back_to_source);
        s.register("h1", "t", "p1", download(), Instant::now())
            .unwrap();
        assert!(!s.peer("p1").unwrap().need_back_to_source);
    }

    #[test]
    fn seed_host_gets_a_job_once() {
        let mut s = state();
        let now = Instant::now();
        s.announce_host(host("seed", 1), now).unwrap();
        s.announce_host(host("h0", 0), now).unwrap();
        s.announce_host(host("h1", 0), now).unwrap();
        let job = s
            .register("h0", "t", "p0", download(), now)
            .unwrap()
            .seed_job;
        let job = job.unwrap();
        assert_eq!(job.endpoint, "http://127.0.0.1:4000");
        assert!(job.download.need_back_to_source);
        assert!(!s.peer("p0").unwrap().need_back_to_source);
        assert!(s.seed_on_its_way("t", now));
        // The task is running now; the second peer neither triggers nor goes to the origin.
        let second = s.register("h1", "t", "p1", download(), now).unwrap();
        assert!(second.seed_job.is_none());
        assert!(matches!(s.schedule_once("p1", 0, now), Step::Wait));
        s.seed_trigger_failed("t", "seed", now);
        // First one to ask after the failure becomes the source; the next one waits for it.
        assert!(matches!(
            s.schedule_once("p1", 0, now),
            Step::Decided(Decision::BackToSource(_))
        ));
        assert!(matches!(
            s.schedule_once("p0", 0, now),
            Step::Decided(Decision::Normal(_))
        ));
    }

    #[test]
    fn concurrent_registrations_send_one_peer_to_the_origin() {
        let mut s = with_peers(2);
        let now = Instant::now();
        // p1 runs its scheduling round before p0 (registered first) ran its own.
        assert!(matches!(s.schedule_once("p1", 0, now), Step::Retry));
        assert!(matches!(
            s.schedule_once("p0", 0, now),
            Step::Decided(Decision::BackToSource(_))
        ));
        match s.schedule_once("p1", 1, now) {
            Step::Decided(Decision::Normal(parents)) => assert_eq!(parents[0].id, "p0"),
            other => panic!("expected p0 as parent, got {other:?}"),
        }
    }

    #[test]
    fn priority_rules_for_first_download() {
        let mut s = state();
        let now = Instant::now();
        s.announce_host(host("seed", 1), now).unwrap();
        s.announce_host(host("h0", 0), now).unwrap();
        let level = |p: pb::Priority| pb::Download {
            priority: p as i32,
            ..download()
        };
        let err = s
            .register("h0", "t", "p0", level(pb::Priority::Level1), now)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let err = s
            .register("h0", "t", "p0", level(pb::Priority::Level2), now)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(s.task("t").is_none());
        let r = s
            .register("h0", "t", "p0", level(pb::Priority::Level3), now)
            .unwrap();
        assert!(r.seed_job.is_none());
        assert!(s.peer("p0").unwrap().need_back_to_source);
    }

    #[test]
    fn ipv6_endpoint_is_bracketed() {
        assert_eq!(host_endpoint("::1", 4000), "http://[::1]:4000");
        assert_eq!(host_endpoint("10.0.0.1", 4000), "http://10.0.0.1:4000");
    }
}
