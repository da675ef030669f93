//! Stat and delete requests, and the protobuf views they answer with.

use super::*;

impl State {
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
        self.peers.get(peer_id).map(|p| &**p)
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
        let leaving: Vec<Id> = task
            .peers
            .iter()
            .filter(|id| self.peers.get(*id).is_some_and(|p| &*p.host_id == host_id))
            .cloned()
            .collect();
        for peer_id in leaving {
            self.remove_peer(&peer_id);
        }
        Ok(())
    }

    /// Forgets the task and all its peers (an operator's reset); whether it was known.
    pub fn forget_task(&mut self, task_id: &str) -> bool {
        let Some(task) = self.tasks.get(task_id) else {
            return false;
        };
        let peers: Vec<Id> = task.peers.iter().cloned().collect();
        for peer_id in peers {
            self.remove_peer(&peer_id);
        }
        self.tasks.remove(task_id);
        true
    }

    /// Drops a peer and every edge touching it.
    pub(super) fn remove_peer(&mut self, peer_id: &str) {
        self.release_parents(peer_id);
        let children: Vec<Id> = self
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
        if let Some(task) = self.tasks.get_mut(&*peer.task_id) {
            task.peers.remove(peer_id);
            task.back_to_source_peers.remove(peer_id);
            if task.peers.is_empty() {
                task.state = task.state.on(TaskEvent::Leave);
            }
        }
        if let Some(host) = self.hosts.get_mut(&*peer.host_id) {
            host.peers.remove(peer_id);
        }
    }

    pub(super) fn peer_pb(&self, peer: &Peer) -> pb::Peer {
        let task = self.tasks.get(&*peer.task_id).map(|t| self.task_pb(t));
        self.peer_pb_of_task(peer, task)
    }

    /// [`State::peer_pb`] with its task's view already built (one per decision, not one per
    /// parent: the view walks the task's peers).
    pub(super) fn peer_pb_of_task(&self, peer: &Peer, task: Option<pb::Task>) -> pb::Peer {
        let host = self.hosts.get(&*peer.host_id).map(|h| h.announced.clone());
        pb::Peer {
            id: peer.id.to_string(),
            range: peer.range,
            priority: peer.priority,
            pieces: Vec::new(),
            cost: None,
            state: peer.state.name().to_string(),
            task,
            host,
            need_back_to_source: peer.need_back_to_source.is_some(),
            created_at: Some(peer.created_at.into()),
            updated_at: Some(peer.updated_at.into()),
            concurrent_piece_count: Some(peer.concurrent_piece_count),
        }
    }

    pub(super) fn task_pb(&self, task: &Task) -> pb::Task {
        let scope = SizeScope::classify(task.content_length, task.piece_count);
        pb::Task {
            id: task.id.to_string(),
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
