use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// `[embeddings]`: local embedding models and their batching.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingsConfig {
    /// Local models (Hugging Face sentence-transformers folders).
    pub models: Vec<EmbeddingModelConfig>,
    /// Memory that loaded models may use together (bytes); least recently used
    /// models are unloaded past it.
    pub memory_budget: u64,
    /// Unload a model after it has been idle this long.
    #[serde(with = "crate::duration")]
    pub keep_alive: Duration,
    /// Padded tokens (longest x count) in one batch.
    pub batch_tokens: usize,
    /// Inputs in one batch.
    pub max_batch_size: usize,
    /// Longest a request waits for its batch to fill.
    #[serde(with = "crate::duration")]
    pub max_wait: Duration,
    /// Inputs that may wait in the queue; beyond it requests get 503 at once.
    /// At least [`EmbeddingsConfig::MAX_REQUEST_INPUTS`], so that the largest
    /// request fits an empty queue.
    pub queue_capacity: usize,
    /// Compute lanes: batches that run at once, one thread each (data
    /// parallel; a burst is split over every lane).
    pub threads: usize,
}

/// `[[embeddings.models]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingModelConfig {
    /// Public model name.
    pub name: String,
    /// Folder in the Hugging Face sentence-transformers layout.
    pub path: PathBuf,
    /// Load at start-up instead of on first use.
    #[serde(default)]
    pub eager: bool,
    /// How token-id inputs (`"input": [[15339, 1917]]`) are read.
    #[serde(default)]
    pub token_ids: TokenIds,
}

/// `token_ids` of `[[embeddings.models]]`: whose vocabulary token-id inputs
/// are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TokenIds {
    /// OpenAI's `cl100k_base`, as the OpenAI clients send them (LangChain's
    /// `OpenAIEmbeddings` tokenizes with tiktoken by default): decoded to text,
    /// then tokenized by the model's own tokenizer.
    #[default]
    #[serde(rename = "cl100k_base")]
    Cl100kBase,
    /// The model's own vocabulary, fed to it as they are (no special tokens
    /// added).
    #[serde(rename = "model")]
    Model,
}

impl TokenIds {
    /// The name the config spells it with.
    pub fn name(self) -> &'static str {
        match self {
            TokenIds::Cl100kBase => "cl100k_base",
            TokenIds::Model => "model",
        }
    }
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        EmbeddingsConfig {
            models: Vec::new(),
            memory_budget: 2 * 1024 * 1024 * 1024,
            keep_alive: Duration::from_secs(30 * 60),
            batch_tokens: 8192,
            max_batch_size: 64,
            max_wait: Duration::from_millis(3),
            queue_capacity: 4096,
            threads: 1,
        }
    }
}

impl EmbeddingsConfig {
    /// Most inputs one embeddings request may carry (the OpenAI limit);
    /// `uat_embed::MAX_INPUTS` is this value. Lives here so that the queue
    /// capacity can be checked against it.
    pub const MAX_REQUEST_INPUTS: usize = 2048;

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name.is_empty() || !names.insert(m.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("embeddings.models[{i}].name"),
                    "must be non-empty and unique",
                ));
            }
        }
        if self.batch_tokens == 0 || self.max_batch_size == 0 || self.threads == 0 {
            return Err(ConfigError::invalid(
                "embeddings",
                "batch_tokens, max_batch_size and threads must be at least 1",
            ));
        }
        if self.threads > 1024 || self.queue_capacity > 1 << 24 {
            return Err(ConfigError::invalid(
                "embeddings",
                "threads must be at most 1024 and queue_capacity at most 16777216",
            ));
        }
        if self.queue_capacity < Self::MAX_REQUEST_INPUTS {
            return Err(ConfigError::invalid(
                "embeddings.queue_capacity",
                format!(
                    "must be at least {} (the most inputs one request may carry; a \
                     smaller queue could never take such a request)",
                    Self::MAX_REQUEST_INPUTS
                ),
            ));
        }
        if self.max_wait > MAX_WAIT {
            return Err(ConfigError::invalid(
                "embeddings.max_wait",
                "must be at most 1m (a request waits this long for its batch to fill)",
            ));
        }
        Ok(())
    }
}

/// Longest `embeddings.max_wait` accepted.
const MAX_WAIT: Duration = Duration::from_secs(60);
