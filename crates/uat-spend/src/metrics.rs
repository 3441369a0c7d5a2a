//! The spend metrics, registered once.

use prometheus::{CounterVec, IntCounterVec, Opts};
use std::sync::LazyLock;

struct SpendMetrics {
    usd: CounterVec,
    unpriced: IntCounterVec,
    estimated: IntCounterVec,
}

static METRICS: LazyLock<SpendMetrics> = LazyLock::new(|| {
    let usd = CounterVec::new(
        Opts::new(
            "uat_spend_usd_total",
            "USD spent on upstream model answers, priced by [pricing], by API key (\"\" without keys) and the model the client asked for",
        ),
        &["key", "model"],
    );
    let unpriced = IntCounterVec::new(
        Opts::new(
            "uat_spend_unpriced_total",
            "Upstream model answers that could not be priced (the model has no [pricing] entry), by the model the client asked for",
        ),
        &["model"],
    );
    let estimated = IntCounterVec::new(
        Opts::new(
            "uat_spend_estimated_total",
            "Upstream model answers priced by an estimate of their tokens (they reported no usage: a stream cut short or left by its client, an upstream ignoring stream_options), by the model the client asked for",
        ),
        &["model"],
    );
    match (usd, unpriced, estimated) {
        (Ok(usd), Ok(unpriced), Ok(estimated)) => SpendMetrics {
            usd: uat_telemetry::register(usd),
            unpriced: uat_telemetry::register(unpriced),
            estimated: uat_telemetry::register(estimated),
        },
        _ => unreachable_metrics(),
    }
});

#[expect(
    clippy::panic,
    reason = "metric definitions are static and valid; this cannot happen"
)]
fn unreachable_metrics() -> SpendMetrics {
    panic!("invalid static metric definition")
}

/// Adds an answer's cost to `uat_spend_usd_total{key,model}` (`key` is ""
/// without keys; `model` is the name the client asked for).
pub fn record(key: &str, model: &str, nanos: u64) {
    METRICS
        .usd
        .with_label_values(&[key, model])
        .inc_by(crate::usd(nanos));
}

/// Counts an answer that could not be priced in
/// `uat_spend_unpriced_total{model}`.
pub fn record_unpriced(model: &str) {
    METRICS.unpriced.with_label_values(&[model]).inc();
}

/// Counts an answer priced by an estimate (it reported no usage) in
/// `uat_spend_estimated_total{model}`.
pub fn record_estimated(model: &str) {
    METRICS.estimated.with_label_values(&[model]).inc();
}
