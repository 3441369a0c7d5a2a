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
    cache_write: f64,
    cache_write_1h: f64,
}

/// A 5-minute cache write's price over the input price, when
/// `cache_write_per_million` is not set (Anthropic's).
const CACHE_WRITE_FACTOR: f64 = 1.25;

/// A 1-hour cache write's price over the input price, when
/// `cache_write_1h_per_million` is not set (Anthropic's).
const CACHE_WRITE_1H_FACTOR: f64 = 2.0;

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
            cache_write: per_token(
                p.cache_write_per_million
                    .unwrap_or(p.input_per_million * CACHE_WRITE_FACTOR),
            ),
            cache_write_1h: per_token(
                p.cache_write_1h_per_million
                    .unwrap_or(p.input_per_million * CACHE_WRITE_1H_FACTOR),
            ),
        }
    }

    /// What `usage` cost, in nano-USD (rounded): the prompt tokens read
    /// from the provider's cache (`prompt_tokens_details.cached_tokens`, at
    /// most the prompt) at the cached price, those written to it
    /// (`cache_creation_input_tokens`, at most the rest of the prompt) at
    /// the cache-write price (the 1-hour cache's for those of them written
    /// there), the other prompt tokens at the input price, the completion
    /// tokens at the output price. Counts that exceed the prompt (a
    /// confused upstream) are cut to it: never an underflow.
    pub fn cost_nanos(&self, usage: &Usage) -> u64 {
        let cached = usage
            .prompt_tokens_details
            .map_or(0, |d| d.cached_tokens)
            .min(usage.prompt_tokens);
        let rest = usage.prompt_tokens - cached;
        let written = usage.cache_creation_input_tokens.unwrap_or(0).min(rest);
        let written_1h = usage
            .cache_creation_1h_input_tokens
            .unwrap_or(0)
            .min(written);
        let fresh = rest - written;
        let n = fresh as f64 * self.input
            + cached as f64 * self.cached_input
            + (written - written_1h) as f64 * self.cache_write
            + written_1h as f64 * self.cache_write_1h
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
            cache_write_per_million: None,
            cache_write_1h_per_million: None,
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

    /// Anthropic's prompt-cache writes: 1.25 × the input price unset (its
    /// 5-minute cache), 2 × for those written to its 1-hour cache, or the
    /// prices set; reads at the cached price, the rest at the input price.
    #[test]
    fn cache_writes_cost_their_own_price() {
        // $3/M in, $15/M out, $0.30/M read: 3,000 / 15,000 / 300 nano-USD
        // a token; unset writes 3,750 (5 minutes) and 6,000 (1 hour).
        let sonnet = Price::new(&price(3.0, 15.0, Some(0.3)));
        // 5 fresh + 20 written + 100 read, 4 out.
        let u = Usage::new(125, 4)
            .with_cached_tokens(Some(100))
            .with_cache_writes(Some(20), None);
        let expect = 5 * 3_000 + 20 * 3_750 + 100 * 300 + 4 * 15_000;
        assert_eq!(sonnet.cost_nanos(&u), expect);
        assert_eq!(expect, 180_000, "0.00018 USD");
        // The same usage without the writes known costs less: they were
        // the input price (what the gateway charged before).
        let unknown = Usage::new(125, 4).with_cached_tokens(Some(100));
        assert_eq!(sonnet.cost_nanos(&unknown), expect - 20 * 750);
        // 8 of the 20 written to the 1-hour cache.
        let hour = u.with_cache_writes(Some(20), Some(8));
        assert_eq!(sonnet.cost_nanos(&hour), expect - 8 * 3_750 + 8 * 6_000);
        // Prices set win over the defaults.
        let set = Price::new(&ModelPrice {
            cache_write_per_million: Some(10.0),
            cache_write_1h_per_million: Some(20.0),
            ..price(3.0, 15.0, Some(0.3))
        });
        assert_eq!(
            set.cost_nanos(&hour),
            5 * 3_000 + 12 * 10_000 + 8 * 20_000 + 100 * 300 + 4 * 15_000
        );
        // Free writes are free (a price of 0 is a price, not unset).
        let free = Price::new(&ModelPrice {
            cache_write_per_million: Some(0.0),
            cache_write_1h_per_million: Some(0.0),
            ..price(3.0, 15.0, Some(0.3))
        });
        assert_eq!(free.cost_nanos(&hour), 5 * 3_000 + 100 * 300 + 4 * 15_000);
    }

    /// Parts that add up past the prompt (a confused upstream) are cut to
    /// it, reads first: never an underflow, never more than the prompt.
    #[test]
    fn cache_counts_past_the_prompt_are_cut_to_it() {
        let p = Price::new(&price(1.0, 0.0, Some(0.5)));
        // 10 prompt tokens: 6 read, "9" written: 4 written, 0 fresh.
        let odd = Usage::new(10, 0)
            .with_cached_tokens(Some(6))
            .with_cache_writes(Some(9), None);
        assert_eq!(p.cost_nanos(&odd), 6 * 500 + 4 * 1_250);
        // Everything read: the writes count for nothing.
        let all_read = Usage::new(10, 0)
            .with_cached_tokens(Some(u64::MAX))
            .with_cache_writes(Some(u64::MAX), Some(u64::MAX));
        assert_eq!(p.cost_nanos(&all_read), 10 * 500);
        // More 1-hour writes than writes: at most the writes.
        let hour = Usage::new(10, 0).with_cache_writes(Some(3), Some(7));
        assert_eq!(p.cost_nanos(&hour), 7 * 1_000 + 3 * 2_000);
        // Writes without a prompt at all.
        let none = Usage::new(0, 0).with_cache_writes(Some(5), Some(5));
        assert_eq!(p.cost_nanos(&none), 0);
        // Huge counts saturate.
        let huge = Usage::new(u64::MAX, u64::MAX).with_cache_writes(Some(u64::MAX / 2), None);
        assert_eq!(p.cost_nanos(&huge), u64::MAX);
    }
}
