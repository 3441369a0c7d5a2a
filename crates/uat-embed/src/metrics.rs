//! The embedding engine's Prometheus metrics, registered once in the process-wide
//! registry of `uat-telemetry`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts};
use std::sync::LazyLock;
use std::time::Duration;

struct EmbedMetrics {
    batch_size: Histogram,
    batch_tokens: Histogram,
    queue_seconds: Histogram,
    inference_seconds: Histogram,
    inputs: IntCounter,
    tokens: IntCounter,
    models_loaded: IntGauge,
    model_bytes: IntGaugeVec,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

fn build() -> prometheus::Result<EmbedMetrics> {
    use uat_telemetry::register as reg;
    Ok(EmbedMetrics {
        batch_size: reg(histogram(
            "uat_embed_batch_size",
            "Inputs per embedding forward pass",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
        )?),
        batch_tokens: reg(histogram(
            "uat_embed_batch_tokens",
            "Padded tokens (longest x count) per embedding batch",
            prometheus::exponential_buckets(16.0, 2.0, 13)?,
        )?),
        queue_seconds: reg(histogram(
            "uat_embed_queue_seconds",
            "Time an input waited in the batch queue",
            uat_telemetry::LATENCY_BUCKETS.to_vec(),
        )?),
        inference_seconds: reg(histogram(
            "uat_embed_inference_seconds",
            "Duration of one embedding forward pass",
            uat_telemetry::LATENCY_BUCKETS.to_vec(),
        )?),
        inputs: reg(IntCounter::new(
            "uat_embed_inputs_total",
            "Inputs embedded by local models",
        )?),
        tokens: reg(IntCounter::new(
            "uat_embed_tokens_total",
            "Tokens embedded by local models",
        )?),
        models_loaded: reg(IntGauge::new(
            "uat_embed_models_loaded",
            "Local embedding models loaded now",
        )?),
        model_bytes: reg(IntGaugeVec::new(
            Opts::new(
                "uat_embed_model_bytes",
                "Memory held by a loaded embedding model",
            ),
            &["model"],
        )?),
    })
}

static METRICS: LazyLock<Option<EmbedMetrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "embedding metrics are disabled");
        None
    }
});

/// Records one forward pass: its size, padded tokens, real tokens and duration.
pub(crate) fn batch(size: usize, padded_tokens: usize, tokens: usize, took: Duration) {
    if let Some(m) = METRICS.as_ref() {
        m.batch_size.observe(size as f64);
        m.batch_tokens.observe(padded_tokens as f64);
        m.inference_seconds.observe(took.as_secs_f64());
        m.inputs.inc_by(size as u64);
        m.tokens.inc_by(tokens as u64);
    }
}

/// Records how long one input waited in the queue.
pub(crate) fn queued(waited: Duration) {
    if let Some(m) = METRICS.as_ref() {
        m.queue_seconds.observe(waited.as_secs_f64());
    }
}

/// Records the loaded models and one model's memory (0 when unloaded).
pub(crate) fn model_memory(model: &str, bytes: u64, loaded_models: usize) {
    if let Some(m) = METRICS.as_ref() {
        m.model_bytes
            .with_label_values(&[model])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        m.models_loaded
            .set(i64::try_from(loaded_models).unwrap_or(i64::MAX));
    }
}
