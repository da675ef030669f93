//! Scheduling decisions: back to source, or candidate parents ranked by the scoring model.

use super::*;

impl State {
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
        let planned = peer.need_back_to_source.clone();
        if let Some(reason) = planned.filter(|_| can_back_to_source) {
            return self.send_back_to_source(peer_id, reason);
        }
        if can_back_to_source && rounds >= self.policy.retry_back_to_source_limit {
            let detail = format!("none in {rounds} scheduling rounds");
            return self.send_back_to_source(peer_id, OriginReason::NoParentFound { detail });
        }
        if rounds >= self.policy.retry_limit {
            return Step::Decided(Decision::Fail(Status::failed_precondition(format!(
                "scheduling exceeded retryLimit: no parent found for peer {peer_id} in {rounds} rounds"
            ))));
        }
        let parents = self.find_candidate_parents(peer_id, now);
        if !parents.is_empty() {
            let chosen = self.attach_parents(peer_id, &parents);
            if self.policy.mesh {
                self.link_back(peer_id, &parents);
            }
            return Step::Decided(Decision::Normal(chosen));
        }
        let ranged = self.is_ranged(peer_id);
        if !ranged && self.seed_on_its_way(&task_id, now) {
            return Step::Wait;
        }
        let nobody_has_it = ranged
            || self
                .tasks
                .get(&task_id)
                .is_some_and(|t| !self.has_provider(t, Some(peer_id)));
        if can_back_to_source && nobody_has_it {
            let reason = self.unseeded_reason(&task_id);
            return self.send_back_to_source(peer_id, reason);
        }
        Step::Retry
    }

    /// The task may still send another peer to the origin (`backToSourceCount`).
    fn task_has_source_slot(&self, task_id: &str) -> bool {
        self.tasks
            .get(task_id)
            .is_some_and(|t| t.back_to_source_peers.len() < self.policy.back_to_source_count)
    }

    fn send_back_to_source(&mut self, peer_id: &str, why: OriginReason) -> Step {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return Step::Decided(Decision::Fail(not_found_peer(peer_id)));
        };
        match peer.state.on(PeerEvent::DownloadBackToSource) {
            Ok(next) => peer.state = next,
            Err(e) => {
                return Step::Decided(Decision::Fail(Status::failed_precondition(e.to_string())))
            }
        }
        peer.need_back_to_source = Some(why.clone());
        peer.origin_reason = Some(why.clone());
        let (task_id, key) = (peer.task_id.clone(), peer.id.clone());
        if let Some(task) = self.tasks.get_mut(&*task_id) {
            task.back_to_source_peers.insert(key);
            task.state = task.state.on(TaskEvent::Download);
        }
        Step::Decided(Decision::BackToSource(why.to_description()))
    }

    /// Filter, sample, score and cut to `candidateParentLimit`. Returns parent ids, best first.
    ///
    /// In a DAG (Dragonfly's rule) seeds are parents of last resort: a seed usually sits next
    /// to the origin, and its uplink is the swarm's scarcest link, so when a normal peer can
    /// feed the child the seed serves only children that have no one else. In a mesh the
    /// child gets the best seed on top of its normal parents: a Damselfly seed shows each
    /// child different pieces (`daemon::ration`) and the mesh spreads them, so each piece
    /// still leaves the seed about once, while the seed feeds many peers at a time.
    pub fn find_candidate_parents(&self, peer_id: &str, now: Instant) -> Vec<Id> {
        let Some(child) = self.peers.get(peer_id) else {
            return Vec::new();
        };
        let Some(task) = self.tasks.get(&*child.task_id) else {
            return Vec::new();
        };
        // Each candidate's host is looked up once, for the filter and the partition. The
        // normal peers are read in a random order until `filterParentLimit` are eligible
        // (`task_peers`): the sample `rank_parents` takes, without walking the whole task.
        let (mut seeds, mut normal): (Vec<&Peer>, Vec<&Peer>) = (Vec::new(), Vec::new());
        let enough = self.policy.filter_parent_limit;
        let mut rng = rand::rng();
        let candidates = task.peers.sampling_order(&mut rng);
        for parent in candidates.filter_map(|id| self.peer(id)) {
            let Some(host) = self.hosts.get(&*parent.host_id) else {
                continue;
            };
            if !self.is_eligible_parent_on(child, parent, host) {
                continue;
            }
            match host.host_type {
                HostType::Seed(_) => seeds.push(parent),
                HostType::Normal => normal.push(parent),
            }
            if normal.len() >= enough {
                break;
            }
        }
        let limit = self.policy.candidate_parent_limit;
        if self.policy.mesh {
            let mut chosen = self.rank_parents(child, task, normal, limit, now);
            chosen.extend(self.rank_parents(child, task, seeds, 1, now));
            return chosen;
        }
        let pool = if normal.is_empty() { seeds } else { normal };
        self.rank_parents(child, task, pool, limit, now)
    }

    /// Samples `filterParentLimit` of `pool`, scores them (each host's measured upload
    /// counted against the best candidate's), and keeps the best `limit`.
    pub(super) fn rank_parents(
        &self,
        child: &Peer,
        task: &Task,
        mut pool: Vec<&Peer>,
        limit: usize,
        now: Instant,
    ) -> Vec<Id> {
        pool.shuffle(&mut rand::rng());
        pool.truncate(self.policy.filter_parent_limit);
        let total_pieces = task.piece_count.unwrap_or(0);
        let features: Vec<ParentFeatures> = pool
            .iter()
            .map(|p| self.parent_features(p, total_pieces, now))
            .collect();
        scoring::rank(&features, &self.child_features(child), limit)
            .into_iter()
            .filter_map(|i| pool.get(i).map(|p| p.id.clone()))
            .collect()
    }

    /// Dragonfly's filter: one rule per line, each with its reason.
    pub(super) fn is_eligible_parent(&self, child: &Peer, parent: &Peer) -> bool {
        self.hosts
            .get(&*parent.host_id)
            .is_some_and(|host| self.is_eligible_parent_on(child, parent, host))
    }

    /// [`State::is_eligible_parent`] with the parent's host already looked up.
    fn is_eligible_parent_on(&self, child: &Peer, parent: &Peer, host: &Host) -> bool {
        // Interned ids: one peer is one allocation.
        !Arc::ptr_eq(&parent.id, &child.id)
            && !child.blocklist.contains(&*parent.id)
            // Same host: the child already has whatever that host has.
            && parent.host_id != child.host_id
            && self.serves_range(child, parent)
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
            // Piece costs measure a peer's own downloads (its parents' links or the origin's),
            // not its upload: a peer that holds the whole task is never bad by them.
            && (matches!(parent.state, PeerState::Succeeded)
                || !is_bad_by_costs(parent))
            // A mesh lets peers feed each other both ways; a DAG does not.
            && (self.policy.mesh || !self.creates_cycle(&parent.id, &child.id))
    }

    /// Adding parent→child closes a cycle when the parent already descends from the child.
    pub(super) fn creates_cycle(&self, parent_id: &str, child_id: &str) -> bool {
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
                stack.extend(peer.children.iter().map(|id| &**id));
            }
        }
        false
    }

    fn parent_features(
        &self,
        parent: &Peer,
        total_pieces: u32,
        now: Instant,
    ) -> ParentFeatures<'_> {
        let host = self.hosts.get(&*parent.host_id);
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
            PeerState::Succeeded if total_pieces > 0 && parent.range.is_none() => total_pieces,
            _ => u32::try_from(parent.finished_pieces.len()).unwrap_or(u32::MAX),
        };
        ParentFeatures {
            max_tx_bandwidth: host.map_or(0, Host::max_tx_bandwidth),
            assigned_tx_bandwidth: host.map_or(0, |h| h.assigned_tx_bandwidth),
            active_children: host.map_or(0, |h| h.active_children),
            measured_upload: host.and_then(|h| h.upload.bits_per_second(now)),
            finished_pieces: finished,
            total_pieces,
            host_kind,
            idc: host.and_then(Host::idc),
            location: host.and_then(Host::location),
        }
    }

    fn child_features(&self, child: &Peer) -> ChildFeatures<'_> {
        let host = self.hosts.get(&*child.host_id);
        ChildFeatures {
            idc: host.and_then(Host::idc),
            location: host.and_then(Host::location),
        }
    }
}
