//! One writer per piece at a time. A piece's bytes are checked as they are written, so a
//! second writer of the same span (a fetch moved to a faster parent, a ranged job and the
//! whole-task job asking for the same piece) must not overwrite them between the check and
//! the record: it waits, then finds the piece recorded and reads nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct PieceWriters {
    busy: Mutex<HashSet<(String, u32)>>,
    released: Notify,
}

impl PieceWriters {
    /// Waits until no other writer holds piece `number` of `task_id`, then holds it until the
    /// returned guard drops.
    pub(crate) async fn hold(self: &Arc<Self>, task_id: &str, number: u32) -> PieceWriter {
        let key = (task_id.to_string(), number);
        loop {
            // Registered before the check, so a release between the check and the wait wakes it.
            let released = self.released.notified();
            if self.try_insert(&key) {
                return PieceWriter {
                    writers: Arc::clone(self),
                    key,
                };
            }
            released.await;
        }
    }

    fn try_insert(&self, key: &(String, u32)) -> bool {
        // A poisoned set only means a writer panicked while inserting; its data is still a set.
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(key.clone())
    }
}

/// Holds one piece for writing; dropping it (also when the write is cancelled) lets the next
/// writer in.
pub(crate) struct PieceWriter {
    writers: Arc<PieceWriters>,
    key: (String, u32),
}

impl Drop for PieceWriter {
    fn drop(&mut self) {
        let mut busy = self.writers.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.key);
        drop(busy);
        self.writers.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_writer_of_a_piece_waits_for_the_first() {
        let writers = Arc::new(PieceWriters::default());
        let first = writers.hold("t", 1).await;
        // Another piece of the same task is free.
        let other = writers.hold("t", 2).await;
        let waiting = tokio::spawn({
            let writers = Arc::clone(&writers);
            async move { writers.hold("t", 1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(other);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting writer gets the piece")
            .unwrap();
        drop(second);
        assert!(writers.busy.lock().unwrap().is_empty());
    }
}
