use crate::{ConfigError, EmbeddingsConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[memory]`: the long-term memory service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Embedding model used for semantic search. Absent: the first local model.
    pub embedding_model: Option<String>,
    /// Largest memory content in bytes.
    pub max_content_bytes: usize,
    /// Most memories in one batch write.
    pub max_batch: usize,
    /// How often expired memories are deleted and the change log pruned
    /// (`"0s"`: never).
    #[serde(with = "crate::duration")]
    pub purge_interval: Duration,
    /// How long change-log records are kept. A replica whose vector index
    /// stops for longer rebuilds it from SQL when it comes back.
    #[serde(with = "crate::duration")]
    pub change_retention: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            embedding_model: None,
            max_content_bytes: 32 * 1024,
            max_batch: 1000,
            purge_interval: Duration::from_secs(60),
            change_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl MemoryConfig {
    /// The embedding model in effect, if any.
    pub fn effective_model<'a>(&'a self, e: &'a EmbeddingsConfig) -> Option<&'a str> {
        self.embedding_model
            .as_deref()
            .or_else(|| e.models.first().map(|m| m.name.as_str()))
    }

    pub(crate) fn validate(&self, e: &EmbeddingsConfig) -> Result<(), ConfigError> {
        if self.max_content_bytes == 0 {
            return Err(ConfigError::invalid(
                "memory.max_content_bytes",
                "must be at least 1",
            ));
        }
        if self.change_retention < Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "memory.change_retention",
                "must be at least 1m (replicas need time to read the log)",
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::invalid(
                "memory.max_batch",
                "must be at least 1",
            ));
        }
        if let Some(m) = &self.embedding_model
            && !e.models.iter().any(|x| &x.name == m)
        {
            return Err(ConfigError::invalid(
                "memory.embedding_model",
                format!("`{m}` is not one of [[embeddings.models]]"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryConfig;
    use crate::{EmbeddingModelConfig, EmbeddingsConfig};

    #[test]
    fn memory_embedding_model_must_name_a_configured_model() {
        let mut e = EmbeddingsConfig::default();
        let m = MemoryConfig {
            embedding_model: Some("minilm".into()),
            ..MemoryConfig::default()
        };
        let err = m.validate(&e).unwrap_err().to_string();
        assert!(err.contains("memory.embedding_model"), "{err}");
        e.models.push(EmbeddingModelConfig {
            name: "minilm".into(),
            path: "/models/minilm".into(),
            eager: false,
            token_ids: Default::default(),
        });
        assert!(m.validate(&e).is_ok());
        assert_eq!(MemoryConfig::default().effective_model(&e), Some("minilm"));
        let zero = MemoryConfig {
            max_batch: 0,
            ..MemoryConfig::default()
        };
        assert!(
            zero.validate(&e)
                .unwrap_err()
                .to_string()
                .contains("memory.max_batch")
        );
    }

    #[test]
    fn retention_parses_from_toml_and_a_short_one_is_refused() {
        let m: MemoryConfig =
            toml::from_str("purge_interval = \"30s\"\nchange_retention = \"2d\"").unwrap();
        assert_eq!(m.purge_interval, std::time::Duration::from_secs(30));
        assert_eq!(
            m.change_retention,
            std::time::Duration::from_secs(2 * 86400)
        );
        let e = EmbeddingsConfig::default();
        assert!(m.validate(&e).is_ok());
        let short: MemoryConfig = toml::from_str("change_retention = \"10s\"").unwrap();
        let err = short.validate(&e).unwrap_err().to_string();
        assert!(err.contains("memory.change_retention"), "{err}");
        let off: MemoryConfig = toml::from_str("purge_interval = \"0s\"").unwrap();
        assert!(off.purge_interval.is_zero() && off.validate(&e).is_ok());
    }
}
