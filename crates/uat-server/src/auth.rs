//! Gateway API keys (`[[auth.keys]]`): who may call `/v1/*`, who may call
//! the admin routes, how fast each key may go, and which tenant (cache
//! namespace) a request belongs to.
//!
//! With no keys configured the layer is not installed at all: every route is
//! open and requests pay nothing. With keys, [`authenticate`] runs on every
//! matched route under `/v1` (the probes `/health`, `/ready`, `/metrics` stay
//! open; with `auth.protect_metrics`, `/metrics` needs an admin key), outside
//! load shedding: a rejected request never takes an in-flight
//! slot.
//!
//! A presented secret is hashed (SHA-256) and the digest looked up in a map
//! built at start-up, so no comparison ever runs over the secret itself and
//! the secret is never logged. The per-key limit is a GCRA token bucket (one
//! atomic word per key, lock-free), in memory: each replica enforces it on its
//! own.

use crate::error::ApiError;
use crate::middleware;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, Opts};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use uat_config::{AuthConfig, ResolvedKey, key_digest};

/// `x-api-key`: the header the Anthropic SDK sends its key in.
static X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

static REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "uat_auth_rejections_total",
            "Requests refused by API-key checks, by reason (missing, invalid, forbidden, rate_limited, concurrency, tokens, budget)",
        ),
        &["reason"],
    )
    .unwrap_or_else(|_| unreachable_metric());
    uat_telemetry::register(c)
});

#[expect(
    clippy::panic,
    reason = "the metric definition is static and valid; this cannot happen"
)]
fn unreachable_metric() -> IntCounterVec {
    panic!("invalid static metric definition")
}

/// The tenant a request belongs to: its key's owner, carried by the
/// request's [`Caller`]. Without keys (or before the layer ran) it is
/// [`crate::cache::DEFAULT_NAMESPACE`]. An extractor that never fails.
#[derive(Debug, Clone, Default)]
pub struct Tenant(Option<Arc<str>>);

impl Tenant {
    /// A named tenant.
    pub fn new(owner: &str) -> Self {
        Tenant(Some(owner.into()))
    }

    /// The tenant's name (the cache namespace).
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or(crate::cache::DEFAULT_NAMESPACE)
    }

    /// The key's owner; `None` without keys.
    pub fn owner(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The tenant of a request's key (its [`Caller`]), or the default one.
    pub fn of(ext: &http::Extensions) -> Self {
        ext.get::<Caller>()
            .map(|c| c.tenant.clone())
            .unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Tenant::of(&parts.extensions))
    }
}

/// The keys, by the SHA-256 of their secret. Built once at start-up.
pub struct Auth {
    keys: HashMap<[u8; 32], Key>,
    /// `auth.protect_metrics`: `/metrics` needs an admin key.
    protect_metrics: bool,
}

struct Key {
    name: Box<str>,
    caller: Caller,
    limit: Option<Gcra>,
    concurrent: Option<Arc<Concurrent>>,
    tokens: Option<TokenMeter>,
}

/// A key's requests in flight against its `max_concurrent`.
struct Concurrent {
    now: std::sync::atomic::AtomicU32,
    max: u32,
}

/// One request's place in its key's [`Concurrent`], given back when the
/// last clone drops: it travels in the request's extensions to the load
/// shedder, which keeps it in the response body, so a stream holds its
/// place until its last byte. (Extensions need `Clone`, hence the `Arc`.)
#[derive(Clone)]
pub(crate) struct KeyPlace(#[expect(dead_code, reason = "held for its Drop")] Arc<Place>);

struct Place(Arc<Concurrent>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Concurrent {
    /// A place, or `None` at the limit.
    fn enter(self: &Arc<Self>) -> Option<KeyPlace> {
        let prev = self.now.fetch_add(1, Ordering::AcqRel);
        let place = KeyPlace(Arc::new(Place(self.clone())));
        (prev < self.max).then_some(place)
    }
}

/// Who made a request: attached by [`authenticate`] to every request when
/// keys are configured (a request outside `/v1` gets an anonymous one),
/// absent without keys. One extension (one allocation) per request; cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name; `None` outside `/v1`.
    name: Option<Arc<str>>,
    /// Whether it may call the admin routes.
    admin: bool,
    /// The key's owner ([`Tenant::of`] reads it).
    tenant: Tenant,
    /// The models it may call (globs); `None`: every one.
    models: Option<Globs>,
    /// The collections it may use (globs); `None`: every one.
    collections: Option<Globs>,
    /// What its answers are charged to; `None` when spend tracking is off.
    charge: Option<crate::spend::Charge>,
}

/// A key's allow-list: names or globs with `*`.
pub(crate) type Globs = Arc<[Box<str>]>;

/// Whether `list` (absent: no limit) lets `name` through.
fn allows(list: Option<&[Box<str>]>, name: &str) -> bool {
    list.is_none_or(|globs| globs.iter().any(|g| glob_matches(g, name)))
}

impl Caller {
    const ANONYMOUS: Caller = Caller {
        name: None,
        admin: false,
        tenant: Tenant(None),
        models: None,
        collections: None,
        charge: None,
    };

    /// The key's name; `None` outside `/v1`.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether it may call the admin routes.
    pub(crate) fn is_admin(&self) -> bool {
        self.admin
    }

    /// What its answers are charged to (spend tracking on).
    pub(crate) fn charge(&self) -> Option<&crate::spend::Charge> {
        self.charge.as_ref()
    }

    /// A key with `models` may call only the models its globs match, as
    /// the client names them; another is a 403 `insufficient_permissions`.
    /// Always `Ok` without keys (no caller) or for a key without the list.
    pub(crate) fn check_model(caller: Option<&Caller>, model: &str) -> Result<(), ApiError> {
        let Some(c) = caller else { return Ok(()) };
        if allows(c.models.as_deref(), model) {
            return Ok(());
        }
        REJECTIONS.with_label_values(&["forbidden"]).inc();
        Err(ApiError::forbidden(format!(
            "the API key `{}` may not call the model `{model}` (see its `models`)",
            c.name.as_deref().unwrap_or("")
        )))
    }

    /// [`Caller::check_model`] of the models a chat request names besides
    /// `model` and that an upstream gateway would route to: OpenRouter's
    /// `models` and LiteLLM's `fallbacks` (every name in them, keys of their
    /// objects too), passed on as they are. Without a `models` list on the
    /// key nothing is read.
    pub(crate) fn check_other_models(
        caller: Option<&Caller>,
        body: &serde_json::Value,
    ) -> Result<(), ApiError> {
        fn names<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::String(s) => out.push(s),
                serde_json::Value::Array(a) => a.iter().for_each(|v| names(v, out)),
                serde_json::Value::Object(o) => {
                    for (k, v) in o {
                        out.push(k);
                        names(v, out);
                    }
                }
                _ => {}
            }
        }
        if caller.is_none_or(|c| c.models.is_none()) {
            return Ok(());
        }
        let mut found = Vec::new();
        for field in ["models", "fallbacks"] {
            if let Some(v) = body.get(field) {
                names(v, &mut found);
            }
        }
        found
            .into_iter()
            .try_for_each(|m| Caller::check_model(caller, m))
    }

    /// Whether the key may see `model` in the model list.
    pub(crate) fn lists_model(caller: Option<&Caller>, model: &str) -> bool {
        allows(caller.and_then(|c| c.models.as_deref()), model)
    }

    /// Whether the request may use the collection `name`: always without
    /// keys (no caller) or for a key without `collections`.
    pub(crate) fn may_use_collection(caller: Option<&Caller>, name: &str) -> bool {
        allows(caller.and_then(|c| c.collections.as_deref()), name)
    }
}

/// A glob with `*` (any run of characters, none too) matched against all of
/// `name`; every other character stands for itself.
fn glob_matches(glob: &str, name: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut pieces: Vec<&str> = parts.collect();
    let Some(last) = pieces.pop() else {
        return rest.is_empty(); // no `*`: the whole name was the prefix
    };
    for piece in pieces {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The guard of the collection routes: a key with `collections` may use a
/// collection its globs match; another is 403 `insufficient_permissions`
/// before anything is read. Other requests pass at once (nothing is
/// extracted). For a limited key a route without a `{name}` is refused,
/// but for the list, which filters its answer itself.
pub(crate) async fn require_collection(req: Request, next: Next) -> Response {
    let Some(caller) = req
        .extensions()
        .get::<Caller>()
        .filter(|c| c.collections.is_some())
        .cloned()
    else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let name = axum::extract::RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .and_then(|p| {
            p.iter()
                .find(|(k, _)| *k == "name")
                .map(|(_, v)| v.to_owned())
        });
    let allowed = match &name {
        Some(n) => Caller::may_use_collection(Some(&caller), n),
        None => parts
            .extensions
            .get::<MatchedPath>()
            .is_some_and(|m| m.as_str() == "/v1/collections"),
    };
    if allowed {
        return next.run(Request::from_parts(parts, body)).await;
    }
    REJECTIONS.with_label_values(&["forbidden"]).inc();
    ApiError::forbidden(format!(
        "the API key `{}` may not use the collection `{}` (see its `collections`)",
        caller.name.as_deref().unwrap_or(""),
        name.as_deref().unwrap_or("")
    ))
    .into_response()
}

impl Auth {
    /// Reads the configured keys (secrets named by `key_env` from the process
    /// environment). `None` when no keys are configured: authentication off.
    pub fn from_config(
        cfg: &AuthConfig,
        spend: Option<&Arc<crate::spend::SpendService>>,
    ) -> Result<Option<Arc<Auth>>, crate::StartupError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let keys = cfg
            .resolve(|var| std::env::var(var).ok())
            .map_err(|e| crate::StartupError::subsystem("auth", e))?;
        if let Some(owner) = &cfg.keyless_owner {
            tracing::info!(
                owner = %owner,
                "auth.keyless_owner: this owner's keys use what was stored without keys \
                 (memories under bare user ids, cache namespace `default`) instead of the owner's own"
            );
        }
        let mut auth = Auth::new(keys);
        auth.protect_metrics = cfg.protect_metrics;
        if let Some(spend) = spend {
            for key in auth.keys.values_mut() {
                key.caller.charge = Some(spend.charge_for(&key.name));
            }
        }
        Ok(Some(Arc::new(auth)))
    }

    /// From keys already resolved.
    pub fn new(keys: Vec<ResolvedKey>) -> Self {
        let keys = keys
            .into_iter()
            .map(|k| {
                let key = Key {
                    name: k.name.as_str().into(),
                    caller: Caller {
                        name: Some(k.name.as_str().into()),
                        admin: k.admin,
                        // `auth.keyless_owner`'s keys share the requests
                        // made without keys' tenant: their memories, their
                        // cache namespace.
                        tenant: if k.keyless {
                            Tenant(None)
                        } else {
                            Tenant::new(&k.owner)
                        },
                        models: k
                            .models
                            .as_ref()
                            .map(|l| l.iter().map(|g| g.trim().into()).collect()),
                        collections: k
                            .collections
                            .as_ref()
                            .map(|l| l.iter().map(|g| g.trim().into()).collect()),
                        charge: None,
                    },
                    limit: k.requests_per_minute.map(Gcra::requests),
                    concurrent: k.max_concurrent.map(|max| {
                        Arc::new(Concurrent {
                            now: std::sync::atomic::AtomicU32::new(0),
                            max,
                        })
                    }),
                    tokens: k
                        .tokens_per_minute
                        .map(|n| TokenMeter(Arc::new(Gcra::tokens(n)))),
                };
                (k.digest, key)
            })
            .collect();
        Auth {
            keys,
            protect_metrics: false,
        }
    }
}

/// The secret a request presents: `Authorization: Bearer <key>`, else
/// `x-api-key: <key>`.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| rest.trim_ascii())
        })
        .filter(|s| !s.is_empty());
    bearer.or_else(|| {
        headers
            .get(&X_API_KEY)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|s| !s.is_empty())
    })
}

/// The Prometheus endpoint: open like the probes unless
/// `auth.protect_metrics`, then for admin keys only.
const METRICS: &str = "/metrics";

/// The API: `/v1` and everything under it. The probes (`/health`, `/ready`,
/// `/metrics`) and any page outside `/v1` stay open.
fn is_api(path: &str) -> bool {
    path.strip_prefix("/v1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Marks a route's handlers as admin-only: routes that change or reveal
/// the whole deployment. Each module wraps its own (`admin(get(stats))`), so
/// a route renamed or added there keeps its guard; a `HEAD` runs its `GET`
/// handler, guard included. `DELETE /v1/cache` is not one: it acts on the
/// caller's own namespace.
pub(crate) fn admin(
    route: axum::routing::MethodRouter<crate::AppState>,
) -> axum::routing::MethodRouter<crate::AppState> {
    route.route_layer(axum::middleware::from_fn(require_admin))
}

/// The guard of [`admin`]: without keys (no [`Caller`]) every request
/// passes; with keys only an admin key's.
async fn require_admin(req: Request, next: Next) -> Response {
    let name = match req.extensions().get::<Caller>() {
        None => return next.run(req).await,
        Some(c) if c.admin => return next.run(req).await,
        Some(c) => c.name.clone(),
    };
    REJECTIONS.with_label_values(&["forbidden"]).inc();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::debug!(
        key = name.as_deref(),
        route,
        "admin route refused to a non-admin key"
    );
    let message = match name {
        Some(n) => {
            format!("the API key `{n}` may not call this admin route (it needs `admin = true`)")
        }
        None => "this admin route needs an admin API key".to_string(),
    };
    ApiError::forbidden(message).into_response()
}

fn reject(reason: &'static str, e: ApiError, route: &str, start: Instant) -> Response {
    REJECTIONS.with_label_values(&[reason]).inc();
    let mut resp = e.into_response();
    if crate::cache::is_cached_route(route) {
        crate::cache::mark_bypass(&mut resp);
    }
    middleware::record(route, &resp, start);
    resp
}

/// The middleware: checks the key, the admin flag and the key's rate, then
/// attaches the key's [`Caller`] (its tenant and admin flag). Routes
/// outside `/v1` pass with an anonymous caller.
pub(crate) async fn authenticate(
    State(auth): State<Arc<Auth>>,
    mut req: Request,
    next: Next,
) -> Response {
    let metrics = auth.protect_metrics && req.uri().path() == METRICS;
    if !metrics && !is_api(req.uri().path()) {
        req.extensions_mut().insert(Caller::ANONYMOUS);
        return next.run(req).await;
    }
    let start = Instant::now();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let Some(secret) = presented(req.headers()) else {
        return reject(
            "missing",
            ApiError::unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or `x-api-key: <key>`).",
            ),
            route,
            start,
        );
    };
    let Some(key) = auth.keys.get(&key_digest(secret)) else {
        return reject(
            "invalid",
            ApiError::unauthorized("Incorrect API key provided."),
            route,
            start,
        );
    };
    if metrics {
        if !key.caller.admin {
            tracing::debug!(key = %key.name, "/metrics refused to a non-admin key");
            return reject(
                "forbidden",
                ApiError::forbidden(format!(
                    "the API key `{}` may not read /metrics (auth.protect_metrics: it needs `admin = true`)",
                    key.name
                )),
                route,
                start,
            );
        }
        // A scrape is no API call: it takes none of the key's limits (a
        // 429 would mark the target down, and scrapes would eat the
        // budget of the people sharing the key).
        return next.run(req).await;
    }
    // A key that has spent its budget (`max_budget`) is refused the model
    // routes first: the refusal takes no place, no token and no rate.
    if spends_tokens(route)
        && let Some(e) = key.caller.charge.as_ref().and_then(|c| c.refusal())
    {
        tracing::debug!(key = %key.name, "API key has spent its budget");
        return reject("budget", e, route, start);
    }
    // Before the rate check, so a request refused here takes no rate token.
    let place = match &key.concurrent {
        None => None,
        Some(c) => match c.enter() {
            Some(place) => Some(place),
            None => {
                tracing::debug!(key = %key.name, "API key at its limit of requests in flight");
                let e = ApiError::key_rate_limited(
                    "rate_limit_error",
                    format!(
                        "the API key `{}` is at its limit of {} requests in flight",
                        key.name, c.max
                    ),
                    1,
                );
                return reject("concurrency", e, route, start);
            }
        },
    };
    // Only model calls spend tokens. Checked before the request rate, so a
    // request refused here takes no request token; it takes none itself:
    // its tokens are taken when its answer says how many it spent.
    let meter = match &key.tokens {
        Some(m) if spends_tokens(route) => {
            if let Err((wait, quota)) = m.0.admit() {
                tracing::debug!(key = %key.name, ?wait, "API key out of tokens for this minute");
                let e = ApiError::key_rate_limited(
                    "tokens",
                    format!(
                        "the API key `{}` is over its limit of {} tokens per minute",
                        key.name, m.0.per_minute
                    ),
                    wait.as_secs_f64().ceil().max(1.0) as u64,
                );
                let mut resp = reject("tokens", e, route, start);
                m.0.headers(quota, resp.headers_mut());
                return resp;
            }
            Some(m.clone())
        }
        _ => None,
    };
    let quota = match &key.limit {
        None => None,
        Some(limit) => match limit.check() {
            Ok(quota) => Some((limit, quota)),
            Err((wait, quota)) => {
                tracing::debug!(key = %key.name, ?wait, "API key over its rate limit");
                let e = ApiError::key_rate_limited(
                    "requests",
                    format!(
                        "the API key `{}` is over its limit of {} requests per minute",
                        key.name, limit.per_minute
                    ),
                    wait.as_secs_f64().ceil().max(1.0) as u64,
                );
                let mut resp = reject("rate_limited", e, route, start);
                limit.headers(quota, resp.headers_mut());
                return resp;
            }
        },
    };
    req.extensions_mut().insert(key.caller.clone());
    if let Some(place) = place {
        req.extensions_mut().insert(place);
    }
    if let Some(m) = &meter {
        req.extensions_mut().insert(m.clone());
    }
    let mut resp = next.run(req).await;
    if let Some((limit, quota)) = quota {
        limit.headers(quota, resp.headers_mut());
    }
    // After the handler: a whole answer's tokens are taken by now (a
    // stream's are taken as it ends).
    if let Some(m) = meter {
        m.0.headers(m.0.quota(), resp.headers_mut());
    }
    resp
}

/// The routes whose answers spend model tokens (`tokens_per_minute`): the
/// cached ones and `/v1/responses`, which is not cached.
fn spends_tokens(route: &str) -> bool {
    crate::cache::is_cached_route(route) || route == "/v1/responses"
}

/// A key's `tokens_per_minute`, attached to each of its requests on a route
/// that spends tokens: the handler reports what the answer spent. Cheap to
/// clone; absent for keys without the limit (their requests pay nothing).
#[derive(Clone)]
pub(crate) struct TokenMeter(Arc<Gcra>);

impl TokenMeter {
    /// The meter of a request, if its key has a token limit.
    pub(crate) fn of(ext: &http::Extensions) -> Option<Self> {
        ext.get::<TokenMeter>().cloned()
    }

    /// Takes `tokens` spent by an answer (the bucket may go below empty:
    /// the key then waits until it has refilled past zero).
    pub(crate) fn spend(&self, tokens: u64) {
        self.0.take(tokens);
    }

    /// A meter of its own (unit tests).
    #[cfg(test)]
    pub(crate) fn for_test(per_minute: u32) -> Self {
        TokenMeter(Arc::new(Gcra::tokens(per_minute)))
    }

    /// Tokens left now (unit tests).
    #[cfg(test)]
    pub(crate) fn remaining(&self) -> u64 {
        self.0.quota().remaining
    }

    /// The tokens a usage says were spent.
    pub(crate) fn total(u: &uat_types::Usage) -> u64 {
        u.total_tokens
            .max(u.prompt_tokens.saturating_add(u.completion_tokens))
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for TokenMeter {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(TokenMeter::of(&parts.extensions))
    }
}

/// A key's bucket as GCRA (the generic cell rate algorithm, as the
/// `governor` crate keeps it): one word, the theoretical arrival time of the
/// bucket's next free place, advanced by compare-and-swap. It serves two
/// limits:
///
/// - `requests_per_minute` ([`Gcra::requests`]): a burst of a sixth of the
///   minute's requests, then one per `interval`; each request takes a place
///   at once ([`Gcra::check`]);
/// - `tokens_per_minute` ([`Gcra::tokens`]): a bucket of a minute's tokens;
///   a request is admitted while it is not empty ([`Gcra::admit`]), and the
///   tokens its answer spent are taken afterwards ([`Gcra::take`]), which
///   may leave it below empty (a debt repaid by refilling), the way OpenAI's
///   token limits behave and LiteLLM's `tpm_limit` counts: the cost of an
///   answer is only known once it is given.
struct Gcra {
    epoch: Instant,
    /// Nanoseconds after `epoch` when the bucket is full again (`<= now`: full).
    tat: AtomicU64,
    /// Nanoseconds a place takes to refill.
    interval: u64,
    /// `burst * interval`: a full bucket.
    tolerance: u64,
    per_minute: u32,
    /// Its `x-ratelimit-*` headers: limit, remaining, reset.
    names: &'static [HeaderName; 3],
}

impl Gcra {
    fn new(per_minute: u32, burst: u32, names: &'static [HeaderName; 3]) -> Self {
        let per_minute = per_minute.max(1);
        let interval = (60_000_000_000 / u64::from(per_minute)).max(1);
        Gcra {
            epoch: Instant::now(),
            tat: AtomicU64::new(0),
            interval,
            tolerance: u64::from(burst.max(1)) * interval,
            per_minute,
            names,
        }
    }

    /// `per_minute` requests a minute, a burst of a sixth of it (ten
    /// seconds' worth), at least 1.
    fn requests(per_minute: u32) -> Self {
        Gcra::new(per_minute, per_minute / 6, &REQUEST_HEADERS)
    }

    /// `per_minute` tokens a minute, a bucket of all of them.
    fn tokens(per_minute: u32) -> Self {
        Gcra::new(per_minute, per_minute, &TOKEN_HEADERS)
    }

    /// Takes a token and says what is left, or says how long until one is
    /// there (and what is left: nothing).
    fn check(&self) -> Result<Quota, (Duration, Quota)> {
        self.check_at(self.now())
    }

    fn check_at(&self, now: u64) -> Result<Quota, (Duration, Quota)> {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            let ahead = next - now;
            if ahead > self.tolerance {
                let quota = Quota {
                    remaining: 0,
                    full_in: Duration::from_nanos(tat.saturating_sub(now)),
                };
                return Err((Duration::from_nanos(ahead - self.tolerance), quota));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Quota {
                        remaining: (self.tolerance - ahead) / self.interval,
                        full_in: Duration::from_nanos(ahead),
                    });
                }
                Err(t) => tat = t,
            }
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn admit(&self) -> Result<(), (Duration, Quota)> {
        self.admit_at(self.now())
    }

    /// `Ok` while at least one token is left; else how long until one is.
    fn admit_at(&self, now: u64) -> Result<(), (Duration, Quota)> {
        let q = self.quota_at(now);
        if q.remaining > 0 {
            return Ok(());
        }
        let tat = self.tat.load(Ordering::Acquire);
        // The first token is back when `tat` is within the bucket by one.
        let wait = tat
            .saturating_add(self.interval)
            .saturating_sub(now.saturating_add(self.tolerance));
        Err((Duration::from_nanos(wait.max(1)), q))
    }

    fn take(&self, tokens: u64) {
        self.take_at(self.now(), tokens);
    }

    fn take_at(&self, now: u64, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let cost = tokens.saturating_mul(self.interval);
        // The debt is capped at a minute's tokens: however large an answer,
        // the key is admitted again within a minute of it (an estimate gone
        // wrong, a huge prompt, must not lock a key out for hours).
        let cap = now.saturating_add(self.tolerance.saturating_mul(2));
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(cost).min(cap.max(tat)))
            });
    }

    fn quota(&self) -> Quota {
        self.quota_at(self.now())
    }

    /// What is left now (0 when below empty), and how long until full.
    fn quota_at(&self, now: u64) -> Quota {
        let tat = self.tat.load(Ordering::Acquire).max(now);
        let used = tat - now;
        Quota {
            remaining: self.tolerance.saturating_sub(used) / self.interval,
            full_in: Duration::from_nanos(used),
        }
    }

    /// The `x-ratelimit-*` headers (OpenAI's names) of a response under
    /// this bucket.
    fn headers(&self, q: Quota, h: &mut HeaderMap) {
        let [limit, remaining, reset] = self.names;
        h.insert(limit, HeaderValue::from(self.per_minute));
        h.insert(remaining, HeaderValue::from(q.remaining));
        if let Ok(v) = HeaderValue::from_str(&go_duration(q.full_in)) {
            h.insert(reset, v);
        }
    }
}

/// A key's bucket after a request: the requests it may make at once now,
/// and how long until it is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quota {
    remaining: u64,
    full_in: Duration,
}

/// OpenAI's headers of a request limit: `x-ratelimit-limit-requests` (the
/// key's requests per minute), `x-ratelimit-remaining-requests` (the
/// requests it may make at once now), `x-ratelimit-reset-requests` (until
/// the bucket is full again).
static REQUEST_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];

/// The same of a token limit: the key's tokens per minute, the tokens it
/// has left now, until the bucket is full again.
static TOKEN_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// A duration as OpenAI writes `x-ratelimit-reset-requests` (Go's format):
/// `250ms`, `1.5s`, `6m0s`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms % 60_000);
    let secs = if s % 1000 == 0 {
        format!("{}s", s / 1000)
    } else {
        let text = format!("{}.{:03}", s / 1000, s % 1000);
        format!("{}s", text.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn durations_are_written_as_openai_writes_them() {
        for (ms, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (59_999, "59.999s"),
            (60_000, "1m0s"),
            (360_000, "6m0s"),
            (61_250, "1m1.25s"),
            (4_500_000, "1h15m0s"),
            (3_600_500, "1h0m0.5s"),
        ] {
            assert_eq!(go_duration(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let g = Gcra::requests(60); // burst 10, one a second
        for i in 0..10 {
            let q = g.check_at(0).expect("within the burst");
            assert_eq!(q.remaining, 9 - i, "request {i} of the burst");
            assert_eq!(q.full_in, Duration::from_secs(i + 1));
        }
        let (wait, q) = g.check_at(0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(
            q,
            Quota {
                remaining: 0,
                full_in: Duration::from_secs(10)
            }
        );
        assert!(g.check_at(999_999_999).is_err());
        assert!(g.check_at(1_000_000_000).is_ok(), "a token a second");
        assert!(g.check_at(1_000_000_000).is_err());
        // Idle for a minute: the bucket is full again, not fuller.
        let later = 61_000_000_000;
        for _ in 0..10 {
            assert!(g.check_at(later).is_ok());
        }
        assert!(g.check_at(later).is_err());
    }

    #[test]
    fn token_bucket_admits_while_not_empty_and_repays_a_debt() {
        let b = Gcra::tokens(60); // a token a second
        assert!(b.admit_at(0).is_ok());
        assert_eq!(b.quota_at(0).remaining, 60);
        b.take_at(0, 59);
        assert_eq!(b.quota_at(0).remaining, 1);
        assert_eq!(b.quota_at(0).full_in, Duration::from_secs(59));
        assert!(b.admit_at(0).is_ok(), "one token left");
        // An answer of 31 tokens: 30 below empty.
        b.take_at(0, 31);
        let (wait, q) = b.admit_at(0).unwrap_err();
        assert_eq!(q.remaining, 0);
        assert_eq!(q.full_in, Duration::from_secs(90));
        assert_eq!(wait, Duration::from_secs(31), "the debt, then one token");
        assert!(b.admit_at(30_999_999_999).is_err());
        assert!(b.admit_at(31_000_000_000).is_ok());
        assert_eq!(b.quota_at(31_000_000_000).remaining, 1);
        // Idle long enough: full again, not fuller.
        assert_eq!(b.quota_at(600_000_000_000).remaining, 60);
        b.take_at(600_000_000_000, 0);
        assert_eq!(b.quota_at(600_000_000_000).remaining, 60);
        // A huge answer's debt is capped at a minute's tokens: admitted
        // again within a minute, never wrapping around.
        b.take_at(600_000_000_000, u64::MAX);
        let (wait, q) = b.admit_at(600_000_000_000).unwrap_err();
        assert_eq!(wait, Duration::from_secs(61));
        assert_eq!(q.full_in, Duration::from_secs(120));
        assert!(b.admit_at(661_000_000_000).is_ok());
    }

    #[test]
    fn collection_globs_match_whole_names() {
        for (glob, name, hit) in [
            ("faq", "faq", true),
            ("faq", "faqs", false),
            ("docs-*", "docs-", true),
            ("docs-*", "docs-en", true),
            ("docs-*", "doc-en", false),
            ("*-en", "docs-en", true),
            ("*-en", "docs-de", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("*", "anything", true),
            ("a*a", "a", false),
        ] {
            assert_eq!(glob_matches(glob, name), hit, "{glob} vs {name}");
        }
    }

    #[test]
    fn only_v1_needs_a_key() {
        assert!(is_api("/v1") && is_api("/v1/chat/completions"));
        assert!(!is_api("/health") && !is_api("/metrics") && !is_api("/v1x"));
    }

    #[test]
    fn small_limits_have_a_burst_of_one() {
        let g = Gcra::requests(1);
        assert!(g.check_at(0).is_ok());
        assert_eq!(g.check_at(0).unwrap_err().0, Duration::from_secs(60));
    }

    #[test]
    fn the_key_comes_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(presented(&h), Some(&b"k2"[..]));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  k1 "),
        );
        assert_eq!(presented(&h), Some(&b"k1"[..]), "Bearer wins");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented(&h), Some(&b"k2"[..]));
        h.remove("x-api-key");
        assert_eq!(presented(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(presented(&h), None, "an empty key is no key");
    }
}
