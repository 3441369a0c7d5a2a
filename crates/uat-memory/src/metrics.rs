//! `uat_memory_operations_total{op,result}`, `uat_memory_operation_seconds{op}`,
//! `uat_memory_rows`, `uat_memory_purged_total{what}`,
//! `uat_memory_backfilled_total` and `uat_memory_embedding_deferred_total`,
//! registered once.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};
use std::sync::LazyLock;
use std::time::Instant;

#[expect(clippy::expect_used, reason = "constant, valid metric definitions")]
static OPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    uat_telemetry::register(
        IntCounterVec::new(
            Opts::new(
                "uat_memory_operations_total",
                "Memory operations by kind and result",
            ),
            &["op", "result"],
        )
        .expect("valid metric"),
    )
});

#[expect(clippy::expect_used, reason = "constant, valid metric definitions")]
static SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new("uat_memory_operation_seconds", "Memory operation latency")
        .buckets(uat_telemetry::LATENCY_BUCKETS.to_vec());
    uat_telemetry::register(HistogramVec::new(opts, &["op"]).expect("valid metric"))
});

#[expect(clippy::expect_used, reason = "constant, valid metric definitions")]
static ROWS: LazyLock<IntGauge> = LazyLock::new(|| {
    uat_telemetry::register(
        IntGauge::new("uat_memory_rows", "Stored memories").expect("valid metric"),
    )
});

#[expect(clippy::expect_used, reason = "constant, valid metric definitions")]
static PURGED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    uat_telemetry::register(
        IntCounterVec::new(
            Opts::new(
                "uat_memory_purged_total",
                "Rows removed by retention: expired memories and change-log records",
            ),
            &["what"],
        )
        .expect("valid metric"),
    )
});

#[expect(clippy::expect_used, reason = "constant, valid metric definitions")]
static BACKFILLED: LazyLock<IntCounter> = LazyLock::new(|| {
    uat_telemetry::register(
        IntCounter::new(
            "uat_memory_backfilled_total",
            "Memories given an embedding of the current model by the background backfill",
        )
        .expect("valid metric"),
    )
});

#[expect(clippy::expect_used, reason = "constant, valid metric definitions")]
static DEFERRED: LazyLock<IntCounter> = LazyLock::new(|| {
    uat_telemetry::register(
        IntCounter::new(
            "uat_memory_embedding_deferred_total",
            "Memories stored without their embedding because the embedder failed (the backfill embeds them later)",
        )
        .expect("valid metric"),
    )
});

/// Counts `n` memories written (or whose content was changed) without an
/// embedding because the embedder failed: left to the backfill.
pub fn embedding_deferred(n: u64) {
    DEFERRED.inc_by(n);
}

/// Counts `n` memories embedded by the backfill.
pub fn backfilled(n: u64) {
    BACKFILLED.inc_by(n);
}

/// Counts `n` rows removed by retention (`expired` or `changes`).
pub fn purged(what: &'static str, n: u64) {
    PURGED.with_label_values(&[what]).inc_by(n);
}

/// Times one operation; [`Op::done`] records its result.
pub struct Op {
    name: &'static str,
    start: Instant,
}

impl Op {
    /// Starts timing `name` (`insert`, `get`, `update`, `delete`, `delete_user`,
    /// `list`, `search`, `history`, `purge`, `backfill`: one batch embedded
    /// and stored).
    pub fn start(name: &'static str) -> Self {
        Op {
            name,
            start: Instant::now(),
        }
    }

    /// Records the outcome (`ok`, `not_found`, `invalid`, `error`).
    pub fn done<T>(self, r: &crate::Result<T>) {
        let result = match r {
            Ok(_) => "ok",
            Err(crate::MemoryError::NotFound) => "not_found",
            Err(crate::MemoryError::Invalid { .. } | crate::MemoryError::NoEmbedder) => "invalid",
            Err(_) => "error",
        };
        OPS.with_label_values(&[self.name, result]).inc();
        SECONDS
            .with_label_values(&[self.name])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Sets `uat_memory_rows`.
pub fn set_rows(n: u64) {
    ROWS.set(i64::try_from(n).unwrap_or(i64::MAX));
}
