//! Wake-ups for peers waiting for a parent, by task.
//!
//! A peer whose scheduling round found no parent waits for its task's swarm to change (a peer
//! registered, started, landed a piece or finished) instead of sitting out a whole
//! `retryInterval`. Only its own task's changes can give it a parent, so the wake-ups are
//! sharded by task: with one wake-up for the whole scheduler, every message of every peer
//! woke every waiting peer of every task, and each ran a round under the state lock, so the
//! work grew with reports × waiting peers. Tasks that share a shard wake each other, which
//! costs a spare round and nothing else.

use tokio::sync::Notify;

/// Wake-up shards; a power of two well above the tasks usually downloading at once.
pub const WAKE_SHARDS: usize = 1024;

/// One `Notify` per shard of tasks.
pub struct Wakers {
    shards: Box<[Notify]>,
}

impl Default for Wakers {
    fn default() -> Self {
        Self {
            shards: (0..WAKE_SHARDS).map(|_| Notify::new()).collect(),
        }
    }
}

impl Wakers {
    /// The wake-up the peers of `task_id` wait on.
    pub fn of(&self, task_id: &str) -> &Notify {
        // FNV-1a, not SipHash: every message of every peer picks a shard. `DefaultHasher`
        // was unkeyed too, so a client choosing task ids that share a shard could do so
        // before as well, and all it gets is the spare rounds of the peers it shares with.
        let hash = task_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        // The modulo keeps the index in range, so the lookup cannot miss.
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    /// Wakes the peers waiting in `task_id`'s shard.
    pub fn changed(&self, task_id: &str) {
        self.of(task_id).notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// A task whose shard differs from `task_id`'s.
    fn other_than(wakers: &Wakers, task_id: &str) -> String {
        (0..)
            .map(|n| format!("other-{n}"))
            .find(|t| !std::ptr::eq(wakers.of(t), wakers.of(task_id)))
            .unwrap_or_default()
    }

    #[test]
    fn a_change_wakes_only_the_peers_of_its_task() {
        let wakers = Wakers::default();
        let waiting = wakers.of("task-a").notified();
        futures::pin_mut!(waiting);
        waiting.as_mut().enable();
        wakers.changed(&other_than(&wakers, "task-a"));
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "another task's change woke the peer"
        );
        wakers.changed("task-a");
        assert!(
            waiting.now_or_never().is_some(),
            "its own task's change did not"
        );
    }
}
