//! One writer per piece at a time, and how far an origin write has come.
//!
//! A piece's bytes are checked as they are written, so a second writer of the same span (a
//! fetch moved to a faster parent, a ranged job and the whole-task job asking for the same
//! piece) must not overwrite them between the check and the record: it waits, then finds the
//! piece recorded and reads nothing.
//!
//! A write of origin bytes (which need no check: the origin is the source of truth) publishes
//! its progress, so a reader waiting for the piece (the proxy answering a byte range) can send
//! the bytes already written instead of waiting for the whole piece. Writes of a parent's
//! bytes never publish: they are unverified until the piece's digest is checked.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

type PieceKey = (String, u32);

pub(crate) struct PieceWriters {
    busy: Mutex<HashSet<PieceKey>>,
    released: Notify,
    /// Origin writes in progress: the file offset their bytes are written up to, in order.
    progress: Mutex<HashMap<PieceKey, watch::Receiver<u64>>>,
    /// Bumped whenever an origin write starts publishing, so waiting readers look again.
    started: watch::Sender<u64>,
}

impl Default for PieceWriters {
    fn default() -> Self {
        Self {
            busy: Mutex::default(),
            released: Notify::new(),
            progress: Mutex::default(),
            started: watch::channel(0).0,
        }
    }
}

/// A poisoned lock only means a writer panicked while holding it; the maps are still whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl PieceWriters {
    /// Waits until no other writer holds piece `number` of `task_id`, then holds it until the
    /// returned guard drops.
    pub(crate) async fn hold(self: &Arc<Self>, task_id: &str, number: u32) -> PieceWriter {
        let key = (task_id.to_string(), number);
        loop {
            // Registered before the check, so a release between the check and the wait wakes it.
            let released = self.released.notified();
            if lock(&self.busy).insert(key.clone()) {
                return PieceWriter {
                    writers: Arc::clone(self),
                    key,
                    progress: WriteProgress(None),
                };
            }
            released.await;
        }
    }

    /// The progress of an origin write of piece `number` of `task_id`, if one is running.
    pub(crate) fn progress(&self, task_id: &str, number: u32) -> Option<watch::Receiver<u64>> {
        lock(&self.progress)
            .get(&(task_id.to_string(), number))
            .cloned()
    }

    /// Changes whenever an origin write starts publishing its progress.
    pub(crate) fn watch_started(&self) -> watch::Receiver<u64> {
        self.started.subscribe()
    }
}

/// Holds one piece for writing; dropping it (also when the write is cancelled) lets the next
/// writer in and ends its published progress.
pub(crate) struct PieceWriter {
    writers: Arc<PieceWriters>,
    key: PieceKey,
    progress: WriteProgress,
}

impl PieceWriter {
    /// Publishes this write's progress from `start` (the piece's offset): for origin bytes only.
    pub(crate) fn publish_from(&mut self, start: u64) {
        let (tx, rx) = watch::channel(start);
        lock(&self.writers.progress).insert(self.key.clone(), rx);
        self.progress = WriteProgress(Some(tx));
        self.writers.started.send_modify(|n| *n += 1);
    }

    /// The bytes up to file offset `written_to` are in the file (a no-op unless published).
    pub(crate) fn advance(&self, written_to: u64) {
        self.progress.advance(written_to);
    }

    /// A handle a blocking writer outside this crate reports its progress through.
    pub(crate) fn progress_handle(&self) -> WriteProgress {
        self.progress.clone()
    }
}

impl Drop for PieceWriter {
    fn drop(&mut self) {
        if self.progress.0.take().is_some() {
            lock(&self.writers.progress).remove(&self.key);
        }
        lock(&self.writers.busy).remove(&self.key);
        self.writers.released.notify_waiters();
    }
}

/// How a writer that moves a piece's bytes itself (`Storage::write_piece_with`) tells readers
/// how far it has come; silent for a write that does not publish (and by default).
#[derive(Clone, Default)]
pub struct WriteProgress(Option<watch::Sender<u64>>);

impl WriteProgress {
    /// The bytes up to file offset `written_to` are in the file, in order.
    pub fn advance(&self, written_to: u64) {
        if let Some(progress) = &self.0 {
            progress.send_if_modified(|at| {
                let moved = written_to > *at;
                *at = (*at).max(written_to);
                moved
            });
        }
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
        assert!(lock(&writers.busy).is_empty());
    }

    #[tokio::test]
    async fn only_published_writes_show_progress_and_it_ends_with_the_writer() {
        let writers = Arc::new(PieceWriters::default());
        let mut started = writers.watch_started();
        let checked = writers.hold("t", 0).await;
        checked.advance(100);
        assert!(
            writers.progress("t", 0).is_none(),
            "a parent's bytes are never shown"
        );
        drop(checked);

        let mut origin = writers.hold("t", 0).await;
        origin.publish_from(4096);
        assert!(started.has_changed().unwrap());
        started.borrow_and_update();
        let mut seen = writers.progress("t", 0).expect("published");
        assert_eq!(*seen.borrow_and_update(), 4096);
        origin.advance(8192);
        origin.progress_handle().advance(6000); // never backwards
        assert_eq!(*seen.borrow_and_update(), 8192);
        drop(origin);
        assert!(seen.changed().await.is_err(), "the writer is gone");
        assert!(writers.progress("t", 0).is_none());
    }
}
