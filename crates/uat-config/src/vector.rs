use crate::ConfigError;
use serde::{Deserialize, Serialize};

/// `[vector]`: the embedded vector database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorConfig {
    /// Subfolder of `storage.data_dir` holding collections.
    pub dir: String,
    /// WAL fsync policy: `always` (every acknowledged write), `batch` or `never`.
    pub fsync: String,
    /// Most points in one upsert call.
    pub max_batch: usize,
}

impl Default for VectorConfig {
    fn default() -> Self {
        VectorConfig {
            dir: "vectors".into(),
            fsync: "always".into(),
            max_batch: 10_000,
        }
    }
}

impl VectorConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.fsync.as_str(), "always" | "batch" | "never") {
            return Err(ConfigError::invalid(
                "vector.fsync",
                "must be always, batch or never",
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::invalid(
                "vector.max_batch",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
