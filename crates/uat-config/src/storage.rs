use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[storage]`: where data lives, shared by the cache, vector and memory services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory for the SQLite file, vector collections and snapshots.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://...`. Absent: `sqlite://{data_dir}/uat.db`
    /// (with `%`, `?` and `#` in the path percent-encoded). A SQLite database
    /// must be a file: `sqlite::memory:`, `mode=memory` and an empty path are
    /// refused (the memory store reads the file with its own connections).
    pub database_url: Option<String>,
    /// Largest number of pooled SQL connections.
    pub max_connections: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            database_url: None,
            max_connections: 16,
        }
    }
}

impl StorageConfig {
    /// The database URL in effect. The default one percent-encodes the
    /// characters of `data_dir` a SQLite URL would read otherwise (`%` starts
    /// an escape, `?` the options), so `/tmp/a%41b` stays that folder.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}",
                encode_path(&self.data_dir.join("uat.db").display().to_string())
            ),
        }
    }

    /// True when the database is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        let u = self.database_url();
        u.starts_with("postgres://") || u.starts_with("postgresql://")
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let u = self.database_url();
        if !(u.starts_with("sqlite:") || self.is_postgres()) {
            return Err(ConfigError::invalid(
                "storage.database_url",
                format!(
                    "`{}` is neither sqlite://... nor postgres://...",
                    crate::mask_url(&u)
                ),
            ));
        }
        if let Some(why) = sqlite_not_a_file(&u) {
            return Err(ConfigError::invalid(
                "storage.database_url",
                format!(
                    "`{}` {why}: SQLite needs a database file (sqlite://PATH)",
                    crate::mask_url(&u)
                ),
            ));
        }
        // sqlx sets a slot aside for every connection of the pool at once.
        if !(1..=10_000).contains(&self.max_connections) {
            return Err(ConfigError::invalid(
                "storage.max_connections",
                "must be from 1 to 10000",
            ));
        }
        Ok(())
    }
}

/// Percent-encodes what a SQLite URL's path cannot hold as it is.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// Why a `sqlite:` URL names no database file, read as sqlx reads it (the
/// path up to `?`, percent-decoded; `key=value` options after it); `None`
/// for a file or a non-SQLite URL.
fn sqlite_not_a_file(url: &str) -> Option<&'static str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path == ":memory:" {
        return Some("is an in-memory database");
    }
    let in_memory = query.split('&').any(|pair| {
        pair.split_once('=').is_some_and(|(k, v)| {
            crate::percent_decode(k, true) == "mode" && crate::percent_decode(v, true) == "memory"
        })
    });
    if in_memory {
        return Some("is an in-memory database (mode=memory)");
    }
    if crate::percent_decode(path, false).is_empty() {
        return Some("has no path");
    }
    None
}
