//! The interface every cache level implements.

use crate::error::CacheError;
use crate::key::{CacheKey, KeyPattern};
use bytes::Bytes;
use serde::Serialize;
use std::future::Future;
use std::time::Duration;

/// Which level answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// In-process memory (quick_cache).
    L1,
    /// Redis.
    L2,
    /// The SQL database.
    L3,
}

impl Level {
    /// Metric label and header suffix: `l1`, `l2`, `l3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::L1 => "l1",
            Level::L2 => "l2",
            Level::L3 => "l3",
        }
    }
}

/// A value found in a level, with the time it has left to live.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The raw value (already decoded from the level's envelope).
    pub value: Bytes,
    /// Remaining time to live.
    pub ttl: Duration,
    /// When the value was first stored, in any level (milliseconds since
    /// the Unix epoch; kept through promotions): its age. `None` for an entry
    /// written before entries recorded it.
    pub stored_at: Option<u64>,
}

/// Milliseconds since the Unix epoch now (the clock of [`Hit::stored_at`]).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The age of a value stored at `stored_at` (ms since the Unix epoch), now;
/// zero when the clock reads earlier than that (another replica's clock).
pub fn age_of(stored_at: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(stored_at))
}

/// One value for [`CacheLevel::put_many`].
#[derive(Debug, Clone)]
pub struct Put {
    /// Its key.
    pub key: CacheKey,
    /// The raw value.
    pub value: Bytes,
    /// Time to live from now.
    pub ttl: Duration,
    /// When it was first stored (ms since the Unix epoch): now for a new
    /// answer, the original time for a promotion ([`Hit::stored_at`], `None`
    /// when that is unknown).
    pub stored_at: Option<u64>,
}

impl Put {
    /// A value stored now.
    pub fn new(key: CacheKey, value: Bytes, ttl: Duration) -> Self {
        Put {
            key,
            value,
            ttl,
            stored_at: Some(now_ms()),
        }
    }
}

/// Size and traffic of one level.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LevelStats {
    /// Live entries (L2: keys under the prefix, counted by SCAN).
    pub entries: u64,
    /// Bytes of the stored values.
    pub bytes: u64,
    /// Lookups answered by this level since start.
    pub hits: u64,
    /// Lookups this level could not answer since start.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when there was no lookup.
    pub hit_rate: f64,
    /// False when the level is currently skipped (down or failing).
    pub healthy: bool,
}

/// One level of the cache. Every method is bounded in time; an `Err` means
/// "skip this level", never "fail the request".
pub trait CacheLevel: Send + Sync + 'static {
    /// Which level this is.
    fn level(&self) -> Level;

    /// Looks a key up. A corrupt entry is deleted and reported as a miss.
    fn get(&self, key: &CacheKey) -> impl Future<Output = Result<Option<Hit>, CacheError>> + Send;

    /// Stores a value for `ttl`, stored now.
    fn put(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.put_many(vec![Put::new(key.clone(), value, ttl)])
    }

    /// Stores several values at once (a pipeline or a transaction where the
    /// level has one), each with the time it was first stored.
    fn put_many(&self, items: Vec<Put>) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Deletes one key; returns how many entries went (0 or 1).
    fn delete(&self, key: &CacheKey) -> impl Future<Output = Result<u64, CacheError>> + Send;

    /// Deletes every entry matching `pattern`; returns how many went.
    fn invalidate_pattern(
        &self,
        pattern: &KeyPattern,
    ) -> impl Future<Output = Result<u64, CacheError>> + Send;

    /// Size and traffic.
    fn stats(&self) -> impl Future<Output = Result<LevelStats, CacheError>> + Send;

    /// False while the level is being skipped.
    fn healthy(&self) -> bool {
        true
    }
}

/// Hit/miss counters kept by each level.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn miss(&self) {
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn fill(&self, s: &mut LevelStats) {
        s.hits = self.hits.load(std::sync::atomic::Ordering::Relaxed);
        s.misses = self.misses.load(std::sync::atomic::Ordering::Relaxed);
        let total = s.hits + s.misses;
        s.hit_rate = if total == 0 {
            0.0
        } else {
            s.hits as f64 / total as f64
        };
    }
}
