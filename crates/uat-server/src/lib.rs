//! The `uat` HTTP server: [`build`] turns a validated [`Config`] into an
//! [`AppState`], [`app`] turns the state into an `axum::Router`, and
//! [`serve`] runs it with graceful shutdown.
//!
//! Handlers are thin: they parse (through [`extract::ApiJson`]), call an
//! engine, and map the engine's error enum to an [`error::ApiError`].

pub mod auth;
pub mod cache;
pub mod dashboard;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod gateway;
mod h2watch;
mod health;
pub mod memory;
mod middleware;
pub mod mock_upstream;
mod responses;
pub mod spend;
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
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error (in the message, not chained as a source, which
        /// printed it twice: `... in use (os error 98): ... in use (os error 98)`).
        error: std::io::Error,
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
    let spend = spend::SpendService::init(&config).await?;
    let auth = auth::Auth::from_config(&config.auth, spend.as_ref())?;
    let gateway = gateway::Gateway::init(&config).await?;
    let cache = cache::CacheService::init(&config).await?;
    let vector = vector::VectorService::init(&config).await?;
    let embed = embeddings::EmbedService::init(&config).await?;
    let memory = memory::MemoryService::init(&config, &embed).await?;
    Ok(AppState::new(
        config, gateway, cache, vector, embed, memory, auth, spend,
    ))
}

/// The whole HTTP application for a state.
pub fn app(state: AppState) -> Router {
    let cfg = state.config.clone();
    let pace = extract::BodyPace::of(&cfg.server);
    let api = Router::new()
        .merge(gateway::routes())
        .merge(cache::routes())
        .merge(embeddings::routes())
        .merge(memory::routes())
        .merge(vector::routes())
        .merge(dashboard::routes())
        .merge(spend::routes())
        .layer(DefaultBodyLimit::max(cfg.server.body_limit))
        .layer(axum::Extension(extract::BodyLimit(cfg.server.body_limit)))
        .layer(axum::Extension(pace))
        // Bulk routes carry their own, larger limit.
        .merge(
            vector::bulk_routes()
                .layer(DefaultBodyLimit::max(cfg.server.bulk_body_limit))
                .layer(axum::Extension(extract::BodyLimit(
                    cfg.server.bulk_body_limit,
                )))
                .layer(axum::Extension(pace)),
        );
    middleware::wrap(api.merge(health::routes()), state)
}

/// Binds `addr` with the settings the gateway needs (TCP_NODELAY on every
/// accepted connection is applied in [`serve`]).
pub async fn bind(addr: &str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartupError::Bind {
            addr: addr.to_string(),
            error,
        })
}

/// Raises this process's open-file limit to its hard limit (Linux; often
/// 1,024 soft against 1,048,576 hard) and returns the limit now in force,
/// when known. Each connection, upstream connection and open file takes a
/// descriptor; at the limit new connections fail.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut l = getrlimit(Resource::Nofile);
        if let (Some(cur), Some(max)) = (l.current, l.maximum)
            && cur < max
        {
            l.current = Some(max);
            if setrlimit(Resource::Nofile, l).is_err() {
                return Some(cur);
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Connection settings of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a graceful shutdown drains in-flight requests and streams.
    pub grace: Duration,
    /// Longest time to receive a request's headers, or the next request on a
    /// kept-alive HTTP/1 connection (`server.header_read_timeout`).
    pub header_read_timeout: Duration,
    /// Connections served at once (`server.max_connections`).
    pub max_connections: usize,
    /// Longest a write to a client may wait (`server.write_timeout`).
    pub write_timeout: Duration,
}

impl From<&uat_config::ServerConfig> for ServeOptions {
    fn from(s: &uat_config::ServerConfig) -> Self {
        ServeOptions {
            grace: s.shutdown_grace,
            header_read_timeout: s.header_read_timeout,
            max_connections: s.max_connections,
            write_timeout: s.write_timeout,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains
/// in-flight requests and streams for at most `grace`.
///
/// Each connection is served by hyper with a timer, so HTTP/1 headers must
/// arrive within `header_read_timeout` (a client holding a connection open
/// without sending, or idling between kept-alive requests, is cut off) and
/// an HTTP/2 peer that stops answering pings is dropped. `axum::serve` sets
/// no timer, which turns both off.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    shutdown: F,
    opts: ServeOptions,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    use axum::serve::{Listener, ListenerExt};
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut listener = listener.tap_io(|tcp| {
        // Nagle's algorithm would hold small responses back ~40 ms on a
        // keep-alive connection.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    // HTTP/2 stream tasks run under a watch that drops a stream whose
    // client keeps its flow-control window shut (see `h2watch`).
    let mut builder = hyper_util::server::conn::auto::Builder::new(h2watch::StreamExec {
        timeout: opts.write_timeout,
    });
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(60)));
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = tx.send(true);
    });
    // Every connection task holds a receiver; all dropped = all drained.
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    let mut stopping = rx.clone();
    let conn_rx = rx.clone();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    let server = async move {
        loop {
            // At the cap, stop accepting: new connections wait in the backlog.
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s,
                _ = stopping.wait_for(|v| *v) => break,
            };
            let Ok(slot) = slot else { break };
            let (io, _addr) = tokio::select! {
                conn = listener.accept() => conn,
                _ = stopping.wait_for(|v| *v) => break,
            };
            let builder = builder.clone();
            let service = TowerToHyperService::new(app.clone());
            let mut stop = conn_rx.clone();
            let close_rx = close_rx.clone();
            let first_byte = opts.header_read_timeout;
            let write_timeout = opts.write_timeout;
            tokio::spawn(async move {
                // hyper reads the first bytes to tell HTTP/1 from HTTP/2
                // without any timeout: a connection that sends nothing
                // would wait there for ever.
                // A shutdown does not wait for a connection that has sent
                // nothing yet (a client's spare pooled connection).
                let mut one = [0u8; 1];
                tokio::select! {
                    r = tokio::time::timeout(first_byte, io.peek(&mut one)) => match r {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    },
                    _ = stop.wait_for(|v| *v) => return,
                }
                // A client that stops reading: the write fails after this
                // long, hyper ends the connection, and the response (an
                // upstream stream, a slot) is dropped with it.
                let mut io = tokio_io_timeout::TimeoutStream::new(io);
                io.set_write_timeout(Some(write_timeout));
                let io = Box::pin(io);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                let mut conn = std::pin::pin!(conn);
                let mut draining = false;
                loop {
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                            break;
                        }
                        _ = stop.wait_for(|v| *v), if !draining => {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
                drop(close_rx);
                drop(slot);
            });
        }
        drop(close_rx);
        drop(listener);
        close_tx.closed().await;
    };
    let mut after = rx;
    tokio::select! {
        () = server => Ok(()),
        _ = async move {
            let _ = after.wait_for(|v| *v).await;
            tokio::time::sleep(opts.grace).await;
        } => {
            tracing::warn!(grace = ?opts.grace, "grace period over; closing remaining connections");
            Ok(())
        }
    }
}
