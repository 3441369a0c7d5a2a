//! Layered configuration for `uat`.
//!
//! Layers, later wins: compiled-in defaults -> TOML file (`--config FILE`, else
//! `uat.toml` in the working directory when present) -> `UAT_SECTION__KEY`
//! environment variables -> CLI flags (applied by the binary through
//! [`Overrides`]). Unknown fields and bad values are rejected with their path
//! (`providers[1].timeout: invalid duration`), and [`Config::validate`] checks
//! the cross-field rules serde cannot express.
//!
//! Each section lives in its own module so each subsystem owns its settings.

mod auth;
mod cache;
pub mod duration;
mod embed;
mod memory;
mod pricing;
mod router;
mod server;
mod storage;
mod vector;

pub use auth::{ApiKeyConfig, AuthConfig, MIN_BUDGET_PERIOD, ResolvedKey, key_digest};
pub use cache::{CacheConfig, CacheL1Config, CacheL2Config, CacheL3Config, CacheMode, MAX_TTL};
pub use embed::{EmbeddingModelConfig, EmbeddingsConfig, TokenIds};
pub use memory::MemoryConfig;
pub use pricing::{ModelPrice, PricingConfig};
pub use router::{
    MockSettings, ModelAlias, OLLAMA_FIRST_BYTE_TIMEOUT, ProviderConfig, ProviderKind,
    RoutingConfig, RoutingStrategy,
};
pub use server::{LogFormat, ServerConfig};
pub use storage::StorageConfig;
pub use vector::VectorConfig;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file looked for in the working directory when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "uat.toml";
/// Prefix of environment overrides: `UAT_SERVER__LISTEN=0.0.0.0:3033`.
pub const ENV_PREFIX: &str = "UAT_";

/// The whole validated configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Upstream LLM providers. Empty: probe the usual local ones at start-up.
    pub providers: Vec<ProviderConfig>,
    /// Public model aliases, each with several `provider/model` targets.
    pub models: Vec<ModelAlias>,
    /// How a provider is chosen for a request.
    pub routing: RoutingConfig,
    /// Where data lives (SQLite file by default, PostgreSQL at scale).
    pub storage: StorageConfig,
    /// The tiered response cache.
    pub cache: CacheConfig,
    /// Local embedding models.
    pub embeddings: EmbeddingsConfig,
    /// The embedded vector database.
    pub vector: VectorConfig,
    /// The long-term memory service.
    pub memory: MemoryConfig,
    /// Gateway API keys (none: every route is open).
    pub auth: AuthConfig,
    /// What each model's tokens cost (`[pricing."gpt-4o"]`), for cost
    /// tracking and the keys' `max_budget`. Empty: answers are not priced.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pricing: PricingConfig,
}

/// Where the configuration came from, for `uat config check` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No file: compiled-in defaults (plus environment and flags).
    Defaults,
    /// This TOML file.
    File(PathBuf),
}

/// A configuration error, always naming where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not chained as a source: it was
        /// printed twice).
        error: std::io::Error,
    },
    /// The TOML is not well-formed.
    #[error("{origin}: {message}")]
    Syntax {
        /// File name or `environment`.
        origin: String,
        /// Parser message.
        message: String,
    },
    /// A field is unknown or has a bad value.
    #[error("{origin}: {path}: {message}")]
    Field {
        /// File name or `environment`.
        origin: String,
        /// Dotted path of the field, e.g. `providers[0].timeout`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A rule across fields is broken.
    #[error("{path}: {message}")]
    Invalid {
        /// Dotted path of the offending field.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Values set by CLI flags, applied after the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen ADDR`.
    pub listen: Option<String>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--database-url URL`.
    pub database_url: Option<String>,
}

impl Config {
    /// Loads the configuration: `path` if given (it must exist), else
    /// `uat.toml` in the working directory when present, else defaults; then
    /// the process environment; then `overrides`.
    pub fn load(
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<(Config, Source), ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env, overrides)
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<(Config, Source), ConfigError> {
        let (text, source) = match path {
            Some(p) => (read(p)?, Source::File(p.to_path_buf())),
            None => {
                let p = Path::new(DEFAULT_CONFIG_FILE);
                if p.is_file() {
                    (read(p)?, Source::File(p.to_path_buf()))
                } else {
                    (String::new(), Source::Defaults)
                }
            }
        };
        let origin = match &source {
            Source::File(p) => p.display().to_string(),
            Source::Defaults => "defaults".to_string(),
        };
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
        let env_applied = apply_env(&mut table, env)?;
        let origin = if env_applied {
            format!("{origin} + environment")
        } else {
            origin
        };
        let mut cfg: Config = deserialize(table, &origin)?;
        cfg.apply(overrides);
        cfg.validate()?;
        // Secrets named by `key_env` must be there at start-up.
        cfg.auth
            .resolve(|var| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()))?;
        Ok((cfg, source))
    }

    /// Parses a TOML document with no environment and no overrides (for tests
    /// and embedding).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: "config".into(),
                    message: e.to_string(),
                })?;
        let cfg: Config = deserialize(table, "config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(l) = &o.listen {
            self.server.listen = l.clone();
        }
        if let Some(d) = &o.data_dir {
            self.storage.data_dir = d.clone();
        }
        if let Some(u) = &o.database_url {
            self.storage.database_url = Some(u.clone());
        }
    }

    /// Checks rules across fields. Every error names the field's path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        router::validate(&self.providers, &self.models, &self.routing)?;
        self.storage.validate()?;
        self.cache.validate()?;
        self.embeddings.validate()?;
        self.vector.validate()?;
        self.memory.validate(&self.embeddings)?;
        self.auth.validate()?;
        pricing::validate(&self.pricing)?;
        Ok(())
    }

    /// The effective configuration as TOML with every secret masked.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        c.storage.database_url = c.storage.database_url.as_deref().map(mask_url);
        if let Some(u) = c.cache.l2.url.as_deref() {
            c.cache.l2.url = Some(mask_url(u));
        }
        for p in &mut c.providers {
            p.base_url = p.base_url.as_deref().map(mask_url);
        }
        for k in &mut c.auth.keys {
            if k.key_sha256.is_some() {
                k.key_sha256 = Some("****".into());
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn read(p: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
        path: p.to_path_buf(),
        error,
    })
}

fn deserialize(mut table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
    router::kind_defaults(&mut table);
    let de = toml::Value::Table(table);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Field {
            origin: origin.to_string(),
            path,
            message: e.into_inner().to_string(),
        }
    })
}

/// Applies `UAT_SECTION__KEY[__SUB]=value` overrides to the TOML table.
/// A value is read as a TOML value when it parses as one (numbers, booleans,
/// arrays), else as a string. Array sections are addressed by index:
/// `UAT_PROVIDERS__0__BASE_URL`; an index one past the end appends an entry
/// (an index segment where the file has no list creates one), and the
/// variables are applied in path order with indexes compared as numbers, so
/// `__10__` comes after `__2__`. An index past that is an error: a list has
/// no gaps.
///
/// Path segments are matched case-insensitively against the keys already
/// there, and a new key is lowercased (field names are lowercase): variable
/// names are conventionally uppercase, so the case of a model name in
/// `UAT_CACHE__MODEL_TTL__GPT-4O` is lost. It overrides the file's `GPT-4o`
/// entry when there is one; otherwise a new model name is taken as written
/// when it has a lowercase letter (`UAT_CACHE__MODEL_TTL__GPT-4o`), else
/// lowercased (`gpt-4o`).
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<bool, ConfigError> {
    let mut vars: Vec<(Vec<&str>, &str, &str)> = Vec::new();
    for (var, raw) in env {
        if !(var.starts_with(ENV_PREFIX) && var.contains("__")) {
            continue;
        }
        let segments: Vec<&str> = var[ENV_PREFIX.len()..].split("__").collect();
        if segments.iter().any(|k| k.is_empty()) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "empty path segment".into(),
            });
        }
        vars.push((segments, var, raw));
    }
    vars.sort_by(|a, b| cmp_env_paths(&a.0, &b.0).then_with(|| a.1.cmp(b.1)));
    let applied = !vars.is_empty();
    for (segments, var, raw) in vars {
        let value = parse_env_value(raw);
        set_in_table(table, "", &segments, value).map_err(|message| ConfigError::Env {
            var: var.to_string(),
            message,
        })?;
    }
    Ok(applied)
}

/// Tables whose keys are names the user chooses (models), not field names.
const NAME_KEYED: &[&str] = &["cache.model_ttl", "pricing"];

fn is_index(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

/// Orders variable paths segment by segment, indexes as numbers.
fn cmp_env_paths(a: &[&str], b: &[&str]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = if is_index(x) && is_index(y) {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase())
        };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// What a missing entry becomes: a list when the next segment is an index.
fn empty_node(next: &str, name_keyed: bool) -> toml::Value {
    if is_index(next) && !name_keyed {
        toml::Value::Array(Vec::new())
    } else {
        toml::Value::Table(toml::Table::new())
    }
}

/// The key of `table` that `segment` names (see [`apply_env`]).
fn table_key(table: &toml::Table, segment: &str, at: &str) -> Result<String, String> {
    if table.contains_key(segment) {
        return Ok(segment.to_string());
    }
    let lower = segment.to_ascii_lowercase();
    if table.contains_key(&lower) {
        return Ok(lower);
    }
    let mut same = table.keys().filter(|k| k.eq_ignore_ascii_case(segment));
    match (same.next(), same.next()) {
        (Some(k), None) => return Ok(k.clone()),
        (Some(a), Some(b)) => {
            return Err(format!(
                "`{segment}` matches both `{a}` and `{b}` in {at}; set it in the file"
            ));
        }
        (None, _) => {}
    }
    if NAME_KEYED.contains(&at) && segment.bytes().any(|b| b.is_ascii_lowercase()) {
        Ok(segment.to_string())
    } else {
        Ok(lower)
    }
}

fn set_in_table(
    table: &mut toml::Table,
    at: &str,
    segments: &[&str],
    value: toml::Value,
) -> Result<(), String> {
    let Some((segment, rest)) = segments.split_first() else {
        return Err("empty path".into());
    };
    let key = table_key(table, segment, at)?;
    let here = if at.is_empty() {
        key.clone()
    } else {
        format!("{at}.{key}")
    };
    let Some(next) = rest.first() else {
        table.insert(key, value);
        return Ok(());
    };
    let node = table
        .entry(key)
        .or_insert_with(|| empty_node(next, NAME_KEYED.contains(&here.as_str())));
    set_in_value(node, &here, rest, value)
}

fn set_in_value(
    node: &mut toml::Value,
    at: &str,
    segments: &[&str],
    value: toml::Value,
) -> Result<(), String> {
    match node {
        toml::Value::Table(t) => set_in_table(t, at, segments, value),
        toml::Value::Array(a) => {
            let Some((idx, rest)) = segments.split_first() else {
                return Err(format!("{at}: missing index"));
            };
            let i: usize = idx
                .parse()
                .map_err(|_| format!("{at} is a list: `{idx}` is not an index"))?;
            if i > a.len() {
                return Err(format!(
                    "{at}[{i}]: the next entry of {at} is {at}[{n}] \
                     (entries are numbered from 0 without gaps)",
                    n = a.len()
                ));
            }
            let here = format!("{at}[{i}]");
            let Some(next) = rest.first() else {
                if i == a.len() {
                    a.push(value);
                } else {
                    a[i] = value;
                }
                return Ok(());
            };
            if i == a.len() {
                a.push(empty_node(next, false));
            }
            set_in_value(&mut a[i], &here, rest, value)
        }
        _ => Err(format!("{at} is not a section")),
    }
}

/// Names of query parameters whose values [`mask_url`] hides: a parameter
/// whose name contains one of these, ignoring case (`password`, `sslpassword`,
/// `api-key`, `access_token`, `sig`, `X-Amz-Credential`, ...).
const SECRET_PARAMS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "sig",
    "auth",
    "credential",
];

/// Hides the secrets of a URL: the password of its user info
/// (`postgres://u:secret@h/db` -> `postgres://u:****@h/db`) and the value of
/// every query parameter named like a secret (see [`SECRET_PARAMS`]:
/// `?user=app&password=x` -> `?user=app&password=****`). Other parameters
/// (`sslmode`, `api-version`) stay readable.
pub fn mask_url(url: &str) -> String {
    // The user info first: a password may hold `?`, `#` or `/` (a URL that
    // then fails to parse is exactly the one an error message prints).
    let (mut out, rest) = split_userinfo(url);
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    out.push_str(base);
    if let Some(q) = query {
        let (q, fragment) = match q.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (q, None),
        };
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => format!("{name}=****"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let name = percent_decode(name, true).to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// `url` up to its host with the password masked, and the rest. The user
/// info ends at the last `@` before the first `/` that follows an `@` (so a
/// password holding `@`, `?`, `#` or `/` is masked whole); a candidate with
/// no `:` that holds a `/` or `?` is a path or query, not user info.
fn split_userinfo(url: &str) -> (String, &str) {
    let Some(scheme_end) = url.find("://") else {
        return (String::new(), url);
    };
    let after = &url[scheme_end + 3..];
    let Some(first_at) = after.find('@') else {
        return (String::new(), url);
    };
    let end = after[first_at..]
        .find('/')
        .map_or(after.len(), |i| first_at + i);
    let Some(at) = after[..end].rfind('@') else {
        return (String::new(), url);
    };
    let userinfo = &after[..at];
    let masked = match userinfo.find(':') {
        Some(c) => format!("{}:****", &userinfo[..c]),
        None if userinfo.contains(['/', '?']) => return (String::new(), url),
        None => "****".to_string(),
    };
    (
        format!("{}://{}@", &url[..scheme_end], masked),
        &after[at + 1..],
    )
}

/// Decodes `%XX` escapes (and, in a query (`form`), `+` as a space), leaving
/// a malformed escape as it is.
pub(crate) fn percent_decode(s: &str, form: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) if form => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
