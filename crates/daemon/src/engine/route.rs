//! Where this host's latest range of a task got its pieces: the scheduler's answer, kept a
//! moment so the next cold range of the task need not wait for a round to learn it.
//!
//! A cold range whose task was just sent to the origin (no peer held its pieces) is answered
//! straight from the origin at once by the proxy (`proxy::hedge`), while the range's job still
//! asks the scheduler and fills the cache behind it. A range whose task had parents, or that
//! nothing is known of, waits for its own round: the swarm serves it if it can. Each round's
//! answer replaces the last, so a task that gains a peer holding its pieces is served by it
//! from the next range on.

use damselfly_core::OriginReason;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a task's latest range answer stands for the next range. Short: another host may
/// fetch the task's pieces any time; a lazy reader's ranges come in bursts well inside it.
pub const RANGE_ROUTE_TTL: Duration = Duration::from_secs(5);
/// Tasks remembered at most; past it, expired answers are dropped, then all.
const RANGE_ROUTE_LIMIT: usize = 4096;

/// What a task's latest range on this host was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRoute {
    /// Nothing recent: the next range asks the scheduler before anything else.
    Unknown,
    /// Sent to the origin because no peer held its pieces (or no scheduler answered).
    Origin,
    /// Its pieces came from parents.
    Peers,
}

impl RangeRoute {
    /// The route an origin decision stands for: only reasons that say no peer could serve
    /// the pieces. Parents that failed did hold them: that says nothing of the next range.
    pub fn of_origin(reason: &OriginReason) -> RangeRoute {
        match reason {
            OriginReason::FirstInCluster
            | OriginReason::SmallFile
            | OriginReason::NoContentLength
            | OriginReason::NoScheduler { .. }
            | OriginReason::NoSeedPeer
            | OriginReason::NoParentFound { .. }
            | OriginReason::Forced { .. }
            | OriginReason::SeedPeer => RangeRoute::Origin,
            OriginReason::ParentsFailed { .. } | OriginReason::Other { .. } => RangeRoute::Unknown,
        }
    }
}

/// The latest range answer per task.
#[derive(Debug, Default)]
pub struct RangeRoutes {
    routes: Mutex<HashMap<String, (RangeRoute, Instant)>>,
}

impl RangeRoutes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (RangeRoute, Instant)>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, task_id: &str, route: RangeRoute, now: Instant) {
        let mut routes = self.lock();
        if routes.len() >= RANGE_ROUTE_LIMIT && !routes.contains_key(task_id) {
            routes.retain(|_, (_, at)| now.saturating_duration_since(*at) < RANGE_ROUTE_TTL);
            if routes.len() >= RANGE_ROUTE_LIMIT {
                routes.clear();
            }
        }
        routes.insert(task_id.to_string(), (route, now));
    }

    /// The task's latest answer, if it is recent enough to stand.
    pub fn get(&self, task_id: &str, now: Instant) -> RangeRoute {
        match self.lock().get(task_id) {
            Some(&(route, at)) if now.saturating_duration_since(at) < RANGE_ROUTE_TTL => route,
            _ => RangeRoute::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_answer_stands_until_it_expires() {
        let routes = RangeRoutes::default();
        let now = Instant::now();
        assert_eq!(routes.get("t", now), RangeRoute::Unknown);
        routes.record("t", RangeRoute::Origin, now);
        assert_eq!(routes.get("t", now), RangeRoute::Origin);
        assert_eq!(routes.get("other", now), RangeRoute::Unknown);
        routes.record("t", RangeRoute::Peers, now);
        assert_eq!(
            routes.get("t", now),
            RangeRoute::Peers,
            "the last answer wins"
        );
        assert_eq!(routes.get("t", now + RANGE_ROUTE_TTL), RangeRoute::Unknown);
    }

    #[test]
    fn failed_parents_do_not_send_the_next_range_to_the_origin() {
        let failed = OriginReason::ParentsFailed {
            last_error: "reset".into(),
        };
        assert_eq!(RangeRoute::of_origin(&failed), RangeRoute::Unknown);
        assert_eq!(
            RangeRoute::of_origin(&OriginReason::FirstInCluster),
            RangeRoute::Origin
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let routes = RangeRoutes::default();
        let now = Instant::now();
        for n in 0..=RANGE_ROUTE_LIMIT {
            routes.record(&n.to_string(), RangeRoute::Origin, now);
        }
        assert!(routes.lock().len() <= RANGE_ROUTE_LIMIT);
        assert_eq!(
            routes.get(&RANGE_ROUTE_LIMIT.to_string(), now),
            RangeRoute::Origin
        );
    }
}
