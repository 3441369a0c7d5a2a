use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[storage]`: where data lives, shared by the cache, vector and memory services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory for the SQLite file, vector collections and snapshots.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://...`. Absent: `sqlite://{data_dir}/uat.db`.
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
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("uat.db").display()),
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
