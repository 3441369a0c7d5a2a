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
    /// WAL size, in bytes, past which a collection is snapshotted by the
    /// store itself (compacting first when many points are deleted), which
    /// empties the WAL: the WAL and the replay at start-up stay bounded. A
    /// collection whose last snapshot is larger waits until its WAL is half
    /// that snapshot's size (a snapshot rewrites the whole collection).
    /// 0 turns automatic snapshots off (only `POST .../snapshot` takes one);
    /// otherwise at least 1 MiB. Default 64 MiB.
    pub snapshot_wal_bytes: u64,
}

/// Smallest non-zero `snapshot_wal_bytes`: each snapshot rewrites the whole
/// collection, so a smaller WAL bound would rewrite it nearly continuously.
const MIN_SNAPSHOT_WAL_BYTES: u64 = 1024 * 1024;

impl Default for VectorConfig {
    fn default() -> Self {
        VectorConfig {
            dir: "vectors".into(),
            fsync: "always".into(),
            max_batch: 10_000,
            snapshot_wal_bytes: 64 * 1024 * 1024,
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
        if self.snapshot_wal_bytes != 0 && self.snapshot_wal_bytes < MIN_SNAPSHOT_WAL_BYTES {
            return Err(ConfigError::invalid(
                "vector.snapshot_wal_bytes",
                "must be 0 (no automatic snapshots) or at least 1048576 (1 MiB)",
            ));
        }
        Ok(())
    }
}
