//! The crate's one error type.

/// Everything that can go wrong in `uat-embed`.
///
/// The variants fall in three groups, which the server maps explicitly:
/// - the caller's fault (HTTP 400/404): [`EmbedError::EmptyInput`],
///   [`EmbedError::TooManyInputs`], [`EmbedError::InvalidInputItem`],
///   [`EmbedError::InvalidInput`], [`EmbedError::InputTooLong`],
///   [`EmbedError::InvalidTokenId`], [`EmbedError::DimensionsUnsupported`],
///   [`EmbedError::UnknownModel`];
/// - overload (HTTP 503): [`EmbedError::Overloaded`], [`EmbedError::MemoryBudget`],
///   [`EmbedError::ShuttingDown`];
/// - ours (HTTP 500): [`EmbedError::ModelLoad`], [`EmbedError::Unsupported`],
///   [`EmbedError::Inference`], [`EmbedError::Tokenizer`].
///
/// It is `Clone` because one failed batch answers every request in it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    /// `input` was an empty array.
    #[error("'input' must not be empty")]
    EmptyInput,
    /// More inputs than one request may carry.
    #[error("'input' has {got} items; at most {max} are allowed")]
    TooManyInputs {
        /// Items in the request.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// An item of the `input` array is neither a string nor an array of token ids
    /// (or the array mixes the two).
    #[error("'input[{index}]' must be {expected}")]
    InvalidInputItem {
        /// Position of the bad item.
        index: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// `input` is not a string, an array of strings or an array of token-id arrays.
    #[error("'input' must be a string, an array of strings, or an array of token ids")]
    InvalidInput,
    /// An input is longer than the model's `max_seq_length` and the request
    /// asked not to truncate.
    #[error(
        "'input[{index}]' is {tokens} tokens long, over the model's limit of {limit} tokens \
         (send \"truncate\": true to truncate)"
    )]
    InputTooLong {
        /// Position of the input.
        index: usize,
        /// Its length in tokens (special tokens included).
        tokens: usize,
        /// The model's `max_seq_length`.
        limit: usize,
    },
    /// A token id outside the model's vocabulary.
    #[error("'input[{index}]' has token id {id}, outside the vocabulary of {vocab_size}")]
    InvalidTokenId {
        /// Position of the input.
        index: usize,
        /// The bad id.
        id: i64,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// `dimensions` was asked for and the model cannot give it.
    #[error("model '{model}' produces {native} dimensions and cannot return {requested}")]
    DimensionsUnsupported {
        /// The model.
        model: String,
        /// What was asked.
        requested: usize,
        /// What the model gives.
        native: usize,
    },
    /// No local embedding model by that name.
    #[error("no local embedding model named '{0}'")]
    UnknownModel(String),
    /// The batch queue is full; try again later (HTTP 503).
    #[error("the embedding queue is full ({capacity} inputs); try again later")]
    Overloaded {
        /// Queue capacity in inputs.
        capacity: usize,
    },
    /// The model cannot be loaded now: the memory budget is held by models
    /// that were unloaded but are still finishing requests, and they did not
    /// finish within the registry's wait; try again later (HTTP 503).
    #[error(
        "cannot load embedding model '{model}' ({needed} bytes) now: the memory budget of \
         {budget} bytes is held by models still finishing requests; try again later"
    )]
    MemoryBudget {
        /// The model to load.
        model: String,
        /// Bytes it needs (estimated from its files, or measured at its last load).
        needed: u64,
        /// `embeddings.memory_budget`.
        budget: u64,
    },
    /// The model was unloaded or the process is shutting down while the request waited.
    #[error("the embedding model is shutting down")]
    ShuttingDown,
    /// The model folder could not be read or is malformed.
    #[error("cannot load model from {path}: {message}")]
    ModelLoad {
        /// The folder or file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The folder declares something this backend does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The forward pass failed.
    #[error("inference error: {0}")]
    Inference(String),
}

impl EmbedError {
    /// Whether the caller caused this error (HTTP 4xx) rather than the server.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EmbedError::EmptyInput
                | EmbedError::TooManyInputs { .. }
                | EmbedError::InvalidInputItem { .. }
                | EmbedError::InvalidInput
                | EmbedError::InputTooLong { .. }
                | EmbedError::InvalidTokenId { .. }
                | EmbedError::DimensionsUnsupported { .. }
                | EmbedError::UnknownModel(_)
        )
    }

    pub(crate) fn load(path: impl AsRef<std::path::Path>, message: impl std::fmt::Display) -> Self {
        EmbedError::ModelLoad {
            path: path.as_ref().display().to_string(),
            message: message.to_string(),
        }
    }
}

impl From<candle_core::Error> for EmbedError {
    fn from(e: candle_core::Error) -> Self {
        EmbedError::Inference(e.to_string())
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = EmbedError> = std::result::Result<T, E>;
