//! Reports from a peer's stream: state events, pieces, reschedules, the end of a download.

use super::flow::{FedPiece, ParentRef};
use super::*;

/// Characters of a peer's back-to-source description the scheduler keeps.
const MAX_ORIGIN_DESCRIPTION: usize = 512;

/// What a piece report needs of its child once the piece is recorded.
struct ReportingChild {
    task_id: Id,
    host_id: Id,
    /// Its parents are due for a look (`state::topup`), its host's kind aside.
    top_up_due: bool,
}

impl State {
    fn peer_mut(&mut self, peer_id: &str) -> Result<&mut Peer, Status> {
        self.peers
            .get_mut(peer_id)
            .map(|p| &mut **p)
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
            let to = peer.id.clone();
            let still: Vec<Push> = deferred
                .into_iter()
                .filter(|p| peer.parents.contains_key(&p.id))
                .map(|parent| Push {
                    to: to.clone(),
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
            let peer = self.peer_mut(peer_id)?;
            let (task_id, key) = (peer.task_id.clone(), peer.id.clone());
            if let Some(task) = self.tasks.get_mut(&*task_id) {
                task.back_to_source_peers.insert(key);
            }
        }
        Ok(())
    }

    /// The peer's daemon said why it goes to the origin: its word (a Damselfly daemon's
    /// reason code, or an official one's free text) replaces the reason we had.
    pub fn origin_reported(
        &mut self,
        peer_id: &str,
        description: Option<&str>,
    ) -> Result<(), Status> {
        let peer = self.peer_mut(peer_id)?;
        if let Some(description) = description.filter(|d| !d.is_empty()) {
            // A peer's text is kept, so its size is bounded.
            let description: String = description.chars().take(MAX_ORIGIN_DESCRIPTION).collect();
            peer.origin_reason = Some(OriginReason::parse(&description));
        }
        Ok(())
    }

    /// Records a finished piece (its number and cost), and on the host of the parent it came
    /// from, what that host served; no bytes are counted by source (see
    /// [`State::piece_report`], which also does that).
    pub fn piece_finished(
        &mut self,
        peer_id: &str,
        piece: &pb::Piece,
        now: Instant,
    ) -> Result<(), Status> {
        self.piece_report(peer_id, piece, &PieceOrigin::Local, now)
    }

    /// One finished piece of `child_id` (`DownloadPiece(BackToSource)FinishedRequest`), whose
    /// bytes came from `origin` (taken from the same piece): its number and cost, the
    /// measured upload of the parent's host, the bytes by source (`flow`), and the top-up of
    /// slow parents. Piece reports are most of what a scheduler handles and every map lookup
    /// hashes a client-chosen id, so the child, its parent, their hosts and the task are
    /// looked up once each.
    pub fn piece_report(
        &mut self,
        child_id: &str,
        piece: &pb::Piece,
        origin: &PieceOrigin,
        now: Instant,
    ) -> Result<(), Status> {
        let reported = piece.parent_id.as_deref().filter(|id| !id.is_empty());
        let parent = reported
            .and_then(|id| self.peers.get(id))
            .map(|p| ParentRef::of(p));
        let fed_by = match origin {
            PieceOrigin::Parent(id) if Some(*id) == reported => parent.clone(),
            PieceOrigin::Parent(id) => self.peers.get(*id).map(|p| ParentRef::of(p)),
            _ => None,
        };
        let cost = piece
            .cost
            .and_then(|c| Duration::try_from(c).ok())
            .unwrap_or_default();
        let fed = FedPiece {
            origin,
            parent: fed_by.as_ref(),
            bytes: piece.length,
        };
        let child = self.record_piece(child_id, piece.number, cost, &fed, now)?;
        // A held task re-announced after a restart reports its pieces as local: they moved
        // long ago and say nothing about the parent's upload now.
        let measured = piece.traffic_type != Some(pb::TrafficType::LocalPeer as i32);
        let sample = parent
            .as_ref()
            .filter(|_| measured)
            .map(|p| (&p.host_id, piece.length, cost));
        let parent_is_seed = self.record_served(sample, &fed, now);
        let on_seed_host = self.count_flow(&child.task_id, &child.host_id, &fed, parent_is_seed);
        if child.top_up_due && !on_seed_host.unwrap_or_else(|| self.is_seed_host(&child.host_id)) {
            self.top_up_parents(child_id, now);
        }
        Ok(())
    }

    /// The child's side of a piece report: the piece, its cost, the bytes by source.
    fn record_piece(
        &mut self,
        child_id: &str,
        number: u32,
        cost: Duration,
        fed: &FedPiece,
        now: Instant,
    ) -> Result<ReportingChild, Status> {
        let mesh = self.policy.mesh;
        let peer = self.peer_mut(child_id)?;
        if peer.state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "peer {child_id} is {} and cannot report pieces",
                peer.state.name()
            )));
        }
        peer.finished_pieces.insert(number);
        peer.piece_costs
            .push_back(u32::try_from(cost.as_micros()).unwrap_or(u32::MAX));
        while peer.piece_costs.len() > scoring::PIECE_COST_WINDOW {
            peer.piece_costs.pop_front();
        }
        peer.touch();
        peer.flow.add(fed);
        Ok(ReportingChild {
            task_id: peer.task_id.clone(),
            host_id: peer.host_id.clone(),
            top_up_due: mesh && topup::is_due(peer, now),
        })
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
        if let Some(task) = self.tasks.get_mut(&*task_id) {
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
}
