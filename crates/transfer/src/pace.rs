//! How many piece flows an uplink keeps going at once: as many as still add to what leaves
//! it. Used by a rationing seed for its given pieces (`damselfly_daemon::ration`) and by
//! every daemon's piece servers for their uploads ([`crate::UploadSlots`]).
//!
//! Each flow carries one piece to one child. A flow runs at the child's spare downlink or at
//! its share of the uplink, whichever is less. A thin uplink (a 50 Mbit/s seed under children
//! at 100, a host uploading at 10 Mbit/s) is full with a few flows, and more only cut each
//! piece into a trickle; an uplink with five times the children's downlink needs many flows
//! to be full. So the sender measures, per number of flows in flight, the rate at which a
//! piece left it (its length over the time from the flow's start to its end), and
//! `level x rate` is its upload at that level. The limit is the smallest level whose upload
//! is within [`PACE_TOLERANCE`] of the best measured, never below the configured floor; when
//! that is the highest level measured, it tries a quarter more (at least one: the spare
//! upload is unknown until tried).
//! Measurements older than [`PACE_MEMORY`] are forgotten, so the sender probes again when
//! its children change.
//!
//! Pure: `now` is passed in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Measurements of a level are forgotten after this long without a new one.
pub const PACE_MEMORY: Duration = Duration::from_secs(20);
/// A level counts once this many flows ended at it.
pub const PACE_MIN_SAMPLES: u32 = 3;
/// Levels within this share of the best upload are as good as the best.
pub const PACE_TOLERANCE: f64 = 0.1;
/// A probe above the best level adds a quarter of it (at least one).
const PACE_PROBE_DIVISOR: usize = 4;
/// Weight of a new per-piece rate in a level's running average.
const PACE_EWMA: f64 = 0.3;

#[derive(Debug, Clone, Copy)]
struct Level {
    /// Bytes per second one flow carried at this level (running average).
    rate: f64,
    samples: u32,
    at: Instant,
}

/// A sender's flows-in-flight limit.
#[derive(Debug, Clone)]
pub struct Pace {
    floor: usize,
    ceiling: usize,
    limit: usize,
    levels: BTreeMap<usize, Level>,
}

impl Pace {
    /// `floor` to `ceiling` flows (for a seed's ration `seedPeer.ration.piecesInFlight` and
    /// `maxPiecesInFlight`, for uploads `upload.piecesInFlight` and `maxPiecesInFlight`);
    /// starts at the floor.
    pub fn new(floor: usize, ceiling: usize) -> Self {
        let floor = floor.max(1);
        Self {
            floor,
            ceiling: ceiling.max(floor),
            limit: floor,
            levels: BTreeMap::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A flow carried a piece of `bytes` in `took`; `level` flows (itself included) were in
    /// flight when it started.
    pub fn flow_done(&mut self, level: usize, bytes: u64, took: Duration, now: Instant) {
        let took = took.as_secs_f64();
        if bytes == 0 || took <= 0.0 || level == 0 || level > self.ceiling {
            return;
        }
        let rate = bytes as f64 / took;
        self.levels
            .entry(level)
            .and_modify(|l| {
                l.rate += PACE_EWMA * (rate - l.rate);
                l.samples += 1;
                l.at = now;
            })
            .or_insert(Level {
                rate,
                samples: 1,
                at: now,
            });
        self.levels
            .retain(|_, l| now.duration_since(l.at) <= PACE_MEMORY);
        self.limit = self.choose();
    }

    fn choose(&self) -> usize {
        let totals: Vec<(usize, f64)> = self
            .levels
            .iter()
            .filter(|(_, l)| l.samples >= PACE_MIN_SAMPLES)
            .map(|(&k, l)| (k, k as f64 * l.rate))
            .collect();
        let Some(best) = totals.iter().map(|&(_, t)| t).max_by(f64::total_cmp) else {
            return self.limit;
        };
        let Some(&(enough, _)) = totals
            .iter()
            .find(|&&(_, t)| t >= (1.0 - PACE_TOLERANCE) * best)
        else {
            return self.limit;
        };
        let highest = totals.last().map_or(enough, |&(k, _)| k);
        // The best is the highest level measured: more may still add (a sample at the old
        // level after a probe must not pull the limit back). The probe grows with the level,
        // as a seed that is far from full would otherwise climb one level per few pieces
        // for most of a download (bench/netns, seed at 5 x the hosts' uplink: 4 to 9 in 14 s,
        // its uplink under half used); an overshoot costs a few pieces at a trickle, then
        // the tolerance brings the limit back.
        let target = if enough == highest {
            highest + (highest / PACE_PROBE_DIVISOR).max(1)
        } else {
            enough
        };
        target.clamp(self.floor, self.ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 4 << 20;

    /// Pieces leave a seed of `seed_mbit` for children that each take at most `child_mbit`,
    /// `limit` at a time; returns the limit after `rounds` of `limit` pieces each.
    fn run(seed_mbit: f64, child_mbit: f64, floor: usize, rounds: usize) -> usize {
        let mut pace = Pace::new(floor, 32);
        let mut now = Instant::now();
        for _ in 0..rounds {
            let k = pace.limit();
            let per_flow = (seed_mbit / k as f64).min(child_mbit) * 1e6 / 8.0;
            let took = Duration::from_secs_f64(PIECE as f64 / per_flow);
            for _ in 0..k {
                now += took / k as u32;
                pace.flow_done(k, PIECE, took, now);
            }
        }
        pace.limit()
    }

    #[test]
    fn a_thin_seed_stays_at_the_floor() {
        // 50 Mbit/s seed, children at 100: four flows already fill it.
        assert!(run(50.0, 100.0, 4, 40) <= 5);
    }

    #[test]
    fn a_fast_seed_grows_until_its_uplink_is_full() {
        // 500 Mbit/s seed, each child takes about 40 from it: about 12 flows fill it. Known
        // limit: one more flow adds 1/k, under PACE_TOLERANCE past k = 9, so it stops at 9-10.
        let limit = run(500.0, 40.0, 4, 80);
        assert!((9..=15).contains(&limit), "{limit}");
    }

    #[test]
    fn a_seed_far_from_full_climbs_in_few_rounds() {
        // 1 Gbit/s seed, children taking 40 each: 25 flows fill it. One level per round
        // would still be at 14 after ten rounds.
        let limit = run(1000.0, 40.0, 4, 10);
        assert!(limit >= 18, "{limit}");
    }

    #[test]
    fn the_limit_stays_within_floor_and_ceiling() {
        let mut pace = Pace::new(4, 6);
        let now = Instant::now();
        for k in 1..=10 {
            for _ in 0..PACE_MIN_SAMPLES {
                pace.flow_done(k, PIECE, Duration::from_secs(1), now);
            }
        }
        assert_eq!(pace.limit(), 6);
        let mut pace = Pace::new(4, 32);
        for _ in 0..PACE_MIN_SAMPLES {
            // One flow alone was as good as any: still the floor.
            pace.flow_done(1, PIECE, Duration::from_secs(1), now);
        }
        assert_eq!(pace.limit(), 4);
    }

    #[test]
    fn old_measurements_are_forgotten_and_probed_again() {
        let mut pace = Pace::new(2, 32);
        let t0 = Instant::now();
        // Level 2 and 3 give the same upload: 2 it is.
        for k in [2, 3] {
            for _ in 0..PACE_MIN_SAMPLES {
                pace.flow_done(k, PIECE, Duration::from_secs(k as u64), t0);
            }
        }
        assert_eq!(pace.limit(), 2);
        // Much later, level 2 is measured again alone: 3 is tried once more.
        let later = t0 + PACE_MEMORY + Duration::from_secs(1);
        pace.flow_done(2, PIECE, Duration::from_secs(2), later);
        assert_eq!(pace.limit(), 3);
    }
}
