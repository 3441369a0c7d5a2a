use crate::{ConfigError, EmbeddingsConfig};
use serde::{Deserialize, Serialize};

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
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            embedding_model: None,
            max_content_bytes: 32 * 1024,
            max_batch: 1000,
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
}
