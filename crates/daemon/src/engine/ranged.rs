//! A range's job: bring the pieces covering it to this host, first and only. It claims the
//! pieces no other range of the task is fetching and fetches those (parents that hold them,
//! else ranged origin GETs of just those pieces), then waits for the rest to land from the
//! ranges that claimed them. See [`super::demand`] for the priority rules.

use super::job::{fetch_missing, not_stored, JobCtx};
use super::origin;
use super::route::RangeRoute;
use crate::error::DaemonError;
use damselfly_core::{PieceLayout, PieceSpan};
use damselfly_storage::PieceEvent;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

/// Fetches `wanted` (the range's missing pieces) or waits for them; returns once every one
/// is stored.
pub async fn fetch(
    job: &JobCtx<'_>,
    layout: PieceLayout,
    wanted: BTreeMap<u32, PieceSpan>,
) -> Result<(), DaemonError> {
    // Subscribed before claiming: a piece landing in between is not missed.
    let mut landed = job.ctx.storage.subscribe(job.task_id());
    let mut claims = job.demand.subscribe();
    let numbers: BTreeSet<u32> = wanted.keys().copied().collect();
    let claim = job.demand.claim(&numbers);
    if !claim.pieces.is_empty() {
        let mine = only(&wanted, &claim.pieces);
        debug!(pieces = ?claim.pieces, "fetching the range's pieces");
        fetch_missing(job, layout, mine).await?;
        if job.origin.get().is_none() {
            // Parents held them: the next range of the task asks the swarm first too.
            let now = std::time::Instant::now();
            job.routes.record(job.task_id(), RangeRoute::Peers, now);
        }
    }
    drop(claim);
    loop {
        let still = not_stored(job, &layout, &wanted)?;
        if still.is_empty() {
            return Ok(());
        }
        let orphans: BTreeSet<u32> = still
            .keys()
            .copied()
            .filter(|&n| !job.demand.is_claimed(n))
            .collect();
        if !orphans.is_empty() {
            fetch_orphans(job, &still, &orphans).await?;
            continue;
        }
        tokio::select! {
            event = landed.recv() => match event {
                Ok(PieceEvent::TaskFailed) | Err(RecvError::Closed) => {
                    return Err(DaemonError::io(
                        "waiting for another range's pieces",
                        std::io::Error::other("the task was deleted"),
                    ));
                }
                _ => {}
            },
            changed = claims.changed() => {
                if changed.is_err() {
                    return Err(DaemonError::io(
                        "waiting for another range's pieces",
                        std::io::Error::other("the task's demand is gone"),
                    ));
                }
            }
        }
    }
}

/// Pieces another range claimed and gave up without storing (it failed): this range takes
/// them from the origin itself rather than wait on a second conversation.
async fn fetch_orphans(
    job: &JobCtx<'_>,
    still: &BTreeMap<u32, PieceSpan>,
    orphans: &BTreeSet<u32>,
) -> Result<(), DaemonError> {
    let claim = job.demand.claim(orphans);
    let mut mine = only(still, &claim.pieces);
    if mine.is_empty() {
        return Ok(());
    }
    if job.request.disable_back_to_source {
        return Err(DaemonError::BackToSourceDisabled {
            url: job.request.url.clone(),
            reason: "the range that was fetching these pieces failed".into(),
        });
    }
    origin::fetch(job, &mut mine, None).await
}

fn only(spans: &BTreeMap<u32, PieceSpan>, numbers: &BTreeSet<u32>) -> BTreeMap<u32, PieceSpan> {
    spans
        .iter()
        .filter(|(n, _)| numbers.contains(n))
        .map(|(n, s)| (*n, *s))
        .collect()
}
