//! A host's measured upload: the bytes its children say they got from it, per second.
//!
//! A host's announced `max_tx_bandwidth` says what its interface could do, not what reaches
//! its children through shared uplinks, busy NICs or a shaped link (bench/netns: half the
//! hosts upload at a tenth of their download). Children report every piece with the parent
//! it came from and what it cost (`DownloadPieceFinishedRequest`), so the scheduler sees
//! what each host actually served. A piece of `length` bytes that took `cost` is spread over
//! the span it was in flight; the rate is what the host served over the last
//! [`UPLOAD_WINDOW`], and the host's upload is the best such rate seen lately (a decayed
//! peak: a fast host that has nothing to serve for a while is not taken for a slow one).
//!
//! Pure: `now` is passed in, so the rules are tested in virtual time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Span over which served bytes are summed into a rate.
pub const UPLOAD_WINDOW: Duration = Duration::from_secs(5);
/// A rate over less than this is not trusted (one piece that took 10 ms says little).
pub const MIN_UPLOAD_SPAN: Duration = Duration::from_secs(1);
/// The peak rate halves every this long without a new peak.
pub const UPLOAD_PEAK_HALF_LIFE: Duration = Duration::from_secs(60);
/// Pieces kept per host (bounds memory however fast the reports come).
pub const UPLOAD_SAMPLES: usize = 64;

/// One served piece: 24 bytes, as every host that served keeps [`UPLOAD_SAMPLES`] of them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Served {
    end: Instant,
    /// How long it was in flight, microseconds (saturated: over an hour is no rate anyway).
    cost_micros: u32,
    /// Its length (saturated at 4 GiB, far above any piece length).
    bytes: u32,
}

impl Served {
    fn start(&self) -> Instant {
        let cost = Duration::from_micros(u64::from(self.cost_micros));
        self.end.checked_sub(cost).unwrap_or(self.end)
    }
}

/// What one host served lately.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UploadMeter {
    recent: VecDeque<Served>,
    /// Best rate seen (bytes per second) and when.
    peak: Option<(f64, Instant)>,
}

impl UploadMeter {
    /// A child got `bytes` from this host in a transfer that took `cost` and ended `now`.
    pub fn record(&mut self, bytes: u64, cost: Duration, now: Instant) {
        if bytes == 0 {
            return;
        }
        let cost = now.checked_sub(cost).map_or(Duration::ZERO, |_| cost);
        // Room is made before the push, so the deque never grows past its bound's capacity.
        while self.recent.len() >= UPLOAD_SAMPLES
            || self
                .recent
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.end) > UPLOAD_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(Served {
            end: now,
            cost_micros: u32::try_from(cost.as_micros()).unwrap_or(u32::MAX),
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        });
        let current = self.current(now);
        if current > self.peak_at(now) {
            self.peak = Some((current, now));
        }
    }

    /// Bytes per second served over the last window (the part of each piece in it). One
    /// pass over the samples: every piece report from a parent asks for it.
    fn current(&self, now: Instant) -> f64 {
        let from = now.checked_sub(UPLOAD_WINDOW).unwrap_or(now);
        let mut first: Option<Instant> = None;
        let mut bytes = 0.0;
        for sample in &self.recent {
            let start = sample.start();
            let clipped = start.max(from);
            first = Some(first.map_or(clipped, |f| f.min(clipped)));
            bytes += in_window(sample, start, from);
        }
        let Some(first) = first else {
            return 0.0;
        };
        let span = now.duration_since(first).max(MIN_UPLOAD_SPAN).as_secs_f64();
        bytes / span
    }

    fn peak_at(&self, now: Instant) -> f64 {
        self.peak.map_or(0.0, |(rate, at)| {
            let halvings =
                now.duration_since(at).as_secs_f64() / UPLOAD_PEAK_HALF_LIFE.as_secs_f64();
            rate * 0.5_f64.powf(halvings)
        })
    }

    /// The host's measured upload in bits per second (the unit of `Network.tx_bandwidth`);
    /// `None` until a child reported a piece from it.
    pub fn bits_per_second(&self, now: Instant) -> Option<u64> {
        self.peak.map(|_| (self.peak_at(now) * 8.0) as u64)
    }
}

/// The bytes of `s` (which started at `start`) that fall after `from`, assuming an even rate
/// over its transfer.
fn in_window(s: &Served, start: Instant, from: Instant) -> f64 {
    let total = s.end.duration_since(start).as_secs_f64();
    if start >= from || total <= 0.0 {
        return f64::from(s.bytes);
    }
    let inside = s.end.saturating_duration_since(from).as_secs_f64();
    f64::from(s.bytes) * (inside / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// `pieces` pieces of 4 MiB served back to back at `mbit`, each reported as it ends.
    fn serve(meter: &mut UploadMeter, t0: Instant, mbit: f64, pieces: u32) -> Instant {
        let per_piece = secs((4 * MIB * 8) as f64 / (mbit * 1e6));
        let mut now = t0;
        for _ in 0..pieces {
            now += per_piece;
            meter.record(4 * MIB, per_piece, now);
        }
        now
    }

    fn mbit(meter: &UploadMeter, now: Instant) -> f64 {
        meter.bits_per_second(now).unwrap_or(0) as f64 / 1e6
    }

    #[test]
    fn samples_stay_within_their_bound() {
        let mut meter = UploadMeter::default();
        let end = serve(&mut meter, Instant::now(), 10_000.0, 1000);
        assert_eq!(meter.recent.len(), UPLOAD_SAMPLES);
        assert!(
            meter.recent.capacity() < 2 * UPLOAD_SAMPLES,
            "{}",
            meter.recent.capacity()
        );
        // 64 pieces of 4 MiB over the 1 s minimum span: about 2 Gbit/s is what it can tell.
        assert!(mbit(&meter, end) > 2_000.0, "{}", mbit(&meter, end));
    }

    #[test]
    fn unknown_until_a_piece_is_reported() {
        let meter = UploadMeter::default();
        assert_eq!(meter.bits_per_second(Instant::now()), None);
    }

    #[test]
    fn a_slow_host_and_a_fast_one_are_told_apart() {
        let t0 = Instant::now();
        let mut slow = UploadMeter::default();
        let mut fast = UploadMeter::default();
        let end_slow = serve(&mut slow, t0, 10.0, 3);
        let end_fast = serve(&mut fast, t0, 100.0, 20);
        let (s, f) = (mbit(&slow, end_slow), mbit(&fast, end_fast));
        assert!((8.0..=12.0).contains(&s), "slow {s}");
        assert!((80.0..=120.0).contains(&f), "fast {f}");
    }

    #[test]
    fn concurrent_children_add_up() {
        // Four children each fetch a piece at 25 Mbit/s at the same time: the host served 100.
        let t0 = Instant::now();
        let mut meter = UploadMeter::default();
        let took = secs((4 * MIB * 8) as f64 / 25e6);
        for _ in 0..4 {
            meter.record(4 * MIB, took, t0 + took);
        }
        let m = mbit(&meter, t0 + took);
        assert!((80.0..=120.0).contains(&m), "{m}");
    }

    #[test]
    fn an_idle_spell_does_not_make_a_fast_host_slow_at_once() {
        let t0 = Instant::now();
        let mut meter = UploadMeter::default();
        let end = serve(&mut meter, t0, 100.0, 20);
        // Nothing for 20 s, then one slow piece (its child was busy elsewhere).
        let later = end + secs(20.0);
        meter.record(4 * MIB, secs(5.0), later);
        assert!(mbit(&meter, later) > 60.0, "{}", mbit(&meter, later));
        // Long idle: the peak fades.
        assert!(mbit(&meter, later + secs(600.0)) < 1.0);
    }
}
