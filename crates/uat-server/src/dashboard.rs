//! The built-in dashboard: `GET /dashboard` (one self-contained HTML page)
//! and `GET /v1/dashboard/summary` (the JSON it polls every 2 s).
//!
//! Every number is read from the live process, never made up:
//!
//! - request counts, 4xx/5xx counts and chat latency come from the HTTP
//!   metrics the middleware records (`uat_requests_total`,
//!   `uat_request_duration_seconds`, `uat_requests_in_flight`); the
//!   dashboard's own two routes are left out of the counts;
//! - quantiles are interpolated in the histogram's buckets exactly as
//!   Prometheus' `histogram_quantile` does, so they agree with a Grafana
//!   panel over the same metric (and share its resolution: a value is only
//!   known to lie within its bucket);
//! - requests per second (and the 4xx/5xx share of them) is measured
//!   between this call and a reading about a minute old, from a small ring
//!   of timestamped counter readings taken by the summary calls themselves
//!   (at most one a second, about 60 kept): it is `null` until a second
//!   reading exists, and covers the time since the previous call when calls
//!   are further apart than a minute;
//! - providers: the router's live status (breaker, EWMA latency and error
//!   rate, in flight) and the per-provider metrics;
//! - cache: [`uat_cache::TieredCache::stats`], the function behind
//!   `GET /v1/cache/stats`;
//! - embeddings, vector and memory: their engines' own counts.
//!
//! A part whose subsystem is off (or whose reading failed) is `null`, and
//! `unavailable` says why.
//!
//! The metrics are process-wide, as `/metrics` is; one process serves one
//! app, so they are this app's.

use crate::middleware::METRICS;
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use uat_memory::Store;

/// The page, embedded at build time.
const PAGE: &str = include_str!("dashboard.html");

/// The route whose latency the tiles show.
const CHAT_ROUTE: &str = "/v1/chat/completions";
/// The summary's own route (left out of the counts).
const SUMMARY_ROUTE: &str = "/v1/dashboard/summary";
/// The page's route (left out of the counts).
const PAGE_ROUTE: &str = "/dashboard";

/// Window of the request rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Readings closer together than this share one slot of the ring.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for the memory count (a `COUNT(*)`).
const MEMORY_COUNT_TIMEOUT: Duration = Duration::from_millis(250);

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(PAGE_ROUTE, get(page))
        .route(SUMMARY_ROUTE, crate::auth::admin(get(summary)))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

async fn summary(State(state): State<AppState>) -> impl IntoResponse {
    let mut unavailable = BTreeMap::<&str, String>::new();
    let counts = Counts::read();
    let rate = RING
        .lock()
        .map(|mut r| r.note(Instant::now(), counts))
        .unwrap_or(None);
    if rate.is_none() {
        unavailable.insert(
            "requests.per_second",
            "needs an earlier reading within the last minute (the dashboard polls every 2 s)"
                .into(),
        );
    }
    let latency = chat_latency();
    if latency.is_none() {
        unavailable.insert(
            "chat_latency_seconds",
            format!("no request to {CHAT_ROUTE} yet"),
        );
    }
    let providers = providers(&state);
    let cache = cache(&state).await;
    if cache.is_none() {
        unavailable.insert("cache", "cache.mode is \"off\"".into());
    }
    let embeddings = embeddings(&state);
    if embeddings.is_none() {
        unavailable.insert("embeddings", "no local embedding model configured".into());
    }
    let memory = match memory_count(&state).await {
        Ok(n) => Some(json!({ "count": n })),
        Err(e) => {
            unavailable.insert("memory", e);
            None
        }
    };
    // This request is in flight while it is being answered.
    let in_flight = METRICS.in_flight.get().saturating_sub(1).max(0);
    let body = json!({
        "object": "dashboard.summary",
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "requests": {
            "total": counts.total,
            "in_flight": in_flight,
            "per_second": rate,
            "errors": {
                "4xx": counts.client_errors,
                "5xx": counts.server_errors,
                "rate_4xx": ratio(counts.client_errors, counts.total),
                "rate_5xx": ratio(counts.server_errors, counts.total),
            },
        },
        "chat_latency_seconds": latency,
        "providers": providers,
        "cache": cache,
        "embeddings": embeddings,
        "vector": vector(&state).await,
        "memory": memory,
        "unavailable": unavailable,
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body))
}

/// `part / whole`, `None` when `whole` is 0 (no request, no rate).
fn ratio(part: u64, whole: u64) -> Option<f64> {
    #[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Request counters since start, the dashboard's own routes left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    total: u64,
    client_errors: u64,
    server_errors: u64,
}

impl Counts {
    fn read() -> Self {
        let mut c = Counts::default();
        for family in METRICS.requests.collect() {
            for m in family.get_metric() {
                if matches!(label(m, "route"), SUMMARY_ROUTE | PAGE_ROUTE) {
                    continue;
                }
                let n = counter(m);
                c.total += n;
                match label(m, "status").as_bytes().first() {
                    Some(b'4') => c.client_errors += n,
                    Some(b'5') => c.server_errors += n,
                    _ => {}
                }
            }
        }
        c
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

/// A counter's value (counters hold whole numbers).
fn counter(m: &prometheus::proto::Metric) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "integer counters, stored as f64 by the exposition model"
    )]
    let n = m.get_counter().get_value().max(0.0) as u64;
    n
}

/// Requests per second over the window.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
struct Rate {
    /// Requests per second.
    value: f64,
    /// 4xx per request in the window (`None`: no request).
    rate_4xx: Option<f64>,
    /// 5xx per request in the window.
    rate_5xx: Option<f64>,
    /// Seconds the measurement covers.
    window_seconds: f64,
}

static RING: LazyLock<Mutex<Ring>> = LazyLock::new(|| Mutex::new(Ring::default()));

/// How long one reading of the cache's stats (when L2 is on) and one count
/// of the memories serve the summary.
const CACHE_STATS_REUSE: Duration = Duration::from_secs(10);

/// What the summary keeps per app: the last reading of the cache's stats
/// and the last count of the memories (tokio locks, held across the reading:
/// concurrent summaries share one).
#[derive(Default)]
pub(crate) struct Shared {
    cache_stats: tokio::sync::Mutex<Option<(Instant, uat_cache::CacheStats)>>,
    memory_count: tokio::sync::Mutex<Option<(Instant, Result<u64, String>)>>,
}

/// Timestamped counter readings of the last minute, oldest first.
#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<(Instant, Counts)>,
}

impl Ring {
    /// Records a reading and returns the rate since the oldest reading of
    /// the window (or the newest before it, when none is inside it).
    fn note(&mut self, now: Instant, c: Counts) -> Option<Rate> {
        // Keep the newest reading older than the window as the baseline, so
        // a poll less often than a minute still gets a rate.
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let rate = self.samples.front().and_then(|&(t, old)| {
            let secs = now.duration_since(t).as_secs_f64();
            // Counters only grow; a smaller reading means another process.
            (secs > 0.0 && c.total >= old.total).then(|| {
                let n = c.total - old.total;
                #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
                let value = n as f64 / secs;
                Rate {
                    value,
                    rate_4xx: ratio(c.client_errors.saturating_sub(old.client_errors), n),
                    rate_5xx: ratio(c.server_errors.saturating_sub(old.server_errors), n),
                    window_seconds: secs,
                }
            })
        });
        match self.samples.back() {
            Some((t, _)) if now.duration_since(*t) < SAMPLE_EVERY => {}
            _ => self.samples.push_back((now, c)),
        }
        rate
    }
}

/// P50/P95/P99 of chat completions answered 2xx (time to the response
/// head, cache hits included; refusals and failures are another series),
/// `None` before the first such answer.
fn chat_latency() -> Option<Value> {
    let families = METRICS.duration.collect();
    let m = families
        .iter()
        .flat_map(MetricFamily::get_metric)
        .find(|m| label(m, "route") == CHAT_ROUTE && label(m, "class") == "2xx")?;
    let h = m.get_histogram();
    let count = h.get_sample_count();
    if count == 0 {
        return None;
    }
    let buckets: Vec<(f64, u64)> = h
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    let q = |q| histogram_quantile(q, &buckets, count);
    Some(json!({
        "count": count,
        "p50": q(0.50),
        "p95": q(0.95),
        "p99": q(0.99),
    }))
}

/// Prometheus' `histogram_quantile`: the `q` quantile interpolated linearly
/// inside the bucket where it falls. `buckets` are the finite upper bounds
/// with cumulative counts, ascending; `count` is the `+Inf` bucket. A
/// quantile in the `+Inf` bucket is the highest finite bound.
fn histogram_quantile(q: f64, buckets: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    #[expect(clippy::cast_precision_loss, reason = "bucket counts")]
    let rank = q * count as f64;
    #[expect(clippy::cast_precision_loss, reason = "bucket counts")]
    let at = buckets.iter().position(|&(_, c)| c as f64 >= rank);
    let Some(b) = at else {
        return buckets.last().map(|&(ub, _)| ub);
    };
    let (end, cum) = buckets[b];
    let (start, below) = if b == 0 {
        if end <= 0.0 {
            return Some(end);
        }
        (0.0, 0)
    } else {
        buckets[b - 1]
    };
    let in_bucket = cum - below;
    if in_bucket == 0 {
        return Some(end);
    }
    #[expect(clippy::cast_precision_loss, reason = "bucket counts")]
    let frac = (rank - below as f64) / in_bucket as f64;
    Some(start + (end - start) * frac)
}

/// Per provider, summed over the labels a provider's series carry.
fn by_provider(
    families: &[MetricFamily],
    name: &str,
    value: impl Fn(&prometheus::proto::Metric) -> u64,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in families.iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            let p = label(m, "provider");
            if !p.is_empty() {
                *out.entry(p.to_owned()).or_default() += value(m);
            }
        }
    }
    out
}

/// One line per configured provider: the router's live view and the
/// provider's metrics.
fn providers(state: &AppState) -> Vec<Value> {
    let requests = by_provider(&METRICS.requests.collect(), "uat_requests_total", counter);
    // The router's families are registered by the router crate; read them
    // from the registry.
    let all = uat_telemetry::registry().gather();
    let failures = by_provider(&all, "uat_provider_errors_total", counter);
    let successes = by_provider(&all, "uat_upstream_duration_seconds", |m| {
        m.get_histogram().get_sample_count()
    });
    state
        .gateway
        .router()
        .providers()
        .into_iter()
        .map(|p| {
            let n = |m: &BTreeMap<String, u64>| m.get(&p.name).copied().unwrap_or(0);
            json!({
                "name": p.name,
                "up": p.up,
                "breaker": match p.breaker {
                    uat_router::BreakerState::Closed => "closed",
                    uat_router::BreakerState::Open => "open",
                    uat_router::BreakerState::HalfOpen => "half_open",
                },
                "models": p.models,
                "in_flight": p.in_flight,
                "requests": n(&requests),
                "upstream_successes": n(&successes),
                "upstream_failures": n(&failures),
                "ewma_latency_seconds": p.latency.map(|d| d.as_secs_f64()),
                "ewma_error_rate": p.error_rate,
            })
        })
        .collect()
}

/// The cache's levels as `GET /v1/cache/stats` reports them, and the hit
/// rate of the whole cache: responses served from it (any level) per
/// cacheable response (`x-uat-cache` hit or miss; a bypass is neither).
///
/// With L2 on, one reading serves for [`CACHE_STATS_REUSE`] (`age_seconds`
/// says how old it is): counting L2's entries walks Redis with `SCAN` (up to
/// a million keys), which a page polling every 2 s, or several pages, would
/// otherwise repeat without pause. Concurrent summaries share one reading.
async fn cache(state: &AppState) -> Option<Value> {
    let tiered = state.cache.tiered()?;
    let (s, age) = {
        // A tokio lock, held across the reading on purpose: the single flight.
        let mut last = state.dashboard.cache_stats.lock().await;
        match &*last {
            Some((at, s)) if s.levels.contains_key("l2") && at.elapsed() < CACHE_STATS_REUSE => {
                (s.clone(), at.elapsed())
            }
            _ => {
                let s = tiered.stats().await;
                *last = Some((Instant::now(), s.clone()));
                (s, Duration::ZERO)
            }
        }
    };
    let r = state.cache.responses();
    Some(json!({
        "hit_rate": ratio(r.hits, r.hits + r.misses),
        "hits": r.hits,
        "misses": r.misses,
        "levels": s.levels,
        "dropped_writes": s.dropped_writes,
        "singleflight_waiters": s.singleflight_waiters,
        "age_seconds": age.as_secs_f64(),
    }))
}

fn embeddings(state: &AppState) -> Option<Value> {
    let list = state.embed.registry().list();
    if list.is_empty() {
        return None;
    }
    let loaded: Vec<&str> = list
        .iter()
        .filter(|m| m.loaded)
        .map(|m| m.name.as_str())
        .collect();
    let bytes: u64 = list.iter().map(|m| m.memory_bytes).sum();
    Some(json!({
        "configured": list.len(),
        "loaded": loaded.len(),
        "loaded_models": loaded,
        "memory_bytes": bytes,
    }))
}

/// Collections and points, counted on the blocking pool: a point count
/// takes a collection's lock, which a compaction or a snapshot may hold.
async fn vector(state: &AppState) -> Value {
    let store = state.vector.store().clone();
    let counted = tokio::task::spawn_blocking(move || {
        let mut collections = 0usize;
        let mut points = 0usize;
        for name in store.names() {
            // A collection dropped meanwhile is simply not counted.
            if let Ok(c) = store.get(&name) {
                collections += 1;
                points += c.count();
            }
        }
        (collections, points)
    })
    .await;
    match counted {
        Ok((collections, points)) => json!({ "collections": collections, "points": points }),
        Err(_) => Value::Null,
    }
}

/// Stored memories (expired ones included), when the store answers within
/// [`MEMORY_COUNT_TIMEOUT`]. One count serves for [`CACHE_STATS_REUSE`]
/// and concurrent summaries share it, so polling pages do not pile up
/// `COUNT(*)`s (one that timed out still runs on in the store).
async fn memory_count(state: &AppState) -> Result<u64, String> {
    let mut last = state.dashboard.memory_count.lock().await;
    if let Some((at, n)) = &*last
        && at.elapsed() < CACHE_STATS_REUSE
    {
        return n.clone();
    }
    let store = state.memory.memories().store();
    let n = match tokio::time::timeout(MEMORY_COUNT_TIMEOUT, store.count()).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(format!("memory store: {e}")),
        Err(_) => Err(format!(
            "memory count took longer than {} ms",
            MEMORY_COUNT_TIMEOUT.as_millis()
        )),
    };
    *last = Some((Instant::now(), n.clone()));
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Prometheus' docs: buckets 0.1/0.2/0.4 with
    /// 10/20/40 observations, 40 in all.
    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [(0.1, 10), (0.2, 20), (0.4, 40)];
        assert_eq!(histogram_quantile(0.25, &b, 40), Some(0.1));
        assert_eq!(histogram_quantile(0.5, &b, 40), Some(0.2));
        let p75 = histogram_quantile(0.75, &b, 40).unwrap();
        assert!((p75 - 0.3).abs() < 1e-12, "{p75}");
        // Rank in the +Inf bucket: the highest finite bound.
        assert_eq!(histogram_quantile(0.99, &b, 50), Some(0.4));
        assert_eq!(histogram_quantile(0.5, &b, 0), None);
        // Inside the first bucket, from 0.
        let p10 = histogram_quantile(0.1, &b, 40).unwrap();
        assert!((p10 - 0.04).abs() < 1e-12, "{p10}");
    }

    #[test]
    fn rate_covers_the_last_minute() {
        let t0 = Instant::now();
        let c = |total| Counts {
            total,
            client_errors: 0,
            server_errors: total / 10,
        };
        let mut r = Ring::default();
        assert_eq!(r.note(t0, c(0)), None, "one reading is no rate");
        let at = |s| t0 + Duration::from_secs(s);
        let rate = r.note(at(10), c(100)).unwrap();
        assert!((rate.value - 10.0).abs() < 1e-9, "{rate:?}");
        assert_eq!(rate.rate_5xx, Some(0.1));
        for s in 11..=70 {
            r.note(at(s), c(100 + 10 * (s - 10)));
        }
        // At 75 s the baseline is within the last minute.
        let rate = r.note(at(75), c(700)).unwrap();
        assert!(rate.window_seconds <= 60.0, "{rate:?}");
        assert!(r.samples.len() <= 62, "{}", r.samples.len());
        // Polls three minutes apart: the rate since the previous one.
        let rate = r.note(at(255), c(880)).unwrap();
        assert!((rate.value - 1.0).abs() < 1e-9, "{rate:?}");
    }
}
