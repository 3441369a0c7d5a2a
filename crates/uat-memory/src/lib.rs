//! uat-memory: long-term memories per user, with keyword, semantic and hybrid search.
//!
//! - [`store`]: one [`Store`] trait, two implementations (SQLite by default,
//!   PostgreSQL when `database_url` is `postgres://...`), migrated at start-up;
//!   SQL is the source of truth: every change is written with its history and
//!   a change-log record in one transaction;
//! - [`index`]: the semantic index (a `uat-vector` collection) that tails the
//!   change log, so it catches up after a crash and across replicas;
//! - [`Memories`]: validation, embedding (through the [`Embedder`] trait),
//!   store and index behind one handle; the HTTP layer stays thin;
//!   [`Memories::scoped`] gives one tenant's view of it ([`Scoped`]). A write
//!   is not lost when the embedder fails or is overloaded: the memory is
//!   stored without an embedding (found by keyword search at once) and the
//!   answer says so ([`WriteOutcome::embedding_pending`]);
//! - `backfill`: a background task of [`Memories`] that embeds, through the
//!   change log, the memories that have no embedding of the current model
//!   (written while no model was available or while the embedder failed, or
//!   by another model), so semantic search finds them once a model is back;
//!   a write stored without its embedding wakes it.

mod backfill;
pub mod bench;
mod embed;
pub mod error;
pub mod index;
pub mod input;
pub mod keyword;
mod metrics;
mod service;
pub mod store;
mod tenant;
pub mod types;

pub use embed::{BoxFuture, Embedder};
pub use error::{MemoryError, Result};
pub use input::{
    Limits, ListParams, MemoryInput, PatchInput, SearchInput, SearchMode, SearchQuery, WriteRequest,
};
pub use service::{Memories, Options, Purged, RRF_K, SearchHit, SearchResults};
pub use store::{AnyStore, PgStore, SqliteStore, Store};
pub use tenant::Scoped;
pub use types::*;
