//! The tiered response cache and its admin routes (issue: cache).
//!
//! Placeholder until the subsystem lands: no routes, nothing to check.

use crate::StartupError;
use crate::state::{AppState, ReadyCheck};
use axum::Router;
use uat_config::Config;

/// Handle to the subsystem, held in [`AppState`].
pub struct CacheService {
    _private: (),
}

impl CacheService {
    /// Starts the subsystem from the configuration.
    pub async fn init(_config: &Config) -> Result<Self, StartupError> {
        Ok(CacheService { _private: () })
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
