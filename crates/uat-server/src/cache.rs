//! The tiered response cache around chat completions and embeddings, and its
//! admin routes (issue: cache).
//!
//! Placeholder until the subsystem lands: [`around`] calls straight through.

use crate::StartupError;
use crate::state::{AppState, ReadyCheck};
use axum::Router;
use axum::http::HeaderMap;
use axum::response::Response;
use std::future::Future;
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

/// What kind of response is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v1/chat/completions` (streamed or not).
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
}

/// Serves a request through the cache: answers from it on a hit, otherwise
/// runs `upstream` and stores a successful answer.
pub async fn around<F, Fut>(
    _state: &AppState,
    _headers: &HeaderMap,
    _kind: Kind,
    _model: &str,
    _body: &serde_json::Value,
    upstream: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Response>,
{
    upstream().await
}

/// The subsystem's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
