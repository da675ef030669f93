//! The parent graph: edges (with the bandwidth they reserve), mesh back-edges and the outbox of
//! pushes for the service.

use super::*;

impl State {
    /// Adds the DAG edges, reserves bandwidth, and builds the response messages.
    pub(super) fn attach_parents(&mut self, child_id: &str, parents: &[Id]) -> Vec<pb::Peer> {
        for parent_id in parents {
            self.add_edge(parent_id, child_id);
        }
        // The parents share the child's task: its view is built once.
        let task = self
            .peers
            .get(child_id)
            .and_then(|c| self.tasks.get(&*c.task_id))
            .map(|t| self.task_pb(t));
        parents
            .iter()
            .filter_map(|id| self.peer(id))
            .map(|p| self.peer_pb_of_task(p, task.clone()))
            .collect()
    }

    /// The mesh's reverse edges: each normal parent that is itself downloading from parents
    /// (and takes pushes, and has room) gets the new child as a parent too, so peers that
    /// download together trade both ways. Without this the first peers would carry the task
    /// to everyone, as in a DAG, since a peer learns of later peers only when rescheduled.
    pub(super) fn link_back(&mut self, child_id: &str, parents: &[Id]) {
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
            .filter_map(|id| self.peer(id))
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

    pub(super) fn add_edge(&mut self, parent_id: &str, child_id: &str) {
        let (Some(parent), Some(child)) = (self.peers.get(parent_id), self.peers.get(child_id))
        else {
            return;
        };
        if child.parents.contains_key(parent_id) {
            return;
        }
        let (parent_key, child_key) = (parent.id.clone(), child.id.clone());
        let piece_length = self
            .tasks
            .get(&*child.task_id)
            .and_then(|t| t.piece_length)
            .unwrap_or(damselfly_core::MIN_PIECE_LENGTH);
        let bandwidth = scoring::edge_bandwidth(piece_length, child.concurrent_piece_count);
        if let Some(child) = self.peers.get_mut(child_id) {
            child.parents.insert(parent_key, bandwidth);
        }
        let Some(parent) = self.peers.get_mut(parent_id) else {
            return;
        };
        parent.children.insert(child_key);
        if let Some(host) = self.hosts.get_mut(&*parent.host_id) {
            host.assigned_tx_bandwidth = host.assigned_tx_bandwidth.saturating_add(bandwidth);
            host.active_children = host.active_children.saturating_add(1);
        }
    }

    pub(super) fn remove_edge(&mut self, parent_id: &str, child_id: &str) {
        let bandwidth = self
            .peers
            .get_mut(child_id)
            .and_then(|c| c.parents.remove(parent_id));
        let Some(parent) = self.peers.get_mut(parent_id) else {
            return;
        };
        parent.children.remove(child_id);
        if parent.children.is_empty() {
            // A set keeps its last node when emptied; a finished peer is kept for long.
            parent.children = BTreeSet::new();
        }
        if let (Some(bandwidth), Some(host)) = (bandwidth, self.hosts.get_mut(&*parent.host_id)) {
            host.assigned_tx_bandwidth = host.assigned_tx_bandwidth.saturating_sub(bandwidth);
            host.active_children = host.active_children.saturating_sub(1);
        }
    }

    /// Releases every parent of the peer (it finished, failed, left or is rescheduled).
    pub(super) fn release_parents(&mut self, child_id: &str) {
        let parents: Vec<Id> = self
            .peers
            .get_mut(child_id)
            .map(|c| {
                c.deferred_pushes = Vec::new();
                c.parents.keys().cloned().collect()
            })
            .unwrap_or_default();
        for parent_id in parents {
            self.remove_edge(&parent_id, child_id);
        }
    }
}
