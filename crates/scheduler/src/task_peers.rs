//! A task's peers, kept so that a decision can sample them instead of walking them all.
//!
//! A decision scores `filterParentLimit` eligible candidates drawn at random from the task's
//! peers. Walking every peer of the task to find them cost each decision the task's size
//! (two hash lookups of a client-chosen id and the parent filter per peer), so a task that
//! the whole cluster pulls (10,000 peers) made its decisions O(peers) each and O(peers²) in
//! all. Here the peers on normal hosts are a vector the decision reads in a random order,
//! drawn as it goes, and it stops once it has enough eligible ones: the same uniform sample
//! of the eligible peers, after about `filterParentLimit / share eligible` looks. The few
//! peers on seed hosts are kept apart and always all looked at (a mesh child gets the best
//! seed on top of its normal parents; a DAG child takes seeds only without normal ones).

use rand::Rng;

use crate::model::Id;

/// The peers of one task; a set (a peer id is in it at most once), in no particular order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskPeers {
    /// Peers that were on a normal host when they registered.
    normal: Vec<Id>,
    /// Peers that were on a seed host when they registered.
    seeds: Vec<Id>,
}

impl TaskPeers {
    /// Adds a peer. The caller keeps it a set: a peer id registers once (a re-registration
    /// removes the old peer first), so no lookup is paid here.
    pub fn insert(&mut self, id: Id, on_seed_host: bool) {
        debug_assert!(!self.contains(&id), "peer {id} added to its task twice");
        if on_seed_host {
            self.seeds.push(id);
        } else {
            self.normal.push(id);
        }
    }

    /// Removes `id`; whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        for list in [&mut self.normal, &mut self.seeds] {
            if let Some(at) = list.iter().position(|p| &**p == id) {
                list.swap_remove(at);
                if list.is_empty() {
                    // A task outlives its peers for a while: its emptied vectors go.
                    *list = Vec::new();
                }
                return true;
            }
        }
        false
    }

    pub fn contains(&self, id: &str) -> bool {
        self.iter().any(|p| &**p == id)
    }

    pub fn len(&self) -> usize {
        self.normal.len() + self.seeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.normal.is_empty() && self.seeds.is_empty()
    }

    /// Every peer: those on seed hosts first.
    pub fn iter(&self) -> impl Iterator<Item = &Id> + '_ {
        self.seeds.iter().chain(self.normal.iter())
    }

    /// The peers that registered on seed hosts.
    pub fn seeds(&self) -> &[Id] {
        &self.seeds
    }

    /// The peers that registered on normal hosts, in a uniformly random order drawn as the
    /// iterator is read (a Fisher-Yates shuffle stopped wherever the reader stops).
    pub fn shuffled_normal<'a, 'r, R: Rng>(&'a self, rng: &'r mut R) -> Shuffled<'a, 'r, R> {
        Shuffled {
            ids: &self.normal,
            // Indices, not ids: reading in a random order takes no reference counts.
            order: (0..self.normal.len()).collect(),
            next: 0,
            rng,
        }
    }

    /// The order in which candidate parents are looked at: every peer on a seed host, then
    /// the normal peers at random (decisions and top-ups read it until enough qualify).
    pub fn sampling_order<'a, R: Rng>(&'a self, rng: &'a mut R) -> impl Iterator<Item = &'a Id> {
        self.seeds.iter().chain(self.shuffled_normal(rng))
    }
}

/// See [`TaskPeers::shuffled_normal`].
pub struct Shuffled<'a, 'r, R> {
    ids: &'a [Id],
    order: Vec<usize>,
    next: usize,
    rng: &'r mut R,
}

impl<'a, R: Rng> Iterator for Shuffled<'a, '_, R> {
    type Item = &'a Id;

    fn next(&mut self) -> Option<&'a Id> {
        let at = self.next;
        if at >= self.order.len() {
            return None;
        }
        let pick = self.rng.random_range(at..self.order.len());
        self.order.swap(at, pick);
        self.next += 1;
        self.ids.get(self.order[at])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.order.len() - self.next;
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn ids(n: usize) -> Vec<Id> {
        (0..n).map(|i| Id::from(format!("p{i}"))).collect()
    }

    #[test]
    fn peers_are_added_removed_and_listed_seeds_first() {
        let mut peers = TaskPeers::default();
        for id in ids(4) {
            peers.insert(id, false);
        }
        peers.insert("seed".into(), true);
        assert_eq!(peers.len(), 5);
        assert_eq!(peers.iter().next().map(|id| &**id), Some("seed"));
        assert_eq!(peers.seeds(), [Id::from("seed")]);
        assert!(peers.remove("p1") && !peers.remove("p1"));
        assert!(peers.remove("seed"));
        assert_eq!(peers.seeds.capacity(), 0, "the emptied vector was kept");
        let left: BTreeSet<&str> = peers.iter().map(|id| &**id).collect();
        assert_eq!(left, BTreeSet::from(["p0", "p2", "p3"]));
        for id in ["p0", "p2", "p3"] {
            assert!(peers.remove(id));
        }
        assert!(peers.is_empty());
    }

    #[test]
    fn a_shuffle_read_to_the_end_gives_every_peer_once() {
        let mut peers = TaskPeers::default();
        for id in ids(50) {
            peers.insert(id, false);
        }
        peers.insert("seed".into(), true);
        let mut rng = rand::rng();
        let seen: Vec<&str> = peers.shuffled_normal(&mut rng).map(|id| &**id).collect();
        assert_eq!(seen.len(), 50);
        let unique: BTreeSet<&str> = seen.iter().copied().collect();
        assert_eq!(unique.len(), 50);
        assert!(!unique.contains("seed"), "seeds are apart");
    }

    /// The first pick of a shuffle is every peer about equally often: a decision that stops
    /// early still samples the whole task, not its first peers.
    #[test]
    fn an_early_stop_samples_the_whole_task() {
        let mut peers = TaskPeers::default();
        for id in ids(10) {
            peers.insert(id, false);
        }
        let mut rng = rand::rng();
        let mut firsts: HashMap<&str, u32> = HashMap::new();
        for _ in 0..10_000 {
            let first = peers.shuffled_normal(&mut rng).next().map(|id| &**id);
            *firsts.entry(first.unwrap_or_default()).or_default() += 1;
        }
        assert_eq!(firsts.len(), 10, "{firsts:?}");
        // 1,000 expected each; 700 is over nine standard deviations away.
        assert!(firsts.values().all(|&n| n > 700), "{firsts:?}");
    }
}
