//! The tiered response cache around chat completions and embeddings, and its
//! admin routes (`DELETE /v1/cache`, `GET /v1/cache/stats`).
//!
//! [`around`] decides per request whether the cache may be read and
//! written (mode, `Cache-Control`, `x-uat-cache-ttl`), answers hits (a chat
//! hit is replayed as SSE when the request streams), joins identical misses
//! into one upstream call, and records a successful answer: a JSON body as
//! it is, a streamed one chunk by chunk while it is forwarded, assembled
//! into one `chat.completion` and stored only when the stream ended with
//! `[DONE]`. Every response of a cached route carries
//! `x-uat-cache: hit-l1 | hit-l2 | hit-l3 | miss | bypass`.

mod sse;

pub(crate) use sse::is_usage_only_json as is_usage_only_chunk;

use crate::StartupError;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::middleware::RouteLabels;
use crate::state::{AppState, ReadyCheck, ReadyStatus};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use uat_cache::{
    CacheKey, Flight, FlightGuard, Found, Invalidated, KeyPattern, Level, RedisLevel, RequestKind,
    SqlLevel, TieredCache,
};
use uat_config::Config;
use uat_config::{CacheConfig, CacheMode};
use uat_router::Shape;

/// `x-uat-cache`: how the cache served the response.
pub static X_UAT_CACHE: HeaderName = HeaderName::from_static("x-uat-cache");
/// `x-uat-cache-key`: the entry's key (`model|hash`), for `DELETE /v1/cache`.
pub static X_UAT_CACHE_KEY: HeaderName = HeaderName::from_static("x-uat-cache-key");
/// `x-uat-cache-ttl`: per-request time to live in seconds.
pub static X_UAT_CACHE_TTL: HeaderName = HeaderName::from_static("x-uat-cache-ttl");

/// The namespace of requests made without API keys (none configured).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Largest answer that is stored (a larger one is passed on uncached).
const MAX_CACHED_BODY: usize = 32 * 1024 * 1024;

/// Handle to the subsystem, held in [`AppState`].
pub struct CacheService {
    cache: Option<TieredCache>,
    config: CacheConfig,
    l2_configured: bool,
    l3_error: Option<String>,
    answers: Answers,
}

/// How a response of a cached route was served: its `x-uat-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Hit(Level),
    Miss,
    Bypass,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit(Level::L1) => "hit-l1",
            Outcome::Hit(Level::L2) => "hit-l2",
            Outcome::Hit(Level::L3) => "hit-l3",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }

    fn slot(self) -> usize {
        match self {
            Outcome::Hit(Level::L1) => 0,
            Outcome::Hit(Level::L2) => 1,
            Outcome::Hit(Level::L3) => 2,
            Outcome::Miss => 3,
            Outcome::Bypass => 4,
        }
    }

    const ALL: [Outcome; 5] = [
        Outcome::Hit(Level::L1),
        Outcome::Hit(Level::L2),
        Outcome::Hit(Level::L3),
        Outcome::Miss,
        Outcome::Bypass,
    ];
}

/// `uat_cache_responses_total{result}`, one counter per [`Outcome`]
/// (resolved once: counting a response is one atomic add).
static RESPONSES: std::sync::LazyLock<[prometheus::IntCounter; 5]> = std::sync::LazyLock::new(
    || {
        let vec = uat_telemetry::register(
            prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "uat_cache_responses_total",
                    "Responses of the cached routes by x-uat-cache (hit-l1, hit-l2, hit-l3, miss, bypass)",
                ),
                &["result"],
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
        );
        Outcome::ALL.map(|o| vec.with_label_values(&[o.as_str()]))
    },
);

#[expect(
    clippy::panic,
    reason = "the metric definition is static and valid; this cannot happen"
)]
fn unreachable_metric(e: &prometheus::Error) -> prometheus::IntCounterVec {
    panic!("invalid static metric definition: {e}")
}

/// This app's responses by [`Outcome`] (the metric is process-wide): the
/// hit rate clients see. The levels' own counts are of lookups, and a
/// request that waited for an identical one in flight looked up twice (a
/// miss, then the hit), which made their rate read under 50% for a burst
/// of identical requests nearly all served from the cache.
#[derive(Default)]
struct Answers([std::sync::atomic::AtomicU64; 5]);

impl Answers {
    fn count(&self, o: Outcome) {
        self.0[o.slot()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RESPONSES[o.slot()].inc();
    }

    fn get(&self, o: Outcome) -> u64 {
        self.0[o.slot()].load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Responses served from the cache and from upstream (bypasses left out).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ResponseStats {
    /// Responses served from the cache, any level.
    pub hits: u64,
    /// Cacheable responses that went upstream.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 before any.
    pub hit_rate: f64,
}

impl CacheService {
    /// Starts the subsystem from the configuration: L1 always (unless
    /// `max_bytes = 0`), L2 when `cache.l2.url` is set (an unreachable Redis
    /// only degrades it), L3 when enabled, in `storage.database_url` (an
    /// unreachable database disables L3 and is reported by `/ready`).
    pub async fn init(config: &Config) -> Result<Self, StartupError> {
        let cfg = config.cache.clone();
        if cfg.mode == CacheMode::Off {
            return Ok(CacheService {
                cache: None,
                config: cfg,
                l2_configured: false,
                l3_error: None,
                answers: Answers::default(),
            });
        }
        let mut builder = TieredCache::builder()
            .l1(cfg.l1.max_bytes)
            .write_queue(cfg.write_queue)
            .l2_write_delay(cfg.l2.write_delay)
            .l3_write_delay(cfg.l3.write_delay);
        let l2_configured = cfg.l2.url.is_some();
        if let Some(url) = &cfg.l2.url {
            let l2 = RedisLevel::connect(url, &cfg.l2.key_prefix, cfg.l2.timeout())
                .await
                .map_err(|e| StartupError::subsystem("cache", format!("cache.l2.url: {e}")))?;
            builder = builder.l2(l2);
        }
        let mut l3_error = None;
        if cfg.l3.enabled {
            match connect_l3(config).await {
                Ok(l3) => {
                    l3.start_purge(cfg.l3.purge_interval);
                    builder = builder.l3(l3);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache L3 unavailable at start-up; running without it");
                    l3_error = Some(e);
                }
            }
        }
        Ok(CacheService {
            cache: Some(builder.build()),
            config: cfg,
            l2_configured,
            l3_error,
            answers: Answers::default(),
        })
    }

    /// This app's responses of the cached routes, hits and misses.
    pub fn responses(&self) -> ResponseStats {
        let hits = [Level::L1, Level::L2, Level::L3]
            .map(|l| self.answers.get(Outcome::Hit(l)))
            .iter()
            .sum();
        let misses = self.answers.get(Outcome::Miss);
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        let hit_rate = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        ResponseStats {
            hits,
            misses,
            hit_rate,
        }
    }

    /// The tiered cache (absent when `cache.mode = "off"`).
    pub fn tiered(&self) -> Option<&TieredCache> {
        self.cache.as_ref()
    }

    /// Readiness lines for `GET /ready`: `cache.l2` / `cache.l3`, degraded
    /// (never critical) while skipped.
    pub async fn ready(&self) -> Vec<ReadyCheck> {
        let mut out = Vec::new();
        let Some(cache) = &self.cache else {
            return out;
        };
        for (level, healthy) in cache.health() {
            let name = match level {
                Level::L2 => "cache.l2",
                Level::L3 => "cache.l3",
                Level::L1 => continue,
            };
            out.push(ReadyCheck {
                name: name.into(),
                status: if healthy {
                    ReadyStatus::Ok
                } else {
                    ReadyStatus::Degraded
                },
                critical: false,
                detail: (!healthy)
                    .then(|| "unreachable or slow: skipped, reconnecting in the background".into()),
            });
        }
        if self.l2_configured && cache.l2().is_none() {
            out.push(degraded("cache.l2", "not connected".into()));
        }
        if let Some(e) = &self.l3_error {
            out.push(degraded("cache.l3", format!("disabled: {e}")));
        }
        out
    }

    /// The TTL of a model: an override for the name the client used (an
    /// alias, say), else for the model it resolved to, else the default.
    fn ttl_for(&self, model: ModelNames<'_>) -> Duration {
        let ttls = &self.config.model_ttl;
        ttls.get(model.public)
            .or_else(|| ttls.get(model.cached))
            .copied()
            .unwrap_or(self.config.ttl)
    }
}

fn degraded(name: &str, detail: String) -> ReadyCheck {
    ReadyCheck {
        name: name.into(),
        status: ReadyStatus::Degraded,
        critical: false,
        detail: Some(detail),
    }
}

async fn connect_l3(config: &Config) -> Result<SqlLevel, String> {
    let url = config.storage.database_url();
    if !config.storage.is_postgres() {
        tokio::fs::create_dir_all(&config.storage.data_dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", config.storage.data_dir.display()))?;
    }
    SqlLevel::connect(&url, config.storage.max_connections, Duration::from_secs(2))
        .await
        .map_err(|e| format!("{}: {e}", uat_config::mask_url(&url)))
}

/// What kind of response is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v1/chat/completions` (streamed or not).
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/completions` (streamed or not).
    Completion,
}

impl Kind {
    /// How its streams are recorded and replayed; `None`: it never streams.
    fn form(self) -> Option<sse::Form> {
        match self {
            Kind::Chat => Some(sse::Form::Chat),
            Kind::Completion => Some(sse::Form::Text),
            Kind::Embeddings => None,
        }
    }
}

impl From<Kind> for RequestKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Chat => RequestKind::Chat,
            Kind::Embeddings => RequestKind::Embeddings,
            Kind::Completion => RequestKind::Completion,
        }
    }
}

/// What the cache may do for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Look the request up.
    pub read: bool,
    /// Store the answer.
    pub write: bool,
    /// Time to live of a stored answer.
    pub ttl: Duration,
    /// `Cache-Control: max-age=N` (N > 0): a stored answer older than this
    /// is not served (the request goes upstream, and its answer replaces
    /// the entry). `None`: any live entry.
    pub max_age: Option<Duration>,
}

impl Policy {
    /// Takes a client's limit on the age of what it is served: `0` skips the
    /// read; of two limits (a header and the body), the stricter holds.
    fn cap_age(&mut self, secs: u64) {
        if secs == 0 {
            self.read = false;
        } else {
            let max = Duration::from_secs(secs);
            self.max_age = Some(self.max_age.map_or(max, |m| m.min(max)));
        }
    }
}

/// Decides the policy from the mode, the request and its headers. An
/// `x-uat-cache-ttl` that is not a whole number of seconds up to
/// [`uat_config::MAX_TTL`] is refused (400), not ignored.
pub fn policy(
    cfg: &CacheConfig,
    default_ttl: Duration,
    headers: &HeaderMap,
    kind: Kind,
    body: &serde_json::Value,
) -> Result<Policy, ApiError> {
    let cacheable = match cfg.mode {
        CacheMode::Off => false,
        CacheMode::Always => true,
        CacheMode::Deterministic => match kind {
            Kind::Embeddings => true,
            Kind::Chat | Kind::Completion => {
                body.get("temperature").and_then(serde_json::Value::as_f64) == Some(0.0)
                    || body.get("seed").is_some_and(|s| !s.is_null())
            }
        },
    };
    let mut p = Policy {
        read: cacheable,
        write: cacheable,
        ttl: default_ttl,
        max_age: None,
    };
    // Read as bytes: a byte outside visible ASCII elsewhere in the header
    // (`to_str` refuses the whole value) must not cost its `no-store`.
    let mut cache_control = false;
    for v in headers.get_all(header::CACHE_CONTROL) {
        cache_control = true;
        for d in v.as_bytes().split(|b| *b == b',') {
            let d = d.trim_ascii();
            if d.eq_ignore_ascii_case(b"no-cache") {
                p.read = false;
            } else if d.eq_ignore_ascii_case(b"no-store") {
                p.write = false;
            } else if let Some(secs) = max_age(d) {
                p.cap_age(secs);
            }
        }
    }
    // HTTP/1.0's `Pragma: no-cache` counts when `Cache-Control` is absent
    // (RFC 9111, 5.4), as every HTTP cache reads it.
    if !cache_control
        && headers.get_all(header::PRAGMA).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
        })
    {
        p.read = false;
    }
    if let Some(v) = body.get(BODY_CONTROLS) {
        body_controls(&mut p, v)?;
    }
    if let Some(v) = headers.get(&X_UAT_CACHE_TTL) {
        let max = uat_config::MAX_TTL.as_secs();
        let secs = v
            .to_str()
            .ok()
            .map(str::trim)
            // Digits only: `parse` alone would take a leading `+`.
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s <= max)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "x-uat-cache-ttl",
                    format!("x-uat-cache-ttl must be a whole number of seconds from 0 (do not store) to {max} (10 years)"),
                )
            })?;
        if secs == 0 {
            p.write = false;
        } else {
            p.ttl = Duration::from_secs(secs);
        }
    }
    Ok(p)
}

/// The body field of LiteLLM's per-request cache controls.
pub const BODY_CONTROLS: &str = "cache";

/// LiteLLM's per-request cache controls in the body (what its users send
/// with the OpenAI SDKs' `extra_body`): `"cache": {"no-cache": true,
/// "no-store": true, "ttl": 600, "s-maxage": 600}`, the same as the
/// headers `Cache-Control: no-cache`, `no-store`, `x-uat-cache-ttl` and
/// `Cache-Control: max-age`. Read here, left out of the key, and never sent
/// upstream. Anything else in it is a 400 rather than silently ignored
/// (LiteLLM's `namespace` too: here every API key's owner is a namespace).
#[allow(
    clippy::result_large_err,
    reason = "ApiError is the server-wide error type; cold path"
)]
fn body_controls(p: &mut Policy, v: &serde_json::Value) -> Result<(), ApiError> {
    let serde_json::Value::Object(controls) = v else {
        return Err(ApiError::invalid_field(
            BODY_CONTROLS,
            "`cache` must be an object of cache controls: no-cache, no-store, ttl, s-maxage",
        ));
    };
    let max = uat_config::MAX_TTL.as_secs();
    for (name, v) in controls {
        // LiteLLM's fields are optional: a client serializing its model
        // sends the unset ones as null.
        if v.is_null() {
            continue;
        }
        let field = || format!("{BODY_CONTROLS}.{name}");
        let flag = || {
            v.as_bool().ok_or_else(|| {
                ApiError::invalid_field(field(), format!("`cache.{name}` must be true or false"))
            })
        };
        // Whole seconds, as LiteLLM's examples write them (`600` or `600.0`).
        let secs = || {
            v.as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && (0.0..=max as f64).contains(f))
                        .map(|f| f as u64)
                })
                .filter(|s| *s <= max)
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        field(),
                        format!("`cache.{name}` must be a whole number of seconds from 0 to {max} (10 years)"),
                    )
                })
        };
        match name.as_str() {
            "no-cache" => p.read &= !flag()?,
            "no-store" => p.write &= !flag()?,
            "ttl" => match secs()? {
                0 => p.write = false,
                s => p.ttl = Duration::from_secs(s),
            },
            "s-maxage" => p.cap_age(secs()?),
            "namespace" => {
                return Err(ApiError::invalid_field(
                    field(),
                    "`cache.namespace` is not supported: each API key's owner is its own cache namespace",
                ));
            }
            _ => {
                return Err(ApiError::invalid_field(
                    field(),
                    format!(
                        "unknown cache control `{name}`: use no-cache, no-store, ttl or s-maxage"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The seconds of a `max-age=N` directive (also `max-age="N"`,
/// `max-age = N`): the oldest stored answer the client takes (RFC 9111,
/// 5.2.1.1). `max-age=0` is what a browser's reload sends: no stored answer
/// is fresh enough. A malformed one is ignored, as HTTP caches do; one past
/// `u64` seconds is no limit at all.
fn max_age(directive: &[u8]) -> Option<u64> {
    let name = directive.get(..7)?;
    if !name.eq_ignore_ascii_case(b"max-age") {
        return None;
    }
    let value = directive[7..].trim_ascii().strip_prefix(b"=")?.trim_ascii();
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .unwrap_or(u64::MAX),
    )
}

/// The tenant namespace of a request: its API key's owner (attached by the
/// auth middleware), or [`DEFAULT_NAMESPACE`] when no keys are configured.
/// Every key and pattern takes it, so two tenants never share an entry.
pub fn namespace(tenant: &Tenant) -> &str {
    tenant.as_str()
}

/// The two names of a request's model.
#[derive(Debug, Clone, Copy)]
pub struct ModelNames<'a> {
    /// As the client wrote it (an alias, `provider/model`, a model): the
    /// answer's labels, and `model_ttl` first.
    pub public: &'a str,
    /// What it resolved to (`uat_router::Resolved::cache_name`, or a local
    /// model's name): the key's model, the one invalidation patterns match,
    /// so every name of one model shares its entries.
    pub cached: &'a str,
}

impl<'a> ModelNames<'a> {
    /// A model known by one name.
    pub fn same(name: &'a str) -> Self {
        ModelNames {
            public: name,
            cached: name,
        }
    }
}

/// What the cache asks of the upstream call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    /// The answer is a stream the cache records, whose client did not ask
    /// for usage: ask the upstream for it anyway (the cache drops the usage
    /// chunk before the client sees it), so the stored completion has its
    /// `usage` like any non-streamed answer.
    pub usage: bool,
}

/// Serves a request through the cache: answers from it on a hit, otherwise
/// runs `upstream` and stores a successful answer.
pub async fn around<F, Fut>(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    kind: Kind,
    names: ModelNames<'_>,
    body: &serde_json::Value,
    upstream: F,
) -> Response
where
    F: FnOnce(Ask) -> Fut,
    Fut: Future<Output = Response>,
{
    let svc = &state.cache;
    let Some(cache) = &svc.cache else {
        return tag(
            &svc.answers,
            upstream(Ask::default()).await,
            Outcome::Bypass,
            None,
        );
    };
    let model = names.public;
    let p = match policy(&svc.config, svc.ttl_for(names), headers, kind, body) {
        Ok(p) => p,
        Err(e) => return tag(&svc.answers, e.into_response(), Outcome::Bypass, None),
    };
    if !p.read && !p.write {
        return tag(
            &svc.answers,
            upstream(Ask::default()).await,
            Outcome::Bypass,
            None,
        );
    }
    let key = CacheKey::for_request(namespace(tenant), names.cached, kind.into(), body);
    let replay = Replay::of(kind, body);
    let ask = Ask {
        usage: p.write
            && matches!(
                replay,
                Replay::Sse {
                    include_usage: false,
                    ..
                }
            ),
    };
    // An answer older than the client's `max-age` is not served: the
    // request goes upstream like a miss (and its answer replaces it).
    let fresh = |f: &Found| {
        p.max_age
            .is_none_or(|max| f.age().is_some_and(|age| age <= max))
    };
    if p.read
        && let Some(found) = cache.get(&key).await
        && fresh(&found)
        && let Some(resp) = serve_hit(&svc.answers, cache, &key, found, replay, model).await
    {
        return resp;
    }
    let mut guard = None;
    if p.read && p.write {
        match cache
            .single_flight(&key, svc.config.singleflight_wait)
            .await
        {
            Flight::Leader(g) => guard = Some(g),
            Flight::Waited(landed) => {
                let found = match landed {
                    Some(found) => Some(found),
                    None => cache.get(&key).await,
                };
                if let Some(found) = found
                    && fresh(&found)
                    && let Some(resp) =
                        serve_hit(&svc.answers, cache, &key, found, replay, model).await
                {
                    return resp;
                }
            }
        }
    }
    let resp = upstream(ask).await;
    if !p.write
        || !resp.status().is_success()
        || resp.headers().contains_key(header::CONTENT_ENCODING)
    {
        return tag(&svc.answers, resp, Outcome::Miss, Some(&key));
    }
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        let Some(form) = kind.form() else {
            return tag(&svc.answers, resp, Outcome::Miss, Some(&key));
        };
        let asm = sse::Assembler::new(form, choices(kind, body));
        let (parts, body) = resp.into_parts();
        let rec = Recording {
            inner: body.into_data_stream(),
            strip_usage: ask.usage,
            asm,
            sink: Some(Sink {
                cache: cache.clone(),
                key: key.clone(),
                ttl: p.ttl,
                guard,
            }),
        };
        return tag(
            &svc.answers,
            Response::from_parts(parts, Body::from_stream(rec)),
            Outcome::Miss,
            Some(&key),
        );
    }
    let (parts, body) = resp.into_parts();
    // The router notes the answer's lists while it reads the body; other
    // answers (local models) are checked here.
    let seen = parts.extensions.get::<Shape>().map(|s| match kind {
        Kind::Chat | Kind::Completion => s.choices,
        Kind::Embeddings => s.data,
    });
    // Read whole, not limited: the router and the local models hold the
    // whole answer already, and one over `MAX_CACHED_BODY` is passed on
    // uncached, not refused.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_gateway(format!("upstream body failed: {e}")).into_response();
        }
    };
    // Stored before the answer goes out, on this task: a spawned task would
    // cost a wake-up of another worker per miss, more than the check and the
    // L1 insert themselves (L2/L3 writes are only queued here). The flight
    // closes after the store, so an identical request that arrived meanwhile
    // finds the entry in L1.
    if bytes.len() <= MAX_CACHED_BODY && seen.unwrap_or_else(|| valid_answer(kind, &bytes)) {
        match &guard {
            Some(g) => cache.land(g, &key, bytes.clone(), p.ttl),
            None => cache.put(&key, bytes.clone(), p.ttl),
        }
    }
    drop(guard);
    tag(
        &svc.answers,
        Response::from_parts(parts, Body::from(bytes)),
        Outcome::Miss,
        Some(&key),
    )
}

/// How a hit is rendered.
#[derive(Debug, Clone, Copy)]
enum Replay {
    Json,
    Sse {
        include_usage: bool,
        form: sse::Form,
    },
}

impl Replay {
    fn of(kind: Kind, body: &serde_json::Value) -> Self {
        let stream = body.get("stream").and_then(serde_json::Value::as_bool) == Some(true);
        match kind.form() {
            Some(form) if stream => {
                let include_usage = body
                    .get("stream_options")
                    .and_then(|o| o.get("include_usage"))
                    .and_then(serde_json::Value::as_bool)
                    == Some(true);
                Replay::Sse {
                    include_usage,
                    form,
                }
            }
            _ => Replay::Json,
        }
    }
}

/// How many choices a complete answer to `body` has: `n` (1 when absent),
/// times the prompts of a text completion (a string or a list of token ids
/// is one; a list of strings or of token id lists one each).
fn choices(kind: Kind, body: &serde_json::Value) -> u64 {
    use serde_json::Value;
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1);
    let prompts = match body.get("prompt") {
        Some(Value::Array(a)) if kind == Kind::Completion && a.iter().any(|p| !p.is_number()) => {
            a.len() as u64
        }
        _ => 1,
    };
    n.saturating_mul(prompts)
}

/// A stored answer must be a JSON object of the right shape. Checked without
/// building a value tree (this runs on every cacheable miss).
fn valid_answer(kind: Kind, bytes: &[u8]) -> bool {
    use serde::de::IgnoredAny;
    #[derive(serde::Deserialize)]
    struct Shape {
        // Vectors of a zero-sized type: no allocation.
        choices: Option<Vec<IgnoredAny>>,
        data: Option<Vec<IgnoredAny>>,
        error: Option<IgnoredAny>,
    }
    let Ok(v) = serde_json::from_slice::<Shape>(bytes) else {
        return false;
    };
    let list = match kind {
        Kind::Chat | Kind::Completion => v.choices,
        Kind::Embeddings => v.data,
    };
    list.is_some() && v.error.is_none()
}

/// Renders a hit; `None` when the stored value cannot be used (then it is
/// deleted and the request goes upstream).
async fn serve_hit(
    answers: &Answers,
    cache: &TieredCache,
    key: &CacheKey,
    found: Found,
    replay: Replay,
    model: &str,
) -> Option<Response> {
    let hit = Outcome::Hit(found.level);
    let age = found.age();
    let body = match replay {
        Replay::Json => {
            // L1 holds only values validated on the way in; values read from
            // L2/L3 are checked again (a foreign or old-format entry).
            if found.level != Level::L1
                && serde_json::from_slice::<serde::de::IgnoredAny>(&found.value).is_err()
            {
                None
            } else {
                Some((found.value, "application/json"))
            }
        }
        Replay::Sse {
            include_usage,
            form,
        } => sse::replay(&found.value, include_usage, form)
            .map(|b| (Bytes::from(b), "text/event-stream")),
    };
    let Some((bytes, content_type)) = body else {
        tracing::warn!(key = %key, "undecodable cache entry deleted");
        cache.delete(key).await;
        return None;
    };
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The cache served it, without an upstream attempt (which provider
    // first answered is not stored).
    h.insert(
        crate::gateway::X_UAT_PROVIDER.clone(),
        HeaderValue::from_static("cache"),
    );
    h.insert(
        crate::gateway::X_UAT_ATTEMPTS.clone(),
        HeaderValue::from_static("0"),
    );
    if content_type == "text/event-stream" {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    // How long ago the answer was stored, as HTTP caches say it (RFC 9111,
    // 5.1); absent for an entry of an earlier release, whose age is unknown.
    if let Some(age) = age {
        h.insert(header::AGE, age_value(age.as_secs()));
    }
    resp.extensions_mut().insert(RouteLabels {
        model: model.to_string(),
        provider: "cache".into(),
    });
    Some(tag(answers, resp, hit, Some(key)))
}

/// An `Age` header's value: the first hour's made once (a hit's age is
/// nearly always in it), so a hit allocates nothing for it.
fn age_value(secs: u64) -> HeaderValue {
    // Static text (leaked once, 3,600 short strings): a clone is a copy
    // of a pointer, with no reference count shared between threads.
    static FIRST_HOUR: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        (0..3600u64)
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    });
    usize::try_from(secs)
        .ok()
        .and_then(|i| FIRST_HOUR.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// The routes every response of which carries `x-uat-cache` (by their
/// matched path).
pub(crate) fn is_cached_route(route: &str) -> bool {
    matches!(
        route,
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
    )
}

/// Marks a response given before the cache was consulted (a refused key,
/// a shed request, a malformed body): `x-uat-cache: bypass`.
pub(crate) fn mark_bypass(resp: &mut Response) {
    RESPONSES[Outcome::Bypass.slot()].inc();
    resp.headers_mut()
        .insert(X_UAT_CACHE.clone(), HeaderValue::from_static("bypass"));
}

fn tag(answers: &Answers, mut resp: Response, how: Outcome, key: Option<&CacheKey>) -> Response {
    answers.count(how);
    let h = resp.headers_mut();
    h.insert(X_UAT_CACHE.clone(), HeaderValue::from_static(how.as_str()));
    if let Some(k) = key
        && let Ok(v) = HeaderValue::from_str(k.public())
    {
        h.insert(X_UAT_CACHE_KEY.clone(), v);
    }
    resp
}

/// Where a recorded stream goes when it completes.
struct Sink {
    cache: TieredCache,
    key: CacheKey,
    ttl: Duration,
    // Released after the store so waiters find the entry in L1.
    guard: Option<FlightGuard>,
}

impl Sink {
    /// Stores the answer, and hands it to the flight's waiters when there
    /// is no L1 for them to find it in; the flight closes after.
    fn store(self, value: Bytes) {
        match &self.guard {
            Some(g) => self.cache.land(g, &self.key, value, self.ttl),
            None => self.cache.put(&self.key, value, self.ttl),
        }
    }
}

/// A streamed response body forwarded untouched while its SSE events are
/// assembled into a completion (less the usage chunk the client did not ask
/// for, when the cache asked for it: see [`Ask`]).
struct Recording<S> {
    inner: S,
    strip_usage: bool,
    asm: sse::Assembler,
    sink: Option<Sink>,
}

impl<S> Stream for Recording<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            return match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if this.sink.is_some() {
                        this.asm.feed(&chunk);
                    }
                    // The gateway sends one event per piece.
                    if this.strip_usage && sse::is_usage_only(&chunk) {
                        continue;
                    }
                    Poll::Ready(Some(Ok(chunk)))
                }
                Poll::Ready(Some(Err(e))) => {
                    // A broken stream is never stored.
                    this.sink = None;
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    if let Some(sink) = this.sink.take()
                        && let Some(completion) = this.asm.finish()
                    {
                        sink.store(Bytes::from(completion));
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// `DELETE /v1/cache` body: exactly one of `key` (as in `x-uat-cache-key`)
/// or `pattern` (a glob over model names, `*` and `?`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateRequest {
    /// One entry, `model|hash`.
    #[serde(default)]
    pub key: Option<String>,
    /// Every entry whose model matches.
    #[serde(default)]
    pub pattern: Option<String>,
}

async fn invalidate(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(req, _room): ApiJson<InvalidateRequest>,
) -> Response {
    let ns = namespace(&tenant);
    let cache = state.cache.tiered();
    let done = match (&req.key, &req.pattern) {
        (Some(k), None) => match CacheKey::parse_public(ns, k) {
            Ok(key) => match cache {
                Some(c) => c.delete(&key).await,
                None => Invalidated::default(),
            },
            Err(e) => return ApiError::invalid_field("key", e.to_string()).into_response(),
        },
        (None, Some(p)) => match KeyPattern::new(ns, p) {
            Ok(pattern) => match cache {
                Some(c) => c.invalidate(&pattern).await,
                None => Invalidated::default(),
            },
            Err(e) => return ApiError::invalid_field("pattern", e.to_string()).into_response(),
        },
        _ => {
            return ApiError::bad_request("exactly one of `key` or `pattern` is required")
                .into_response();
        }
    };
    if done.is_complete() {
        return (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "deleted": done.deleted })),
        )
            .into_response();
    }
    incomplete(&done).into_response()
}

/// The answer to an invalidation that did not reach every level (a level
/// down is skipped) or the other replicas: a 503 the caller retries, since
/// the entries it left may be served again. Logged here, once.
fn incomplete(done: &Invalidated) -> ApiError {
    let failed: Vec<String> = done
        .failed()
        .map(|(part, why)| format!("{part} ({why})"))
        .collect();
    let failed_parts: Vec<&str> = done.failed().map(|(part, _)| part).collect();
    let succeeded: Vec<&str> = done.succeeded().map(Level::as_str).collect();
    tracing::warn!(failed = %failed.join(", "), deleted = done.deleted, "cache invalidation incomplete");
    let elsewhere = if succeeded.is_empty() {
        "no level deleted anything".to_string()
    } else {
        format!("{} deleted from {}", done.deleted, succeeded.join(", "))
    };
    let mut err = ApiError::unavailable(format!(
        "cache invalidation incomplete: {} failed; {elsewhere}. Entries may still be served: retry",
        failed.join(", ")
    ))
    .with_details(serde_json::json!({
        "deleted": done.deleted,
        "incomplete": failed_parts,
    }));
    err.kind = "cache_unavailable";
    err.code = Some("cache_invalidation_incomplete");
    err.retry_after = Some(1);
    err
}

async fn stats(State(state): State<AppState>) -> Response {
    let mode = match state.cache.config.mode {
        CacheMode::Deterministic => "deterministic",
        CacheMode::Always => "always",
        CacheMode::Off => "off",
    };
    let body = match state.cache.tiered() {
        Some(c) => {
            let s = c.stats().await;
            serde_json::json!({
                "object": "cache.stats",
                "mode": mode,
                "levels": s.levels,
                "responses": state.cache.responses(),
                "dropped_writes": s.dropped_writes,
                "singleflight_waiters": s.singleflight_waiters,
            })
        }
        None => serde_json::json!({ "object": "cache.stats", "mode": mode, "levels": {} }),
    };
    axum::Json(body).into_response()
}

/// The subsystem's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/cache", delete(invalidate))
        .route("/v1/cache/stats", crate::auth::admin(get(stats)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(headers: &[(&str, &[u8])]) -> Result<Policy, ApiError> {
        let mut h = HeaderMap::new();
        for (name, v) in headers {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let cfg = CacheConfig {
            mode: CacheMode::Always,
            ..CacheConfig::default()
        };
        policy(
            &cfg,
            Duration::from_secs(60),
            &h,
            Kind::Chat,
            &serde_json::json!({}),
        )
    }

    /// `no-store` holds whatever else the header carries. Before, a byte
    /// outside visible ASCII anywhere in it (`to_str` fails) dropped the
    /// whole header, and the answer was stored.
    #[test]
    fn cache_control_with_a_non_ascii_byte_keeps_its_directives() {
        let p = policy_of(&[("cache-control", b"no-store, x-note=\"caf\xc3\xa9\"")]).unwrap();
        assert!(!p.write, "no-store kept");
        assert!(p.read);
        let p = policy_of(&[("cache-control", b"\xff, NO-CACHE")]).unwrap();
        assert!(!p.read, "no-cache kept");
        assert!(p.write);
    }

    #[test]
    fn age_values_are_their_seconds() {
        for n in [0u64, 1, 59, 3599, 3600, 86_400, u64::MAX] {
            assert_eq!(age_value(n).to_str().unwrap(), n.to_string());
        }
    }

    /// `max-age=0` and, without `Cache-Control`, `Pragma: no-cache` skip the
    /// read as `no-cache` does (before, both were ignored and a reload was
    /// answered from the cache). A larger `max-age` bounds the age of the
    /// answer served.
    #[test]
    fn max_age_zero_and_pragma_skip_the_read() {
        for v in [
            &b"max-age=0"[..],
            b"MAX-AGE = 0",
            b"private, max-age=\"0\"",
            b"max-age=000",
        ] {
            let p = policy_of(&[("cache-control", v)]).unwrap();
            assert!(!p.read, "{:?}", String::from_utf8_lossy(v));
            assert!(p.write);
        }
        // Malformed ones are ignored: the read stays, with no bound.
        for v in [
            &b"max-age="[..],
            b"max-age",
            b"max-agex=0",
            b"s-maxage=0",
            b"s-maxage=5",
            b"max-age=-1",
            b"max-age=1.5",
        ] {
            let p = policy_of(&[("cache-control", v)]).unwrap();
            assert!(p.read, "{:?}", String::from_utf8_lossy(v));
            assert_eq!(p.max_age, None, "{:?}", String::from_utf8_lossy(v));
        }
        // A positive max-age bounds the age of what is served (the read
        // stays); of two, the stricter holds.
        let max_age = |v: &[u8]| policy_of(&[("cache-control", v)]).unwrap().max_age;
        assert_eq!(max_age(b"max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(
            max_age(b"no-store, Max-Age = \"3600\""),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            max_age(b"max-age=60, max-age=30"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            max_age(b"max-age=99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(max_age(b"no-cache"), None);
        let p = policy_of(&[("pragma", b"no-cache")]).unwrap();
        assert!(!p.read && p.write);
        let p = policy_of(&[("pragma", b"x, No-Cache")]).unwrap();
        assert!(!p.read);
        // Cache-Control, when present, is what counts (RFC 9111, 5.4).
        let p = policy_of(&[("pragma", b"no-cache"), ("cache-control", b"max-age=60")]).unwrap();
        assert!(p.read);
    }

    /// `x-uat-cache-ttl` is digits only. Before, `+5` was taken as 5.
    #[test]
    fn a_ttl_with_a_sign_is_refused() {
        for bad in [&b"+5"[..], b"-5", b" + 5", b"", b"5s", b"0x10"] {
            assert!(
                policy_of(&[("x-uat-cache-ttl", bad)]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let p = policy_of(&[("x-uat-cache-ttl", b" 5 ")]).unwrap();
        assert_eq!(p.ttl, Duration::from_secs(5));
        let p = policy_of(&[("x-uat-cache-ttl", b"0")]).unwrap();
        assert!(!p.write);
    }

    #[test]
    fn a_complete_answer_has_n_choices_per_prompt() {
        use serde_json::json;
        assert_eq!(choices(Kind::Chat, &json!({"messages": []})), 1);
        assert_eq!(choices(Kind::Chat, &json!({"n": 3})), 3);
        assert_eq!(
            choices(Kind::Chat, &json!({"n": 2, "prompt": ["a", "b"]})),
            2
        );
        assert_eq!(
            choices(Kind::Completion, &json!({"prompt": "a", "n": 2})),
            2
        );
        assert_eq!(
            choices(Kind::Completion, &json!({"prompt": ["a", "b", "c"]})),
            3
        );
        assert_eq!(choices(Kind::Completion, &json!({"prompt": [1, 2, 3]})), 1);
        assert_eq!(
            choices(Kind::Completion, &json!({"prompt": [[1], [2]], "n": 2})),
            4
        );
    }

    #[test]
    fn only_answers_of_the_right_shape_are_stored() {
        let chat = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"total_tokens":3}}"#;
        let emb = br#"{"object":"list","data":[{"embedding":[0.1,0.2],"index":0}],"model":"m"}"#;
        assert!(valid_answer(Kind::Chat, chat));
        assert!(valid_answer(Kind::Embeddings, emb));
        assert!(
            !valid_answer(Kind::Chat, emb),
            "an embeddings body is no chat answer"
        );
        assert!(!valid_answer(Kind::Embeddings, chat));
        assert!(
            !valid_answer(Kind::Chat, br#"{"choices":{"a":1}}"#),
            "choices must be a list"
        );
        assert!(!valid_answer(
            Kind::Chat,
            br#"{"choices":[],"error":{"message":"boom"}}"#
        ));
        assert!(
            !valid_answer(Kind::Chat, br#"{"choices":[]"#),
            "truncated JSON"
        );
        assert!(!valid_answer(Kind::Chat, b"[1,2]"));
        assert!(!valid_answer(Kind::Chat, b""));
    }
}
