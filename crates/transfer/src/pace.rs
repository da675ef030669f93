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
//! `level x rate` is its upload at that level. A level is worth its flows when its upload
//! beats a lower worthy level's by at least [`PACE_MARGINAL_SHARE`] of what its extra flows
//! would add at that level's rate: on a full uplink more flows add nothing, while flows held
//! back by the children's downlinks each add about one flow's rate. The lower level is the
//! highest worthy one with at most half the flows ([`PACE_COMPARE_RATIO`]), so the two
//! differ by more than one child's downlink varies. The limit is the highest level worth
//! its flows, never below the configured floor; when that is the highest level measured, it
//! tries half as many more (at least one: the spare upload is unknown until tried). Doubling
//! instead, until a level first failed against its neighbour, took a 50 Mbit/s seed to 16
//! flows in bench/netns (a first copy then trickles to a host not yet measured slow), so it
//! was not kept.
//! (A tolerance against the best upload instead stalled a seed with five times the hosts'
//! uplink at four to six flows: one more flow adds a k-th, within the tolerance and within
//! the noise of the children's downlinks, which the other peers' flows share.)
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
/// A higher level is worth its extra flows when its upload grows by at least this share of
/// what they would add at the lower level's per-flow rate (half: a full uplink adds none,
/// flows limited by the children's downlinks add nearly all, and half leaves room for noise
/// both ways).
pub const PACE_MARGINAL_SHARE: f64 = 0.5;
/// A level is judged against worthy levels with at most `1 / PACE_COMPARE_RATIO` of its flows.
pub const PACE_COMPARE_RATIO: usize = 2;
/// A probe above the best level adds half of it (at least one): with levels judged against
/// half their flows an overshoot is found within a few pieces.
const PACE_PROBE_DIVISOR: usize = 2;
/// Least weight of a new per-piece rate in a level's running average: a level's first
/// samples are averaged equally, later ones weigh this much (the flows of one level differ
/// by up to 3 x, so fewer samples would decide on one child's downlink).
const PACE_EWMA: f64 = 0.2;

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
                l.samples += 1;
                let weight = (1.0 / f64::from(l.samples)).max(PACE_EWMA);
                l.rate += weight * (rate - l.rate);
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
        let Some(&(highest, _)) = totals.last() else {
            return self.limit;
        };
        // Levels worth their flows, lowest first. Each is judged against the highest worthy
        // level at most half of it: next to each other two levels differ by a flow or two,
        // which adds 15-25 % to the upload where the children's downlinks hold the flows
        // back, less than one flow's rate varies between children (bench/netns, seed at 5 x
        // the hosts' uplink: 20-70 Mbit/s per flow at the same level), so neighbours
        // decided on noise and the limit sat at the floor. Half as many flows carry two
        // thirds of the upload where more flows pay and all of it where the uplink is full,
        // a gap wider than that noise. Without a worthy level that far below, the lowest
        // worthy level measured is the widest gap there is.
        let mut worthy: Vec<(usize, f64)> = Vec::new();
        for &(k, total) in &totals {
            let below = worthy
                .iter()
                .rev()
                .find(|&&(j, _)| j * PACE_COMPARE_RATIO <= k)
                .or(worthy.first());
            let pays = below.is_none_or(|&(j, below_total)| {
                let added_flows = (k - j) as f64 / j as f64;
                total >= below_total * (1.0 + PACE_MARGINAL_SHARE * added_flows)
            });
            if pays {
                worthy.push((k, total));
            }
        }
        let Some(&(worth, _)) = worthy.last() else {
            return self.limit;
        };
        // The highest level measured is worth its flows: more may still add (a sample at the
        // old level after a probe must not pull the limit back). The probe grows with the
        // level, as a seed that is far from full would otherwise climb one level per few
        // pieces for most of a download (bench/netns, seed at 5 x the hosts' uplink: 4 to 9
        // in 14 s, its uplink under half used); an overshoot costs a few pieces at a
        // trickle, then the level that was worth it takes over again.
        let target = if worth == highest {
            highest + (highest / PACE_PROBE_DIVISOR).max(1)
        } else {
            worth
        };
        target.clamp(self.floor, self.ceiling)
    }
}

/// Flows on an uplink integrated over time (flow-seconds), so that a flow's level can be
/// the average number of flows in flight over its life ([`FlowClock::level`]) rather than
/// the number when it began. Counted at its start, a flow that began among five and ran
/// mostly beside two (the others ended and their successors waited for their children to
/// ask) looked like five flows each carrying a third of a thin seed's uplink, so a 50 Mbit/s
/// seed "measured" 9-13 flows worth it (bench/netns, 16 hosts).
#[derive(Debug, Clone, Default)]
pub struct FlowClock {
    in_flight: usize,
    flow_seconds: f64,
    at: Option<Instant>,
}

impl FlowClock {
    /// From `now` on, `in_flight` flows run; returns the reading at `now`.
    pub fn set(&mut self, in_flight: usize, now: Instant) -> f64 {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.flow_seconds += self.in_flight as f64 * elapsed;
        }
        self.at = Some(now);
        self.in_flight = in_flight;
        self.flow_seconds
    }

    /// The average number of flows in flight between two readings `took` apart, at least
    /// one (the flow itself).
    pub fn level(started: f64, ended: f64, took: Duration) -> usize {
        let seconds = took.as_secs_f64();
        if seconds <= 0.0 {
            return 1;
        }
        ((ended - started) / seconds).round().max(1.0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 4 << 20;

    /// Pieces leave a seed of `seed_mbit` for children that each take at most `child_mbit`,
    /// `limit` at a time; returns the limit after `rounds` of `limit` pieces each.
    fn run(seed_mbit: f64, child_mbit: f64, floor: usize, rounds: usize) -> usize {
        run_noisy(seed_mbit, child_mbit, floor, rounds, 0.0)
    }

    /// As [`run`], each flow's rate off by up to `noise` (a share) either way: children's
    /// downlinks are shared with other peers' flows, so flows of the same level differ.
    fn run_noisy(
        seed_mbit: f64,
        child_mbit: f64,
        floor: usize,
        rounds: usize,
        noise: f64,
    ) -> usize {
        let mut pace = Pace::new(floor, 32);
        let mut now = Instant::now();
        let mut draw = Xorshift(0x9e37_79b9_7f4a_7c15);
        let links = Links::new(seed_mbit, child_mbit, noise);
        for _ in 0..rounds {
            let k = pace.limit();
            for _ in 0..k {
                links.flow(&mut pace, &mut draw, &mut now, k);
            }
        }
        pace.limit()
    }

    /// As [`run_noisy`] for `seconds` of flows, each flow's level up to `short` below the
    /// limit: a seed's given pieces wait for their children to ask, so fewer flows than the
    /// limit run at once (bench/netns: three or four under a limit of four).
    fn run_for(
        seed_mbit: f64,
        child_mbit: f64,
        floor: usize,
        seconds: f64,
        noise: f64,
        short: usize,
    ) -> usize {
        let mut pace = Pace::new(floor, 32);
        let start = Instant::now();
        let mut now = start;
        let mut draw = Xorshift(0x2545_f491_4f6c_dd1d);
        let links = Links::new(seed_mbit, child_mbit, noise);
        while now.duration_since(start).as_secs_f64() < seconds {
            let limit = pace.limit();
            let level = (limit - (draw.unit() * (short + 1) as f64) as usize).max(1);
            links.flow(&mut pace, &mut draw, &mut now, level);
        }
        pace.limit()
    }

    /// A seed's uplink and its children's downlinks.
    struct Links {
        seed_mbit: f64,
        child_mbit: f64,
        /// Each flow's rate is off by up to this share either way.
        noise: f64,
    }

    impl Links {
        fn new(seed_mbit: f64, child_mbit: f64, noise: f64) -> Self {
            Self {
                seed_mbit,
                child_mbit,
                noise,
            }
        }

        /// One flow of `level` ends: it ran at its share of the seed or at the child's
        /// downlink, whichever is less, and the next flow ends `1 / level` of it later.
        fn flow(&self, pace: &mut Pace, draw: &mut Xorshift, now: &mut Instant, level: usize) {
            let jitter = 1.0 + self.noise * (2.0 * draw.unit() - 1.0);
            let mbit = (self.seed_mbit / level as f64).min(self.child_mbit) * jitter;
            let took = Duration::from_secs_f64(PIECE as f64 / (mbit * 1e6 / 8.0));
            *now += took / level as u32;
            pace.flow_done(level, PIECE, took, *now);
        }
    }

    /// A fixed sequence of draws from [0, 1), the same in every run.
    struct Xorshift(u64);

    impl Xorshift {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn a_thin_seed_stays_at_the_floor() {
        // 50 Mbit/s seed, children at 100: four flows already fill it.
        assert!(run(50.0, 100.0, 4, 40) <= 5);
        assert!(run_noisy(50.0, 100.0, 4, 80, 0.3) <= 6);
    }

    #[test]
    fn a_fast_seed_grows_until_its_uplink_is_full() {
        // 500 Mbit/s seed, each child takes about 40 from it: about 12 flows fill it.
        let limit = run(500.0, 40.0, 4, 80);
        assert!((11..=16).contains(&limit), "{limit}");
    }

    #[test]
    fn a_fast_seed_grows_through_the_children_s_noise() {
        // 500 Mbit/s seed, each flow getting 20-30 of a child's downlink that other peers'
        // flows share: 20 flows fill it. Against the best upload with a 10 % tolerance the
        // noise alone sent the limit back to the floor (bench/netns: 4 to 6 all run long).
        let limit = run_noisy(500.0, 25.0, 4, 80, 0.2);
        assert!((16..=26).contains(&limit), "{limit}");
    }

    #[test]
    fn a_fast_seed_climbs_within_seconds_through_wide_noise() {
        // bench/netns, seed and origin at 500 Mbit/s, hosts at 100: each of the seed's flows
        // got 20-70 Mbit/s of a child's downlink, and one or two of its given pieces waited
        // for their children to ask. Judged against the next level down the limit sat at 4-5
        // for the whole first copy of the file (14 s).
        let limit = run_for(500.0, 45.0, 4, 8.0, 0.55, 2);
        assert!(limit >= 10, "{limit}");
        // The same noise on a thin seed (50 Mbit/s) stays near the floor.
        let limit = run_for(50.0, 45.0, 4, 30.0, 0.55, 2);
        assert!(limit <= 6, "{limit}");
    }

    #[test]
    fn a_seed_far_from_full_climbs_in_few_rounds() {
        // 1 Gbit/s seed, children taking 40 each: 25 flows fill it. One level per round
        // would still be at 14 after ten rounds.
        let limit = run(1000.0, 40.0, 4, 10);
        assert!(limit >= 18, "{limit}");
    }

    #[test]
    fn a_full_uplink_holds_the_limit_near_its_size() {
        // 100 Mbit/s seed, children taking 40 each: three flows fill it.
        let limit = run_noisy(100.0, 40.0, 2, 60, 0.1);
        assert!((2..=4).contains(&limit), "{limit}");
    }

    #[test]
    fn a_flow_s_level_is_the_average_in_flight_over_its_life() {
        let t0 = Instant::now();
        let mut clock = FlowClock::default();
        clock.set(4, t0);
        // Our flow starts as the fifth, then three others end after 1 s: 5 flows for 1 s,
        // 2 for 3 s.
        let started = clock.set(5, t0);
        clock.set(2, t0 + Duration::from_secs(1));
        let ended = clock.set(1, t0 + Duration::from_secs(4));
        assert_eq!(FlowClock::level(started, ended, Duration::from_secs(4)), 3);
        assert_eq!(FlowClock::level(ended, ended, Duration::ZERO), 1);
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
