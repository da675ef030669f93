//! Who fed whom: bytes counted from every piece report (`DownloadPieceFinished` with its
//! parent and traffic type, `DownloadPieceBackToSourceFinished`), per task and per host, for
//! the console. Memory stays bounded by what the scheduler already keeps: a task's edges
//! live in the task and leave with either of their peers; the totals are a few counters.

use super::*;

/// Bytes of one task by where they came from. The totals stay when peers leave, so "origin
/// bytes saved" does not shrink as the swarm moves on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFlow {
    pub from_origin: u64,
    pub from_seeds: u64,
    pub from_peers: u64,
    /// (parent peer, child peer) → bytes the child took from the parent.
    pub edges: HashMap<(String, String), u64>,
    /// Peer → bytes it took from the origin.
    pub origin_by_peer: HashMap<String, u64>,
}

impl TaskFlow {
    /// Bytes that reached a peer from another peer instead of the origin.
    pub fn origin_bytes_saved(&self) -> u64 {
        self.from_seeds.saturating_add(self.from_peers)
    }

    /// Forgets a leaving peer's edges and origin count (the totals stay).
    pub(super) fn forget_peer(&mut self, peer_id: &str) {
        self.edges
            .retain(|(parent, child), _| parent != peer_id && child != peer_id);
        self.origin_by_peer.remove(peer_id);
    }
}

/// Bytes a host moved, from the piece reports of its peers and of their children.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostTraffic {
    /// Received from other peers.
    pub in_from_peers: u64,
    /// Received from the origin.
    pub in_from_origin: u64,
    /// Sent to other peers (as a parent).
    pub out_to_peers: u64,
}

/// Where a reported piece came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceOrigin {
    /// The origin (back-to-source).
    Origin,
    /// Another peer, by its ID.
    Parent(String),
    /// Nothing moved (a local hit, or a held task re-announced).
    Local,
}

impl PieceOrigin {
    /// From a `DownloadPieceFinished` report; a missing parent with a remote traffic type is
    /// an official client's sloppiness and counts as nothing rather than a guess.
    pub fn of(piece: &pb::Piece) -> Self {
        match (
            piece.traffic_type.map(pb::TrafficType::try_from),
            &piece.parent_id,
        ) {
            (Some(Ok(pb::TrafficType::BackToSource)), _) => Self::Origin,
            (Some(Ok(pb::TrafficType::LocalPeer)), _) => Self::Local,
            (_, Some(parent)) if !parent.is_empty() => Self::Parent(parent.clone()),
            _ => Self::Local,
        }
    }
}

impl State {
    /// Counts a finished piece of `child` on its task and hosts.
    pub fn record_flow(&mut self, child: &str, origin: &PieceOrigin, bytes: u64) {
        let Some(peer) = self.peers.get(child) else {
            return;
        };
        let (task_id, child_host) = (peer.task_id.clone(), peer.host_id.clone());
        let parent_host = match origin {
            PieceOrigin::Parent(parent) => self.peers.get(parent).map(|p| p.host_id.clone()),
            _ => None,
        };
        let parent_is_seed = parent_host.as_deref().is_some_and(|h| self.is_seed_host(h));
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let flow = &mut task.flow;
        match origin {
            PieceOrigin::Local => return,
            PieceOrigin::Origin => {
                flow.from_origin = flow.from_origin.saturating_add(bytes);
                *flow.origin_by_peer.entry(child.to_string()).or_default() += bytes;
            }
            // A parent the scheduler no longer knows still fed the child; without its host
            // the edge cannot be drawn, but the bytes count.
            PieceOrigin::Parent(parent) => {
                let total = if parent_is_seed {
                    &mut flow.from_seeds
                } else {
                    &mut flow.from_peers
                };
                *total = total.saturating_add(bytes);
                if parent_host.is_some() {
                    let key = (parent.clone(), child.to_string());
                    *flow.edges.entry(key).or_default() += bytes;
                }
            }
        }
        self.count_host_traffic(&child_host, parent_host.as_deref(), origin, bytes);
    }

    fn count_host_traffic(
        &mut self,
        child_host: &str,
        parent_host: Option<&str>,
        origin: &PieceOrigin,
        bytes: u64,
    ) {
        if let Some(host) = self.hosts.get_mut(child_host) {
            let counter = match origin {
                PieceOrigin::Origin => &mut host.traffic.in_from_origin,
                _ => &mut host.traffic.in_from_peers,
            };
            *counter = counter.saturating_add(bytes);
        }
        if let Some(host) = parent_host.and_then(|id| self.hosts.get_mut(id)) {
            host.traffic.out_to_peers = host.traffic.out_to_peers.saturating_add(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SchedulingConfig;

    fn piece(parent: Option<&str>, traffic: pb::TrafficType) -> pb::Piece {
        pb::Piece {
            parent_id: parent.map(str::to_string),
            traffic_type: Some(traffic as i32),
            length: 100,
            ..Default::default()
        }
    }

    fn swarm() -> State {
        let mut s = State::new(Policy::new(&SchedulingConfig::default(), true));
        let now = Instant::now();
        for (id, kind) in [("seed", 1), ("h0", 0), ("h1", 0)] {
            let host = pb::Host {
                id: id.into(),
                r#type: kind,
                ip: "127.0.0.1".into(),
                port: 4000,
                download_port: 4000,
                ..Default::default()
            };
            s.announce_host(host, now).unwrap();
        }
        let download = pb::Download {
            url: "http://o/f".into(),
            actual_content_length: Some(64 << 20),
            ..Default::default()
        };
        for (host, peer) in [("seed", "ps"), ("h0", "p0"), ("h1", "p1")] {
            s.register(host, "t", peer, download.clone(), now).unwrap();
        }
        s
    }

    #[test]
    fn pieces_count_by_source_edge_and_host() {
        let mut s = swarm();
        let reports = [
            ("ps", piece(None, pb::TrafficType::BackToSource)),
            ("p0", piece(Some("ps"), pb::TrafficType::RemotePeer)),
            ("p1", piece(Some("p0"), pb::TrafficType::RemotePeer)),
            ("p1", piece(Some("p0"), pb::TrafficType::RemotePeer)),
            ("p1", piece(None, pb::TrafficType::LocalPeer)),
        ];
        for (child, piece) in &reports {
            s.record_flow(child, &PieceOrigin::of(piece), piece.length);
        }
        let flow = &s.task("t").unwrap().flow;
        assert_eq!(
            (flow.from_origin, flow.from_seeds, flow.from_peers),
            (100, 100, 200)
        );
        assert_eq!(flow.origin_bytes_saved(), 300);
        assert_eq!(flow.edges[&("p0".to_string(), "p1".to_string())], 200);
        assert_eq!(flow.origin_by_peer["ps"], 100);
        let h0 = s.host("h0").unwrap().traffic;
        assert_eq!((h0.in_from_peers, h0.out_to_peers), (100, 200));
        assert_eq!(s.host("seed").unwrap().traffic.in_from_origin, 100);
    }

    #[test]
    fn a_leaving_peer_takes_its_edges_but_not_the_totals() {
        let mut s = swarm();
        let fed = piece(Some("p0"), pb::TrafficType::RemotePeer);
        s.record_flow("p1", &PieceOrigin::of(&fed), fed.length);
        s.delete_peer("p0").unwrap();
        let flow = &s.task("t").unwrap().flow;
        assert!(flow.edges.is_empty());
        assert_eq!(flow.origin_bytes_saved(), 100);
    }
}
