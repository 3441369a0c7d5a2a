//! `[pricing]`: what each model's tokens cost, for cost tracking and the
//! per-key budgets (`max_budget`).

use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[pricing."<model>"]`: the price of one model's tokens, in USD per
/// million. The table is keyed by an upstream model name (`gpt-4o`), a
/// `provider/model` (`openai/gpt-4o`, which wins over the bare name) or an
/// alias from `[[models]]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// USD per million prompt tokens.
    pub input_per_million: f64,
    /// USD per million completion tokens (0 when absent: embedding models).
    #[serde(default)]
    pub output_per_million: f64,
    /// USD per million prompt tokens read from the provider's prompt cache
    /// (`usage.prompt_tokens_details.cached_tokens`). Absent: they cost
    /// `input_per_million` like the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<f64>,
    /// USD per million prompt tokens written to the provider's prompt
    /// cache (`usage.cache_creation_input_tokens`, as Anthropic reports
    /// them) for its 5-minute cache. Absent: 1.25 × `input_per_million`,
    /// Anthropic's price of a 5-minute cache write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<f64>,
    /// USD per million prompt tokens written to Anthropic's 1-hour prompt
    /// cache (`usage.cache_creation.ephemeral_1h_input_tokens`). Absent:
    /// 2 × `input_per_million`, Anthropic's price of a 1-hour cache write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h_per_million: Option<f64>,
}

/// The `[pricing]` table, by model name.
pub type PricingConfig = BTreeMap<String, ModelPrice>;

/// Checks every price: a finite number, not negative; the error names the
/// model's key (`pricing."gpt-4o".input_per_million`).
pub(crate) fn validate(pricing: &PricingConfig) -> Result<(), ConfigError> {
    for (model, p) in pricing {
        let at = |f: &str| format!("pricing.\"{model}\".{f}");
        if model.trim().is_empty() {
            return Err(ConfigError::invalid(
                "pricing",
                "a model name must not be empty",
            ));
        }
        for (field, v) in [
            ("input_per_million", Some(p.input_per_million)),
            ("output_per_million", Some(p.output_per_million)),
            ("cached_input_per_million", p.cached_input_per_million),
            ("cache_write_per_million", p.cache_write_per_million),
            ("cache_write_1h_per_million", p.cache_write_1h_per_million),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(ConfigError::invalid(
                    at(field),
                    format!("must be a finite number of USD, 0 or more (got {v})"),
                ));
            }
        }
    }
    Ok(())
}
