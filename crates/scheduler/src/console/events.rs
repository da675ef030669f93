//! Live updates for the console: a bounded broadcast of "this changed" notices, and the
//! server-sent-events stream (`GET /api/v1/events`) each browser holds open.
//!
//! A notice names what changed (a task, a host, or everything); the page fetches the JSON
//! again, a few times a second at most. A browser that falls behind the buffer is told to
//! fetch everything (`resync`) instead of being sent stale notices. Each stream sends a
//! keep-alive comment when idle and ends when the scheduler shuts down.

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Notices buffered per browser before it must resync.
pub const EVENT_BUFFER: usize = 1024;
/// An idle stream sends a comment this often, so proxies and browsers keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Notices sent in one SSE message at most (the rest wait for the next one).
const MAX_BATCH: usize = 256;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Change {
    Task(String),
    Host(String),
    /// Many things at once (a GC sweep, a preheat job).
    All,
}

/// The console's broadcast of changes.
pub struct Events {
    tx: broadcast::Sender<Change>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl Events {
    /// Tells every open console; costs nothing when none is open.
    pub fn publish(&self, change: Change) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(change);
        }
    }

    /// [`Events::publish`], building the notice only when a console is open: the service
    /// tells of a change on every message of every peer.
    pub fn publish_with(&self, change: impl FnOnce() -> Change) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(change());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

/// One browser's stream: the bytes of the SSE body, until `stop` is set.
pub fn stream(
    rx: broadcast::Receiver<Change>,
    stop: watch::Receiver<bool>,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let hello = Bytes::from_static(b"retry: 2000\n\n");
    let first = futures::stream::once(async move { hello });
    let rest = futures::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
        let message = next_message(&mut rx, &mut stop).await?;
        Some((message, (rx, stop)))
    });
    futures::StreamExt::chain(first, rest)
}

/// The next SSE message, or `None` when the stream should end.
async fn next_message(
    rx: &mut broadcast::Receiver<Change>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Bytes> {
    if *stop.borrow() {
        return None;
    }
    let received = tokio::select! {
        received = rx.recv() => received,
        _ = tokio::time::sleep(KEEP_ALIVE) => return Some(Bytes::from_static(b": keep-alive\n\n")),
        () = crate::service::stopped(stop) => return None,
    };
    match received {
        Ok(change) => Some(batch(change, rx)),
        Err(broadcast::error::RecvError::Lagged(_)) => {
            Some(Bytes::from_static(b"event: resync\ndata: {}\n\n"))
        }
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

/// `first` and whatever else is already waiting, each named once.
fn batch(first: Change, rx: &mut broadcast::Receiver<Change>) -> Bytes {
    let mut changes = BTreeSet::from([first]);
    while changes.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(change) => {
                changes.insert(change);
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                changes.insert(Change::All);
            }
            Err(_) => break,
        }
    }
    let data = serde_json::to_string(&changes).unwrap_or_else(|_| "[]".into());
    Bytes::from(format!("event: change\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn changes_arrive_batched_and_the_stream_ends_at_shutdown() {
        let events = Events::default();
        let (stop_tx, stop) = watch::channel(false);
        let mut stream = Box::pin(stream(events.subscribe(), stop));
        assert_eq!(stream.next().await.unwrap(), "retry: 2000\n\n");
        events.publish(Change::Task("t1".into()));
        events.publish(Change::Host("h1".into()));
        events.publish(Change::Task("t1".into()));
        let message = stream.next().await.unwrap();
        assert_eq!(
            message,
            "event: change\ndata: [{\"kind\":\"task\",\"id\":\"t1\"},{\"kind\":\"host\",\"id\":\"h1\"}]\n\n"
        );
        stop_tx.send_replace(true);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_browser_that_falls_behind_is_told_to_resync() {
        let events = Events::default();
        let (_stop_tx, stop) = watch::channel(false);
        let mut stream = Box::pin(stream(events.subscribe(), stop));
        stream.next().await;
        for n in 0..EVENT_BUFFER + 10 {
            events.publish(Change::Task(format!("t{n}")));
        }
        assert_eq!(stream.next().await.unwrap(), "event: resync\ndata: {}\n\n");
    }
}
