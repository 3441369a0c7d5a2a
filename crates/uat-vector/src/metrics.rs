//! Prometheus metrics of the vector engine, registered once in the
//! process-wide registry of `uat-telemetry`.

use crate::types::MemoryUsage;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;

static POINTS: LazyLock<Option<IntGaugeVec>> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new("uat_vector_points", "Live points per collection"),
        &["collection"],
    )
    .ok()
    .map(uat_telemetry::register)
});

static SEARCH_SECONDS: LazyLock<Option<Histogram>> = LazyLock::new(|| {
    Histogram::with_opts(
        HistogramOpts::new("uat_vector_search_seconds", "Time of one vector search")
            .buckets(uat_telemetry::LATENCY_BUCKETS.to_vec()),
    )
    .ok()
    .map(uat_telemetry::register)
});

static UPSERTED: LazyLock<Option<IntCounter>> = LazyLock::new(|| {
    IntCounter::new(
        "uat_vector_upsert_points_total",
        "Points written by upserts",
    )
    .ok()
    .map(uat_telemetry::register)
});

static INDEX_BYTES: LazyLock<Option<IntGaugeVec>> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "uat_vector_index_bytes",
            "Bytes held per collection and kind",
        ),
        &["collection", "kind"],
    )
    .ok()
    .map(uat_telemetry::register)
});

static AUTO_SNAPSHOTS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "uat_vector_auto_snapshots_total",
            "Snapshots the store took by itself because a WAL passed vector.snapshot_wal_bytes, by outcome",
        ),
        &["outcome"],
    )
    .ok()
    .map(uat_telemetry::register)
});

static SHUTDOWN_SNAPSHOTS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "uat_vector_shutdown_snapshots_total",
            "Collections with WAL records at a graceful shutdown, by what became of them: \
             ok (snapshotted), error (the WAL kept), not_reached (the shutdown budget ran out)",
        ),
        &["outcome"],
    )
    .ok()
    .map(uat_telemetry::register)
});

pub(crate) fn set_points(collection: &str, n: usize) {
    if let Some(g) = POINTS.as_ref() {
        g.with_label_values(&[collection]).set(n as i64);
    }
}

pub(crate) fn observe_search(seconds: f64) {
    if let Some(h) = SEARCH_SECONDS.as_ref() {
        h.observe(seconds);
    }
}

pub(crate) fn upserted(n: usize) {
    if let Some(c) = UPSERTED.as_ref() {
        c.inc_by(n as u64);
    }
}

pub(crate) fn set_index_bytes(collection: &str, m: &MemoryUsage) {
    if let Some(g) = INDEX_BYTES.as_ref() {
        for (kind, v) in [
            ("vectors", m.vectors_bytes),
            ("quantized", m.quantized_bytes),
            ("graph", m.graph_bytes),
            ("payload", m.payload_bytes),
        ] {
            g.with_label_values(&[collection, kind]).set(v as i64);
        }
    }
}

/// Counts one automatic snapshot; `ok` false when it failed (to be retried).
pub(crate) fn auto_snapshot(ok: bool) {
    if let Some(c) = AUTO_SNAPSHOTS.as_ref() {
        c.with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }
}

/// Counts one collection of a shutdown snapshot: `"ok"`, `"error"` or
/// `"not_reached"` (clean collections are not counted).
pub(crate) fn shutdown_snapshot(outcome: &'static str) {
    if let Some(c) = SHUTDOWN_SNAPSHOTS.as_ref() {
        c.with_label_values(&[outcome]).inc();
    }
}

/// Drops the series of a deleted collection.
pub(crate) fn forget(collection: &str) {
    if let Some(g) = POINTS.as_ref() {
        let _ = g.remove_label_values(&[collection]);
    }
    if let Some(g) = INDEX_BYTES.as_ref() {
        for kind in ["vectors", "quantized", "graph", "payload"] {
            let _ = g.remove_label_values(&[collection, kind]);
        }
    }
}
