//! Which piece to fetch next, and from which parent: pure functions over the piece
//! availability we learned from `SyncPieces`, so the policy is testable without a network.
//!
//! Policy:
//! - pieces go rarest first (fewest parents have them), ties broken at random, so that the
//!   peers of a swarm hold different pieces and can trade them with each other;
//! - a piece goes to a normal (non-seed) parent when one has it, so a seed's uplink feeds
//!   the swarm once and the swarm spreads the copies;
//! - among those, to the parent with the most spare upload bandwidth per piece in flight,
//!   ties broken at random.

use rand::seq::IndexedRandom;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// Bandwidth assumed for a parent that did not announce one (1 Gbit/s in bytes), so unknown
/// parents are neither starved nor preferred.
pub const UNKNOWN_PARENT_BANDWIDTH: u64 = 125_000_000;

/// What the dispatcher knows about one parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLoad {
    pub seed: bool,
    /// Announced upload capacity in bytes/s (0 = unknown).
    pub max_tx_bandwidth: u64,
    /// Announced current upload rate in bytes/s.
    pub tx_bandwidth: u64,
    /// Our pieces in flight from this parent.
    pub in_flight: u32,
}

impl ParentLoad {
    /// Spare upload bandwidth per piece we would have in flight with one more piece. A busy
    /// parent keeps a floor of 10 % of its capacity, as Dragonfly's selector, so it still
    /// gets some work.
    pub fn spare_per_piece(&self) -> u64 {
        let max = if self.max_tx_bandwidth == 0 {
            UNKNOWN_PARENT_BANDWIDTH
        } else {
            self.max_tx_bandwidth
        };
        let idle = max.saturating_sub(self.tx_bandwidth).max(max / 10);
        idle / u64::from(self.in_flight + 1)
    }
}

/// Chooses among `holders` (indexes into `parents`) the parent to fetch a piece from.
pub fn choose_parent<R: Rng + ?Sized>(
    holders: &[usize],
    parents: &[ParentLoad],
    rng: &mut R,
) -> Option<usize> {
    let usable: Vec<usize> = holders
        .iter()
        .copied()
        .filter(|&i| i < parents.len())
        .collect();
    let normal: Vec<usize> = usable
        .iter()
        .copied()
        .filter(|&i| !parents[i].seed)
        .collect();
    let pool = if normal.is_empty() { usable } else { normal };
    let best = pool.iter().map(|&i| parents[i].spare_per_piece()).max()?;
    let top: Vec<usize> = pool
        .into_iter()
        .filter(|&i| parents[i].spare_per_piece() == best)
        .collect();
    top.choose(rng).copied()
}

/// Chooses the next piece: among `candidates` (missing, not in flight) that some parent has,
/// one of those held by the fewest parents, at random.
pub fn choose_piece<R: Rng + ?Sized>(
    candidates: &BTreeSet<u32>,
    holders: &BTreeMap<u32, Vec<usize>>,
    rng: &mut R,
) -> Option<u32> {
    let mut rarest = usize::MAX;
    let mut picks: Vec<u32> = Vec::new();
    for &number in candidates {
        let count = holders.get(&number).map_or(0, Vec::len);
        if count == 0 {
            continue;
        }
        if count < rarest {
            rarest = count;
            picks.clear();
        }
        if count == rarest {
            picks.push(number);
        }
    }
    picks.choose(rng).copied()
}

/// One dispatch decision: the next (piece, parent) pair, or `None` when nothing can start.
pub fn next_assignment<R: Rng + ?Sized>(
    candidates: &BTreeSet<u32>,
    holders: &BTreeMap<u32, Vec<usize>>,
    parents: &[ParentLoad],
    rng: &mut R,
) -> Option<(u32, usize)> {
    let piece = choose_piece(candidates, holders, rng)?;
    let parent = choose_parent(holders.get(&piece)?, parents, rng)?;
    Some((piece, parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn normal(max: u64) -> ParentLoad {
        ParentLoad {
            seed: false,
            max_tx_bandwidth: max,
            tx_bandwidth: 0,
            in_flight: 0,
        }
    }

    #[test]
    fn spreads_pieces_by_spare_bandwidth() {
        let mut rng = StdRng::seed_from_u64(7);
        // Parent 0 has twice the bandwidth of parent 1: it should get about two thirds.
        let mut parents = vec![normal(200), normal(100)];
        let mut counts = [0u32; 2];
        for _ in 0..30 {
            let p = choose_parent(&[0, 1], &parents, &mut rng).unwrap();
            parents[p].in_flight += 1;
            counts[p] += 1;
        }
        assert!(counts[0] >= 18 && counts[0] <= 22, "{counts:?}");
        assert!(counts[1] >= 8, "{counts:?}");
    }

    #[test]
    fn busy_parent_yields_to_idle_one() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut busy = normal(100);
        busy.tx_bandwidth = 95;
        let parents = vec![busy, normal(100)];
        assert_eq!(choose_parent(&[0, 1], &parents, &mut rng), Some(1));
    }

    #[test]
    fn prefers_normal_parents_over_seeds() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seed = normal(10_000);
        seed.seed = true;
        let mut parents = vec![seed, normal(10)];
        parents[1].in_flight = 5;
        for _ in 0..20 {
            assert_eq!(choose_parent(&[0, 1], &parents, &mut rng), Some(1));
        }
        // Only the seed has it: the seed serves.
        assert_eq!(choose_parent(&[0], &parents, &mut rng), Some(0));
        assert_eq!(choose_parent(&[], &parents, &mut rng), None);
        assert_eq!(choose_parent(&[9], &parents, &mut rng), None);
    }

    #[test]
    fn rarest_first_in_random_order() {
        let candidates: BTreeSet<u32> = (0..6).collect();
        let mut holders: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for n in 0..6 {
            holders.insert(n, vec![0, 1]);
        }
        holders.insert(4, vec![1]);
        holders.insert(5, vec![0]);
        holders.remove(&0); // nobody has piece 0
        let mut seen = BTreeSet::new();
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let p = choose_piece(&candidates, &holders, &mut rng).unwrap();
            assert!(p == 4 || p == 5, "rarest pieces first, got {p}");
            seen.insert(p);
        }
        assert_eq!(seen.len(), 2, "ties are broken at random");
        // Among equally rare pieces, different peers start at different pieces.
        let common: BTreeSet<u32> = [1, 2, 3].into_iter().collect();
        let firsts: BTreeSet<u32> = (0..40)
            .map(|s| choose_piece(&common, &holders, &mut StdRng::seed_from_u64(s)).unwrap())
            .collect();
        assert_eq!(firsts.len(), 3);
        assert_eq!(
            choose_piece(
                &[0].into_iter().collect(),
                &holders,
                &mut StdRng::seed_from_u64(0)
            ),
            None
        );
    }

    #[test]
    fn next_assignment_combines_both() {
        let mut rng = StdRng::seed_from_u64(11);
        let candidates: BTreeSet<u32> = [0, 1].into_iter().collect();
        let holders: BTreeMap<u32, Vec<usize>> =
            [(0, vec![0, 1]), (1, vec![0])].into_iter().collect();
        let mut seed = normal(100);
        seed.seed = true;
        let parents = vec![seed, normal(100)];
        assert_eq!(
            next_assignment(&candidates, &holders, &parents, &mut rng),
            Some((1, 0))
        );
        let only0: BTreeSet<u32> = [0].into_iter().collect();
        assert_eq!(
            next_assignment(&only0, &holders, &parents, &mut rng),
            Some((0, 1))
        );
    }
}
