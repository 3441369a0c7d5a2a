//! `[pricing]` made ready for lookups: what an answer's usage cost.

use std::collections::HashMap;
use uat_config::{ModelPrice, PricingConfig};
use uat_types::Usage;

/// One model's price, in nano-USD per token (USD per million × 1,000).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    input: f64,
    output: f64,
    cached_input: f64,
}

/// Nano-USD per token of a price per million tokens in USD.
fn per_token(usd_per_million: f64) -> f64 {
    usd_per_million * (crate::NANOS_PER_USD as f64 / 1_000_000.0)
}

impl Price {
    /// From `[pricing."<model>"]`.
    pub fn new(p: &ModelPrice) -> Self {
        Price {
            input: per_token(p.input_per_million),
            output: per_token(p.output_per_million),
            cached_input: per_token(p.cached_input_per_million.unwrap_or(p.input_per_million)),
        }
    }

    /// What `usage` cost, in nano-USD (rounded): the prompt tokens read
    /// from the provider's cache (`prompt_tokens_details.cached_tokens`, at
    /// most the prompt) at the cached price, the other prompt tokens at the
    /// input price, the completion tokens at the output price.
    pub fn cost_nanos(&self, usage: &Usage) -> u64 {
        let cached = usage
            .prompt_tokens_details
            .map_or(0, |d| d.cached_tokens)
            .min(usage.prompt_tokens);
        let fresh = usage.prompt_tokens - cached;
        let n = fresh as f64 * self.input
            + cached as f64 * self.cached_input
            + usage.completion_tokens as f64 * self.output;
        // `as` saturates: an absurd usage is u64::MAX, never a wrap.
        n.round() as u64
    }
}

/// The `[pricing]` table, by name and by `provider/model`.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    /// Every entry by its key as written.
    by_name: HashMap<Box<str>, Price>,
    /// The entries whose key holds a `/`, by provider then model (split at
    /// the first `/`), so a `provider/model` is found without building it.
    by_provider: HashMap<Box<str>, HashMap<Box<str>, Price>>,
}

impl Pricing {
    /// From the configuration.
    pub fn new(cfg: &PricingConfig) -> Self {
        let mut out = Pricing::default();
        for (name, p) in cfg {
            let price = Price::new(p);
            out.by_name.insert(name.as_str().into(), price);
            if let Some((provider, model)) = name.split_once('/') {
                out.by_provider
                    .entry(provider.into())
                    .or_default()
                    .insert(model.into(), price);
            }
        }
        out
    }

    /// True when no model is priced.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The price of an answer: of the `provider/model` that served it, else
    /// of that model's name, else of the name the client asked for (an
    /// alias).
    pub fn lookup(&self, provider: &str, model: &str, requested: &str) -> Option<&Price> {
        self.by_provider
            .get(provider)
            .and_then(|m| m.get(model))
            .or_else(|| self.by_name.get(model))
            .or_else(|| self.by_name.get(requested))
    }

    /// What an answer cost in nano-USD; `None` when its model is unpriced.
    pub fn cost_nanos(
        &self,
        provider: &str,
        model: &str,
        requested: &str,
        usage: &Usage,
    ) -> Option<u64> {
        self.lookup(provider, model, requested)
            .map(|p| p.cost_nanos(usage))
    }

    /// What an answer cost in USD; `None` when its model is unpriced.
    pub fn cost(&self, provider: &str, model: &str, requested: &str, usage: &Usage) -> Option<f64> {
        self.cost_nanos(provider, model, requested, usage)
            .map(crate::usd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64, cached: Option<f64>) -> ModelPrice {
        ModelPrice {
            input_per_million: input,
            output_per_million: output,
            cached_input_per_million: cached,
        }
    }

    fn table() -> Pricing {
        let mut cfg = PricingConfig::new();
        cfg.insert("gpt-4o".into(), price(2.5, 10.0, Some(1.25)));
        cfg.insert("openai/gpt-4o".into(), price(5.0, 20.0, None));
        cfg.insert("fast".into(), price(0.1, 0.2, None));
        cfg.insert("meta-llama/Llama-3-8B".into(), price(0.3, 0.3, None));
        Pricing::new(&cfg)
    }

    #[test]
    fn lookup_prefers_provider_model_then_model_then_the_asked_name() {
        let p = table();
        let gpt = Price::new(&price(2.5, 10.0, Some(1.25)));
        let openai = Price::new(&price(5.0, 20.0, None));
        let fast = Price::new(&price(0.1, 0.2, None));
        assert_eq!(p.lookup("openai", "gpt-4o", "gpt-4o"), Some(&openai));
        assert_eq!(p.lookup("azure", "gpt-4o", "gpt-4o"), Some(&gpt));
        // Asked for by an alias: the served model's price wins over it.
        assert_eq!(p.lookup("azure", "gpt-4o", "fast"), Some(&gpt));
        assert_eq!(p.lookup("openai", "gpt-4o", "fast"), Some(&openai));
        // The served model is unpriced: the alias's price.
        assert_eq!(p.lookup("ollama", "llama3", "fast"), Some(&fast));
        assert_eq!(p.lookup("ollama", "llama3", "llama3"), None);
        // A model name holding a slash is found by its name too.
        assert!(p.lookup("vllm", "meta-llama/Llama-3-8B", "x").is_some());
        assert!(!p.is_empty() && Pricing::default().is_empty());
    }

    #[test]
    fn cost_prices_prompt_completion_and_cached_tokens_apart() {
        let p = table();
        // 1,000 prompt tokens at $2.50/M + 500 completion at $10/M.
        let u = Usage::new(1_000, 500);
        assert_eq!(
            p.cost_nanos("azure", "gpt-4o", "gpt-4o", &u),
            Some(7_500_000)
        );
        assert_eq!(p.cost("azure", "gpt-4o", "gpt-4o", &u), Some(0.0075));
        // 400 of the prompt read from the provider's cache at $1.25/M:
        // 600 × 2,500 + 400 × 1,250 + 500 × 10,000 nano-USD.
        let cached = Usage::new(1_000, 500).with_cached_tokens(Some(400));
        assert_eq!(
            p.cost_nanos("azure", "gpt-4o", "gpt-4o", &cached),
            Some(1_500_000 + 500_000 + 5_000_000)
        );
        // No cached price: cached tokens cost the input price.
        assert_eq!(
            p.cost_nanos("openai", "gpt-4o", "gpt-4o", &cached),
            p.cost_nanos("openai", "gpt-4o", "gpt-4o", &u)
        );
        // More cached than prompt (a confused upstream): at most the prompt.
        let odd = Usage::new(10, 0).with_cached_tokens(Some(99));
        assert_eq!(
            p.cost_nanos("azure", "gpt-4o", "gpt-4o", &odd),
            Some(12_500)
        );
        assert_eq!(p.cost_nanos("x", "unpriced", "unpriced", &u), None);
        // Tiny prices round to whole nano-USD; huge usages saturate.
        assert_eq!(
            p.cost_nanos("x", "fast", "fast", &Usage::new(7, 0)),
            Some(700)
        );
        let tiny = Price::new(&price(0.0001, 0.0, None));
        assert_eq!(tiny.cost_nanos(&Usage::new(7, 0)), 1, "0.7 nano-USD");
        let huge = Usage::new(u64::MAX, u64::MAX);
        assert_eq!(p.cost_nanos("x", "gpt-4o", "gpt-4o", &huge), Some(u64::MAX));
    }
}
