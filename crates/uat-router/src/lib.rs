//! The LLM router: providers (one file per wire format), routing strategies
//! (one file each), retries with backoff, failover, circuit breakers, model
//! discovery and upstream metrics.
//!
//! ```text
//! Router::new(&config) -> resolve(model) -> chat / chat_stream / completion /
//!                            |                  completion_stream / embeddings
//!                            |                  |
//!                         Catalog         Strategy orders candidates,
//!                  (aliases, models)      Breaker gates each attempt,
//!                                         retries before the first byte only
//! ```

mod breaker;
mod catalog;
pub mod discovery;
mod error;
mod metrics;
pub mod provider;
mod router;
mod stats;
pub mod strategy;
mod stream;
#[cfg(test)]
mod tests;

pub use breaker::BreakerState;
pub use catalog::ALIAS_OWNER;
pub use error::{Failure, FailureKind, ProviderFailure, RouterError, UpstreamError};
pub use provider::{ChunkStream, Provider, Reply, Shape, StreamChunk};
pub use router::{ProviderStatus, Resolved, Routed, Router, build_provider};
pub use stats::ProviderStats;
pub use stream::RoutedStream;
