//! One writer per piece at a time, and how far a write in progress has come.
//!
//! A piece's bytes are checked as they are written, so a second writer of the same span (a
//! fetch moved to a faster parent, a ranged job and the whole-task job asking for the same
//! piece) must not overwrite them between the check and the record: it waits, then finds the
//! piece recorded and reads nothing.
//!
//! Every write of a task with a known layout publishes its progress, tagged with where its
//! bytes come from. Origin bytes need no check (the origin is the source of truth), so a
//! reader waiting for the piece (the proxy answering a byte range) may send the bytes already
//! written. A parent's bytes are unverified until the piece's digest is checked: only the
//! piece server's cut-through forwarding shows them, to Damselfly children that check the
//! piece themselves and learn at the end whether this write was recorded
//! ([`WriteState::recorded`]) or abandoned (the channel closes without it).

use damselfly_core::RelayPath;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

type PieceKey = (String, u32);

/// Where the bytes of a write come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSource {
    /// The origin: whatever is written is what the task holds.
    Origin,
    /// A parent's recorded copy: unverified until the piece's digest is checked and the
    /// piece recorded.
    Parent,
    /// A parent forwarding the piece while it still arrives there, on a relay path short
    /// enough to forward it further (see `damselfly_core::relay`).
    Relayed,
    /// As [`Self::Relayed`], at the end of its relay path: shown only to
    /// [`crate::Storage::piece_write_progress`], forwarded once recorded.
    RelayEnd,
}

/// The sources whose writes cut-through forwarding may show and announce.
pub(crate) const FORWARDABLE: [WriteSource; 3] = [
    WriteSource::Origin,
    WriteSource::Parent,
    WriteSource::Relayed,
];

/// How far one write of a piece has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteState {
    /// The bytes up to this file offset are in the file, in order.
    pub written_to: u64,
    /// The piece passed its check and is recorded: this write's bytes are the piece's.
    pub recorded: bool,
}

/// A write in progress, as readers see it.
#[derive(Clone)]
struct Published {
    source: WriteSource,
    state: watch::Receiver<WriteState>,
    /// The stores the bytes came through while arriving (empty unless relayed).
    path: RelayPath,
}

pub(crate) struct PieceWriters {
    busy: Mutex<HashSet<PieceKey>>,
    released: Notify,
    /// Writes in progress that publish how far they have come.
    progress: Mutex<HashMap<PieceKey, Published>>,
    /// Bumped whenever a write starts publishing, so waiting readers look again.
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

    /// The progress of a write of piece `number` of `task_id` whose bytes come from `sources`.
    pub(crate) fn progress(
        &self,
        task_id: &str,
        number: u32,
        sources: &[WriteSource],
    ) -> Option<watch::Receiver<WriteState>> {
        self.progress_on_path(task_id, number, sources)
            .map(|(state, _)| state)
    }

    /// [`Self::progress`] with the relay path of the write's bytes.
    pub(crate) fn progress_on_path(
        &self,
        task_id: &str,
        number: u32,
        sources: &[WriteSource],
    ) -> Option<(watch::Receiver<WriteState>, RelayPath)> {
        lock(&self.progress)
            .get(&(task_id.to_string(), number))
            .filter(|published| sources.contains(&published.source))
            .map(|published| (published.state.clone(), published.path.clone()))
    }

    /// The pieces of `task_id` being written now from `sources`.
    pub(crate) fn arriving(&self, task_id: &str, sources: &[WriteSource]) -> Vec<u32> {
        lock(&self.progress)
            .iter()
            .filter(|((task, _), published)| task == task_id && sources.contains(&published.source))
            .map(|((_, number), _)| *number)
            .collect()
    }

    /// Changes whenever a write starts publishing its progress.
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
    /// Publishes this write's progress from `start` (the piece's offset).
    pub(crate) fn publish_from(&mut self, start: u64, source: WriteSource, path: RelayPath) {
        let (tx, state) = watch::channel(WriteState {
            written_to: start,
            recorded: false,
        });
        let published = Published {
            source,
            state,
            path,
        };
        lock(&self.writers.progress).insert(self.key.clone(), published);
        self.progress = WriteProgress(Some(tx));
        self.writers.started.send_modify(|n| *n += 1);
    }

    /// The bytes up to file offset `written_to` are in the file (a no-op unless published).
    pub(crate) fn advance(&self, written_to: u64) {
        self.progress.advance(written_to);
    }

    /// The piece this write filled is recorded; readers following it may vouch for it.
    pub(crate) fn recorded(&self) {
        if let Some(progress) = &self.progress.0 {
            progress.send_modify(|state| state.recorded = true);
        }
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
pub struct WriteProgress(Option<watch::Sender<WriteState>>);

impl WriteProgress {
    /// The bytes up to file offset `written_to` are in the file, in order.
    pub fn advance(&self, written_to: u64) {
        if let Some(progress) = &self.0 {
            progress.send_if_modified(|state| {
                let moved = written_to > state.written_to;
                state.written_to = state.written_to.max(written_to);
                moved
            });
        }
    }

    /// Whether a reader follows this write (a cut-through child, a range reader): one besides
    /// the published entry's own receiver, which the progress map keeps while the write runs.
    pub fn followed(&self) -> bool {
        self.0.as_ref().is_some_and(|tx| tx.receiver_count() > 1)
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
    async fn progress_is_shown_by_source_and_ends_with_the_writer() {
        const ORIGIN: &[WriteSource] = &[WriteSource::Origin];
        const ANY: &[WriteSource] = &[WriteSource::Origin, WriteSource::Parent];
        let writers = Arc::new(PieceWriters::default());
        let mut started = writers.watch_started();
        let mut checked = writers.hold("t", 0).await;
        checked.publish_from(0, WriteSource::Parent, RelayPath::default());
        checked.advance(100);
        assert!(
            writers.progress("t", 0, ORIGIN).is_none(),
            "a parent's bytes are not shown as origin bytes"
        );
        let mut parent = writers.progress("t", 0, ANY).expect("shown to cut-through");
        assert_eq!(writers.arriving("t", ANY), vec![0]);
        assert!(writers.arriving("u", ANY).is_empty());
        assert_eq!(parent.borrow_and_update().written_to, 100);
        drop(checked);
        assert!(
            parent.changed().await.is_err(),
            "abandoned: closed unrecorded"
        );
        assert!(!parent.borrow().recorded);
        started.borrow_and_update();

        let mut origin = writers.hold("t", 0).await;
        origin.publish_from(4096, WriteSource::Origin, RelayPath::default());
        assert!(started.has_changed().unwrap());
        let mut seen = writers.progress("t", 0, ORIGIN).expect("published");
        assert_eq!(seen.borrow_and_update().written_to, 4096);
        origin.advance(8192);
        origin.progress_handle().advance(6000); // never backwards
        assert_eq!(seen.borrow_and_update().written_to, 8192);
        origin.recorded();
        assert!(seen.borrow_and_update().recorded);
        drop(origin);
        assert!(seen.changed().await.is_err(), "the writer is gone");
        assert!(writers.progress("t", 0, ANY).is_none());
        assert!(writers.arriving("t", ANY).is_empty());

        let path = RelayPath::default().then(&damselfly_core::StoreId::random());
        let mut relayed = writers.hold("t", 1).await;
        relayed.publish_from(0, WriteSource::Relayed, path.clone());
        assert_eq!(writers.arriving("t", &FORWARDABLE), vec![1]);
        let (_, shown) = writers.progress_on_path("t", 1, &FORWARDABLE).unwrap();
        assert_eq!(shown, path, "forwarded with the path its bytes came by");
        drop(relayed);

        let mut last = writers.hold("t", 2).await;
        last.publish_from(0, WriteSource::RelayEnd, path);
        assert!(
            writers.arriving("t", &FORWARDABLE).is_empty(),
            "bytes at the end of their relay path are not forwarded again"
        );
        assert!(writers.progress("t", 2, &FORWARDABLE).is_none());
        assert!(writers.progress("t", 2, &[WriteSource::RelayEnd]).is_some());
    }
}
