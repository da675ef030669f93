//! Fast parents for a child whose parents turn out slow.
//!
//! A peer gets its parents when it registers, before anything is measured, so it may be given
//! only hosts that upload at a tenth of the others' rate. The mesh then never helps it: the
//! peers that register later choose their own parents and link back only to those. On the
//! netns bench with half the hosts at 10 Mbit/s up, one fast host kept three slow parents and
//! finished 55 s after every other (bench/netns/sample-slow8). So each piece report of a child
//! checks, at most every [`TOP_UP_INTERVAL`], whether it still has
//! `candidateParentLimit` parents that are not known to be slow, and pushes it the best
//! others (the same mesh push as a back-edge) until it has, within `meshParentLimit`. The
//! slow parents stay: a slow uplink still adds to what the child gets.

use super::*;

/// A host whose measured upload is below this share of the fastest measured host of the task
/// is a slow parent.
pub const SLOW_PARENT_SHARE: f64 = 0.25;
/// How often one child's parents are looked at again.
pub const TOP_UP_INTERVAL: Duration = Duration::from_secs(2);

/// Whether `child`'s parents are due for a look, its host aside (a seed's never are). A
/// child without parents is going to the origin or waiting for its decision.
pub(super) fn is_due(child: &Peer, now: Instant) -> bool {
    child.takes_pushes
        && child.state == PeerState::Running
        && !child.parents.is_empty()
        && child
            .topped_up_at
            .is_none_or(|at| now.saturating_duration_since(at) >= TOP_UP_INTERVAL)
}

impl State {
    /// After a piece report of `child_id`: pushes it fast parents if too few of its normal
    /// parents are fast (see the module doc). The pushes wait in the outbox.
    pub(super) fn top_up_parents(&mut self, child_id: &str, now: Instant) {
        if !self.policy.mesh || !self.is_due_for_top_up(child_id, now) {
            return;
        }
        let fastest = self.fastest_upload_of_task(child_id, now);
        let chosen = fastest.map_or_else(Vec::new, |fastest| {
            self.fast_parents_wanted(child_id, fastest, now)
        });
        let Some(child) = self.peers.get_mut(child_id) else {
            return;
        };
        child.topped_up_at = Some(now);
        let to = child.id.clone();
        for parent_id in chosen {
            let Some(parent_pb) = self.peers.get(&parent_id).map(|p| self.peer_pb(p)) else {
                continue;
            };
            self.add_edge(&parent_id, child_id);
            self.outbox.push(Push {
                to: to.clone(),
                parent: parent_pb,
            });
        }
    }

    fn is_due_for_top_up(&self, child_id: &str, now: Instant) -> bool {
        self.peers
            .get(child_id)
            .is_some_and(|child| is_due(child, now) && !self.is_seed_host(&child.host_id))
    }

    /// The best eligible fast peers to add, none when the child has enough fast parents.
    /// Only a child short of fast parents looks through its task's peers.
    fn fast_parents_wanted(&self, child_id: &str, fastest: u64, now: Instant) -> Vec<Id> {
        let Some(child) = self.peers.get(child_id) else {
            return Vec::new();
        };
        let Some(task) = self.tasks.get(&*child.task_id) else {
            return Vec::new();
        };
        let is_slow = |peer: &Peer| {
            self.hosts
                .get(&*peer.host_id)
                .and_then(|h| h.upload.bits_per_second(now))
                .is_some_and(|rate| (rate as f64) < fastest as f64 * SLOW_PARENT_SHARE)
        };
        let normal: Vec<&Peer> = child
            .parents
            .keys()
            .filter_map(|id| self.peer(id))
            .filter(|p| !self.is_seed_host(&p.host_id))
            .collect();
        let fast = normal.iter().filter(|p| !is_slow(p)).count();
        let want = self
            .policy
            .candidate_parent_limit
            .saturating_sub(fast)
            .min(self.policy.mesh_parent_limit.saturating_sub(normal.len()));
        if want == 0 {
            return Vec::new();
        }
        // `rank_parents` scores a random `filterParentLimit` of the pool: the task's peers are
        // read in a random order until that many qualify (`task_peers`), not all of them.
        let mut rng = rand::rng();
        let candidates = task.peers.sampling_order(&mut rng);
        let pool: Vec<&Peer> = candidates
            .filter_map(|id| self.peer(id))
            .filter(|p| !self.is_seed_host(&p.host_id) && !child.parents.contains_key(&p.id))
            .filter(|p| !is_slow(p) && self.is_eligible_parent(child, p))
            .take(self.policy.filter_parent_limit)
            .collect();
        self.rank_parents(child, task, pool, want, now)
    }

    /// The best measured upload among the normal hosts of `child_id`'s task, bits per
    /// second, measured again once its last measure is [`TOP_UP_INTERVAL`] old: a task's
    /// children all ask for it, and each answer walks the task's peers.
    fn fastest_upload_of_task(&mut self, child_id: &str, now: Instant) -> Option<u64> {
        let task_id = self.peers.get(child_id)?.task_id.clone();
        let task = self.tasks.get(&*task_id)?;
        if let Some((at, fastest)) = task.fastest_upload {
            if now.saturating_duration_since(at) < TOP_UP_INTERVAL {
                return fastest;
            }
        }
        let fastest = task
            .peers
            .iter()
            .filter_map(|id| self.peer(id))
            .filter(|p| !self.is_seed_host(&p.host_id))
            .filter_map(|p| self.hosts.get(&*p.host_id))
            .filter_map(|h| h.upload.bits_per_second(now))
            .max();
        if let Some(task) = self.tasks.get_mut(&*task_id) {
            task.fastest_upload = Some((now, fastest));
        }
        fastest
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{piece_from, running_mesh};
    use super::*;

    #[test]
    fn a_child_with_only_slow_parents_is_pushed_fast_ones() {
        // p0..p5 run; p1's parents are p4 and p5, whose hosts upload at 10 Mbit/s, while
        // p0's host uploads at 100 (all measured from piece reports). p0 has a parent of its
        // own (p2), so it has pieces to give.
        let mut s = running_mesh(6);
        let t0 = Instant::now();
        s.add_edge("p4", "p1");
        s.add_edge("p5", "p1");
        s.add_edge("p2", "p0");
        for i in 0..4u32 {
            let now = t0 + Duration::from_millis(336 * u64::from(i + 1));
            s.piece_finished("p2", &piece_from("p0", i, 336), now)
                .unwrap();
        }
        let now = t0 + Duration::from_secs(4);
        s.piece_finished("p3", &piece_from("p4", 9, 3355), now)
            .unwrap();
        s.piece_finished("p3", &piece_from("p5", 10, 3355), now)
            .unwrap();
        s.take_pushes();
        s.piece_finished("p1", &piece_from("p4", 11, 3355), now)
            .unwrap();
        let pushes = s.take_pushes();
        let added: Vec<&str> = pushes.iter().map(|p| p.parent.id.as_str()).collect();
        assert!(pushes.iter().all(|p| &*p.to == "p1"), "{pushes:?}");
        assert!(
            added.contains(&"p0"),
            "the measured fast host is pushed: {added:?}"
        );
        assert!(
            !added.contains(&"p4") && !added.contains(&"p5"),
            "{added:?}"
        );
        assert!(s.peer("p1").unwrap().parents.contains_key("p0"));
        // Not again within the interval, and not once it has enough fast parents.
        s.piece_finished("p1", &piece_from("p4", 12, 3355), now)
            .unwrap();
        assert!(s.take_pushes().is_empty());
    }

    #[test]
    fn a_child_with_fast_parents_is_left_alone() {
        let mut s = running_mesh(5);
        let t0 = Instant::now();
        for parent in ["p0", "p2", "p3"] {
            s.add_edge(parent, "p1");
        }
        for i in 0..4u32 {
            let now = t0 + Duration::from_millis(336 * u64::from(i + 1));
            s.piece_finished("p1", &piece_from("p0", i, 336), now)
                .unwrap();
        }
        // Unmeasured parents (p2, p3) count as fast: nothing is pushed.
        assert!(s.take_pushes().is_empty());
    }
}
