use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[cache]`: the tiered response cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// What is cached.
    pub mode: CacheMode,
    /// Default time to live of an entry.
    #[serde(with = "crate::duration")]
    pub ttl: Duration,
    /// Per-model TTL overrides (`model = "10m"`).
    #[serde(with = "ttl_map")]
    pub model_ttl: BTreeMap<String, Duration>,
    /// L1, in-process.
    pub l1: CacheL1Config,
    /// L2, Redis.
    pub l2: CacheL2Config,
    /// L3, the SQL database of `[storage]`.
    pub l3: CacheL3Config,
    /// Capacity of the queue of L2/L3 writes; when full a write is dropped
    /// (and counted), never waited for.
    pub write_queue: usize,
    /// Longest time an identical request waits for one already in flight
    /// before calling upstream itself.
    #[serde(with = "crate::duration")]
    pub singleflight_wait: Duration,
}

mod ttl_map {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let out: BTreeMap<&String, String> = m
            .iter()
            .map(|(k, v)| (k, crate::duration::format(*v)))
            .collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                // Bounded by `validate`, which names the model in the path.
                humantime::parse_duration(&v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| serde::de::Error::custom(format!("{k}: {e}")))
            })
            .collect()
    }
}

/// Which requests are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Only requests whose output is reproducible: `temperature = 0` or a `seed`.
    Deterministic,
    /// Every request.
    Always,
    /// Nothing.
    Off,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::Deterministic,
            ttl: Duration::from_secs(3600),
            model_ttl: BTreeMap::new(),
            l1: CacheL1Config::default(),
            l2: CacheL2Config::default(),
            l3: CacheL3Config::default(),
            write_queue: 4096,
            singleflight_wait: Duration::from_secs(120),
        }
    }
}

/// Largest `write_queue` accepted (each queued write holds its value).
const MAX_WRITE_QUEUE: usize = 1 << 20;

/// Shortest `cache.l3.purge_interval` accepted.
const MIN_PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest `write_delay` accepted for L2 and L3.
const MAX_WRITE_DELAY: Duration = Duration::from_secs(10);

/// Longest time to live an entry can have: 10 years as `"10y"` counts them
/// (365.25 days a year), 315,576,000 s. The bound on `cache.ttl`,
/// `cache.model_ttl` and the `x-uat-cache-ttl` header, and the cache's own
/// clamp (an unbounded time to live overflows clock arithmetic).
pub const MAX_TTL: Duration = crate::duration::MAX_DURATION;

/// `[cache.l1]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheL1Config {
    /// Size bound of L1 in bytes (0 disables L1).
    pub max_bytes: u64,
}

impl Default for CacheL1Config {
    fn default() -> Self {
        CacheL1Config {
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// `[cache.l2]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheL2Config {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/`. Absent: no L2.
    pub url: Option<String>,
    /// Timeout of one Redis operation; past it the level is skipped
    /// (absent: [`CacheL2Config::DEFAULT_TIMEOUT`]).
    #[serde(with = "crate::duration::option")]
    pub timeout: Option<Duration>,
    /// Prefix of every key (and of the invalidation channel), so several
    /// deployments can share one Redis.
    pub key_prefix: String,
    /// How long writes are gathered before they go to Redis as one pipeline.
    /// This replica's L1 has an entry at once; other replicas find it in
    /// Redis this much later. `0s` sends what is queued at once.
    #[serde(with = "crate::duration")]
    pub write_delay: Duration,
}

impl CacheL2Config {
    /// Per-operation timeout when none is configured.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

    /// The timeout in effect.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT)
    }
}

impl Default for CacheL2Config {
    fn default() -> Self {
        CacheL2Config {
            url: None,
            timeout: None,
            key_prefix: "uat:cache:".into(),
            write_delay: Duration::from_millis(20),
        }
    }
}

/// `[cache.l3]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheL3Config {
    /// Use the `[storage]` database as L3.
    pub enabled: bool,
    /// How often expired rows are purged; at least 1 s. There is no "never"
    /// (`0s` is refused, not read as off as `memory.purge_interval` reads it):
    /// expired rows are never served, but they would pile up.
    #[serde(with = "crate::duration")]
    pub purge_interval: Duration,
    /// How long writes are gathered before they go to the database as one
    /// statement: each commit has a fixed cost, so L3 commits rarely.
    #[serde(with = "crate::duration")]
    pub write_delay: Duration,
}

impl Default for CacheL3Config {
    fn default() -> Self {
        CacheL3Config {
            enabled: true,
            purge_interval: Duration::from_secs(300),
            write_delay: Duration::from_millis(250),
        }
    }
}

impl CacheConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.l2.url {
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://"))
            {
                return Err(ConfigError::invalid(
                    "cache.l2.url",
                    "must be a redis:// URL",
                ));
            }
            // The Redis client's own parser: a URL it refuses would stop
            // `serve` at start-up, so `config check` refuses it too. (The
            // message does not repeat the URL: it may hold a password.)
            if let Err(e) = url::Url::parse(u) {
                return Err(ConfigError::invalid(
                    "cache.l2.url",
                    format!("not a valid URL: {e}"),
                ));
            }
        }
        if self.ttl.is_zero() || self.ttl > MAX_TTL {
            return Err(ConfigError::invalid(
                "cache.ttl",
                "must be more than zero and at most 10 years",
            ));
        }
        if let Some((model, _)) = self
            .model_ttl
            .iter()
            .find(|(_, t)| t.is_zero() || **t > MAX_TTL)
        {
            return Err(ConfigError::invalid(
                format!("cache.model_ttl.{model}"),
                "must be more than zero and at most 10 years",
            ));
        }
        for (path, delay) in [
            ("cache.l2.write_delay", self.l2.write_delay),
            ("cache.l3.write_delay", self.l3.write_delay),
        ] {
            if delay > MAX_WRITE_DELAY {
                return Err(ConfigError::invalid(
                    path,
                    "must be at most 10s (entries reach the level this late)",
                ));
            }
        }
        if self.l3.purge_interval < MIN_PURGE_INTERVAL {
            return Err(ConfigError::invalid(
                "cache.l3.purge_interval",
                "must be at least 1s (each purge is a DELETE on the database; `0s` \
                 does not turn purging off; expired rows are never served, so a long \
                 interval costs only disk space)",
            ));
        }
        if !(1..=MAX_WRITE_QUEUE).contains(&self.write_queue) {
            return Err(ConfigError::invalid(
                "cache.write_queue",
                format!("must be from 1 to {MAX_WRITE_QUEUE}"),
            ));
        }
        if self.l2.key_prefix.contains(['*', '?', '[', ']']) {
            return Err(ConfigError::invalid(
                "cache.l2.key_prefix",
                "must not contain glob characters",
            ));
        }
        if self.l2.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::invalid(
                "cache.l2.timeout",
                "must be more than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn err(toml: &str) -> String {
        match Config::from_toml(toml) {
            Ok(_) => String::from("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_cache_settings_are_rejected_with_their_path() {
        assert!(err("[cache]\nwrite_queue = 0\n").contains("cache.write_queue"));
        assert!(err("[cache.l2]\nwrite_delay = \"1m\"\n").contains("cache.l2.write_delay"));
        assert!(err("[cache.l3]\nwrite_delay = \"11s\"\n").contains("cache.l3.write_delay"));
        assert!(err("[cache.l2]\nkey_prefix = \"a*\"\n").contains("cache.l2.key_prefix"));
        assert!(err("[cache.l2]\nurl = \"http://x\"\n").contains("cache.l2.url"));
        assert!(err("[cache.model_ttl]\nm = \"0s\"\n").contains("cache.model_ttl.m"));
        assert!(err("[cache.model_ttl]\nm = \"11y\"\n").contains("cache.model_ttl.m"));
        assert!(err("[cache]\nttl = \"11y\"\n").contains("cache.ttl"));
        assert!(err("[cache]\nttl = \"0s\"\n").contains("cache.ttl"));
        assert!(
            err("[cache]\nttl = \"10y\"\n") == "accepted",
            "10 years is the bound itself"
        );
        assert!(err("[cache]\nmode = \"sometimes\"\n").contains("mode"));
    }

    #[test]
    fn cache_settings_parse() {
        let c = Config::from_toml(
            "[cache]\nmode = \"always\"\nttl = \"5m\"\nsingleflight_wait = \"3s\"\n[cache.model_ttl]\n\"gpt-4o\" = \"10m\"\n[cache.l2]\nurl = \"redis://127.0.0.1:6379/\"\n",
        )
        .map_err(|e| e.to_string());
        let Ok(c) = c else { unreachable!("{c:?}") };
        assert_eq!(c.cache.mode, super::CacheMode::Always);
        assert_eq!(c.cache.ttl.as_secs(), 300);
        assert_eq!(c.cache.model_ttl["gpt-4o"].as_secs(), 600);
        assert_eq!(c.cache.l2.timeout(), super::CacheL2Config::DEFAULT_TIMEOUT);
        assert_eq!(c.cache.l2.key_prefix, "uat:cache:");
    }
}
