//! The memory service HTTP API (issue: memory service).
//!
//! Placeholder until the subsystem lands: no routes, nothing to check.

use crate::StartupError;
use crate::embeddings::EmbedService;
use crate::state::{AppState, ReadyCheck};
use axum::Router;
use uat_config::Config;

/// Handle to the subsystem, held in [`AppState`].
pub struct MemoryService {
    _private: (),
}

impl MemoryService {
    /// Starts the subsystem from the configuration.
    pub async fn init(_config: &Config, _embed: &EmbedService) -> Result<Self, StartupError> {
        Ok(MemoryService { _private: () })
    }

    /// Readiness lines for `GET /ready`.
    pub async fn ready(&self) -> Vec<ReadyCheck> {
        Vec::new()
    }
}

/// The subsystem's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
