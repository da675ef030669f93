//! Trusted piece digests (DESIGN.md "Pieces nobody can forge"): the `blake3:` digest of each
//! piece, as computed by the peer that fetched it from the origin, kept per task and handed to
//! the daemons that ask for it in StatTask, so a child can check what a parent sends.

use super::*;
use damselfly_core::digest::is_trusted_piece_digest;
use damselfly_core::PieceLayout;

/// Who vouched for a piece's digest. A seed peer is deployed by the operator, so its word
/// replaces a normal peer's; between equals the first report stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DigestSource {
    Peer,
    Seed,
}

/// One piece's trusted digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedDigest {
    pub digest: String,
    pub source: DigestSource,
}

/// What became of a reported digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestReport {
    /// Kept as the piece's trusted digest.
    Recorded,
    /// The same digest was already kept.
    Confirmed,
    /// Another digest is kept for the piece, from a source at least as trusted.
    Conflict,
    /// Not a trusted digest (`crc32:`, as official peers send), or not from a peer that is
    /// fetching from the origin: nothing to keep.
    Ignored,
}

impl State {
    /// A piece a peer fetched from the origin, with the digest it computed.
    pub fn piece_digest_reported(&mut self, peer_id: &str, piece: &pb::Piece) -> DigestReport {
        if !is_trusted_piece_digest(&piece.digest) {
            return DigestReport::Ignored;
        }
        let Some(peer) = self.peers.get(peer_id) else {
            return DigestReport::Ignored;
        };
        // Only a peer the scheduler sent to the origin (or that said it went there) saw the
        // origin's bytes; anyone else's word is a parent's word.
        if peer.state != PeerState::BackToSource {
            return DigestReport::Ignored;
        }
        let source = if self.is_seed_host(&peer.host_id) {
            DigestSource::Seed
        } else {
            DigestSource::Peer
        };
        let task_id = peer.task_id.clone();
        let Some(task) = self.tasks.get_mut(&*task_id) else {
            return DigestReport::Ignored;
        };
        let offered = TrustedDigest {
            digest: piece.digest.to_ascii_lowercase(),
            source,
        };
        match task.piece_digests.get(&piece.number) {
            Some(kept) if kept.digest == offered.digest => DigestReport::Confirmed,
            Some(kept) if kept.source >= offered.source => {
                tracing::warn!(task_id = %task_id, number = piece.number, kept = %kept.digest, offered = %offered.digest, "conflicting piece digests from the origin; keeping the first");
                DigestReport::Conflict
            }
            _ => {
                task.piece_digests.insert(piece.number, offered);
                DigestReport::Recorded
            }
        }
    }

    /// The task's trusted piece digests as `common.v2.Piece`s (number, span when the layout
    /// is known, digest), for StatTask answers to daemons that asked for them.
    pub fn trusted_pieces(&self, task_id: &str) -> Vec<pb::Piece> {
        let Some(task) = self.tasks.get(task_id) else {
            return Vec::new();
        };
        let layout = match (task.content_length, task.piece_length) {
            (Some(content_length), Some(piece_length)) if piece_length > 0 => Some(PieceLayout {
                content_length,
                piece_length,
            }),
            _ => None,
        };
        task.piece_digests
            .iter()
            .map(|(&number, trusted)| {
                let span = layout.and_then(|l| l.span(number));
                pb::Piece {
                    number,
                    offset: span.map_or(0, |s| s.offset),
                    length: span.map_or(0, |s| s.length),
                    digest: trusted.digest.clone(),
                    ..Default::default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{download_of, host, state};
    use super::*;

    const SHA_A: &str = "sha256:6ae8a75555209fd6c44157c0aed8016e763ff435a19cf186f76863140143ff72";
    const SHA_B: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn piece(number: u32, digest: &str) -> pb::Piece {
        pb::Piece {
            number,
            digest: digest.into(),
            ..Default::default()
        }
    }

    /// Peers p0 (host h0), p1 (h1) and s (seed host), all registered for task t.
    fn swarm() -> State {
        let mut s = state();
        let now = Instant::now();
        for (h, kind) in [("h0", 0), ("h1", 0), ("seed", 1)] {
            s.announce_host(host(h, kind), now).unwrap();
        }
        for (h, p) in [("h0", "p0"), ("h1", "p1"), ("seed", "s")] {
            s.register(h, "t", p, download_of(10 << 20), now).unwrap();
        }
        s
    }

    fn to_source(s: &mut State, peer: &str) {
        s.peer_event(peer, PeerEvent::DownloadBackToSource).unwrap();
    }

    #[test]
    fn origin_digests_are_kept_and_listed_with_their_spans() {
        let mut s = swarm();
        to_source(&mut s, "p0");
        assert_eq!(
            s.piece_digest_reported("p0", &piece(2, SHA_A)),
            DigestReport::Recorded
        );
        assert_eq!(
            s.piece_digest_reported("p0", &piece(2, SHA_A)),
            DigestReport::Confirmed
        );
        let pieces = s.trusted_pieces("t");
        assert_eq!(pieces.len(), 1);
        assert_eq!(
            (pieces[0].number, pieces[0].offset, pieces[0].length),
            (2, 8 << 20, 2 << 20)
        );
        assert_eq!(pieces[0].digest, SHA_A);
        assert!(s.trusted_pieces("unknown").is_empty());
    }

    #[test]
    fn crc32_and_reports_from_peers_not_at_the_origin_are_ignored() {
        let mut s = swarm();
        // p1 downloads from parents: what it reports is a parent's word, not the origin's.
        s.peer_event("p1", PeerEvent::Download).unwrap();
        assert_eq!(
            s.piece_digest_reported("p1", &piece(0, SHA_A)),
            DigestReport::Ignored
        );
        to_source(&mut s, "p0");
        assert_eq!(
            s.piece_digest_reported("p0", &piece(0, "crc32:1475635037")),
            DigestReport::Ignored
        );
        assert_eq!(
            s.piece_digest_reported("nobody", &piece(0, SHA_A)),
            DigestReport::Ignored
        );
        assert!(s.trusted_pieces("t").is_empty());
    }

    #[test]
    fn first_report_stands_and_a_seed_outranks_a_peer() {
        let mut s = swarm();
        to_source(&mut s, "p0");
        to_source(&mut s, "p1");
        to_source(&mut s, "s");
        assert_eq!(
            s.piece_digest_reported("p0", &piece(1, SHA_B)),
            DigestReport::Recorded
        );
        assert_eq!(
            s.piece_digest_reported("p1", &piece(1, SHA_A)),
            DigestReport::Conflict
        );
        assert_eq!(s.trusted_pieces("t")[0].digest, SHA_B);
        assert_eq!(
            s.piece_digest_reported("s", &piece(1, SHA_A)),
            DigestReport::Recorded
        );
        assert_eq!(
            s.piece_digest_reported("p0", &piece(1, SHA_B)),
            DigestReport::Conflict
        );
        assert_eq!(s.trusted_pieces("t")[0].digest, SHA_A);
    }
}
