//! uat-vector: the embedded vector engine.
//!
//! - [`VectorStore`]: a folder of named [`Collection`]s (create, list, get, drop);
//! - [`Collection`]: points with a fixed dimension and [`Metric`], searched
//!   through our own HNSW graph ([`HnswConfig`]), optionally walked on SQ8 or
//!   binary codes ([`Quantization`]) and rescored against f32;
//! - [`Filter`]: `must` / `should` / `must_not` over `match`, `any`, `range`,
//!   helped by payload indexes ([`PayloadIndexKind`]) and a query planner that
//!   picks an exact scan of the matching points or a filtered graph walk;
//! - durability: every acknowledged write is in a checksummed WAL
//!   ([`FsyncPolicy`]), snapshots load with one bulk read, and recovery replays
//!   the WAL tail, dropping a torn tail (a short, zero-filled or mis-checksummed
//!   last record). The store snapshots a collection by itself once its WAL
//!   passes [`StoreOptions::snapshot_wal_bytes`], so the WAL stays bounded, and
//!   [`VectorStore::snapshot_dirty`] snapshots, at a graceful shutdown and
//!   within a deadline, the collections whose WAL holds records, so the next
//!   start replays nothing. Creating and dropping a collection are durable (files and
//!   folders fsynced); a collection that fails to open is logged and skipped,
//!   its files left for repair, and the rest of the store opens.
//! - point ids: unsigned integers, or UUIDs kept in canonical form (lowercase,
//!   hyphenated), so any spelling of a UUID names the same point.
//! - bounded answers: one search request (a batch as a whole) returns at most
//!   [`MAX_SEARCH_HITS`] results, [`MAX_SEARCH_VECTOR_FLOATS`] vector
//!   components and [`MAX_SEARCH_PAYLOAD_BYTES`] of payloads
//!   ([`VectorError::ResponseTooLarge`] past them).
//!
//! The engine is plain synchronous code; call it from a blocking pool.

#![warn(missing_docs)]

pub mod bench;
mod collection;
pub mod distance;
mod durable;
mod error;
pub mod filter;
mod hnsw;
mod metrics;
mod payload_index;
mod planner;
mod quant;
mod snapshot;
mod store;
mod types;
mod wal;

pub use collection::Collection;
pub use distance::Metric;
pub use error::{Result, VectorError};
pub use filter::Filter;
pub use planner::{Plan, choose_plan};
pub use store::{
    CollectionSnapshot, DEFAULT_SNAPSHOT_CHECK_INTERVAL, DEFAULT_SNAPSHOT_WAL_BYTES,
    DEFAULT_SNAPSHOT_WAL_RATIO, SnapshotOutcome, StoreOptions, VectorStore, check_name,
};
pub use types::{
    CollectionConfig, CollectionInfo, DeleteRequest, HnswConfig, MAX_DIMENSION, MAX_SEARCH_HITS,
    MAX_SEARCH_PAYLOAD_BYTES, MAX_SEARCH_VECTOR_FLOATS, MAX_TOP_K, MemoryUsage, PayloadIndexKind,
    Point, PointId, Quantization, ScoredPoint, SearchRequest,
};
pub use wal::FsyncPolicy;
