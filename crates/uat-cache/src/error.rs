//! The crate's one error enum.

/// A cache failure. Callers treat every variant as "skip this level": the
/// cache never fails a request.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The SQL database failed.
    #[error("sql: {0}")]
    Sql(#[from] sqlx::Error),
    /// An operation took longer than the level's timeout.
    #[error("{level} timed out after {after_ms} ms")]
    Timeout {
        /// Which level.
        level: &'static str,
        /// The bound that was hit.
        after_ms: u64,
    },
    /// The level is down and is being reconnected in the background.
    #[error("{0} is unavailable (reconnecting)")]
    Unavailable(&'static str),
    /// A stored value could not be decoded.
    #[error("corrupt entry: {0}")]
    Corrupt(String),
    /// A key or pattern is malformed.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// Bad settings at start-up.
    #[error("config: {0}")]
    Config(String),
    /// A file-system error at start-up (creating the data directory).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
