use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// `[[providers]]`: one upstream LLM provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name, used in `provider/model` targets and the `x-uat-provider` header.
    pub name: String,
    /// Wire protocol spoken by the provider.
    pub kind: ProviderKind,
    /// Base URL. Kind `openai`: include `/v1`, as the OpenAI SDKs do. Not used by `mock`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable that holds the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Models served. Empty: discover them from the provider.
    #[serde(default)]
    pub models: Vec<String>,
    /// Share of traffic under the `weighted` strategy.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Order under the `priority` strategy: lower is tried first.
    #[serde(default)]
    pub priority: i32,
    /// Total time allowed for one upstream request, streamed or not (the
    /// OpenAI SDKs' default, 10 minutes: long generations, reasoning models).
    /// A non-streamed answer's first byte comes only when it is complete, so
    /// only this bounds it.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Time allowed to open a connection.
    #[serde(default = "default_connect_timeout", with = "crate::duration")]
    pub connect_timeout: Duration,
    /// Time allowed until the first token of a stream: a silent provider is
    /// given up (and the request retried or failed over) this soon. 30 s;
    /// for kind `ollama` [`OLLAMA_FIRST_BYTE_TIMEOUT`].
    #[serde(default = "default_first_byte_timeout", with = "crate::duration")]
    pub first_byte_timeout: Duration,
    /// Kind `anthropic` only: `max_tokens` sent when the client sets neither
    /// `max_tokens` nor `max_completion_tokens` (Anthropic requires one).
    /// Unset: the model's own output limit, from a table of Claude families
    /// (4096 for a model the table does not know).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u32>,
    /// Behaviour of a `mock` provider.
    #[serde(default)]
    pub mock: MockSettings,
}

impl ProviderConfig {
    /// A provider with every optional setting at its default.
    pub fn new(name: impl Into<String>, kind: ProviderKind, base_url: Option<String>) -> Self {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url,
            api_key_env: None,
            models: Vec::new(),
            weight: default_weight(),
            priority: 0,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            first_byte_timeout: first_byte_timeout_of(kind),
            default_max_tokens: None,
            mock: MockSettings::default(),
        }
    }
}

fn default_weight() -> u32 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `first_byte_timeout` of an `ollama` provider that sets none. Ollama loads
/// a model on the first request that names it and answers nothing until it
/// is loaded, which for a large model read from disk takes a minute or more:
/// with 30 s the first streamed request after every load failed.
pub const OLLAMA_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);

fn first_byte_timeout_of(kind: ProviderKind) -> Duration {
    match kind {
        ProviderKind::Ollama => OLLAMA_FIRST_BYTE_TIMEOUT,
        _ => default_first_byte_timeout(),
    }
}

/// Defaults that depend on a provider's kind, filled into the TOML before it
/// is deserialized (serde's defaults cannot see the kind): an `ollama`
/// provider without `first_byte_timeout` gets [`OLLAMA_FIRST_BYTE_TIMEOUT`].
pub(crate) fn kind_defaults(table: &mut toml::Table) {
    let Some(toml::Value::Array(providers)) = table.get_mut("providers") else {
        return;
    };
    for p in providers {
        if let toml::Value::Table(p) = p
            && p.get("kind").and_then(toml::Value::as_str) == Some("ollama")
            && !p.contains_key("first_byte_timeout")
        {
            p.insert(
                "first_byte_timeout".into(),
                toml::Value::String(crate::duration::format(OLLAMA_FIRST_BYTE_TIMEOUT)),
            );
        }
    }
}

/// Wire protocol of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server (OpenAI, vLLM, LM Studio, llama.cpp, ...).
    Openai,
    /// Ollama's native API (`/api/chat`, `/api/tags`).
    Ollama,
    /// Anthropic's Messages API.
    Anthropic,
    /// Built in: deterministic replies, for demos, tests and load tests.
    Mock,
}

/// `[providers.mock]`: how a `mock` provider behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockSettings {
    /// Delay before the reply (and before the first chunk when streaming).
    #[serde(with = "crate::duration")]
    pub latency: Duration,
    /// Fraction of requests that fail with a 500, from 0.0 to 1.0.
    pub failure_rate: f64,
    /// Number of content chunks in a streamed reply.
    pub chunks: usize,
    /// Models the mock serves when `models` is empty.
    pub models: Vec<String>,
}

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings {
            latency: Duration::ZERO,
            failure_rate: 0.0,
            chunks: 5,
            models: vec!["mock-model".into()],
        }
    }
}

/// `[[models]]`: a public alias with several `provider/model` targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAlias {
    /// Public name clients use.
    pub name: String,
    /// Targets as `provider/model`; all are candidates for routing and failover.
    pub targets: Vec<String>,
}

/// `[routing]`: how a provider is chosen, and retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Strategy used to order candidate providers.
    pub strategy: RoutingStrategy,
    /// Attempts per request across all candidates (1 = no retry).
    pub max_attempts: u32,
    /// First retry delay; doubles each retry, with jitter.
    #[serde(with = "crate::duration")]
    pub backoff_base: Duration,
    /// Largest retry delay (also caps an upstream's Retry-After).
    #[serde(with = "crate::duration")]
    pub backoff_max: Duration,
    /// Consecutive failures that open a provider's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before a half-open probe.
    #[serde(with = "crate::duration")]
    pub breaker_cooldown: Duration,
    /// How often model lists are refreshed from providers.
    #[serde(with = "crate::duration")]
    pub discovery_interval: Duration,
    /// Probe the usual local providers when no `[[providers]]` is configured.
    pub probe_local: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: RoutingStrategy::LeastLatency,
            max_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            discovery_interval: Duration::from_secs(60),
            probe_local: true,
        }
    }
}

/// Provider selection strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingStrategy {
    /// Lowest `priority` first.
    Priority,
    /// Rotate through candidates.
    RoundRobin,
    /// Random, proportional to `weight`.
    Weighted,
    /// Lowest EWMA latency first.
    LeastLatency,
    /// Fewest requests in flight first.
    LeastBusy,
}

pub(crate) fn validate(
    providers: &[ProviderConfig],
    models: &[ModelAlias],
    routing: &RoutingConfig,
) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, p) in providers.iter().enumerate() {
        let at = |f: &str| format!("providers[{i}].{f}");
        if p.name.is_empty() || p.name.contains('/') {
            return Err(ConfigError::invalid(
                at("name"),
                "must be non-empty and contain no `/`",
            ));
        }
        if !names.insert(p.name.as_str()) {
            return Err(ConfigError::invalid(
                at("name"),
                format!("duplicate provider `{}`", p.name),
            ));
        }
        match (&p.kind, &p.base_url) {
            (ProviderKind::Mock, _) => {}
            (_, None) => {
                return Err(ConfigError::invalid(
                    at("base_url"),
                    "required for this kind",
                ));
            }
            (_, Some(u)) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                return Err(ConfigError::invalid(
                    at("base_url"),
                    format!("`{u}` is not an http(s) URL"),
                ));
            }
            (_, Some(u)) => {
                // What the router parses at start-up: a URL `serve` would
                // refuse is refused here, so `config check` catches it.
                if let Err(e) = url::Url::parse(u) {
                    return Err(ConfigError::invalid(
                        at("base_url"),
                        format!("`{u}` is not a valid URL: {e}"),
                    ));
                }
            }
        }
        if !(0.0..=1.0).contains(&p.mock.failure_rate) {
            return Err(ConfigError::invalid(
                at("mock.failure_rate"),
                "must be between 0 and 1",
            ));
        }
        if !(1..=100_000).contains(&p.mock.chunks) {
            return Err(ConfigError::invalid(
                at("mock.chunks"),
                "must be from 1 to 100000",
            ));
        }
        match (p.default_max_tokens, p.kind) {
            (Some(0), _) => {
                return Err(ConfigError::invalid(
                    at("default_max_tokens"),
                    "must be more than zero",
                ));
            }
            (Some(_), kind) if kind != ProviderKind::Anthropic => {
                return Err(ConfigError::invalid(
                    at("default_max_tokens"),
                    "is used only by kind \"anthropic\" (other kinds send no max_tokens the client did not set)",
                ));
            }
            _ => {}
        }
        for (field, d) in [
            ("timeout", p.timeout),
            ("connect_timeout", p.connect_timeout),
            ("first_byte_timeout", p.first_byte_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(at(field), "must be more than zero"));
            }
        }
    }
    let mut aliases = HashSet::new();
    for (i, m) in models.iter().enumerate() {
        if !aliases.insert(m.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("models[{i}].name"),
                format!("duplicate alias `{}`", m.name),
            ));
        }
        if m.targets.is_empty() {
            return Err(ConfigError::invalid(
                format!("models[{i}].targets"),
                "needs at least one target",
            ));
        }
        for (j, t) in m.targets.iter().enumerate() {
            let Some((prov, model)) = t.split_once('/') else {
                return Err(ConfigError::invalid(
                    format!("models[{i}].targets[{j}]"),
                    format!("`{t}` is not `provider/model`"),
                ));
            };
            if model.is_empty() || (!providers.is_empty() && !names.contains(prov)) {
                return Err(ConfigError::invalid(
                    format!("models[{i}].targets[{j}]"),
                    format!("unknown provider `{prov}` in `{t}`"),
                ));
            }
        }
    }
    if routing.max_attempts == 0 {
        return Err(ConfigError::invalid(
            "routing.max_attempts",
            "must be at least 1",
        ));
    }
    if routing.breaker_failures == 0 {
        return Err(ConfigError::invalid(
            "routing.breaker_failures",
            "must be at least 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn anthropic(extra: &str, kind: &str) -> String {
        format!(
            "[[providers]]\nname = \"c\"\nkind = \"{kind}\"\nbase_url = \"https://api.anthropic.com\"\n{extra}\n"
        )
    }

    /// `default_max_tokens` overrides the Anthropic model table; zero, or a
    /// kind that would not use it, is refused by its path.
    #[test]
    fn default_max_tokens_is_positive_and_for_anthropic_only() {
        let c = Config::from_toml(&anthropic("default_max_tokens = 16000", "anthropic")).unwrap();
        assert_eq!(c.providers[0].default_max_tokens, Some(16000));
        let c = Config::from_toml(&anthropic("", "anthropic")).unwrap();
        assert_eq!(c.providers[0].default_max_tokens, None);
        for (extra, kind) in [
            ("default_max_tokens = 0", "anthropic"),
            ("default_max_tokens = 100", "openai"),
            ("default_max_tokens = 100", "ollama"),
        ] {
            let msg = Config::from_toml(&anthropic(extra, kind))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("providers[0].default_max_tokens"),
                "{kind}: {msg}"
            );
        }
        let msg = Config::from_toml(&anthropic("default_max_tokens = -1", "anthropic"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("default_max_tokens"), "{msg}");
    }
}
