//! The router's error enum and the per-attempt failure record.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why one upstream attempt failed. Small and fixed, so it can label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The connection could not be opened or was reset.
    Connect,
    /// No answer (or no first token) in time.
    Timeout,
    /// 429 from the upstream.
    RateLimited,
    /// 5xx from the upstream.
    ServerError,
    /// A 4xx other than 429 that is not the client's fault (401, 403, 408, ...).
    ClientError,
    /// The upstream rejected the request itself (400, 413, 422): not retried.
    Rejected,
    /// 404: this target does not serve the model (gone since discovery, or a
    /// wrong `base_url`). Failed over to the next target, not retried on
    /// this one; when every target says so, the client gets the 404.
    NotFound,
    /// The body could not be understood.
    Malformed,
    /// A stream broke off after it started.
    Interrupted,
    /// The provider's circuit breaker is open.
    CircuitOpen,
    /// The provider cannot do this (e.g. embeddings on Anthropic).
    Unsupported,
}

impl FailureKind {
    /// Every kind, in a fixed order (used to build metric handles once).
    pub const ALL: [FailureKind; 11] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::RateLimited,
        FailureKind::ServerError,
        FailureKind::ClientError,
        FailureKind::Rejected,
        FailureKind::NotFound,
        FailureKind::Malformed,
        FailureKind::Interrupted,
        FailureKind::CircuitOpen,
        FailureKind::Unsupported,
    ];

    /// The metric label / JSON name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::ServerError => "server_error",
            FailureKind::ClientError => "client_error",
            FailureKind::Rejected => "rejected",
            FailureKind::NotFound => "not_found",
            FailureKind::Malformed => "malformed",
            FailureKind::Interrupted => "interrupted",
            FailureKind::CircuitOpen => "circuit_open",
            FailureKind::Unsupported => "unsupported",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Worth another attempt (same or another provider)?
    pub fn retryable(self) -> bool {
        !matches!(
            self,
            FailureKind::Rejected | FailureKind::NotFound | FailureKind::Unsupported
        )
    }

    /// Did the upstream answer at all? Decides 502 (yes) versus 503 (no).
    pub fn reached(self) -> bool {
        matches!(
            self,
            FailureKind::RateLimited
                | FailureKind::ServerError
                | FailureKind::ClientError
                | FailureKind::Rejected
                | FailureKind::NotFound
                | FailureKind::Malformed
                | FailureKind::Interrupted
                | FailureKind::Unsupported
        )
    }

    /// Does this failure count against the provider's health (breaker, error rate)?
    pub fn counts_against_provider(self) -> bool {
        !matches!(
            self,
            FailureKind::Rejected
                | FailureKind::NotFound
                | FailureKind::Unsupported
                | FailureKind::CircuitOpen
        )
    }
}

/// One failed attempt: what, why, and the upstream's status when it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The class of failure.
    pub kind: FailureKind,
    /// HTTP status from the upstream, when it answered.
    pub status: Option<u16>,
    /// Human-readable reason (upstream message when there is one).
    pub message: String,
    /// Retry-After sent with a 429 / 503.
    pub retry_after: Option<Duration>,
    /// The upstream's own `code`, `type` and `param`, when its error body
    /// carried them (boxed: failures are rare, `Result`s are everywhere).
    pub upstream: Option<Box<UpstreamError>>,
}

/// The machine-readable parts of an upstream's error body, passed on to the
/// client with a rejection (tools act on OpenAI's `code`, such as
/// `context_length_exceeded`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamError {
    /// `error.code` (a number is given as text).
    pub code: Option<String>,
    /// `error.type`.
    pub kind: Option<String>,
    /// `error.param`.
    pub param: Option<String>,
}

impl UpstreamError {
    /// The parts found in an error body (OpenAI and Anthropic shapes), or
    /// `None` when it has none.
    pub fn from_body(v: &serde_json::Value) -> Option<Box<Self>> {
        let err = v.get("error").filter(|e| e.is_object())?;
        let text = |name: &str| match err.get(name)? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let e = UpstreamError {
            code: text("code"),
            kind: text("type"),
            param: text("param"),
        };
        (e != UpstreamError::default()).then(|| Box::new(e))
    }
}

impl Failure {
    /// A failure with no status.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            upstream: None,
        }
    }

    /// This provider cannot do what the request asks (`param` names the
    /// field, `code` is OpenAI's: `unsupported_parameter` for a field,
    /// `unsupported_value` for a value). The router fails over to the next
    /// target; when no target can, the client gets a 400 in the OpenAI shape
    /// with this `param` and `code`, never an answer quietly made without it.
    pub fn unsupported(message: impl Into<String>, param: impl Into<String>, code: &str) -> Self {
        Failure {
            kind: FailureKind::Unsupported,
            status: None,
            message: message.into(),
            retry_after: None,
            upstream: Some(Box::new(UpstreamError {
                code: Some(code.to_owned()),
                kind: Some("invalid_request_error".to_owned()),
                param: Some(param.into()),
            })),
        }
    }

    /// A failure from an HTTP status.
    pub fn from_status(
        status: u16,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let kind = match status {
            429 => FailureKind::RateLimited,
            400 | 413 | 422 => FailureKind::Rejected,
            404 => FailureKind::NotFound,
            s if s >= 500 => FailureKind::ServerError,
            _ => FailureKind::ClientError,
        };
        Failure {
            kind,
            status: Some(status),
            message: message.into(),
            retry_after,
            upstream: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} (HTTP {s}): {}", self.kind.as_str(), self.message),
            None => write!(f, "{}: {}", self.kind.as_str(), self.message),
        }
    }
}

/// One provider's reason in an all-failed error.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderFailure {
    /// The provider.
    pub provider: Arc<str>,
    /// Its last failure.
    pub failure: Failure,
}

/// Everything that can go wrong in the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// No provider or alias serves the model.
    #[error("the model `{model}` does not exist or no provider serves it")]
    UnknownModel {
        /// The requested name.
        model: String,
    },
    /// Every attempt failed and at least one upstream answered with an error (502).
    #[error("every provider failed for `{model}`: {}", join(.reasons))]
    AllFailed {
        /// The requested model.
        model: String,
        /// Attempts made.
        attempts: u32,
        /// Last failure per provider.
        reasons: Vec<ProviderFailure>,
    },
    /// No provider could be reached (connect errors, timeouts, open breakers) (503).
    #[error("no provider reachable for `{model}`: {}", join(.reasons))]
    NoneReachable {
        /// The requested model.
        model: String,
        /// Attempts made.
        attempts: u32,
        /// Last failure per provider.
        reasons: Vec<ProviderFailure>,
    },
    /// The upstream rejected the request itself (its 4xx is passed on, not retried).
    #[error("{provider} rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// The provider.
        provider: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// The upstream's status (400, 404, 413 or 422).
        status: u16,
        /// The upstream's message.
        message: String,
        /// The upstream's `code`, `type` and `param`, when it gave them.
        upstream: Option<Box<UpstreamError>>,
    },
    /// A provider could not be set up from its configuration.
    #[error("provider `{provider}`: {message}")]
    Config {
        /// The provider.
        provider: String,
        /// What is wrong.
        message: String,
    },
}

fn join(reasons: &[ProviderFailure]) -> String {
    let mut s = String::new();
    for (i, r) in reasons.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&r.provider);
        s.push_str(": ");
        s.push_str(&r.failure.to_string());
    }
    s
}

impl RouterError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            RouterError::UnknownModel { .. } => 404,
            RouterError::AllFailed { .. } => 502,
            RouterError::NoneReachable { .. } => 503,
            RouterError::Rejected { status, .. } => *status,
            RouterError::Config { .. } => 500,
        }
    }

    /// Attempts made before giving up (0 when none was made).
    pub fn attempts(&self) -> u32 {
        match self {
            RouterError::AllFailed { attempts, .. }
            | RouterError::NoneReachable { attempts, .. }
            | RouterError::Rejected { attempts, .. } => *attempts,
            _ => 0,
        }
    }

    /// Per-provider reasons (empty for errors that have none).
    pub fn reasons(&self) -> &[ProviderFailure] {
        match self {
            RouterError::AllFailed { reasons, .. } | RouterError::NoneReachable { reasons, .. } => {
                reasons
            }
            _ => &[],
        }
    }

    /// The last provider tried, when there was one.
    pub fn last_provider(&self) -> Option<&str> {
        match self {
            RouterError::Rejected { provider, .. } => Some(provider),
            _ => self.reasons().last().map(|r| &*r.provider),
        }
    }
}
