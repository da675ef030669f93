//! Prometheus metrics owned by this crate, registered in the default registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::sync::LazyLock;
use tracing::warn;

/// Bytes of piece content sent to peers over Vortex.
pub static UPLOAD_TRAFFIC_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        // The definition is a constant that is known to be valid.
        IntCounter::new(
            "damselfly_upload_traffic_bytes_total",
            "Bytes of piece content uploaded to other peers.",
        )
        .expect("constant metric definition is valid"),
    )
});

/// Pieces served over Vortex, by result (`success`, `failure`, `not_found`).
pub static UPLOAD_PIECE_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "damselfly_upload_piece_total",
                "Piece upload requests by result.",
            ),
            &["result"],
        )
        .expect("constant metric definition is valid"),
    )
});

/// Pieces sent to Damselfly children while they were still arriving here (cut-through), whole
/// and confirmed by their trailer; they are counted in `damselfly_upload_piece_total` too.
pub static UPLOAD_FORWARDED_PIECE_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "damselfly_upload_forwarded_piece_total",
            "Pieces forwarded to children while they were still arriving (cut-through).",
        )
        .expect("constant metric definition is valid"),
    )
});

/// Piece requests waiting for a turn to be sent (`UploadSlots`).
pub static UPLOAD_WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "damselfly_upload_waiting",
            "Piece requests waiting for a turn to be sent.",
        )
        .expect("constant metric definition is valid"),
    )
});

/// Pieces the piece servers may send at once now: the pace's limit on a thin uplink, else
/// `upload.maxPiecesInFlight`.
pub static UPLOAD_LIMIT: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "damselfly_upload_limit",
            "Pieces the piece servers may send at once now.",
        )
        .expect("constant metric definition is valid"),
    )
});

/// 1 while the uplink is measured thin and uploads are paced, else 0.
pub static UPLOAD_PACED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "damselfly_upload_paced",
            "1 while the uplink is measured thin and uploads are paced.",
        )
        .expect("constant metric definition is valid"),
    )
});

/// Uploads that gave their turn back midway and waited in line again (`UploadSlots`): a
/// thin uplink keeps only as many going as its pace allows.
pub static UPLOAD_SUSPENDED_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "damselfly_upload_suspended_total",
            "Uploads that gave their turn back midway and waited in line again.",
        )
        .expect("constant metric definition is valid"),
    )
});

/// Origin HTTP requests, by result (`success`, `failure`).
pub static BACKEND_REQUEST_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "damselfly_backend_request_total",
                "Origin requests by result.",
            ),
            &["result"],
        )
        .expect("constant metric definition is valid"),
    )
});

/// Registers every metric of this crate now, so they show up (at 0) before first use.
pub fn register_metrics() {
    LazyLock::force(&UPLOAD_TRAFFIC_BYTES);
    LazyLock::force(&UPLOAD_PIECE_TOTAL);
    LazyLock::force(&UPLOAD_FORWARDED_PIECE_TOTAL);
    LazyLock::force(&UPLOAD_WAITING);
    LazyLock::force(&UPLOAD_LIMIT);
    LazyLock::force(&UPLOAD_PACED);
    LazyLock::force(&UPLOAD_SUSPENDED_TOTAL);
    LazyLock::force(&BACKEND_REQUEST_TOTAL);
}

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    if let Err(e) = prometheus::register(Box::new(collector.clone())) {
        // Counting must go on even if another component registered the same name.
        warn!(error = %e, "metric registration failed");
    }
    collector
}

pub(crate) fn result_label(ok: bool) -> &'static str {
    if ok {
        "success"
    } else {
        "failure"
    }
}
