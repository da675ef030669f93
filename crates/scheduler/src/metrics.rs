//! Prometheus metrics in the default registry (DESIGN.md), plus the `/metrics` + `/healthy`
//! HTTP server.

use std::future::Future;
use std::sync::OnceLock;

use damselfly_monitor::Endpoints;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::Counts;

/// The scheduler's collectors.
struct Collectors {
    announce_host_total: IntCounter,
    announce_peer_total: IntCounter,
    register_peer_total: IntCounter,
    register_peer_failure_total: IntCounter,
    schedule_total: IntCounterVec,
    download_peer_total: IntCounterVec,
    traffic_bytes_total: IntCounterVec,
    /// `traffic_bytes_total` of each [`TRAFFIC_TYPES`] label, looked up once: every piece
    /// report counts its bytes.
    traffic_by_type: Vec<IntCounter>,
    seed_trigger_total: IntCounterVec,
    decision_duration: Histogram,
    hosts: IntGauge,
    peers: IntGauge,
    tasks: IntGauge,
}

/// Schedule decision labels.
pub const DECISION_NORMAL: &str = "normal";
pub const DECISION_BACK_TO_SOURCE: &str = "back_to_source";
pub const DECISION_EMPTY: &str = "empty";
pub const DECISION_FAILED: &str = "failed";
/// A peer that holds the whole task registered only to report it (Download.metadata_only).
pub const DECISION_METADATA_ONLY: &str = "metadata_only";
/// A mesh parent pushed to a peer in the middle of its download.
pub const DECISION_PUSHED: &str = "pushed";

/// Bucket bounds of `damselfly_scheduler_decision_duration_seconds`: from 50 µs (a decision
/// made at once takes about 0.1 ms under load) to a retryInterval's rounds.
pub const DECISION_DURATION_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The traffic type labels piece reports count under.
pub const TRAFFIC_TYPES: [&str; 3] = ["remote_peer", "back_to_source", "local_peer"];

static COLLECTORS: OnceLock<Option<Collectors>> = OnceLock::new();

/// Handle to the process-wide scheduler metrics, registered in the default registry on first
/// use. Several schedulers in one process (tests, embedded mode) share them. If the
/// collectors could not be built every call is a no-op: metrics never take the scheduler down.
#[derive(Clone, Copy)]
pub struct Metrics(Option<&'static Collectors>);

pub fn metrics() -> Metrics {
    Metrics(
        COLLECTORS
            .get_or_init(|| match Collectors::new() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "scheduler metrics disabled");
                    None
                }
            })
            .as_ref(),
    )
}

/// Registers in the default registry; a duplicate (another component registered the same
/// name first) is logged and the collector still counts, just unexported.
fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    if let Err(e) = prometheus::register(Box::new(collector.clone())) {
        tracing::warn!(error = %e, "scheduler metric not registered");
    }
    collector
}

fn counter(name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    Ok(register(IntCounter::with_opts(Opts::new(name, help))?))
}

fn counter_vec(name: &str, help: &str, label: &str) -> Result<IntCounterVec, prometheus::Error> {
    Ok(register(IntCounterVec::new(
        Opts::new(name, help),
        &[label],
    )?))
}

fn gauge(name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    Ok(register(IntGauge::with_opts(Opts::new(name, help))?))
}

impl Collectors {
    fn new() -> Result<Self, prometheus::Error> {
        let traffic_bytes_total = counter_vec(
            "damselfly_scheduler_traffic_bytes_total",
            "Bytes reported in finished pieces, by traffic type",
            "type",
        )?;
        let traffic_by_type = TRAFFIC_TYPES
            .iter()
            .map(|label| traffic_bytes_total.get_metric_with_label_values(&[label]))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            announce_host_total: counter(
                "damselfly_scheduler_announce_host_total",
                "AnnounceHost calls",
            )?,
            announce_peer_total: counter(
                "damselfly_scheduler_announce_peer_total",
                "AnnouncePeer streams opened",
            )?,
            register_peer_total: counter(
                "damselfly_scheduler_register_peer_total",
                "RegisterPeerRequest messages",
            )?,
            register_peer_failure_total: counter(
                "damselfly_scheduler_register_peer_failure_total",
                "RegisterPeerRequest messages refused",
            )?,
            schedule_total: counter_vec(
                "damselfly_scheduler_schedule_total",
                "Scheduling decisions sent, by decision",
                "decision",
            )?,
            download_peer_total: counter_vec(
                "damselfly_scheduler_download_peer_total",
                "Peer downloads ended, by result",
                "result",
            )?,
            traffic_bytes_total,
            traffic_by_type,
            seed_trigger_total: counter_vec(
                "damselfly_scheduler_seed_trigger_total",
                "Seed peer DownloadTask triggers, by result",
                "result",
            )?,
            decision_duration: register(Histogram::with_opts(
                HistogramOpts::new(
                    "damselfly_scheduler_decision_duration_seconds",
                    "A peer's first decision: its RegisterPeerRequest read to the decision handed to its stream",
                )
                .buckets(DECISION_DURATION_BUCKETS.to_vec()),
            )?),
            hosts: gauge("damselfly_scheduler_hosts", "Hosts known")?,
            peers: gauge("damselfly_scheduler_peers", "Peers known")?,
            tasks: gauge("damselfly_scheduler_tasks", "Tasks known")?,
        })
    }
}

impl Metrics {
    pub fn announce_host(self) {
        if let Some(c) = self.0 {
            c.announce_host_total.inc();
        }
    }

    pub fn announce_peer(self) {
        if let Some(c) = self.0 {
            c.announce_peer_total.inc();
        }
    }

    pub fn register_peer(self, ok: bool) {
        if let Some(c) = self.0 {
            c.register_peer_total.inc();
            if !ok {
                c.register_peer_failure_total.inc();
            }
        }
    }

    pub fn decision(self, decision: &str) {
        if let Some(c) = self.0 {
            c.schedule_total.with_label_values(&[decision]).inc();
        }
    }

    pub fn download_peer(self, result: &str) {
        if let Some(c) = self.0 {
            c.download_peer_total.with_label_values(&[result]).inc();
        }
    }

    /// A registered peer got its first decision `seconds` after its RegisterPeerRequest.
    pub fn decided_in(self, seconds: f64) {
        if let Some(c) = self.0 {
            c.decision_duration.observe(seconds);
        }
    }

    pub fn traffic(self, traffic_type: &str, bytes: u64) {
        if let Some(c) = self.0 {
            match TRAFFIC_TYPES.iter().position(|t| *t == traffic_type) {
                Some(i) => c.traffic_by_type[i].inc_by(bytes),
                None => c
                    .traffic_bytes_total
                    .with_label_values(&[traffic_type])
                    .inc_by(bytes),
            }
        }
    }

    pub fn seed_trigger(self, result: &str) {
        if let Some(c) = self.0 {
            c.seed_trigger_total.with_label_values(&[result]).inc();
        }
    }

    pub fn set_counts(self, counts: Counts) {
        if let Some(c) = self.0 {
            c.hosts.set(i64::try_from(counts.hosts).unwrap_or(i64::MAX));
            c.peers.set(i64::try_from(counts.peers).unwrap_or(i64::MAX));
            c.tasks.set(i64::try_from(counts.tasks).unwrap_or(i64::MAX));
        }
    }
}

/// Serves `GET /metrics` (Prometheus text) and `GET /healthy` (200) with damselfly-monitor
/// until `shutdown` fires.
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Make sure the scheduler's own series exist even before the first RPC.
    let _ = metrics();
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.cancel();
    });
    damselfly_monitor::serve(listener, Endpoints::MetricsAndHealth, stop).await;
}
