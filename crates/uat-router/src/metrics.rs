//! Router metrics, registered once; each provider resolves its label
//! handles at start-up so a request costs a few atomic operations.

use crate::error::FailureKind;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use std::sync::LazyLock;

struct Families {
    duration: HistogramVec,
    ttft: HistogramVec,
    up: IntGaugeVec,
    errors: IntCounterVec,
    tokens: IntCounterVec,
}

static FAMILIES: LazyLock<Option<Families>> = LazyLock::new(|| {
    let buckets = uat_telemetry::LATENCY_BUCKETS.to_vec();
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "uat_upstream_duration_seconds",
            "Duration of upstream requests, by provider",
        )
        .buckets(buckets.clone()),
        &["provider"],
    )
    .ok()?;
    let ttft = HistogramVec::new(
        HistogramOpts::new(
            "uat_time_to_first_token_seconds",
            "Time from sending a streamed request upstream to its first chunk, by provider",
        )
        .buckets(buckets),
        &["provider"],
    )
    .ok()?;
    let up = IntGaugeVec::new(
        Opts::new(
            "uat_provider_up",
            "1 when the provider answers and its breaker is closed",
        ),
        &["provider"],
    )
    .ok()?;
    let errors = IntCounterVec::new(
        Opts::new(
            "uat_provider_errors_total",
            "Failed upstream attempts by provider and kind",
        ),
        &["provider", "kind"],
    )
    .ok()?;
    let tokens = IntCounterVec::new(
        Opts::new(
            "uat_tokens_total",
            "Tokens reported in upstream usage, by provider and kind",
        ),
        &["provider", "kind"],
    )
    .ok()?;
    Some(Families {
        duration: uat_telemetry::register(duration),
        ttft: uat_telemetry::register(ttft),
        up: uat_telemetry::register(up),
        errors: uat_telemetry::register(errors),
        tokens: uat_telemetry::register(tokens),
    })
});

/// One provider's metric handles.
pub(crate) struct ProviderMetrics {
    pub duration: Option<Histogram>,
    pub ttft: Option<Histogram>,
    pub up: Option<IntGauge>,
    errors: Vec<IntCounter>,
    pub prompt_tokens: Option<IntCounter>,
    pub completion_tokens: Option<IntCounter>,
}

impl ProviderMetrics {
    pub fn new(provider: &str) -> Self {
        match FAMILIES.as_ref() {
            Some(f) => ProviderMetrics {
                duration: Some(f.duration.with_label_values(&[provider])),
                ttft: Some(f.ttft.with_label_values(&[provider])),
                up: Some(f.up.with_label_values(&[provider])),
                errors: FailureKind::ALL
                    .iter()
                    .map(|k| f.errors.with_label_values(&[provider, k.as_str()]))
                    .collect(),
                prompt_tokens: Some(f.tokens.with_label_values(&[provider, "prompt"])),
                completion_tokens: Some(f.tokens.with_label_values(&[provider, "completion"])),
            },
            None => ProviderMetrics {
                duration: None,
                ttft: None,
                up: None,
                errors: Vec::new(),
                prompt_tokens: None,
                completion_tokens: None,
            },
        }
    }

    pub fn error(&self, kind: FailureKind) {
        if let Some(c) = self.errors.get(kind.index()) {
            c.inc();
        }
    }

    pub fn set_up(&self, up: bool) {
        if let Some(g) = &self.up {
            g.set(i64::from(up));
        }
    }

    pub fn observe_duration(&self, secs: f64) {
        if let Some(h) = &self.duration {
            h.observe(secs);
        }
    }

    pub fn observe_ttft(&self, secs: f64) {
        if let Some(h) = &self.ttft {
            h.observe(secs);
        }
    }

    pub fn tokens(&self, usage: &uat_types::Usage) {
        if let Some(c) = &self.prompt_tokens {
            c.inc_by(usage.prompt_tokens);
        }
        if let Some(c) = &self.completion_tokens {
            c.inc_by(usage.completion_tokens);
        }
    }
}
