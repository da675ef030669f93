//! Expiry of hosts, peers and tasks (called by the service's GC loops).

use super::*;

impl State {
    /// Hosts silent for longer than `ttl` go, with their peers. Returns how many went.
    pub fn gc_hosts(&mut self, now: Instant, ttl: Duration) -> usize {
        let expired: Vec<Id> = self
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
        let expired: Vec<Id> = self
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
        let expired: Vec<Id> = self
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
}
