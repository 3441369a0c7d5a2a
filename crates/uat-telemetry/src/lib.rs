//! Tracing set-up and the Prometheus exporter.
//!
//! Every crate registers its metrics once (at first use, through a
//! `LazyLock`) in the process-wide [`registry`]; `GET /metrics` renders it
//! with [`render`]. Metric names follow `uat_<subsystem>_<name>_{total|seconds|bytes}`.

use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::LazyLock;

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The process-wide metric registry.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers a collector, ignoring a second registration of the same metric
/// (which happens when several app instances run in one test process).
pub fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    match REGISTRY.register(Box::new(c.clone())) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => c,
        Err(e) => {
            tracing::error!(error = %e, "metric registration failed");
            c
        }
    }
}

/// Latency buckets (seconds) from 50 µs to 60 s, for request and upstream durations.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::with_capacity(16 * 1024);
    let families = REGISTRY.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::error!(error = %e, "metric encoding failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Log output format.
#[derive(Debug, Clone, Copy)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// JSON lines.
    Json,
}

/// `filter` with PostgreSQL's notices (sqlx logs them at `info`: "relation
/// ... already exists, skipping" from every `CREATE ... IF NOT EXISTS` at
/// start-up) shown from `warn` up, unless the filter names sqlx itself.
fn quiet_notices(filter: &str) -> String {
    if filter.contains("sqlx") {
        filter.to_owned()
    } else {
        format!("{filter},sqlx::postgres::notice=warn")
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over `default_filter`.
/// Safe to call more than once (later calls do nothing).
pub fn init_tracing(default_filter: &str, format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let filter = from_env
        .and_then(|s| EnvFilter::try_new(quiet_notices(&s)).ok())
        .or_else(|| EnvFilter::try_new(quiet_notices(default_filter)).ok())
        .unwrap_or_else(|| EnvFilter::new(quiet_notices("info")));
    // Colours only on a terminal: logs piped to a file, journald or a
    // container runtime (`kubectl logs`) would otherwise carry escape codes.
    // `NO_COLOR` (no-color.org) turns them off on a terminal too.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::quiet_notices;
    use tracing::Level;
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt};

    /// Whether `level` events of the notice target and of another pass `filter`.
    fn passes(filter: &str, level: Level) -> (bool, bool) {
        let f = EnvFilter::try_new(quiet_notices(filter)).expect("a valid filter");
        let subscriber = tracing_subscriber::registry().with(f);
        tracing::subscriber::with_default(subscriber, || match level {
            Level::INFO => (
                tracing::enabled!(target: "sqlx::postgres::notice", Level::INFO),
                tracing::enabled!(target: "uat_server::memory", Level::INFO),
            ),
            _ => (
                tracing::enabled!(target: "sqlx::postgres::notice", Level::WARN),
                tracing::enabled!(target: "uat_server::memory", Level::WARN),
            ),
        })
    }

    #[test]
    fn postgres_notices_show_from_warn_unless_sqlx_is_named() {
        assert_eq!(passes("info", Level::INFO), (false, true));
        assert_eq!(passes("info", Level::WARN), (true, true));
        assert_eq!(passes("debug,hyper=warn", Level::INFO), (false, true));
        // A filter that names sqlx is the operator's own choice.
        assert_eq!(passes("info,sqlx=info", Level::INFO), (true, true));
        assert_eq!(quiet_notices("warn,sqlx=debug"), "warn,sqlx=debug");
    }
}
