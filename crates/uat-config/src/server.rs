use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[server]`: the HTTP listener and its protections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Requests in flight beyond which `uat` sheds load with 503 + Retry-After.
    pub max_in_flight: usize,
    /// Client connections served at once; past it new connections wait in
    /// the listen backlog until one closes (each holds a file descriptor).
    pub max_connections: usize,
    /// Largest request body on ordinary routes (bytes); larger gets 413.
    pub body_limit: usize,
    /// Largest request body on bulk routes such as vector upserts (bytes).
    pub bulk_body_limit: usize,
    /// Memory (bytes) that large request bodies (256 KiB or more) may take
    /// at once while they are parsed and served, estimated from their JSON
    /// (a parsed value takes many times its text: `[0,0,...]` about 80
    /// times). A body that does not fit waits for room, up to
    /// `body_read_timeout`, then gets a 503 with `Retry-After`; one larger
    /// than the whole budget waits until it has it alone.
    pub parse_budget: usize,
    /// How long a graceful shutdown waits for in-flight requests and streams.
    #[serde(with = "crate::duration")]
    pub shutdown_grace: Duration,
    /// Longest time a connection may take to send a request's headers, and
    /// to start its next request on a kept-alive connection (HTTP/1): a
    /// client that holds a connection open without sending is cut off.
    #[serde(with = "crate::duration")]
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body: a client that
    /// stops sending mid-body gets a 408 and its slot back.
    #[serde(with = "crate::duration")]
    pub body_read_timeout: Duration,
    /// Slowest average pace, in bytes per second, at which a request body
    /// may arrive once it has been arriving for `body_read_timeout`: a client
    /// that trickles its body (a byte now and then, each within the idle
    /// timeout) gets a 408 and its slot back instead of holding it for hours.
    /// 0 turns the check off.
    pub body_min_rate: u64,
    /// Longest time a write to a client may wait: a client that stops
    /// reading its response (or stream) is disconnected, and the upstream
    /// request and in-flight slot it held are released.
    #[serde(with = "crate::duration")]
    pub write_timeout: Duration,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    /// Each comma-separated directive must be a level (`trace`, `debug`,
    /// `info`, `warn`, `error`, `off`, or `0` to `5`) or `target=level`: a
    /// bare word that is no level (`inf0`) would be read as a target to log
    /// at every level, and nothing else logged.
    pub log_level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:3033".into(),
            max_in_flight: 1024,
            max_connections: 10_000,
            body_limit: 4 * 1024 * 1024,
            bulk_body_limit: 64 * 1024 * 1024,
            parse_budget: 1024 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            write_timeout: Duration::from_secs(60),
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

impl ServerConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "server.listen",
                format!("`{}` is not an address like 127.0.0.1:3033", self.listen),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "server.max_in_flight",
                "must be at least 1",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be from 1 to 1000000",
            ));
        }
        if self.body_limit == 0 {
            return Err(ConfigError::invalid(
                "server.body_limit",
                "must be at least 1",
            ));
        }
        for (path, d) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.body_read_timeout", self.body_read_timeout),
            ("server.write_timeout", self.write_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(path, "must be more than zero"));
            }
        }
        check_log_level(&self.log_level)
            .map_err(|why| ConfigError::invalid("server.log_level", why))?;
        if self.parse_budget < 1024 * 1024 {
            return Err(ConfigError::invalid(
                "server.parse_budget",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.bulk_body_limit < self.body_limit {
            return Err(ConfigError::invalid(
                "server.bulk_body_limit",
                "must be at least server.body_limit",
            ));
        }
        Ok(())
    }
}

/// A level of tracing's `LevelFilter` syntax (case-insensitive, or `0`-`5`).
fn is_level(s: &str) -> bool {
    ["trace", "debug", "info", "warn", "error", "off"]
        .iter()
        .any(|l| s.eq_ignore_ascii_case(l))
        || matches!(s, "0" | "1" | "2" | "3" | "4" | "5")
}

/// Checks an `EnvFilter` string without the dependency: every directive is
/// a level or `target=level` (`target[span{field=value}]=level` too).
fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: &str = "trace, debug, info, warn, error or off";
    let mut any = false;
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        if is_level(d) {
            continue;
        }
        match d.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() && is_level(level.trim()) => {}
            Some((_, level)) if !is_level(level.trim()) => {
                return Err(format!("in `{d}`, `{level}` is not a level ({LEVELS})"));
            }
            Some(_) => return Err(format!("`{d}` names no target before `=`")),
            None => {
                return Err(format!(
                    "`{d}` is not a level ({LEVELS}); set a target's level as `{d}=debug`"
                ));
            }
        }
    }
    if any {
        Ok(())
    } else {
        Err(format!("names no level ({LEVELS})"))
    }
}
