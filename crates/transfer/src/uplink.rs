//! Whether a host's uplink is thin: a fraction of what its downlink brings in.
//!
//! Pacing uploads ([`crate::UploadSlots`]) pays off only there: a thin uplink split between
//! every request sends each piece at a trickle, while a host whose upload matches its
//! download is held back by its children's downlinks, not its own uplink, and pacing it only
//! makes requests wait (bench/netns, uniform links: 64 MiB to 8 hosts took 1.34-1.41 x T_min
//! paced against 1.20 unpaced, the fast hosts' lines up to 8 s long at two or three uploads).
//!
//! So the host compares, over windows of [`UPLINK_WINDOW`], what it uploaded with the most it
//! ever downloaded in one window: an uplink that carries less than [`THIN_UPLINK_RATIO`] of
//! that peak while uploads wait for it ([`THIN_BUSY_UPLOADS`] in flight or a line) for
//! [`THIN_WINDOWS`] windows running is thin, and one busy window above it makes it fat
//! again. Windows without demand decide nothing. An uplink that once carried
//! [`PROVEN_UPLINK_RATIO`] of that peak in one window is never thin: it has the capacity,
//! and its uploads crawl because the children's downlinks are full. Pure: `now` is passed in.

use std::time::{Duration, Instant};

/// Length of one measurement window.
pub const UPLINK_WINDOW: Duration = Duration::from_secs(2);
/// An uplink below this share of the downlink's peak is thin: half the hosts of
/// bench/netns upload at a tenth of their download (10 against 100 Mbit/s), while a host
/// with an even link serving three children at their downlink's share (each child takes
/// from several parents) upload at a third of it or more.
pub const THIN_UPLINK_RATIO: f64 = 0.25;
/// Uploads in flight that show demand: with fewer, a low upload is the children's choice.
pub const THIN_BUSY_UPLOADS: usize = 3;
/// Busy windows below the ratio in a row before the uplink counts as thin.
pub const THIN_WINDOWS: u32 = 2;
/// An uplink that carried this share of the downlink's peak in one window has shown it is
/// not thin. At the end of a download every child fetches eight pieces at once, so a parent's
/// flows each get an eighth of a child's downlink: a 100 Mbit/s host sending its last pieces
/// to such children was measured thin, paced to two uploads, and its children's last pieces
/// waited 2.2 s for a turn, suspended after 120-300 KB (bench/netns, seed at 5 x the hosts'
/// uplink: the last two hosts finished 0.6-1.2 s after the others). Twice the thin ratio,
/// so that what socket buffers take in at once from a thin uplink's first uploads
/// (beyond what the wire carries) proves nothing.
pub const PROVEN_UPLINK_RATIO: f64 = 2.0 * THIN_UPLINK_RATIO;

/// Upload and download over the current window, and the verdict so far.
#[derive(Debug, Clone)]
pub struct UplinkMeter {
    window_start: Option<Instant>,
    uploaded: u64,
    downloaded: u64,
    busy: bool,
    /// The most bytes per second downloaded in one window.
    peak_download: f64,
    /// The most bytes per second uploaded in one window.
    peak_upload: f64,
    thin_windows: u32,
    thin: bool,
}

impl Default for UplinkMeter {
    fn default() -> Self {
        Self {
            window_start: None,
            uploaded: 0,
            downloaded: 0,
            busy: false,
            peak_download: 0.0,
            peak_upload: 0.0,
            thin_windows: 0,
            thin: false,
        }
    }
}

impl UplinkMeter {
    pub fn is_thin(&self) -> bool {
        self.thin
    }

    pub fn uploaded(&mut self, bytes: u64, now: Instant) {
        self.roll(now);
        self.uploaded += bytes;
    }

    pub fn downloaded(&mut self, bytes: u64, now: Instant) {
        self.roll(now);
        self.downloaded += bytes;
    }

    /// Uploads wait for the uplink now: `in_flight` of them, and whether others wait in line.
    pub fn demand(&mut self, in_flight: usize, line: bool, now: Instant) {
        self.roll(now);
        self.busy |= line || in_flight >= THIN_BUSY_UPLOADS;
    }

    /// Closes the window if it is over; returns whether the verdict changed.
    pub fn roll(&mut self, now: Instant) -> bool {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return false;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < UPLINK_WINDOW {
            return false;
        }
        let was_thin = self.thin;
        // A window that ran on past its length without news counts as one window.
        let seconds = elapsed.min(UPLINK_WINDOW * 2).as_secs_f64();
        let download = self.downloaded as f64 / seconds;
        let upload = self.uploaded as f64 / seconds;
        self.peak_download = self.peak_download.max(download);
        self.peak_upload = self.peak_upload.max(upload);
        let proven = self.peak_upload >= self.peak_download * PROVEN_UPLINK_RATIO;
        if self.busy {
            if upload < self.peak_download * THIN_UPLINK_RATIO && !proven {
                self.thin_windows += 1;
                self.thin |= self.thin_windows >= THIN_WINDOWS;
            } else {
                self.thin_windows = 0;
                self.thin = false;
            }
        }
        self.window_start = Some(now);
        self.uploaded = 0;
        self.downloaded = 0;
        self.busy = false;
        was_thin != self.thin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000 / 8;

    /// Feeds `windows` windows of `up` and `down` Mbit/s with `in_flight` uploads.
    fn run(
        meter: &mut UplinkMeter,
        t: &mut Instant,
        windows: u32,
        up: u64,
        down: u64,
        in_flight: usize,
    ) {
        let secs = UPLINK_WINDOW.as_secs();
        for _ in 0..windows {
            meter.demand(in_flight, false, *t);
            meter.uploaded(up * MBIT * secs, *t);
            meter.downloaded(down * MBIT * secs, *t);
            *t += UPLINK_WINDOW;
            meter.roll(*t);
        }
    }

    #[test]
    fn a_tenth_of_the_download_with_uploads_waiting_is_thin() {
        let (mut meter, mut t) = (UplinkMeter::default(), Instant::now());
        run(&mut meter, &mut t, 1, 10, 100, 8);
        assert!(!meter.is_thin(), "one window is not enough");
        run(&mut meter, &mut t, 1, 10, 100, 8);
        assert!(meter.is_thin());
        // Done downloading, still uploading at a tenth of what came in: still thin.
        run(&mut meter, &mut t, 3, 10, 0, 8);
        assert!(meter.is_thin());
    }

    #[test]
    fn an_uplink_that_carried_half_the_download_peak_is_never_thin() {
        let (mut meter, mut t) = (UplinkMeter::default(), Instant::now());
        run(&mut meter, &mut t, 3, 60, 100, 4);
        // The end of a download: eight uploads, each held to an eighth of a full downlink.
        run(&mut meter, &mut t, 4, 15, 100, 8);
        assert!(!meter.is_thin());
    }

    #[test]
    fn a_thin_uplink_stays_thin_after_a_window_of_buffered_bursts() {
        let (mut meter, mut t) = (UplinkMeter::default(), Instant::now());
        // First uploads fill socket buffers: the window counts twice what the wire carried.
        run(&mut meter, &mut t, 1, 20, 100, 8);
        run(&mut meter, &mut t, 2, 10, 100, 8);
        assert!(meter.is_thin());
    }

    #[test]
    fn an_even_link_is_not_thin_and_one_fat_window_undoes_the_verdict() {
        let (mut meter, mut t) = (UplinkMeter::default(), Instant::now());
        run(&mut meter, &mut t, 5, 40, 100, 4);
        assert!(!meter.is_thin());
        // Three forwards crawling behind a slow source look thin for a while (the uplink
        // never showed half the download's peak)...
        run(&mut meter, &mut t, 2, 5, 100, 3);
        assert!(meter.is_thin());
        // ... until a busy window shows the uplink carrying more.
        run(&mut meter, &mut t, 1, 60, 100, 2);
        assert!(meter.is_thin(), "two uploads are no demand");
        meter.demand(1, true, t);
        run(&mut meter, &mut t, 1, 60, 100, 0);
        assert!(!meter.is_thin(), "a line with the uplink busy");
    }

    #[test]
    fn little_upload_without_demand_decides_nothing() {
        let (mut meter, mut t) = (UplinkMeter::default(), Instant::now());
        run(&mut meter, &mut t, 5, 1, 100, 1);
        assert!(!meter.is_thin());
    }
}
