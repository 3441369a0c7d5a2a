//! The crate's one error type.

use crate::types::PointId;

/// Everything that can go wrong in the vector engine.
///
/// The variants up to [`VectorError::BadRequest`] are the caller's fault (an
/// HTTP layer maps them to 400), [`VectorError::NotFound`] and
/// [`VectorError::PointNotFound`] to 404, [`VectorError::AlreadyExists`] to 409,
/// and the rest are ours (500).
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// A vector has the wrong number of components.
    #[error("wrong vector dimension: expected {expected}, got {got}")]
    WrongDimension {
        /// The collection's dimension.
        expected: usize,
        /// The length that was sent.
        got: usize,
    },
    /// A vector holds NaN or an infinite value.
    #[error("vector contains a non-finite value (NaN or infinite) at index {index}")]
    NonFinite {
        /// Position of the first bad component.
        index: usize,
    },
    /// The metric name is not one of cosine, dot, l2.
    #[error("unknown metric {0:?}: expected cosine, dot or l2")]
    UnknownMetric(String),
    /// `top_k` is 0 or above [`crate::MAX_TOP_K`].
    #[error("top_k must be between 1 and {max}, got {got}")]
    BadTopK {
        /// The value that was sent.
        got: usize,
        /// The largest allowed value.
        max: usize,
    },
    /// A filter could not be parsed or is inconsistent.
    #[error("malformed filter: {0}")]
    BadFilter(String),
    /// A collection name is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("invalid collection name {0:?}: use 1-64 characters from [A-Za-z0-9_-]")]
    BadCollectionName(String),
    /// Collection settings are invalid (dimension 0, M too small, ...).
    #[error("invalid collection settings: {0}")]
    BadConfig(String),
    /// A search request asks for more than one response may hold: more
    /// results than [`crate::MAX_SEARCH_HITS`], more vector components than
    /// [`crate::MAX_SEARCH_VECTOR_FLOATS`] or more payload bytes than
    /// [`crate::MAX_SEARCH_PAYLOAD_BYTES`]. The message names the limit.
    #[error("response too large: {0}")]
    ResponseTooLarge(String),
    /// Any other invalid request (empty batch, batch too large, bad id, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No collection has this name.
    #[error("collection {0:?} not found")]
    NotFound(String),
    /// A collection with this name already exists.
    #[error("collection {0:?} already exists")]
    AlreadyExists(String),
    /// The folder of a new collection already holds files: a collection that
    /// failed to open at start-up, or leftovers. They are left for an operator
    /// to repair or remove, never reused or deleted.
    #[error(
        "cannot create a collection in {0}: the folder already holds files (a collection that failed to open, or leftovers); repair or remove it first"
    )]
    FolderNotEmpty(String),
    /// No point has this id.
    #[error("point {0} not found")]
    PointNotFound(PointId),
    /// A file of a collection is corrupt (bad magic, checksum, truncated snapshot).
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which file.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The caller gave the work up (its client went away) before it was done.
    #[error("cancelled: the caller went away")]
    Cancelled,
    /// A collection's WAL failed to fsync. After a failed fsync the kernel
    /// may have dropped the unwritten pages, and a later fsync can report
    /// success without them (PostgreSQL's "fsyncgate"), so the WAL is never
    /// trusted again: from then on every write, flush and snapshot of the
    /// collection fails with this error until it is reopened (a restart).
    /// Reads and searches keep working.
    #[error(
        "the WAL of collection {collection:?} failed to sync ({cause}); writes are refused until it is reopened (restart)"
    )]
    WalPoisoned {
        /// The collection.
        collection: String,
        /// The failed fsync, as first reported.
        cause: String,
    },
    /// An I/O error on a collection's files.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl VectorError {
    /// True when the error is the caller's fault (HTTP 400).
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Self::WrongDimension { .. }
                | Self::NonFinite { .. }
                | Self::UnknownMetric(_)
                | Self::BadTopK { .. }
                | Self::BadFilter(_)
                | Self::BadCollectionName(_)
                | Self::BadConfig(_)
                | Self::ResponseTooLarge(_)
                | Self::BadRequest(_)
        )
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Result alias for the crate.
pub type Result<T, E = VectorError> = std::result::Result<T, E>;
