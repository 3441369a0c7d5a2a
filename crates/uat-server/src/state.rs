//! The shared application state: the configuration and one handle per service.

use crate::{cache, embeddings, gateway, memory, vector};
use serde::Serialize;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;
use uat_config::Config;

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What every handler can reach.
pub struct Inner {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// LLM routing (chat completions, model lists).
    pub gateway: gateway::Gateway,
    /// The tiered response cache.
    pub cache: cache::CacheService,
    /// The vector database.
    pub vector: vector::VectorService,
    /// Local embedding models.
    pub embed: embeddings::EmbedService,
    /// The memory service.
    pub memory: memory::MemoryService,
    /// When the state was built.
    pub started: Instant,
}

impl AppState {
    /// Assembles the state.
    pub fn new(
        config: Arc<Config>,
        gateway: gateway::Gateway,
        cache: cache::CacheService,
        vector: vector::VectorService,
        embed: embeddings::EmbedService,
        memory: memory::MemoryService,
    ) -> Self {
        AppState(Arc::new(Inner {
            config,
            gateway,
            cache,
            vector,
            embed,
            memory,
            started: Instant::now(),
        }))
    }

    /// Readiness of every dependency, for `GET /ready`.
    pub async fn ready_checks(&self) -> Vec<ReadyCheck> {
        let mut out = Vec::new();
        out.extend(self.gateway.ready().await);
        out.extend(self.cache.ready().await);
        out.extend(self.vector.ready().await);
        out.extend(self.embed.ready().await);
        out.extend(self.memory.ready().await);
        out
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// State of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    /// Working.
    Ok,
    /// Working with reduced function (e.g. a cache level skipped).
    Degraded,
    /// Not working.
    Down,
}

/// One line of the readiness report.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyCheck {
    /// Dependency name (`storage`, `cache.l2`, `provider:openai`, ...).
    pub name: String,
    /// Its state.
    pub status: ReadyStatus,
    /// When true, `Down` makes the replica unready (503).
    pub critical: bool,
    /// Detail for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
