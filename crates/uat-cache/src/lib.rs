//! uat-cache: the tiered response cache.
//!
//! - [`MemoryLevel`] (L1): quick_cache in-process, bounded in bytes, scan resistant (S3-FIFO), TTL per entry.
//! - [`RedisLevel`] (L2): Redis through one reconnecting connection manager,
//!   `SET .. EX`, pipelines, LZ4 for large values, bounded per-operation
//!   timeout; skipped while down, with a background reconnect.
//! - [`SqlLevel`] (L3): a table in SQLite or PostgreSQL with `expires_at`
//!   and a periodic purge.
//! - [`TieredCache`]: L1 -> L2 -> L3 reads with promotion, write-through
//!   via a bounded queue, single flight, invalidation by key or pattern,
//!   kept coherent across replicas by Redis pub/sub.
//!
//! Keys ([`CacheKey`]) hash a canonical form of the request within a
//! namespace (tenant) and model. The cache stores opaque bytes; what a value
//! means (a chat completion, an embeddings response) is the server's concern.

mod codec;
mod error;
mod key;
mod l2;
mod l3;
mod level;
mod memory;
mod metrics;
mod presence;
mod priority;
mod row_map;
mod tiered;

pub use codec::{COMPRESS_THRESHOLD, decode as decode_envelope, encode as encode_envelope};
pub use error::CacheError;
pub use key::{CacheKey, IGNORED_FIELDS, KeyPattern, RequestKind, canonical, glob_match};
pub use l2::RedisLevel;
pub use l3::SqlLevel;
pub use level::{CacheLevel, Hit, Level, LevelStats, Put, now_ms};
pub use memory::MemoryLevel;
pub use tiered::{CacheStats, Flight, FlightGuard, Found, Invalidated, TieredBuilder, TieredCache};
