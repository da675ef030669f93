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

/// One served piece: 16 bytes, as every host that served keeps [`UPLOAD_SAMPLES`] of them.
/// Times are microseconds since the meter's first piece: every piece report from a parent
/// sums its host's samples, and integer arithmetic is several times cheaper than `Instant`'s.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Served {
    end_micros: u64,
    /// How long it was in flight, microseconds (saturated: over an hour is no rate anyway).
    cost_micros: u32,
    /// Its length (saturated at 4 GiB, far above any piece length).
    bytes: u32,
}

impl Served {
    fn start_micros(&self) -> u64 {
        self.end_micros.saturating_sub(u64::from(self.cost_micros))
    }

    /// Its bytes that fall after `from`, assuming an even rate over its transfer.
    fn bytes_after(&self, from: u64) -> f64 {
        let start = self.start_micros();
        if start >= from || self.end_micros <= start {
            return f64::from(self.bytes);
        }
        let inside = self.end_micros.saturating_sub(from) as f64;
        f64::from(self.bytes) * inside / (self.end_micros - start) as f64
    }
}

/// What one host served lately.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UploadMeter {
    /// The origin of the samples' microseconds: a window before the first piece started.
    epoch: Option<Instant>,
    recent: VecDeque<Served>,
    /// Best rate seen (bytes per second) and when.
    peak: Option<(f64, Instant)>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl UploadMeter {
    /// A child got `bytes` from this host in a transfer that took `cost` and ended `now`.
    pub fn record(&mut self, bytes: u64, cost: Duration, now: Instant) {
        if bytes == 0 {
            return;
        }
        // The epoch leaves room for the first piece's transfer and a window before it, so
        // later pieces that started earlier are not clipped where they count.
        let epoch = *self.epoch.get_or_insert_with(|| {
            now.checked_sub(cost + UPLOAD_WINDOW)
                .or_else(|| now.checked_sub(cost))
                .unwrap_or(now)
        });
        let now_micros = micros(now.saturating_duration_since(epoch));
        let cost_micros = micros(cost).min(now_micros);
        let window = micros(UPLOAD_WINDOW);
        // Room is made before the push, so the deque never grows past its bound's capacity.
        while self.recent.len() >= UPLOAD_SAMPLES
            || self
                .recent
                .front()
                .is_some_and(|s| now_micros.saturating_sub(s.end_micros) > window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(Served {
            end_micros: now_micros,
            cost_micros: u32::try_from(cost_micros).unwrap_or(u32::MAX),
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        });
        let current = self.current(now_micros);
        if current > self.peak_at(now) {
            self.peak = Some((current, now));
        }
    }

    /// Bytes per second served over the last window (the part of each piece in it). One
    /// pass over the samples: every piece report from a parent asks for it.
    fn current(&self, now_micros: u64) -> f64 {
        let from = now_micros.saturating_sub(micros(UPLOAD_WINDOW));
        let mut first = u64::MAX;
        let mut bytes = 0.0;
        for sample in &self.recent {
            first = first.min(sample.start_micros().max(from));
            bytes += sample.bytes_after(from);
        }
        if first == u64::MAX {
            return 0.0;
        }
        let span = now_micros
            .saturating_sub(first)
            .max(micros(MIN_UPLOAD_SPAN));
        bytes * 1e6 / span as f64
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

    #[test]
    fn a_piece_that_started_before_the_first_reported_one_counts_whole() {
        // Two children fetch 4 MiB each at 8 Mbit/s (4.2 s); the short one is reported first,
        // the long one, started 3 s earlier, ends at the same time: 16 Mbit/s over 4.2 s.
        let t0 = Instant::now() + secs(10.0);
        let took = secs((4 * MIB * 8) as f64 / 8e6);
        let mut meter = UploadMeter::default();
        meter.record(4 * MIB, took, t0);
        meter.record(4 * MIB, took + secs(3.0), t0);
        let m = mbit(&meter, t0);
        assert!((9.0..=17.0).contains(&m), "{m}");
    }
}
