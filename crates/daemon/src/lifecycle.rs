//! The daemon's one lifecycle: a cancellation tree and a task tracker for everything it spawns.
//!
//! Shutdown has two steps. *Stop*: servers stop accepting, background loops end, nothing new
//! starts; downloads in flight go on (from their parents, as before). *Abort*, once
//! [`SHUTDOWN_GRACE`] has passed with work still running: in-flight downloads are cancelled
//! and record why. Abort is the root of the tree, so aborting also stops.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// In-flight work gets this long to finish at shutdown before it is aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// After the abort, cancelled work gets this long to record its failure before it is left.
pub const ABORT_WAIT: Duration = Duration::from_secs(2);

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Everything finished within the grace.
    Finished,
    /// Work was still running after the grace and was aborted.
    Aborted,
}

#[derive(Clone)]
pub struct Lifecycle {
    /// Root: cancels in-flight downloads.
    abort: CancellationToken,
    /// Child of `abort`: ends servers and background loops.
    stop: CancellationToken,
    tracker: Tracker,
}

impl Default for Lifecycle {
    fn default() -> Self {
        let abort = CancellationToken::new();
        Self {
            stop: abort.child_token(),
            abort,
            tracker: Tracker::default(),
        }
    }
}

impl Lifecycle {
    /// Begins the shutdown (signal, `--idle-exit`); [`Lifecycle::drain`] finishes it.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Resolves once the daemon stops accepting work: for servers and background loops.
    pub fn stopping(&self) -> WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Resolves once in-flight work must end: for downloads.
    pub fn aborting(&self) -> WaitForCancellationFuture<'_> {
        self.abort.cancelled()
    }

    /// A token cancelled with the abort (or earlier, by its holder): one P2P round's streams.
    pub fn abort_child(&self) -> CancellationToken {
        self.abort.child_token()
    }

    /// Spawns work that shutdown waits for.
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// Stops, lets the tracked work finish within `grace`, then aborts what is left and
    /// waits [`ABORT_WAIT`] for it to record why.
    pub async fn drain(&self, grace: Duration) -> Drained {
        self.stop();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return Drained::Finished;
        }
        tracing::warn!(
            running = self.tracker.len(),
            grace = %humantime::format_duration(grace),
            "work still running after the shutdown grace; aborting it"
        );
        self.abort.cancel();
        if tokio::time::timeout(ABORT_WAIT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(running = self.tracker.len(), "work left behind at shutdown");
        }
        Drained::Aborted
    }
}

/// Counts the tasks spawned through it that are still running (the shape of tokio-util's
/// `TaskTracker`, which needs its `rt` feature: that would rebuild most of the dependency tree).
/// Work spawned during the drain by tracked work (a caller starting a job) is counted before
/// its spawner ends, so the count reaches zero only when all of it is done.
#[derive(Clone, Default)]
struct Tracker {
    inner: Arc<Counter>,
}

#[derive(Default)]
struct Counter {
    running: AtomicUsize,
    idle: Notify,
}

/// Held by one tracked task; its drop counts the task done.
struct Running(Arc<Counter>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.inner.clone());
        tokio::spawn(async move {
            let _running = running;
            work.await
        })
    }

    fn len(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Resolves once no tracked task runs.
    async fn wait(&self) {
        loop {
            let idle = self.inner.idle.notified();
            let mut idle = std::pin::pin!(idle);
            // Registered before the check, so a task ending in between still wakes us.
            idle.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that goes on past the stop and ends on its own is waited for, not aborted.
    #[tokio::test]
    async fn in_flight_work_finishes_within_the_grace() {
        let life = Lifecycle::default();
        let worker = life.clone();
        let handle = life.spawn(async move {
            worker.stopping().await;
            tokio::task::yield_now().await;
            tokio::select! {
                biased;
                _ = worker.aborting() => "aborted",
                _ = std::future::ready(()) => "finished",
            }
        });
        assert_eq!(life.drain(SHUTDOWN_GRACE).await, Drained::Finished);
        assert_eq!(handle.await.unwrap(), "finished");
    }

    /// Work that would never end by itself is aborted once the grace has passed.
    #[tokio::test]
    async fn work_past_the_grace_is_aborted() {
        let life = Lifecycle::default();
        let worker = life.clone();
        let handle = life.spawn(async move {
            tokio::select! {
                _ = worker.aborting() => "aborted",
                _ = std::future::pending::<()>() => "finished",
            }
        });
        assert_eq!(
            life.drain(Duration::from_millis(20)).await,
            Drained::Aborted
        );
        assert_eq!(handle.await.unwrap(), "aborted");
    }
}
