//! What a run measured: decision latency percentiles, rates, the scheduler's memory from
//! `/proc/<pid>/status`, and the one-line result the bench script parses.

use std::time::Duration;

use crate::peer::{Decided, Outcome};

/// The scheduler's memory at one moment, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Memory {
    /// Reads `VmRSS` and `VmHWM` of `pid`; zeros when there is no pid or no such process.
    pub fn of(pid: Option<u32>) -> Self {
        pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    fn parse(status: &str) -> Self {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        }
    }
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Totals over all peers.
#[derive(Debug, Default)]
pub struct Totals {
    pub peers: usize,
    pub latencies: Vec<Duration>,
    pub to_parents: usize,
    pub to_origin: usize,
    pub reports: u64,
    pub pushes: u64,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Totals {
    pub fn add(&mut self, outcome: Outcome) {
        self.peers += 1;
        self.latencies.extend(outcome.decision_latency);
        match outcome.decided {
            Decided::Parents => self.to_parents += 1,
            Decided::BackToSource => self.to_origin += 1,
            Decided::Nothing => {}
        }
        self.reports += outcome.reports;
        self.pushes += outcome.pushes;
        if let Some(error) = outcome.error {
            self.errors += 1;
            self.first_error.get_or_insert(error);
        }
    }
}

/// One run's numbers.
#[derive(Debug)]
pub struct Report {
    pub hosts: usize,
    pub tasks: usize,
    pub totals: Totals,
    pub announce_time: Duration,
    pub peer_time: Duration,
    pub base: Memory,
    pub after_hosts: Memory,
    pub after_peers: Memory,
}

impl Report {
    /// `key=value` pairs on one line, starting with `RESULT`.
    pub fn line(&mut self) -> String {
        self.totals.latencies.sort_unstable();
        let t = &self.totals;
        let secs = self.peer_time.as_secs_f64().max(1e-9);
        let decisions = t.to_parents + t.to_origin;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let host_kib = self.after_hosts.rss_kib.saturating_sub(self.base.rss_kib) as f64
            / self.hosts.max(1) as f64;
        let peer_kib = self
            .after_peers
            .rss_kib
            .saturating_sub(self.after_hosts.rss_kib) as f64
            / t.peers.max(1) as f64;
        format!(
            "RESULT hosts={} peers={} tasks={} decisions={} to_parents={} to_origin={} \
             decisions_per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} reports={} \
             reports_per_s={:.0} pushes={} errors={} announce_s={:.2} peer_phase_s={:.2} \
             rss_base_kib={} rss_hosts_kib={} rss_peers_kib={} hwm_kib={} \
             kib_per_host={:.2} kib_per_peer={:.2}",
            self.hosts,
            t.peers,
            self.tasks,
            decisions,
            t.to_parents,
            t.to_origin,
            decisions as f64 / secs,
            ms(quantile(&t.latencies, 0.50)),
            ms(quantile(&t.latencies, 0.99)),
            ms(t.latencies.last().copied().unwrap_or_default()),
            t.reports,
            t.reports as f64 / secs,
            t.pushes,
            t.errors,
            self.announce_time.as_secs_f64(),
            secs,
            self.base.rss_kib,
            self.after_hosts.rss_kib,
            self.after_peers.rss_kib,
            self.after_peers.hwm_kib,
            host_kib,
            peer_kib,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn proc_status_gives_rss_and_peak() {
        let status = "Name:\tdfscheduler\nVmHWM:\t  20480 kB\nVmRSS:\t   16384 kB\nThreads:\t2\n";
        assert_eq!(
            Memory::parse(status),
            Memory {
                rss_kib: 16384,
                hwm_kib: 20480
            }
        );
        assert_eq!(Memory::of(None), Memory::default());
    }
}
