//! Local embeddings: POST /v1/embeddings and the model registry admin routes (issue: ML inference).
//!
//! Placeholder until the subsystem lands: no routes, nothing to check.

use crate::StartupError;
use crate::state::{AppState, ReadyCheck};
use axum::Router;
use uat_config::Config;

/// Handle to the subsystem, held in [`AppState`].
pub struct EmbedService {
    _private: (),
}

impl EmbedService {
    /// Starts the subsystem from the configuration.
    pub async fn init(_config: &Config) -> Result<Self, StartupError> {
        Ok(EmbedService { _private: () })
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
