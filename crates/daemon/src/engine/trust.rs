//! The trusted piece digests a child checks its parents' pieces against (DESIGN.md "Pieces
//! nobody can forge"): the trusted (`blake3:`) digests the back-to-source peers reported,
//! asked of the task's scheduler when a piece without one is about to be fetched.

use crate::context::Context;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::debug;

/// Shortest time between two StatTask calls of one download: a child fetching from parents
/// asks at most this often, whatever its concurrency, and pieces fetched in between without a
/// known digest are checked by the parent's crc32 (as with official schedulers).
pub const MIN_DIGEST_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Where this download's trusted digests come from.
enum Source {
    /// The scheduler keeps them (it said so when the AnnouncePeer stream opened).
    Scheduler { ctx: Context, task_id: String },
    /// No trusted source: parents' pieces are checked by their crc32 only.
    Nothing,
}

pub struct TrustedDigests {
    source: Source,
    known: Mutex<HashMap<u32, String>>,
    /// When the scheduler was last asked; held across the call, so concurrent fetches wait
    /// for one answer instead of each asking.
    asked: tokio::sync::Mutex<Option<Instant>>,
}

impl TrustedDigests {
    pub fn from_scheduler(ctx: Context, task_id: String) -> Self {
        Self::new(Source::Scheduler { ctx, task_id })
    }

    pub fn none() -> Self {
        Self::new(Source::Nothing)
    }

    fn new(source: Source) -> Self {
        Self {
            source,
            known: Mutex::new(HashMap::new()),
            asked: tokio::sync::Mutex::new(None),
        }
    }

    fn lookup(&self, number: u32) -> Option<String> {
        self.known.lock().ok()?.get(&number).cloned()
    }

    /// The trusted digest of piece `number`, asking the scheduler again when it is not known
    /// yet (at most every [`MIN_DIGEST_REFRESH_INTERVAL`]); `None` when nobody vouches for it.
    pub async fn digest_of(&self, number: u32) -> Option<String> {
        if let Some(digest) = self.lookup(number) {
            return Some(digest);
        }
        let Source::Scheduler { ctx, task_id } = &self.source else {
            return None;
        };
        let mut asked = self.asked.lock().await;
        // Another fetch may have asked while this one waited.
        if let Some(digest) = self.lookup(number) {
            return Some(digest);
        }
        if asked.is_some_and(|at| at.elapsed() < MIN_DIGEST_REFRESH_INTERVAL) {
            return None;
        }
        *asked = Some(Instant::now());
        match ctx
            .schedulers
            .trusted_piece_digests(&ctx.host.id, task_id)
            .await
        {
            Ok(fresh) => {
                debug!(
                    count = fresh.len(),
                    "trusted piece digests from the scheduler"
                );
                if let Ok(mut known) = self.known.lock() {
                    known.extend(fresh);
                }
            }
            Err(error) => debug!(%error, "cannot get trusted piece digests"),
        }
        self.lookup(number)
    }
}
