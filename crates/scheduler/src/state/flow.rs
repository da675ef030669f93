//! Who fed whom: bytes counted from every piece report (`DownloadPieceFinished` with its
//! parent and traffic type, `DownloadPieceBackToSourceFinished`), per task, per peer and per
//! host, for the console. A report touches its child's own counters (no map keyed by id
//! pairs, no id copied): the child holds its in-edges, which leave with it; an edge whose
//! parent left stays until the child leaves, and the view skips it.

use super::*;

/// Bytes of one task by where they came from. The totals stay when peers leave, so "origin
/// bytes saved" does not shrink as the swarm moves on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFlow {
    pub from_origin: u64,
    pub from_seeds: u64,
    pub from_peers: u64,
}

impl TaskFlow {
    /// Bytes that reached a peer from another peer instead of the origin.
    pub fn origin_bytes_saved(&self) -> u64 {
        self.from_seeds.saturating_add(self.from_peers)
    }
}

/// Bytes one peer took, by source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerFlow {
    /// From the origin.
    pub from_origin: u64,
    /// Parent (the interned id of the peer it was when the bytes came) → bytes from it. A
    /// handful of entries: the parents a peer is given.
    pub from_parents: Vec<(Id, u64)>,
}

impl PeerFlow {
    fn add_from_parent(&mut self, parent: &Id, bytes: u64) {
        match self
            .from_parents
            .iter_mut()
            .find(|(id, _)| Arc::ptr_eq(id, parent))
        {
            Some((_, total)) => *total = total.saturating_add(bytes),
            None => self.from_parents.push((parent.clone(), bytes)),
        }
    }
}

/// One parent → child edge of a task's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEdge<'a> {
    pub parent: &'a str,
    pub child: &'a str,
    pub bytes: u64,
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
pub enum PieceOrigin<'a> {
    /// The origin (back-to-source).
    Origin,
    /// Another peer, by its ID.
    Parent(&'a str),
    /// Nothing moved (a local hit, or a held task re-announced).
    Local,
}

impl<'a> PieceOrigin<'a> {
    /// From a `DownloadPieceFinished` report; a missing parent with a remote traffic type is
    /// an official client's sloppiness and counts as nothing rather than a guess.
    pub fn of(piece: &'a pb::Piece) -> Self {
        match (
            piece.traffic_type.map(pb::TrafficType::try_from),
            &piece.parent_id,
        ) {
            (Some(Ok(pb::TrafficType::BackToSource)), _) => Self::Origin,
            (Some(Ok(pb::TrafficType::LocalPeer)), _) => Self::Local,
            (_, Some(parent)) if !parent.is_empty() => Self::Parent(parent),
            _ => Self::Local,
        }
    }
}

/// A reported piece's parent as the scheduler knows it: its interned id and host.
#[derive(Debug, Clone)]
pub(super) struct ParentRef {
    pub id: Id,
    pub host_id: Id,
}

impl ParentRef {
    pub fn of(peer: &Peer) -> Self {
        Self {
            id: peer.id.clone(),
            host_id: peer.host_id.clone(),
        }
    }
}

/// A reported piece's bytes and where they came from.
pub(super) struct FedPiece<'a> {
    pub origin: &'a PieceOrigin<'a>,
    /// The parent, when the bytes came from one the scheduler knows.
    pub parent: Option<&'a ParentRef>,
    pub bytes: u64,
}

impl Host {
    /// Counts bytes it sent to a child; returns whether it is a seed host.
    fn sent(&mut self, bytes: u64) -> bool {
        self.traffic.out_to_peers = self.traffic.out_to_peers.saturating_add(bytes);
        self.host_type.is_seed()
    }
}

impl PeerFlow {
    /// Counts a piece the peer reported.
    pub(super) fn add(&mut self, fed: &FedPiece) {
        match (fed.origin, fed.parent) {
            (PieceOrigin::Origin, _) => {
                self.from_origin = self.from_origin.saturating_add(fed.bytes)
            }
            (PieceOrigin::Parent(_), Some(parent)) => self.add_from_parent(&parent.id, fed.bytes),
            _ => {}
        }
    }
}

impl State {
    /// The parent host's side of a piece report: `sample` (its host, bytes, cost) for its
    /// measured upload, and the bytes it sent to the child by `fed`; the host is looked up
    /// once when both name it. Returns whether the host that fed the child is a seed.
    pub(super) fn record_served(
        &mut self,
        sample: Option<(&Id, u64, Duration)>,
        fed: &FedPiece,
        now: Instant,
    ) -> bool {
        let sender = fed.parent.map(|p| &p.host_id);
        if let Some((host_id, bytes, cost)) = sample {
            let same = sender.is_some_and(|s| Arc::ptr_eq(s, host_id));
            let host = self.hosts.get_mut(&**host_id);
            if let Some(host) = host {
                host.upload.record(bytes, cost, now);
                if same {
                    return host.sent(fed.bytes);
                }
            }
            if same {
                return false;
            }
        }
        sender
            .and_then(|id| self.hosts.get_mut(&**id))
            .is_some_and(|host| host.sent(fed.bytes))
    }

    /// The task's and the child host's side of a piece report. Returns whether the child's
    /// host is a seed, when it was looked up.
    pub(super) fn count_flow(
        &mut self,
        task_id: &str,
        child_host: &str,
        fed: &FedPiece,
        parent_is_seed: bool,
    ) -> Option<bool> {
        if matches!(fed.origin, PieceOrigin::Local) {
            return None;
        }
        if let Some(task) = self.tasks.get_mut(task_id) {
            let flow = &mut task.flow;
            let total = match fed.origin {
                PieceOrigin::Origin => &mut flow.from_origin,
                _ if parent_is_seed => &mut flow.from_seeds,
                // A parent the scheduler no longer knows still fed the child; without it the
                // edge cannot be drawn, but the bytes count.
                _ => &mut flow.from_peers,
            };
            *total = total.saturating_add(fed.bytes);
        }
        let host = self.hosts.get_mut(child_host)?;
        let counter = match fed.origin {
            PieceOrigin::Origin => &mut host.traffic.in_from_origin,
            _ => &mut host.traffic.in_from_peers,
        };
        *counter = counter.saturating_add(fed.bytes);
        Some(host.host_type.is_seed())
    }

    /// The task's parent → child edges whose parent is still the peer that fed the child.
    pub fn flow_edges(&self, task_id: &str) -> Vec<FlowEdge<'_>> {
        let Some(task) = self.tasks.get(task_id) else {
            return Vec::new();
        };
        task.peers
            .iter()
            .filter_map(|id| self.peer(id))
            .flat_map(|child| {
                child.flow.from_parents.iter().map(move |(parent, bytes)| {
                    (
                        parent,
                        FlowEdge {
                            parent,
                            child: &child.id,
                            bytes: *bytes,
                        },
                    )
                })
            })
            .filter(|(parent, _)| {
                self.peers
                    .get(&***parent)
                    .is_some_and(|p| Arc::ptr_eq(&p.id, parent))
            })
            .map(|(_, edge)| edge)
            .collect()
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
            s.piece_report(child, piece, &PieceOrigin::of(piece), Instant::now())
                .unwrap();
        }
        let flow = &s.task("t").unwrap().flow;
        assert_eq!(
            (flow.from_origin, flow.from_seeds, flow.from_peers),
            (100, 100, 200)
        );
        assert_eq!(flow.origin_bytes_saved(), 300);
        let edges = s.flow_edges("t");
        let edge = |parent, child, bytes| FlowEdge {
            parent,
            child,
            bytes,
        };
        assert_eq!(edges, [edge("ps", "p0", 100), edge("p0", "p1", 200)]);
        assert_eq!(s.peer("ps").unwrap().flow.from_origin, 100);
        let h0 = s.host("h0").unwrap().traffic;
        assert_eq!((h0.in_from_peers, h0.out_to_peers), (100, 200));
        assert_eq!(s.host("seed").unwrap().traffic.in_from_origin, 100);
    }

    #[test]
    fn a_leaving_peer_takes_its_edges_but_not_the_totals() {
        let mut s = swarm();
        let fed = piece(Some("p0"), pb::TrafficType::RemotePeer);
        s.piece_report("p1", &fed, &PieceOrigin::of(&fed), Instant::now())
            .unwrap();
        s.delete_peer("p0").unwrap();
        assert!(s.flow_edges("t").is_empty());
        assert_eq!(s.task("t").unwrap().flow.origin_bytes_saved(), 100);
        // A new peer under the old parent's id did not feed p1.
        let download = pb::Download {
            url: "http://o/f".into(),
            ..Default::default()
        };
        s.register("h0", "t", "p0", download, Instant::now())
            .unwrap();
        assert!(s.flow_edges("t").is_empty());
    }
}
