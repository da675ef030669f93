//! Progress of one download: bytes per source (peers, origin, local cache), the terminal bar,
//! and the summary line printed at the end.

use dragonfly_api::common::v2::{Piece, TrafficType};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashSet;
use std::time::Duration;

/// Where a piece's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Peer,
    Origin,
    Local,
}

impl Source {
    /// The piece's traffic type decides; a daemon that leaves it unset is read by parent:
    /// a parent means a peer, none means the origin.
    pub fn of(piece: &Piece) -> Self {
        match piece.traffic_type.map(TrafficType::try_from) {
            Some(Ok(TrafficType::RemotePeer)) => Self::Peer,
            Some(Ok(TrafficType::BackToSource)) => Self::Origin,
            Some(Ok(TrafficType::LocalPeer)) => Self::Local,
            Some(Err(_)) | None if piece.parent_id.is_some() => Self::Peer,
            Some(Err(_)) | None => Self::Origin,
        }
    }
}

/// Byte counts of one download.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Traffic {
    pub content_length: Option<u64>,
    pub from_peers: u64,
    pub from_origin: u64,
    pub from_local: u64,
    /// The daemon said the task was already complete in its cache when it started.
    pub complete_at_start: bool,
    /// Why the daemon went to the origin, as it said in the call's trailers (Damselfly
    /// daemons only).
    pub origin_reason: Option<String>,
    seen: HashSet<u32>,
}

impl Traffic {
    pub fn done(&self) -> u64 {
        self.from_peers + self.from_origin + self.from_local
    }

    /// Counts a finished piece once, even if a daemon reports it twice.
    pub fn record(&mut self, piece: &Piece) {
        if !self.seen.insert(piece.number) {
            return;
        }
        let counter = match Source::of(piece) {
            Source::Peer => &mut self.from_peers,
            Source::Origin => &mut self.from_origin,
            Source::Local => &mut self.from_local,
        };
        *counter = counter.saturating_add(piece.length);
    }

    /// Bytes of the content that no finished-piece message accounted for.
    pub fn unattributed(&self) -> u64 {
        self.content_length
            .map_or(0, |total| total.saturating_sub(self.done()))
    }

    /// After a successful end: a task the daemon had complete at the start may be reported by
    /// its length alone, so its unreported bytes came from the local cache. Otherwise they stay
    /// unattributed rather than being credited to a guessed source.
    pub fn settle(&mut self) {
        if self.complete_at_start {
            self.from_local = self.from_local.saturating_add(self.unattributed());
        }
    }

    pub fn summary(&self, elapsed: Duration, output: &std::path::Path) -> String {
        let size = self.content_length.unwrap_or_else(|| self.done());
        let secs = elapsed.as_secs_f64().max(0.001);
        let mut line = format!(
            "dfget: downloaded {} to {} in {:.1}s ({}/s); from peers {}, origin {}, local cache {}",
            HumanBytes(size),
            output.display(),
            elapsed.as_secs_f64(),
            HumanBytes((size as f64 / secs) as u64),
            HumanBytes(self.from_peers),
            HumanBytes(self.from_origin),
            HumanBytes(self.from_local),
        );
        if self.unattributed() > 0 {
            line.push_str(&format!(
                ", source not reported {}",
                HumanBytes(self.unattributed())
            ));
        }
        if let Some(reason) = self.origin_reason.as_ref().filter(|_| self.from_origin > 0) {
            line.push_str(&format!("; origin reason: {reason}"));
        }
        line
    }

    /// Short enough for an 80-column terminal next to the byte counts; the local cache is
    /// named only when it contributed.
    fn sources_message(&self) -> String {
        let mut message = format!(
            "peers {} origin {}",
            HumanBytes(self.from_peers),
            HumanBytes(self.from_origin)
        );
        if self.from_local > 0 {
            message.push_str(&format!(" cache {}", HumanBytes(self.from_local)));
        }
        message
    }
}

/// The terminal view of a [`Traffic`]; does nothing when hidden.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar on stderr when `visible`, nothing otherwise.
    pub fn new(visible: bool) -> Self {
        Self::drawing_to(visible.then(ProgressDrawTarget::stderr))
    }

    fn drawing_to(target: Option<ProgressDrawTarget>) -> Self {
        let bar = target.map(|target| {
            let bar = ProgressBar::with_draw_target(None, target);
            bar.set_style(spinner_style());
            bar.set_message("waiting for dfdaemon");
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { bar }
    }

    pub fn started(&self, traffic: &Traffic) {
        if let (Some(bar), Some(total)) = (&self.bar, traffic.content_length) {
            bar.set_length(total);
            bar.set_style(bar_style());
            self.update(traffic);
        }
    }

    pub fn update(&self, traffic: &Traffic) {
        if let Some(bar) = &self.bar {
            bar.set_position(traffic.done());
            bar.set_message(traffic.sources_message());
        }
    }

    /// Clears the bar so the summary or error line stands alone.
    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    /// An interrupted or failed download must not leave a half-drawn bar under the error.
    fn drop(&mut self) {
        self.clear();
    }
}

const SPINNER_TEMPLATE: &str = "{spinner} {msg} {elapsed}";
const BAR_TEMPLATE: &str =
    "{bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_bar} {msg}";

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template(SPINNER_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(BAR_TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(
        number: u32,
        length: u64,
        traffic: Option<TrafficType>,
        parent: Option<&str>,
    ) -> Piece {
        Piece {
            number,
            length,
            traffic_type: traffic.map(|t| t as i32),
            parent_id: parent.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn bytes_are_counted_by_traffic_type() {
        let mut t = Traffic {
            content_length: Some(100),
            ..Default::default()
        };
        t.record(&piece(0, 10, Some(TrafficType::RemotePeer), Some("p1")));
        t.record(&piece(1, 20, Some(TrafficType::BackToSource), None));
        t.record(&piece(2, 30, Some(TrafficType::LocalPeer), None));
        t.record(&piece(3, 40, Some(TrafficType::RemotePeer), Some("p2")));
        assert_eq!((t.from_peers, t.from_origin, t.from_local), (50, 20, 30));
        assert_eq!(t.done(), 100);
    }

    #[test]
    fn missing_traffic_type_falls_back_to_parent() {
        let mut t = Traffic::default();
        t.record(&piece(0, 5, None, Some("parent")));
        t.record(&piece(1, 7, None, None));
        t.record(&piece(2, 9, Some(TrafficType::RemotePeer), None));
        let mut unknown = piece(3, 11, None, None);
        unknown.traffic_type = Some(42);
        t.record(&unknown);
        assert_eq!((t.from_peers, t.from_origin, t.from_local), (14, 18, 0));
    }

    #[test]
    fn a_piece_reported_twice_counts_once() {
        let mut t = Traffic::default();
        t.record(&piece(0, 5, Some(TrafficType::RemotePeer), Some("p")));
        t.record(&piece(0, 5, Some(TrafficType::RemotePeer), Some("p")));
        assert_eq!(t.done(), 5);
    }

    #[test]
    fn unreported_bytes_of_a_cached_task_settle_as_local_cache() {
        let mut t = Traffic {
            content_length: Some(64),
            complete_at_start: true,
            ..Default::default()
        };
        t.record(&piece(0, 16, Some(TrafficType::LocalPeer), None));
        t.settle();
        assert_eq!((t.from_local, t.unattributed()), (64, 0));
        t.settle();
        assert_eq!(t.from_local, 64, "settling twice changes nothing");
    }

    #[test]
    fn unreported_bytes_of_a_fresh_download_stay_unattributed() {
        let mut t = Traffic {
            content_length: Some(64),
            ..Default::default()
        };
        t.record(&piece(0, 16, Some(TrafficType::BackToSource), None));
        t.settle();
        assert_eq!((t.from_origin, t.from_local, t.unattributed()), (16, 0, 48));
        let line = t.summary(Duration::from_secs(1), std::path::Path::new("/o"));
        assert!(
            line.ends_with("local cache 0 B, source not reported 48 B"),
            "{line}"
        );
    }

    #[test]
    fn summary_names_every_source() {
        let mut t = Traffic {
            content_length: Some(3 * 1024 * 1024),
            ..Default::default()
        };
        t.record(&piece(
            0,
            2 * 1024 * 1024,
            Some(TrafficType::RemotePeer),
            Some("p"),
        ));
        t.record(&piece(
            1,
            1024 * 1024,
            Some(TrafficType::BackToSource),
            None,
        ));
        let line = t.summary(Duration::from_secs(2), std::path::Path::new("/tmp/out"));
        assert!(
            line.starts_with("dfget: downloaded 3.00 MiB to /tmp/out in 2.0s"),
            "{line}"
        );
        assert!(line.contains("(1.50 MiB/s)"), "{line}");
        assert!(
            line.contains("from peers 2.00 MiB, origin 1.00 MiB, local cache 0 B"),
            "{line}"
        );
    }

    #[test]
    fn summary_names_the_origin_reason_only_with_origin_bytes() {
        let mut t = Traffic {
            origin_reason: Some("small-file: the file fits in one piece".into()),
            ..Traffic::default()
        };
        t.record(&piece(0, 1024, Some(TrafficType::RemotePeer), Some("p")));
        let out = std::path::Path::new("/tmp/out");
        let line = t.summary(Duration::from_secs(1), out);
        assert!(!line.contains("origin reason"), "{line}");
        t.record(&piece(1, 1024, Some(TrafficType::BackToSource), None));
        let line = t.summary(Duration::from_secs(1), out);
        assert!(
            line.ends_with("; origin reason: small-file: the file fits in one piece"),
            "{line}"
        );
    }

    #[test]
    fn bar_message_names_the_cache_only_when_used() {
        let mut t = Traffic::default();
        t.record(&piece(0, 1024, Some(TrafficType::RemotePeer), Some("p")));
        assert_eq!(t.sources_message(), "peers 1.00 KiB origin 0 B");
        t.record(&piece(1, 2048, Some(TrafficType::LocalPeer), None));
        assert_eq!(
            t.sources_message(),
            "peers 1.00 KiB origin 0 B cache 2.00 KiB"
        );
    }

    #[test]
    fn templates_are_valid() {
        assert!(ProgressStyle::with_template(SPINNER_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }

    /// A terminal that keeps what its user sees: one string per row and the cursor's row while
    /// a frame is drawn, and the text of the last frame drawn completely (at its flush), so a
    /// test never reads a half-drawn frame of the bar's ticker thread.
    #[derive(Debug, Clone, Default)]
    struct Screen(std::sync::Arc<std::sync::Mutex<Frame>>);

    #[derive(Debug, Default)]
    struct Frame {
        rows: Vec<String>,
        at: usize,
        shown: String,
    }

    impl Screen {
        fn text(&self) -> String {
            self.0.lock().unwrap().shown.clone()
        }

        fn with<T>(&self, f: impl FnOnce(&mut Frame) -> T) -> T {
            f(&mut self.0.lock().unwrap())
        }

        fn with_row(&self, f: impl FnOnce(&mut String)) {
            self.with(|frame| {
                if frame.rows.len() <= frame.at {
                    frame.rows.resize(frame.at + 1, String::new());
                }
                f(&mut frame.rows[frame.at]);
            })
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            self.with(|frame| frame.at = frame.at.saturating_sub(n));
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.with(|frame| frame.at += n);
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)?;
            self.with(|frame| frame.at += 1);
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            // A carriage return starts the row again; what follows overwrites it.
            for (i, part) in s.split('\r').enumerate() {
                self.with_row(|row| {
                    if i > 0 {
                        row.clear();
                    }
                    row.push_str(part);
                });
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.with_row(String::clear);
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            self.with(|frame| {
                let rows: Vec<&str> = frame.rows.iter().map(|row| row.trim_end()).collect();
                frame.shown = rows.join("\n").trim().to_string();
            });
            Ok(())
        }
    }

    #[test]
    fn the_bar_shows_bytes_and_sources_then_clears() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let progress = Progress::drawing_to(Some(target));
        assert!(
            screen.text().contains("waiting for dfdaemon"),
            "{:?}",
            screen.text()
        );

        let mut t = Traffic {
            content_length: Some(4096),
            ..Default::default()
        };
        progress.started(&t);
        assert!(
            screen.text().starts_with("0 B/4.00 KiB"),
            "{:?}",
            screen.text()
        );
        t.record(&piece(0, 1024, Some(TrafficType::RemotePeer), Some("p")));
        progress.update(&t);
        let shown = screen.text();
        assert!(shown.starts_with("1.00 KiB/4.00 KiB"), "{shown:?}");
        assert!(shown.ends_with("peers 1.00 KiB origin 0 B"), "{shown:?}");
        assert!(!shown.contains('\n'), "the bar takes one row: {shown:?}");

        drop(progress);
        assert_eq!(screen.text(), "", "dropping the bar clears it");
    }

    #[test]
    fn hidden_progress_has_no_bar() {
        let p = Progress::new(false);
        assert!(p.bar.is_none());
        let t = Traffic::default();
        p.started(&t);
        p.update(&t);
        p.clear();
    }
}
