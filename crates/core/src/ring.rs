//! Which scheduler owns a task: the same consistent-hash ring as the official client
//! (one ring node per scheduler `SocketAddr`, key = the first 5 characters of the task ID),
//! so our daemons and official daemons send a task's announcements to the same scheduler.

use hashring::HashRing;
use std::net::SocketAddr;

/// Ring node; its `Hash` must stay a derive over just the address, as upstream's.
#[derive(Debug, Copy, Clone, Hash, PartialEq)]
struct VNode {
    addr: SocketAddr,
}

/// Number of task-ID characters that pick the scheduler.
const TASK_ID_KEY_LEN: usize = 5;

#[derive(Clone)]
pub struct SchedulerRing {
    ring: HashRing<VNode>,
    addrs: Vec<SocketAddr>,
}

impl std::fmt::Debug for SchedulerRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerRing")
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl SchedulerRing {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let mut ring = HashRing::new();
        for &addr in addrs {
            ring.add(VNode { addr });
        }
        Self {
            ring,
            addrs: addrs.to_vec(),
        }
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The scheduler that owns `task_id`, or `None` when the ring is empty.
    pub fn owner(&self, task_id: &str) -> Option<SocketAddr> {
        let key: String = task_id.chars().take(TASK_ID_KEY_LEN).collect();
        self.ring.get(&key).map(|node| node.addr)
    }

    /// Every scheduler in failover order: the owner first, then the others in ring order
    /// of a fresh ring without the ones already tried.
    pub fn failover_order(&self, task_id: &str) -> Vec<SocketAddr> {
        let mut remaining = self.addrs.clone();
        let mut order = Vec::with_capacity(remaining.len());
        while !remaining.is_empty() {
            let Some(next) = SchedulerRing::new(&remaining).owner(task_id) else {
                break;
            };
            remaining.retain(|a| *a != next);
            order.push(next);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_failover_covers_all() {
        let addrs: Vec<SocketAddr> = ["127.0.0.1:8002", "127.0.0.2:8002", "127.0.0.3:8002"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ring = SchedulerRing::new(&addrs);
        let id = "36223cc7a9dcd1e6156e65921abaa135deed989244b09e1af46e284b3e6ad1c2";
        let owner = ring.owner(id).unwrap();
        assert_eq!(SchedulerRing::new(&addrs).owner(id), Some(owner));
        // Same first five characters, same scheduler.
        assert_eq!(ring.owner("36223ffff"), Some(owner));
        let order = ring.failover_order(id);
        assert_eq!(order.len(), 3);
        assert_eq!(order[0], owner);
        assert!(SchedulerRing::new(&[]).owner(id).is_none());
    }
}
