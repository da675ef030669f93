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

/// CPU time and run-queue wait of a process, summed over its live threads
/// (`/proc/<pid>/task/*/schedstat`: nanoseconds on a CPU, nanoseconds runnable but waiting).
/// The wait tells whether the process lacked a CPU (other work on its core) rather than work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub on_cpu: Duration,
    pub waiting: Duration,
}

impl CpuTime {
    /// `pid`'s threads; zeros when there is no such process.
    pub fn of(pid: u32) -> Self {
        Self::of_dir(&format!("/proc/{pid}/task"))
    }

    /// This process's threads.
    pub fn of_self() -> Self {
        Self::of_dir("/proc/self/task")
    }

    fn of_dir(dir: &str) -> Self {
        let Ok(threads) = std::fs::read_dir(dir) else {
            return Self::default();
        };
        threads
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
            .map(|text| Self::parse(&text))
            .fold(Self::default(), |sum, t| Self {
                on_cpu: sum.on_cpu + t.on_cpu,
                waiting: sum.waiting + t.waiting,
            })
    }

    fn parse(schedstat: &str) -> Self {
        let mut fields = schedstat
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        let mut next = || Duration::from_nanos(fields.next().unwrap_or(0));
        Self {
            on_cpu: next(),
            waiting: next(),
        }
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            on_cpu: self.on_cpu.saturating_sub(earlier.on_cpu),
            waiting: self.waiting.saturating_sub(earlier.waiting),
        }
    }
}

/// Seconds with two decimals, `-` when unknown.
fn secs_or_none(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}", d.as_secs_f64()))
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
    /// The decision latencies of the peers after the first wave: the steady state, without
    /// the start-up burst of registrations.
    pub steady_latencies: Vec<Duration>,
    pub to_parents: usize,
    pub to_origin: usize,
    pub reports: u64,
    pub pushes: u64,
    pub wake_lags: Vec<Duration>,
    pub send_lags: Vec<Duration>,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Totals {
    pub fn add(&mut self, outcome: Outcome) {
        self.peers += 1;
        self.latencies.extend(outcome.decision_latency);
        if !outcome.first_wave {
            self.steady_latencies.extend(outcome.decision_latency);
        }
        match outcome.decided {
            Decided::Parents => self.to_parents += 1,
            Decided::BackToSource => self.to_origin += 1,
            Decided::Nothing => {}
        }
        self.reports += outcome.reports;
        self.pushes += outcome.pushes;
        self.wake_lags.extend(outcome.wake_lags);
        self.send_lags.extend(outcome.send_lags);
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
    /// The scheduler's CPU over the peer phase (`None` without `--scheduler-pid`).
    pub scheduler_cpu: Option<CpuTime>,
    /// The generator's own CPU over the peer phase.
    pub loadgen_cpu: CpuTime,
}

impl Report {
    /// `key=value` pairs on one line, starting with `RESULT`.
    pub fn line(&mut self) -> String {
        self.totals.latencies.sort_unstable();
        self.totals.steady_latencies.sort_unstable();
        self.totals.wake_lags.sort_unstable();
        self.totals.send_lags.sort_unstable();
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
             kib_per_host={:.2} kib_per_peer={:.2} wake_lag_p99_ms={:.2} \
             send_lag_p99_ms={:.2} steady_p50_ms={:.2} steady_p99_ms={:.2} sched_cpu_s={} sched_wait_s={} loadgen_cpu_s={:.2} \
             loadgen_wait_s={:.2}",
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
            ms(quantile(&t.wake_lags, 0.99)),
            ms(quantile(&t.send_lags, 0.99)),
            ms(quantile(&t.steady_latencies, 0.50)),
            ms(quantile(&t.steady_latencies, 0.99)),
            secs_or_none(self.scheduler_cpu.map(|c| c.on_cpu)),
            secs_or_none(self.scheduler_cpu.map(|c| c.waiting)),
            self.loadgen_cpu.on_cpu.as_secs_f64(),
            self.loadgen_cpu.waiting.as_secs_f64(),
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

    #[test]
    fn schedstat_gives_cpu_and_wait() {
        let t = CpuTime::parse("328406452 74537298 60\n");
        assert_eq!(t.on_cpu, Duration::from_nanos(328_406_452));
        assert_eq!(t.waiting, Duration::from_nanos(74_537_298));
        // This test's own process has run.
        assert!(CpuTime::of_self().on_cpu > Duration::ZERO);
    }
}
