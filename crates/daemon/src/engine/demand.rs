//! Demand and bulk: the two priority classes of one task's pieces on this host.
//!
//! A byte-range request (a lazy read through the proxy, `Download.range`) *demands* the
//! pieces covering it: a ranged job claims the ones nobody else on this host is fetching and
//! fetches just those, at once. A whole-task job (a prefetch, a plain download) is *bulk*:
//! at the origin it never asks for a piece that demand claimed, and starts no new piece
//! while any demand of its task is outstanding, so demand always overtakes it. Concurrent
//! ranges of one task share the work piece by piece: a second range claims only what the
//! first did not, and waits for the rest to land.
//!
//! The bookkeeping ([`Claims`], [`bulk_step`]) is pure; [`TaskDemand`] shares it between the
//! jobs of one task and tells them when it changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// One ranged job's claim on pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimId(u64);

/// Which pieces of one task demand jobs are fetching, and who.
#[derive(Debug, Default)]
pub struct Claims {
    owner: BTreeMap<u32, ClaimId>,
    /// Pieces a bulk job is fetching from the origin right now: not demand (bulk never
    /// yields to itself), but a range must wait for them rather than ask the origin again.
    bulk: BTreeSet<u32>,
    next: u64,
}

impl Claims {
    /// Claims the pieces of `wanted` nobody claimed yet; returns the claim and those pieces
    /// (possibly none: then everything wanted is someone else's to fetch).
    pub fn claim(&mut self, wanted: &BTreeSet<u32>) -> (ClaimId, BTreeSet<u32>) {
        let id = ClaimId(self.next);
        self.next += 1;
        let mine: BTreeSet<u32> = wanted
            .iter()
            .copied()
            .filter(|n| !self.is_claimed(*n))
            .collect();
        for &number in &mine {
            self.owner.insert(number, id);
        }
        (id, mine)
    }

    /// Gives up every piece of the claim (landed or not); whether it held any.
    pub fn release(&mut self, id: ClaimId) -> bool {
        let before = self.owner.len();
        self.owner.retain(|_, owner| *owner != id);
        self.owner.len() != before
    }

    /// Whether a range or a bulk origin request is fetching the piece.
    pub fn is_claimed(&self, number: u32) -> bool {
        self.owner.contains_key(&number) || self.bulk.contains(&number)
    }

    /// Whether some demand of the task is outstanding.
    pub fn is_active(&self) -> bool {
        !self.owner.is_empty()
    }
}

/// What a bulk job does next at the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkStep {
    /// Ask the origin for this piece.
    Start(u32),
    /// Demand is outstanding (or every piece left is demand's): wait for it to change.
    Yield,
    /// Nothing left to start.
    Idle,
}

/// The bulk job's next origin request from `queue` (its pieces in the order it would ask),
/// given the task's demand claims. While any demand is outstanding no bulk piece starts, so
/// the origin (and the host's bandwidth) serves demand first, and a piece demand is fetching
/// is never asked twice (the caller skips pieces that landed meanwhile).
pub fn bulk_step(queue: &[u32], claims: &Claims) -> BulkStep {
    match queue.first() {
        None => BulkStep::Idle,
        Some(_) if claims.is_active() => BulkStep::Yield,
        Some(&number) => BulkStep::Start(number),
    }
}

/// The demand of one task on this host, shared by its jobs.
#[derive(Debug)]
pub struct TaskDemand {
    claims: Mutex<Claims>,
    /// Bumped on every claim and release, so waiting jobs look again.
    generation: watch::Sender<u64>,
    /// Held while a job prepares the task's storage, so two jobs starting together do not
    /// both create its content file.
    pub prepare: tokio::sync::Mutex<()>,
}

impl Default for TaskDemand {
    fn default() -> Self {
        Self {
            claims: Mutex::new(Claims::default()),
            generation: watch::channel(0).0,
            prepare: tokio::sync::Mutex::new(()),
        }
    }
}

impl TaskDemand {
    fn lock(&self) -> MutexGuard<'_, Claims> {
        match self.claims.lock() {
            Ok(claims) => claims,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Claims what nobody claimed of `wanted`; the claim ends when the guard drops.
    pub fn claim(self: &Arc<Self>, wanted: &BTreeSet<u32>) -> ClaimGuard {
        let (id, mine) = self.lock().claim(wanted);
        if !mine.is_empty() {
            self.generation.send_modify(|g| *g += 1);
        }
        ClaimGuard {
            demand: self.clone(),
            id,
            pieces: mine,
        }
    }

    pub fn is_claimed(&self, number: u32) -> bool {
        self.lock().is_claimed(number)
    }

    /// Marks a piece a bulk job asks the origin for, until the guard drops (landed or failed).
    pub fn start_bulk(self: &Arc<Self>, number: u32) -> BulkGuard {
        self.lock().bulk.insert(number);
        BulkGuard {
            demand: self.clone(),
            number,
        }
    }

    /// [`bulk_step`] over the current claims.
    pub fn bulk_step(&self, queue: &[u32]) -> BulkStep {
        bulk_step(queue, &self.lock())
    }

    /// Changes whenever a claim is made or released.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// A ranged job's pieces; released (for bulk jobs and other ranges) when dropped, whether
/// the pieces landed or the job failed.
#[derive(Debug)]
pub struct ClaimGuard {
    demand: Arc<TaskDemand>,
    id: ClaimId,
    pub pieces: BTreeSet<u32>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.demand.lock().release(self.id) {
            self.demand.generation.send_modify(|g| *g += 1);
        }
    }
}

/// A bulk job's origin request for one piece; a range waiting on it looks again when dropped.
#[derive(Debug)]
pub struct BulkGuard {
    demand: Arc<TaskDemand>,
    number: u32,
}

impl Drop for BulkGuard {
    fn drop(&mut self) {
        if self.demand.lock().bulk.remove(&self.number) {
            self.demand.generation.send_modify(|g| *g += 1);
        }
    }
}

/// Every task's demand on this host.
#[derive(Debug, Default)]
pub struct DemandTable {
    tasks: Mutex<HashMap<String, Arc<TaskDemand>>>,
}

impl DemandTable {
    /// The demand of `task_id`; entries nobody holds any more are dropped on the way.
    pub fn task(&self, task_id: &str) -> Arc<TaskDemand> {
        let mut tasks = match self.tasks.lock() {
            Ok(tasks) => tasks,
            Err(poisoned) => poisoned.into_inner(),
        };
        tasks.retain(|id, demand| id == task_id || Arc::strong_count(demand) > 1);
        tasks.entry(task_id.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(numbers: &[u32]) -> BTreeSet<u32> {
        numbers.iter().copied().collect()
    }

    #[test]
    fn a_second_range_claims_only_what_the_first_did_not() {
        let mut claims = Claims::default();
        let (first, mine) = claims.claim(&set(&[3, 4]));
        assert_eq!(mine, set(&[3, 4]));
        let (second, mine) = claims.claim(&set(&[4, 5]));
        assert_eq!(mine, set(&[5]), "piece 4 is the first range's");
        assert!(claims.release(first));
        assert!(!claims.is_claimed(4));
        assert!(claims.is_claimed(5));
        assert!(claims.release(second));
        assert!(!claims.is_active());
        assert!(!claims.release(second), "a claim is released once");
    }

    #[test]
    fn bulk_yields_to_demand_and_never_takes_its_pieces() {
        let mut claims = Claims::default();
        let queue = [0, 1, 2, 3];
        assert_eq!(bulk_step(&queue, &claims), BulkStep::Start(0));
        let (id, _) = claims.claim(&set(&[0, 2]));
        assert_eq!(bulk_step(&queue, &claims), BulkStep::Yield);
        claims.release(id);
        assert_eq!(bulk_step(&queue, &claims), BulkStep::Start(0));
        assert_eq!(bulk_step(&[], &claims), BulkStep::Idle);
    }

    #[tokio::test]
    async fn a_range_leaves_pieces_bulk_is_fetching_and_bulk_never_waits_on_itself() {
        let table = DemandTable::default();
        let demand = table.task("t");
        let bulk = demand.start_bulk(4);
        assert_eq!(demand.bulk_step(&[5]), BulkStep::Start(5));
        let claim = demand.claim(&set(&[3, 4]));
        assert_eq!(
            claim.pieces,
            set(&[3]),
            "piece 4 is on its way from the origin"
        );
        assert!(demand.is_claimed(4));
        let mut changes = demand.subscribe();
        changes.borrow_and_update();
        drop(bulk);
        assert!(
            changes.has_changed().unwrap(),
            "a waiting range looks again"
        );
        assert!(!demand.is_claimed(4));
    }

    #[tokio::test]
    async fn a_dropped_claim_wakes_waiting_jobs() {
        let table = DemandTable::default();
        let demand = table.task("t");
        let mut changes = demand.subscribe();
        let guard = demand.claim(&set(&[1]));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        assert!(demand.is_claimed(1));
        drop(guard);
        assert!(changes.has_changed().unwrap());
        assert!(!demand.is_claimed(1));
    }
}
