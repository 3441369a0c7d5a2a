//! The crate's one error enum.

/// Everything that can go wrong in the memory service.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The caller sent a bad value; `field` names it (`content`, `memories[3].user_id`).
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such memory for this user (or it is deleted or expired).
    #[error("memory not found")]
    NotFound,
    /// Semantic search was asked for but no embedding model is configured.
    #[error(
        "semantic search needs an embedding model; none is configured ([memory] embedding_model or [[embeddings.models]])"
    )]
    NoEmbedder,
    /// The embedder failed or is overloaded.
    #[error("embedding failed: {0}")]
    Embedding(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row could not be decoded.
    #[error("corrupt stored row: {0}")]
    Corrupt(String),
    /// The vector index failed.
    #[error("vector index error: {0}")]
    Index(String),
}

impl MemoryError {
    /// A bad value in `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        MemoryError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result with [`MemoryError`].
pub type Result<T, E = MemoryError> = std::result::Result<T, E>;
