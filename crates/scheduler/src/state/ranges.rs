//! Peers that download a byte range (`Download.range`: lazy pulls through the proxy, `dfget
//! --range`): which pieces they want and which parents can serve them. A ranged peer ends
//! `Succeeded` holding only its pieces, so the whole-task rules (a succeeded peer has
//! everything) do not apply to it, in either direction.

use super::*;
use damselfly_core::PieceLayout;

impl State {
    /// The piece numbers a ranged peer wants; `None` for a whole-task peer, or while the
    /// task's layout is unknown.
    pub(super) fn wanted_pieces(&self, peer: &Peer) -> Option<BTreeSet<u32>> {
        let range = peer.range.as_ref()?;
        let task = self.tasks.get(&peer.task_id)?;
        let layout = PieceLayout {
            content_length: task.content_length?,
            piece_length: task.piece_length.filter(|&l| l > 0)?,
        };
        Some(
            layout
                .spans_for_range(range.start, range.length)
                .map(|s| s.number)
                .collect(),
        )
    }

    /// Whether `parent` has something for `child`. A whole-task child takes whole-task
    /// parents only: a ranged parent's SyncPieces stream would show it part of the task and
    /// then keep it waiting for the rest. A ranged child takes a parent holding at least one
    /// of its pieces (a succeeded whole-task parent holds them all), so it is never sent to
    /// peers that cannot answer it.
    pub(super) fn serves_range(&self, child: &Peer, parent: &Peer) -> bool {
        let whole_parent = parent.range.is_none();
        match self.wanted_pieces(child) {
            None => whole_parent,
            Some(_) if whole_parent && parent.state == PeerState::Succeeded => true,
            Some(wanted) => wanted.iter().any(|&n| parent.finished_pieces.contains(n)),
        }
    }

    /// A ranged peer with no parent is sent to the origin at once: waiting for other peers
    /// to fetch its few pieces would cost a lazy read more than the read itself.
    pub(super) fn is_ranged(&self, peer_id: &str) -> bool {
        self.peers
            .get(peer_id)
            .is_some_and(|p| self.wanted_pieces(p).is_some())
    }
}
