//! Super-seeding: how a seed peer spends its uplink.
//!
//! A seed's uplink is usually the scarcest link of a swarm (it sits next to the origin), so
//! each piece should leave the seed about once and then spread between the children. If the
//! seed's `SyncPieces` stream shows every child every piece, children that start together pick
//! the same pieces from the seed and its uplink carries several copies of each. So a seed
//! shows each child, besides the pieces that already left the seed once (public), only a
//! couple of pieces of its own that no other child was given yet. A piece becomes public when
//! its first upload completes, or after [`RATION_RELEASE_AFTER`] if the child it was given to
//! never fetched it; a child's unfetched pieces are given to others when its stream ends.
//!
//! This only shapes what the seed announces, never what it serves: a child that asks for a
//! piece it learned about elsewhere still gets it, and official Dragonfly children see a
//! valid stream (a seed that is still downloading announces pieces gradually too).

use dragonfly_api::dfdaemon::v2::SyncPiecesResponse;
use futures::{Stream, StreamExt};
use rand::seq::IteratorRandom;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Pieces a child holds exclusively (given to it, not yet uploaded) at a time. Two keep the
/// child's connection to the seed busy while one of them finishes.
pub const RATION_EXCLUSIVE_PER_CHILD: usize = 2;
/// A given piece the child has not fetched by then becomes public anyway.
pub const RATION_RELEASE_AFTER: Duration = Duration::from_secs(30);
/// How often a held-back stream looks again for pieces it may show.
pub const RATION_TICK: Duration = Duration::from_millis(50);

type Item = Result<SyncPiecesResponse, tonic::Status>;
type Inner = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// Who got which piece first, per task.
#[derive(Default)]
pub struct SeedRation {
    tasks: Mutex<HashMap<String, TaskRation>>,
}

#[derive(Default)]
struct TaskRation {
    /// Piece → the child it was given to, and when.
    given: HashMap<u32, (String, Instant)>,
    /// Pieces uploaded at least once.
    uploaded: HashSet<u32>,
    /// Open streams; the entry goes when the last one ends.
    streams: usize,
}

impl TaskRation {
    fn is_public(&self, number: u32, now: Instant) -> bool {
        self.uploaded.contains(&number)
            || self
                .given
                .get(&number)
                .is_some_and(|(_, at)| now.duration_since(*at) >= RATION_RELEASE_AFTER)
    }

    fn exclusive_of(&self, child: &str, now: Instant) -> usize {
        self.given
            .iter()
            .filter(|(n, (c, _))| c == child && !self.is_public(**n, now))
            .count()
    }
}

impl SeedRation {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The Vortex server finished sending `number` of `task_id` to someone.
    pub fn uploaded(&self, task_id: &str, number: u32) {
        self.with_tasks(|tasks| {
            if let Some(task) = tasks.get_mut(task_id) {
                task.uploaded.insert(number);
            }
        });
    }

    /// Wraps a seed's SyncPieces stream to `child` so it announces rationed pieces.
    pub fn wrap(
        self: &Arc<Self>,
        task_id: String,
        child: String,
        inner: impl Stream<Item = Item> + Send + 'static,
    ) -> impl Stream<Item = Item> + Send + 'static {
        self.with_tasks(|tasks| tasks.entry(task_id.clone()).or_default().streams += 1);
        let state = Rationed {
            ration: Arc::clone(self),
            task_id,
            child,
            inner: Box::pin(inner),
            inner_done: false,
            held: BTreeMap::new(),
        };
        futures::stream::unfold(state, |mut state| async move {
            state.next().await.map(|item| (item, state))
        })
    }

    fn with_tasks<R>(&self, f: impl FnOnce(&mut HashMap<String, TaskRation>) -> R) -> R {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut tasks)
    }

    /// Takes from `held` the next piece `child` may be shown, giving it one if it has room.
    fn pick(
        &self,
        task_id: &str,
        child: &str,
        held: &mut BTreeMap<u32, SyncPiecesResponse>,
    ) -> Option<SyncPiecesResponse> {
        let now = Instant::now();
        self.with_tasks(|tasks| {
            let task = tasks.entry(task_id.to_string()).or_default();
            let shown = held.keys().copied().find(|&n| {
                task.is_public(n, now) || task.given.get(&n).is_some_and(|(c, _)| c == child)
            });
            if let Some(number) = shown {
                return held.remove(&number);
            }
            if task.exclusive_of(child, now) >= RATION_EXCLUSIVE_PER_CHILD {
                return None;
            }
            // A random unclaimed piece, so children spread over the task.
            let number = held
                .keys()
                .copied()
                .filter(|n| !task.given.contains_key(n))
                .choose(&mut rand::rng())?;
            task.given.insert(number, (child.to_string(), now));
            held.remove(&number)
        })
    }

    /// A child's stream ended: pieces it was given but never fetched go back to the pool.
    fn stream_ended(&self, task_id: &str, child: &str) {
        self.with_tasks(|tasks| {
            let Some(task) = tasks.get_mut(task_id) else {
                return;
            };
            task.streams = task.streams.saturating_sub(1);
            if task.streams == 0 {
                tasks.remove(task_id);
                return;
            }
            let uploaded = task.uploaded.clone();
            task.given
                .retain(|n, (c, _)| c != child || uploaded.contains(n));
        });
    }
}

/// One child's rationed stream.
struct Rationed {
    ration: Arc<SeedRation>,
    task_id: String,
    child: String,
    inner: Inner,
    inner_done: bool,
    /// Pieces the seed has that this child was not shown yet.
    held: BTreeMap<u32, SyncPiecesResponse>,
}

impl Rationed {
    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(piece) = self.ration.pick(&self.task_id, &self.child, &mut self.held) {
                return Some(Ok(piece));
            }
            if self.inner_done && self.held.is_empty() {
                return None;
            }
            tokio::select! {
                item = self.inner.next(), if !self.inner_done => match item {
                    Some(Ok(piece)) => {
                        self.held.insert(piece.number, piece);
                    }
                    Some(Err(status)) => return Some(Err(status)),
                    None => self.inner_done = true,
                },
                () = tokio::time::sleep(RATION_TICK) => {}
            }
        }
    }
}

impl Drop for Rationed {
    fn drop(&mut self) {
        self.ration.stream_ended(&self.task_id, &self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(number: u32) -> Item {
        Ok(SyncPiecesResponse {
            number,
            ..Default::default()
        })
    }

    async fn take(stream: &mut (impl Stream<Item = Item> + Unpin), n: usize) -> Vec<u32> {
        let mut got = Vec::new();
        for _ in 0..n {
            let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
            match next {
                Ok(Some(Ok(p))) => got.push(p.number),
                _ => break,
            }
        }
        got
    }

    #[tokio::test]
    async fn children_get_distinct_pieces_until_they_leave_the_seed() {
        let ration = SeedRation::new();
        let all = || futures::stream::iter((0..8).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let first_a = take(&mut a, 3).await;
        let first_b = take(&mut b, 3).await;
        assert_eq!(first_a.len(), RATION_EXCLUSIVE_PER_CHILD, "{first_a:?}");
        assert_eq!(first_b.len(), RATION_EXCLUSIVE_PER_CHILD, "{first_b:?}");
        assert!(
            first_a.iter().all(|n| !first_b.contains(n)),
            "{first_a:?} {first_b:?}"
        );
        // A's first piece left the seed: B may see it now, and A gets a new one of its own.
        ration.uploaded("t", first_a[0]);
        let next_b = take(&mut b, 1).await;
        assert_eq!(next_b, vec![first_a[0]]);
        let next_a = take(&mut a, 2).await;
        assert_eq!(next_a.len(), 1, "{next_a:?}");
        assert!(!first_b.contains(&next_a[0]));
    }

    #[tokio::test]
    async fn a_departed_child_returns_its_pieces() {
        let ration = SeedRation::new();
        let all = || futures::stream::iter((0..2).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        assert_eq!(take(&mut a, 2).await.len(), 2);
        assert!(take(&mut b, 1).await.is_empty(), "A holds both pieces");
        drop(a);
        let mut got = take(&mut b, 2).await;
        got.sort_unstable();
        assert_eq!(got, vec![0, 1]);
        // The stream ends once everything was shown and the source is done.
        assert!(b.next().await.is_none());
    }
}
