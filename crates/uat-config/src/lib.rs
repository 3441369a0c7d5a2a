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
mod router;
mod server;
mod storage;
mod vector;

pub use auth::{ApiKeyConfig, AuthConfig, ResolvedKey, key_digest};
pub use cache::{CacheConfig, CacheL1Config, CacheL2Config, CacheL3Config, CacheMode, MAX_TTL};
pub use embed::{EmbeddingModelConfig, EmbeddingsConfig};
pub use memory::MemoryConfig;
pub use router::{
    MockSettings, ModelAlias, OLLAMA_FIRST_BYTE_TIMEOUT, ProviderConfig, ProviderKind,
    RoutingConfig, RoutingStrategy,
};
pub use server::{LogFormat, ServerConfig};
pub use storage::StorageConfig;
pub use vector::VectorConfig;

use serde::{Deserialize, Serialize};
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
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
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
    std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.to_path_buf(),
        source,
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
/// `UAT_PROVIDERS__0__BASE_URL`.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<bool, ConfigError> {
    let mut applied = false;
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = &var[ENV_PREFIX.len()..];
        let keys: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "empty path segment".into(),
            });
        }
        let value = parse_env_value(raw);
        set_path(table, &keys, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        applied = true;
    }
    Ok(applied)
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

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let Some((first, rest)) = keys.split_first() else {
        return Err("empty path".into());
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_value_path(entry, rest, value, first)
}

fn set_value_path(
    node: &mut toml::Value,
    keys: &[String],
    value: toml::Value,
    at: &str,
) -> Result<(), String> {
    match node {
        toml::Value::Table(t) => set_path(t, keys, value),
        toml::Value::Array(a) => {
            let Some((idx, rest)) = keys.split_first() else {
                return Err(format!("{at}: missing index"));
            };
            let i: usize = idx
                .parse()
                .map_err(|_| format!("{at}: `{idx}` is not an array index"))?;
            if i > a.len() {
                return Err(format!(
                    "{at}: index {i} is past the end ({} entries)",
                    a.len()
                ));
            }
            if i == a.len() {
                a.push(toml::Value::Table(toml::Table::new()));
            }
            if rest.is_empty() {
                a[i] = value;
                return Ok(());
            }
            set_value_path(&mut a[i], rest, value, at)
        }
        _ => Err(format!("{at} is not a section")),
    }
}

/// Hides the password of a URL (`postgres://u:secret@h/db` -> `postgres://u:****@h/db`).
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let after = &url[scheme_end + 3..];
    let host_start = after.find('/').unwrap_or(after.len());
    let authority = &after[..host_start];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let masked = match userinfo.find(':') {
                Some(c) => format!("{}:****", &userinfo[..c]),
                None => "****".to_string(),
            };
            format!("{}://{}@{}", &url[..scheme_end], masked, &after[at + 1..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
