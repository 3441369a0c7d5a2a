//! The cache's Prometheus metrics, registered once.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;

/// Every cache metric handle.
pub(crate) struct CacheMetrics {
    /// `uat_cache_requests_total{level,result}`.
    pub requests: IntCounterVec,
    /// `uat_cache_writes_total{level,result}`.
    pub writes: IntCounterVec,
    /// `uat_cache_evictions_total{level}`.
    pub evictions: IntCounterVec,
    /// `uat_cache_bytes{level}`.
    pub bytes: IntGaugeVec,
    /// `uat_cache_operation_seconds{level,op}`.
    pub op_seconds: HistogramVec,
    /// `uat_cache_singleflight_waiters_total`.
    pub singleflight_waiters: IntCounter,
}

pub(crate) static METRICS: LazyLock<CacheMetrics> = LazyLock::new(|| {
    let requests = IntCounterVec::new(
        Opts::new(
            "uat_cache_requests_total",
            "Cache lookups per level and result (hit, miss, error, skipped, corrupt)",
        ),
        &["level", "result"],
    );
    let writes = IntCounterVec::new(
        Opts::new(
            "uat_cache_writes_total",
            "Cache writes per level and result (ok, error, skipped, dropped, expired)",
        ),
        &["level", "result"],
    );
    let evictions = IntCounterVec::new(
        Opts::new(
            "uat_cache_evictions_total",
            "Entries evicted for size (L1) or purged after expiry (L3)",
        ),
        &["level"],
    );
    let bytes = IntGaugeVec::new(
        Opts::new(
            "uat_cache_bytes",
            "Bytes held per cache level (L2/L3: as of the last stats call)",
        ),
        &["level"],
    );
    let op_seconds = HistogramVec::new(
        HistogramOpts::new(
            "uat_cache_operation_seconds",
            "Duration of cache operations per level and op",
        )
        .buckets(uat_telemetry::LATENCY_BUCKETS.to_vec()),
        &["level", "op"],
    );
    let waiters = IntCounter::new(
        "uat_cache_singleflight_waiters_total",
        "Requests that waited for an identical in-flight request instead of calling upstream",
    );
    match (requests, writes, evictions, bytes, op_seconds, waiters) {
        (Ok(r), Ok(w), Ok(e), Ok(b), Ok(o), Ok(s)) => CacheMetrics {
            requests: uat_telemetry::register(r),
            writes: uat_telemetry::register(w),
            evictions: uat_telemetry::register(e),
            bytes: uat_telemetry::register(b),
            op_seconds: uat_telemetry::register(o),
            singleflight_waiters: uat_telemetry::register(s),
        },
        _ => unreachable_metrics(),
    }
});

#[expect(
    clippy::panic,
    reason = "metric definitions are static and valid; this cannot happen"
)]
fn unreachable_metrics() -> CacheMetrics {
    panic!("invalid static metric definition")
}

/// Counts a lookup result.
pub(crate) fn request(level: &'static str, result: &'static str) {
    METRICS.requests.with_label_values(&[level, result]).inc();
}

/// Counts a write result.
pub(crate) fn write(level: &'static str, result: &'static str) {
    METRICS.writes.with_label_values(&[level, result]).inc();
}

/// Times one operation into `uat_cache_operation_seconds`.
pub(crate) struct OpTimer {
    start: std::time::Instant,
    level: &'static str,
    op: &'static str,
}

impl OpTimer {
    pub(crate) fn start(level: &'static str, op: &'static str) -> Self {
        OpTimer {
            start: std::time::Instant::now(),
            level,
            op,
        }
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        METRICS
            .op_seconds
            .with_label_values(&[self.level, self.op])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Pre-resolved handles for one level's hot path (no label lookup per call).
pub(crate) struct LevelHandles {
    pub hit: prometheus::IntCounter,
    pub miss: prometheus::IntCounter,
    pub write_ok: prometheus::IntCounter,
    pub get_seconds: prometheus::Histogram,
    pub put_seconds: prometheus::Histogram,
    pub bytes: prometheus::IntGauge,
    pub evictions: prometheus::IntCounter,
}

impl LevelHandles {
    fn new(level: &'static str) -> Self {
        LevelHandles {
            hit: METRICS.requests.with_label_values(&[level, "hit"]),
            miss: METRICS.requests.with_label_values(&[level, "miss"]),
            write_ok: METRICS.writes.with_label_values(&[level, "ok"]),
            get_seconds: METRICS.op_seconds.with_label_values(&[level, "get"]),
            put_seconds: METRICS.op_seconds.with_label_values(&[level, "put"]),
            bytes: METRICS.bytes.with_label_values(&[level]),
            evictions: METRICS.evictions.with_label_values(&[level]),
        }
    }
}

/// L1's handles.
pub(crate) static L1: LazyLock<LevelHandles> = LazyLock::new(|| LevelHandles::new("l1"));
/// L2's handles (a miss answered by its key set is counted per request).
pub(crate) static L2: LazyLock<LevelHandles> = LazyLock::new(|| LevelHandles::new("l2"));
/// L3's handles (a miss answered by its row map is counted per request).
pub(crate) static L3: LazyLock<LevelHandles> = LazyLock::new(|| LevelHandles::new("l3"));

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Metric as _;

    /// Each level's pre-resolved handles count under that level's labels.
    #[test]
    fn level_handles_carry_their_level_and_result() {
        for (h, level) in [(&*L1, "l1"), (&*L2, "l2"), (&*L3, "l3")] {
            for (c, result) in [(&h.hit, "hit"), (&h.miss, "miss"), (&h.write_ok, "ok")] {
                let labels: Vec<(String, String)> = c
                    .metric()
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().to_owned()))
                    .collect();
                assert_eq!(
                    labels,
                    [
                        ("level".to_owned(), level.to_owned()),
                        ("result".to_owned(), result.to_owned())
                    ]
                );
            }
        }
    }
}
