//! Download metrics in Prometheus' default registry (names from DESIGN.md). Upload metrics
//! are registered by damselfly-transfer, which moves those bytes.

use prometheus::{exponential_buckets, Histogram, HistogramOpts, IntCounterVec, Opts};
use std::sync::LazyLock;

/// Where downloaded bytes came from, as Dragonfly's traffic types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    BackToSource,
    RemotePeer { seed: bool },
    LocalPeer,
}

impl Traffic {
    fn labels(self) -> [&'static str; 2] {
        match self {
            Traffic::BackToSource => ["back_to_source", ""],
            Traffic::RemotePeer { seed: true } => ["remote_peer", "seed"],
            Traffic::RemotePeer { seed: false } => ["remote_peer", "normal"],
            Traffic::LocalPeer => ["local_peer", ""],
        }
    }

    fn source(self) -> &'static str {
        match self {
            Traffic::BackToSource => "origin",
            Traffic::RemotePeer { .. } => "parent",
            Traffic::LocalPeer => "local",
        }
    }
}

struct Metrics {
    traffic: IntCounterVec,
    tasks: IntCounterVec,
    pieces: IntCounterVec,
    rejected: IntCounterVec,
    back_to_source: IntCounterVec,
    duration: Histogram,
}

/// Registers in the default registry; if a name is taken (another copy of this library in the
/// process), the metric still works, just unexported.
fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    let _ = prometheus::default_registry().register(Box::new(collector.clone()));
    collector
}

pub(crate) fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Static names and labels: this can only fail if the definitions below are edited wrongly.
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition"))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    traffic: counter_vec(
        "damselfly_download_traffic_bytes_total",
        "Downloaded bytes by traffic type and parent type",
        &["type", "parent_type"],
    ),
    tasks: counter_vec(
        "damselfly_download_task_total",
        "Download tasks by result",
        &["result"],
    ),
    pieces: counter_vec(
        "damselfly_download_piece_total",
        "Downloaded pieces by result and source",
        &["result", "source"],
    ),
    rejected: counter_vec(
        "damselfly_download_piece_rejected_total",
        "Pieces from parents refused because their bytes failed a digest check",
        &["check"],
    ),
    back_to_source: counter_vec(
        "damselfly_download_back_to_source_total",
        "Downloads that went to the origin, by reason (damselfly_core::OriginReason codes)",
        &["reason"],
    ),
    duration: register(
        Histogram::with_opts(
            HistogramOpts::new(
                "damselfly_download_task_duration_seconds",
                "Duration of finished downloads",
            )
            .buckets(exponential_buckets(0.01, 2.0, 20).expect("static buckets")),
        )
        .expect("static metric definition"),
    ),
});

pub fn add_traffic(traffic: Traffic, bytes: u64) {
    METRICS
        .traffic
        .with_label_values(&traffic.labels())
        .inc_by(bytes);
}

pub fn piece_done(traffic: Traffic, ok: bool) {
    let result = if ok { "finished" } else { "failed" };
    METRICS
        .pieces
        .with_label_values(&[result, traffic.source()])
        .inc();
}

/// What a refused piece failed: the trusted (`blake3:`) digest, or the parent's own `crc32:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceCheckKind {
    Trusted,
    Crc32,
}

pub fn piece_rejected(check: PieceCheckKind) {
    let label = match check {
        PieceCheckKind::Trusted => "trusted",
        PieceCheckKind::Crc32 => "crc32",
    };
    METRICS.rejected.with_label_values(&[label]).inc();
}

/// A download went to the origin; `reason` is an `OriginReason` code.
pub fn back_to_source(reason: &str) {
    METRICS.back_to_source.with_label_values(&[reason]).inc();
}

pub fn task_started() {
    METRICS.tasks.with_label_values(&["started"]).inc();
}

/// A job ended well: a whole task, or the piece fill behind a range read (which ends when its
/// pieces are in, so `started - finished - failed` is the number of jobs still running).
pub fn task_finished() {
    METRICS.tasks.with_label_values(&["finished"]).inc();
}

/// How long a whole task took (range fills are left out: their time says nothing of a task's).
pub fn task_duration(seconds: f64) {
    METRICS.duration.observe(seconds);
}

pub fn task_failed() {
    METRICS.tasks.with_label_values(&["failed"]).inc();
}

/// Makes the metric families exist before the first download, so `/metrics` lists them.
pub fn init() {
    LazyLock::force(&METRICS);
}

/// Total uploaded bytes as counted by damselfly-transfer's Vortex server.
pub fn upload_bytes_total() -> u64 {
    damselfly_transfer::metrics::UPLOAD_TRAFFIC_BYTES.get()
}
