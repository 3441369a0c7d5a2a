use crate::ConfigError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// `[auth]`: gateway API keys. No keys: every route is open.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The keys (`[[auth.keys]]`). Empty: no authentication.
    pub keys: Vec<ApiKeyConfig>,
    /// The owner whose keys use what was stored while no keys were
    /// configured: the memories of users stored without an owner, and the
    /// `default` cache namespace, instead of the owner's own space (a
    /// switch, not a merge: what its keys stored under the owner's name is
    /// out of their reach while this is set). Its users' ids are stored as
    /// they are, not under the owner. Unset: that data stays out of every
    /// key's reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyless_owner: Option<String>,
    /// `GET /metrics` needs an admin key (`Authorization: Bearer`, what
    /// Prometheus sends from `authorization.credentials_file`) instead of
    /// being open like the probes. Needs at least one admin key.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub protect_metrics: bool,
}

/// `[[auth.keys]]`: one API key. Exactly one of `key_env` or `key_sha256`
/// gives its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Unique name, shown in logs (never the secret).
    pub name: String,
    /// Name of the environment variable that holds the secret; it must be
    /// set, and not empty, at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// SHA-256 of the secret, 64 hex digits, so the secret is in no file
    /// (`printf %s "$KEY" | sha256sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// The tenant the key belongs to: its cache namespace and the scope of
    /// its memories. Unset: the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Requests a minute this key may make, per replica. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Requests this key may have in flight at once (a stream counts until
    /// its last byte), per replica. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Model tokens a minute this key may spend (the `usage.total_tokens`
    /// of its chat completions and embeddings; cache hits are free), per
    /// replica. A request is admitted while the key has tokens left, and
    /// its answer's tokens are taken after it. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    /// The models this key may call (chat completions, embeddings), as the
    /// client names them (an alias, a model, `provider/model`), names or
    /// globs with `*` (`["gpt-4o*", "fast"]`); `GET /v1/models` lists only
    /// those. Unset: every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// The vector collections this key may use (read, write, search), as
    /// names or globs with `*` (`["docs-*", "faq"]`); `GET /v1/collections`
    /// lists only those. Unset: every collection. Not for admin keys, which
    /// reach every collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// May call the admin routes (cache invalidation and stats, embedding
    /// model load/unload, vector collection create/drop/snapshot).
    #[serde(default)]
    pub admin: bool,
    /// USD this key may spend on model answers (priced by `[pricing]`) in
    /// a budget period; at or past it the model routes answer 429
    /// `insufficient_quota`. More than 0. Unset: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    /// How long a budget period lasts (`"30d"`, at least `"1m"`), counted
    /// from the unix epoch in whole periods, so every replica agrees when
    /// one starts; the spend starts from 0 in each. Unset: the spend never
    /// resets.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub budget_period: Option<std::time::Duration>,
}

/// The shortest `budget_period`: spend is rolled into a new period by the
/// ledger's task (every second), so what is spent in the second around a
/// period's end may be counted in either period; an hour keeps that below
/// a 3,600th.
pub const MIN_BUDGET_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

/// A key ready to check requests against: its secret reduced to a digest.
#[derive(Clone, PartialEq)]
pub struct ResolvedKey {
    /// The key's name.
    pub name: String,
    /// Its tenant (cache namespace, memory scope).
    pub owner: String,
    /// SHA-256 of the secret.
    pub digest: [u8; 32],
    /// Its limit, when it has one (never 0).
    pub requests_per_minute: Option<u32>,
    /// Its limit of requests in flight, when it has one (never 0).
    pub max_concurrent: Option<u32>,
    /// Its limit of model tokens a minute, when it has one (never 0).
    pub tokens_per_minute: Option<u32>,
    /// The models it may call (globs), when limited.
    pub models: Option<Vec<String>>,
    /// The collections it may use (globs), when limited.
    pub collections: Option<Vec<String>>,
    /// Whether it may call admin routes.
    pub admin: bool,
    /// Whether its owner is [`AuthConfig::keyless_owner`]: its requests
    /// reach what was stored without keys.
    pub keyless: bool,
    /// Its budget in USD, when it has one (more than 0).
    pub max_budget: Option<f64>,
    /// Its budget period, when the spend resets (at least a minute).
    pub budget_period: Option<std::time::Duration>,
}

impl std::fmt::Debug for ResolvedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedKey")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("max_concurrent", &self.max_concurrent)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("models", &self.models)
            .field("collections", &self.collections)
            .field("admin", &self.admin)
            .field("keyless", &self.keyless)
            .field("max_budget", &self.max_budget)
            .field("budget_period", &self.budget_period)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of an API key's secret, as requests are checked.
pub fn key_digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl ApiKeyConfig {
    /// Its owner: `owner`, or the name when unset.
    pub fn owner_name(&self) -> &str {
        self.owner.as_deref().unwrap_or(&self.name)
    }
}

impl AuthConfig {
    /// True when keys are configured (every `/v1` route then needs one).
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// True when some key has a `max_budget`.
    pub fn has_budgets(&self) -> bool {
        self.keys.iter().any(|k| k.max_budget.is_some())
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            let at = |f: &str| format!("auth.keys[{i}].{f}");
            if k.name.trim().is_empty() {
                return Err(ConfigError::invalid(at("name"), "must not be empty"));
            }
            if !names.insert(k.name.as_str()) {
                return Err(ConfigError::invalid(
                    at("name"),
                    format!("duplicate key name `{}`", k.name),
                ));
            }
            match (&k.key_env, &k.key_sha256) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        at("key_env"),
                        "set exactly one of `key_env` or `key_sha256`, not both",
                    ));
                }
                (None, None) => {
                    return Err(ConfigError::invalid(
                        at("key_env"),
                        "one of `key_env` or `key_sha256` is required",
                    ));
                }
                (Some(v), None) if v.is_empty() => {
                    return Err(ConfigError::invalid(at("key_env"), "must not be empty"));
                }
                (None, Some(h)) if parse_hex32(h).is_none() => {
                    return Err(ConfigError::invalid(
                        at("key_sha256"),
                        "must be a SHA-256 digest: 64 hex digits",
                    ));
                }
                _ => {}
            }
            if k.owner.as_deref().is_some_and(|o| o.trim().is_empty()) {
                return Err(ConfigError::invalid(at("owner"), "must not be empty"));
            }
            // `default` is the cache namespace of requests made without keys:
            // a key owning it would take over everything cached before keys.
            if k.owner_name() == "default" {
                let field = if k.owner.is_some() { "owner" } else { "name" };
                return Err(ConfigError::invalid(
                    at(field),
                    "the owner `default` is the namespace of requests made without keys; choose another (set `owner` to keep this name), and name it in `auth.keyless_owner` to give it what was stored without keys",
                ));
            }
            if k.requests_per_minute == Some(0) {
                return Err(ConfigError::invalid(
                    at("requests_per_minute"),
                    "must be at least 1 (leave it unset for no limit)",
                ));
            }
            if k.max_concurrent == Some(0) {
                return Err(ConfigError::invalid(
                    at("max_concurrent"),
                    "must be at least 1 (leave it unset for no limit)",
                ));
            }
            if let Some(list) = &k.collections {
                if k.admin {
                    return Err(ConfigError::invalid(
                        at("collections"),
                        "an admin key reaches every collection; `collections` limits non-admin keys",
                    ));
                }
                if let Some(i) = list.iter().position(|p| p.trim().is_empty()) {
                    return Err(ConfigError::invalid(
                        at(&format!("collections[{i}]")),
                        "must not be empty",
                    ));
                }
            }
            if let Some(i) = k
                .models
                .as_ref()
                .and_then(|l| l.iter().position(|p| p.trim().is_empty()))
            {
                return Err(ConfigError::invalid(
                    at(&format!("models[{i}]")),
                    "must not be empty",
                ));
            }
            if k.tokens_per_minute == Some(0) {
                return Err(ConfigError::invalid(
                    at("tokens_per_minute"),
                    "must be at least 1 (leave it unset for no limit)",
                ));
            }
            if let Some(b) = k.max_budget
                && !(b.is_finite() && b > 0.0)
            {
                return Err(ConfigError::invalid(
                    at("max_budget"),
                    format!(
                        "must be a finite number of USD above 0 (got {b}; leave it unset for no budget)"
                    ),
                ));
            }
            if let Some(p) = k.budget_period
                && p < MIN_BUDGET_PERIOD
            {
                return Err(ConfigError::invalid(
                    at("budget_period"),
                    "must be at least 1h (leave it unset for a budget that never resets)",
                ));
            }
        }
        if let Some(o) = &self.keyless_owner
            && !self.keys.iter().any(|k| k.owner_name() == o)
        {
            return Err(ConfigError::invalid(
                "auth.keyless_owner",
                format!("`{o}` is the owner of no key in [[auth.keys]]"),
            ));
        }
        if self.protect_metrics && !self.keys.iter().any(|k| k.admin) {
            return Err(ConfigError::invalid(
                "auth.protect_metrics",
                "needs a key with `admin = true` to scrape /metrics with (none is configured)",
            ));
        }
        Ok(())
    }

    /// Reads each key's secret (from `env` for `key_env`) and reduces it to
    /// its digest. A variable that is unset or empty is an error naming it;
    /// two keys with the same secret are an error too (a request could not
    /// tell them apart).
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<ResolvedKey>, ConfigError> {
        self.validate()?;
        let mut out: Vec<ResolvedKey> = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            let (field, digest) = match (&k.key_env, &k.key_sha256) {
                (Some(var), _) => {
                    let field = format!("auth.keys[{i}].key_env");
                    // Trimmed as a presented key is: a secret mounted from a
                    // file often ends in a newline.
                    match env(var).as_deref().map(str::trim) {
                        Some(s) if !s.is_empty() => (field, key_digest(s.as_bytes())),
                        Some(_) => {
                            return Err(ConfigError::invalid(
                                field,
                                format!("environment variable {var} is empty"),
                            ));
                        }
                        None => {
                            return Err(ConfigError::invalid(
                                field,
                                format!("environment variable {var} is not set"),
                            ));
                        }
                    }
                }
                (None, Some(h)) => {
                    let field = format!("auth.keys[{i}].key_sha256");
                    let Some(digest) = parse_hex32(h) else {
                        return Err(ConfigError::invalid(field, "must be 64 hex digits"));
                    };
                    (field, digest)
                }
                (None, None) => {
                    return Err(ConfigError::invalid(
                        format!("auth.keys[{i}].key_env"),
                        "one of `key_env` or `key_sha256` is required",
                    ));
                }
            };
            if let Some(other) = out.iter().find(|o| o.digest == digest) {
                return Err(ConfigError::invalid(
                    field,
                    format!("the same secret as key `{}`", other.name),
                ));
            }
            out.push(ResolvedKey {
                name: k.name.clone(),
                owner: k.owner_name().to_owned(),
                digest,
                requests_per_minute: k.requests_per_minute,
                max_concurrent: k.max_concurrent,
                tokens_per_minute: k.tokens_per_minute,
                models: k.models.clone(),
                collections: k.collections.clone(),
                admin: k.admin,
                keyless: self.keyless_owner.as_deref() == Some(k.owner_name()),
                max_budget: k.max_budget,
                budget_period: k.budget_period,
            });
        }
        Ok(out)
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
