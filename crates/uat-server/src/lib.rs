//! The `uat` HTTP server: [`build`] turns a validated [`Config`] into an
//! [`AppState`], [`app`] turns the state into an `axum::Router`, and
//! [`serve`] runs it with graceful shutdown.
//!
//! Handlers are thin: they parse (through [`extract::ApiJson`]), call an
//! engine, and map the engine's error enum to an [`error::ApiError`].

pub mod cache;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod gateway;
mod health;
pub mod memory;
mod middleware;
pub mod mock_upstream;
pub mod state;
pub mod vector;

pub use error::ApiError;
pub use state::{AppState, ReadyCheck, ReadyStatus};
pub use uat_config::Config;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A failure to start: bad settings, an unreachable required store, a port taken.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A subsystem could not start.
    #[error("{subsystem}: {message}")]
    Subsystem {
        /// Which subsystem (`storage`, `cache`, `vector`, ...).
        subsystem: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl StartupError {
    /// A subsystem failure.
    pub fn subsystem(subsystem: &'static str, message: impl std::fmt::Display) -> Self {
        StartupError::Subsystem {
            subsystem,
            message: message.to_string(),
        }
    }
}

/// Builds every service from the configuration.
pub async fn build(config: Config) -> Result<AppState, StartupError> {
    let config = Arc::new(config);
    let gateway = gateway::Gateway::init(&config).await?;
    let cache = cache::CacheService::init(&config).await?;
    let vector = vector::VectorService::init(&config).await?;
    let embed = embeddings::EmbedService::init(&config).await?;
    let memory = memory::MemoryService::init(&config, &embed).await?;
    Ok(AppState::new(config, gateway, cache, vector, embed, memory))
}

/// The whole HTTP application for a state.
pub fn app(state: AppState) -> Router {
    let cfg = state.config.clone();
    let api = Router::new()
        .merge(gateway::routes())
        .merge(cache::routes())
        .merge(embeddings::routes())
        .merge(memory::routes())
        .layer(DefaultBodyLimit::max(cfg.server.body_limit))
        .layer(axum::Extension(extract::BodyLimit(cfg.server.body_limit)))
        // Bulk routes carry their own, larger limit.
        .merge(
            vector::routes()
                .layer(DefaultBodyLimit::max(cfg.server.bulk_body_limit))
                .layer(axum::Extension(extract::BodyLimit(
                    cfg.server.bulk_body_limit,
                ))),
        );
    middleware::wrap(api.merge(health::routes()), state)
}

/// Binds `addr` with the settings the gateway needs (TCP_NODELAY on every
/// accepted connection is applied in [`serve`]).
pub async fn bind(addr: &str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains
/// in-flight requests and streams for at most `grace`.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    shutdown: F,
    grace: Duration,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    use axum::serve::ListenerExt;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let listener = listener.tap_io(|tcp| {
        // Nagle's algorithm would hold small responses back ~40 ms on a
        // keep-alive connection.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let mut rx2 = rx.clone();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = rx2.wait_for(|v| *v).await;
    });
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = tx.send(true);
    });
    let mut rx3 = rx;
    tokio::select! {
        r = server => r,
        _ = async move {
            let _ = rx3.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
            Ok(())
        }
    }
}
