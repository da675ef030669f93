//! A cold byte range answered straight from the origin (issue 12). Through the swarm a cold
//! range waits for a scheduler round and then for the bytes of its piece that come before it
//! (pieces are fetched from their start): about 10 x a direct read. When no peer can serve
//! the range sooner (its job was sent to the origin, or the task's latest range was: see
//! `engine::route`), the proxy asks the origin for exactly the range's bytes and streams them,
//! while the range's job still fetches its pieces and reports them, so other hosts reading the
//! same bytes later take them from this one. The cost is the range's bytes once more at the
//! origin (within the budget of one extra piece per range).
//!
//! Bytes come from whichever side has them first: the pump sends each offset once, in order,
//! from the origin's stream or from storage; if the origin's stream fails, storage goes on.

use crate::engine::route::RangeRoute;
use crate::engine::{Engine, Scope, TaskRequest};
use bytes::Bytes;
use damselfly_transfer::{acquire_all, Backend, RateLimiter, TransferError};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

/// Body chunks of the origin's answer buffered ahead of the client.
const HEDGE_QUEUE: usize = 16;

/// What asking the origin for a range needs: the download's own origin client (its trust),
/// URL, headers (the client's credentials) and the host's origin rate limits.
pub struct HedgeSource {
    backend: Backend,
    url: String,
    headers: Vec<(String, String)>,
    limiters: Vec<RateLimiter>,
}

/// Whether and when a response's range may be read from the origin directly.
pub enum Hedge {
    /// Not for this response: a whole blob, a prefetch (the origin serves the blob once),
    /// back-to-source disabled, `proxy.rangeHedge: false`, or no origin client.
    Off,
    /// Starts once the range's job goes to the origin, or at once when `now`.
    Armed { source: Box<HedgeSource>, now: bool },
    /// The origin's bytes from offset `at` on.
    Running {
        chunks: mpsc::Receiver<Result<Bytes, TransferError>>,
        at: u64,
    },
    /// Finished or failed: storage serves the rest.
    Spent,
}

impl Hedge {
    /// The hedge of a single-range response of `request` (a demand range); `enabled` is the
    /// proxy's setting and the request's own conditions (no prefetch, back-to-source allowed).
    pub fn arm(engine: &Engine, request: &TaskRequest, enabled: bool) -> Hedge {
        if !enabled || request.disable_back_to_source {
            return Hedge::Off;
        }
        let ctx = engine.context();
        let backend = match ctx.backend.with_trust(&request.trust) {
            Ok(backend) => backend,
            Err(error) => {
                debug!(%error, "no origin client for the range; it waits for its pieces");
                return Hedge::Off;
            }
        };
        let source = Box::new(HedgeSource {
            backend,
            url: request.url.clone(),
            headers: request.headers.clone(),
            limiters: vec![
                ctx.limits.download.clone(),
                ctx.limits.back_to_source.clone(),
            ],
        });
        let now = engine.range_route(&request.task_id) == RangeRoute::Origin;
        let mut hedge = Hedge::Armed { source, now };
        // Asked now, the origin's first bytes are on their way while the engine starts; not
        // when the range is here already.
        if let (true, Scope::Range { start, length }) = (now, request.scope) {
            let range = (start, start.saturating_add(length));
            if !stored(engine, &request.task_id, range) {
                hedge.start(true, range);
            }
        }
        hedge
    }

    pub fn is_running(&self) -> bool {
        matches!(self, Hedge::Running { .. })
    }

    /// Starts the origin's stream of `[from, end)` if armed and the moment has come: `decided`
    /// says the range's job went to the origin.
    pub fn start(&mut self, decided: bool, (from, end): (u64, u64)) {
        let due = matches!(self, Hedge::Armed { now, .. } if *now || decided);
        if !due || from >= end {
            return;
        }
        let Hedge::Armed { source, .. } = std::mem::replace(self, Hedge::Spent) else {
            return;
        };
        let (tx, chunks) = mpsc::channel(HEDGE_QUEUE);
        let span = tracing::debug_span!("hedge", from, end);
        tokio::spawn(stream(*source, (from, end), tx).instrument(span));
        debug!(from, end, "hedge: reading the range from the origin");
        *self = Hedge::Running { chunks, at: from };
    }

    /// The next chunk of the origin's stream and its offset; `None` once it ended or failed
    /// (then the hedge is spent). Never resolves unless running.
    pub async fn next(&mut self) -> Option<(u64, Bytes)> {
        let Hedge::Running { chunks, at } = self else {
            return std::future::pending().await;
        };
        match chunks.recv().await {
            Some(Ok(bytes)) => {
                let offset = *at;
                *at += bytes.len() as u64;
                Some((offset, bytes))
            }
            Some(Err(error)) => {
                debug!(%error, "hedge failed; the range waits for its pieces");
                *self = Hedge::Spent;
                None
            }
            None => {
                *self = Hedge::Spent;
                None
            }
        }
    }
}

/// Whether every piece covering `[start, end)` is on this host.
fn stored(engine: &Engine, task_id: &str, (start, end): (u64, u64)) -> bool {
    let storage = &engine.context().storage;
    let Ok(Some(task)) = storage.task(task_id) else {
        return false;
    };
    let end = end.min(task.content_length);
    let wanted = task
        .layout()
        .spans_for_range(start, end.saturating_sub(start))
        .count();
    storage
        .pieces_overlapping(task_id, (start, end), task.piece_length)
        .is_ok_and(|stored| stored.len() == wanted)
}

/// Reads the origin's answer into `tx` until it ends, fails, or the pump is gone (dropping the
/// response closes the connection: no more origin bytes than the pump took, and a few chunks).
async fn stream(
    source: HedgeSource,
    range: (u64, u64),
    tx: mpsc::Sender<Result<Bytes, TransferError>>,
) {
    let mut body = match source
        .backend
        .open_range(&source.url, &source.headers, range)
        .await
    {
        Ok(body) => body,
        Err(error) => {
            let _ = tx.send(Err(error)).await;
            return;
        }
    };
    while let Some(chunk) = body.next().await {
        if let Ok(bytes) = &chunk {
            acquire_all(&source.limiters, bytes.len() as u64).await;
        }
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// The part of a chunk at `offset` that lies at or after `next` (the pump's position).
pub fn unsent(next: u64, offset: u64, bytes: Bytes) -> Option<Bytes> {
    let skip = usize::try_from(next.saturating_sub(offset)).ok()?;
    (skip < bytes.len()).then(|| bytes.slice(skip..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_past_the_pump_are_sent_again() {
        let chunk = Bytes::from_static(b"abcdef");
        assert_eq!(unsent(10, 10, chunk.clone()).unwrap(), "abcdef");
        assert_eq!(unsent(12, 10, chunk.clone()).unwrap(), "cdef");
        assert!(unsent(16, 10, chunk.clone()).is_none(), "all sent already");
        assert!(unsent(20, 10, chunk).is_none());
    }
}
