//! The tower stack around every route: request id, API keys (when
//! configured, see `auth`), load shedding, HTTP metrics, gzip, OpenAI-shaped
//! 404/405.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// HTTP-level metrics, registered once.
pub(crate) struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
}

pub(crate) static METRICS: LazyLock<HttpMetrics> = LazyLock::new(|| {
    let requests = IntCounterVec::new(
        Opts::new(
            "uat_requests_total",
            "HTTP requests by route, model, provider and status",
        ),
        &["route", "model", "provider", "status"],
    );
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "uat_request_duration_seconds",
            "Time to the response head, by route and status class (2xx, 4xx, 5xx)",
        )
        .buckets(uat_telemetry::LATENCY_BUCKETS.to_vec()),
        &["route", "class"],
    );
    let in_flight = IntGauge::new(
        "uat_requests_in_flight",
        "Requests being served, streams included",
    );
    match (requests, duration, in_flight) {
        (Ok(r), Ok(d), Ok(i)) => HttpMetrics {
            requests: uat_telemetry::register(r),
            duration: uat_telemetry::register(d),
            in_flight: uat_telemetry::register(i),
        },
        _ => unreachable_metrics(),
    }
});

#[expect(
    clippy::panic,
    reason = "metric definitions are static and valid; this cannot happen"
)]
fn unreachable_metrics() -> HttpMetrics {
    panic!("invalid static metric definition")
}

/// Labels a handler attaches to its response (as an extension) for
/// `uat_requests_total`. Values must come from small fixed sets.
#[derive(Debug, Clone, Default)]
pub struct RouteLabels {
    /// The resolved model (empty when unknown).
    pub model: String,
    /// The provider that served the request (empty when none).
    pub provider: String,
}

/// Counts in-flight requests; a response body keeps its guard until it ends,
/// so streams count until their last byte.
#[derive(Clone)]
pub(crate) struct InFlight {
    count: std::sync::Arc<AtomicUsize>,
    max: usize,
}

struct InFlightGuard {
    count: std::sync::Arc<AtomicUsize>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        METRICS.in_flight.dec();
    }
}

struct GuardedBody {
    inner: Body,
    _guard: InFlightGuard,
    /// The request's place under its key's `max_concurrent`, if it has one.
    _place: Option<crate::auth::KeyPlace>,
    /// On HTTP/2, the stream's watch, told of every frame (see `h2watch`).
    watch: Option<std::sync::Arc<crate::h2watch::SendWatch>>,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(w) = &self.watch {
            w.note(&polled);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics")
}

async fn shed_and_measure(State(limit): State<InFlight>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    // MatchedPath is an Arc: cloning it allocates nothing.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    if is_probe(req.uri().path()) {
        return next.run(req).await;
    }
    let prev = limit.count.fetch_add(1, Ordering::AcqRel);
    METRICS.in_flight.inc();
    let guard = InFlightGuard {
        count: limit.count.clone(),
    };
    if prev >= limit.max {
        drop(guard);
        let mut resp = ApiError::overloaded(
            format!(
                "server is at its limit of {} requests in flight; retry shortly",
                limit.max
            ),
            1,
        )
        .into_response();
        if crate::cache::is_cached_route(route) {
            crate::cache::mark_bypass(&mut resp);
        }
        record(route, &resp, start);
        return resp;
    }
    let place = req.extensions_mut().remove::<crate::auth::KeyPlace>();
    let resp = next.run(req).await;
    record(route, &resp, start);
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Body::new(GuardedBody {
            inner: body,
            _guard: guard,
            _place: place,
            watch: crate::h2watch::current(),
        }),
    )
}

/// Most distinct `model` label values; later new ones are counted as
/// [`OTHER_MODEL`]. A client names any model it likes (`provider/anything`
/// resolves), and every value would be a series kept forever.
const MAX_MODEL_LABELS: usize = 1000;
/// Longest `model` label value kept.
const MAX_MODEL_LABEL_LEN: usize = 128;
/// The label of a model past those bounds.
pub(crate) const OTHER_MODEL: &str = "(other)";

static MODEL_LABELS: LazyLock<BoundedLabels> =
    LazyLock::new(|| BoundedLabels::new(MAX_MODEL_LABELS));

/// A set of label values that stops growing at `max`.
struct BoundedLabels {
    set: std::sync::RwLock<std::collections::HashSet<Box<str>>>,
    max: usize,
}

impl BoundedLabels {
    fn new(max: usize) -> Self {
        BoundedLabels {
            set: std::sync::RwLock::default(),
            max,
        }
    }

    /// `value` itself while the set has room (or already holds it), else
    /// [`OTHER_MODEL`]; empty stays empty. Only an `admit`ted value (one a
    /// model answered) takes a place in the set: names that were refused
    /// (`provider/anything` resolves, then the upstream says 404) would fill
    /// it, and every model seen later would count as `(other)`.
    fn label<'a>(&self, value: &'a str, admit: bool) -> &'a str {
        let known = self
            .set
            .read()
            .map_or_else(|p| p.into_inner().contains(value), |s| s.contains(value));
        if value.is_empty() || known {
            return value;
        }
        if !admit || value.len() > MAX_MODEL_LABEL_LEN {
            return OTHER_MODEL;
        }
        let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
        if set.len() < self.max {
            set.insert(value.into());
            return value;
        }
        if set.contains(value) {
            value
        } else {
            OTHER_MODEL
        }
    }
}

pub(crate) fn record(route: &str, resp: &Response, start: Instant) {
    let labels = resp.extensions().get::<RouteLabels>();
    let (model, provider) = labels
        .map(|l| {
            let answered = resp.status().is_success();
            (MODEL_LABELS.label(&l.model, answered), l.provider.as_str())
        })
        .unwrap_or(("", ""));
    METRICS
        .requests
        .with_label_values(&[route, model, provider, resp.status().as_str()])
        .inc();
    METRICS
        .duration
        .with_label_values(&[route, status_class(resp.status())])
        .observe(start.elapsed().as_secs_f64());
}

/// The `class` label of a status: a refusal (401, 429, a shed 503) takes
/// microseconds, and mixed into the answers' series it would pull their
/// percentiles down to nothing.
pub(crate) fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "1xx",
    }
}

async fn fallback(req: Request) -> ApiError {
    ApiError::no_route(req.method().as_str(), req.uri().path())
}

/// Turns axum's bare 405 into the OpenAI shape.
async fn shape_405(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_none()
    {
        return ApiError::method_not_allowed().into_response();
    }
    resp
}

/// Responses of at most this many bytes go out uncompressed even when the
/// client accepts gzip (every OpenAI SDK does): a chat completion is a few
/// hundred bytes, and setting up a deflate stream for it cost more CPU than
/// the bytes it saved on any network (the gateway's and the client's, per
/// request). Model lists, embeddings and long answers are still compressed.
const COMPRESS_ABOVE: u16 = 1024;

pub(crate) fn wrap(router: Router<AppState>, state: AppState) -> Router {
    let limit = InFlight {
        count: std::sync::Arc::new(AtomicUsize::new(0)),
        max: state.config.server.max_in_flight,
    };
    let router = router
        .fallback(fallback)
        .layer(axum::middleware::from_fn(shape_405))
        .route_layer(axum::middleware::from_fn_with_state(
            limit.clone(),
            shed_and_measure,
        ));
    // Outside load shedding: a refused request takes no in-flight slot.
    // Not installed at all without keys.
    let router = match state.auth.clone() {
        Some(auth) => router.route_layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::authenticate,
        )),
        None => router,
    };
    router
        .with_state(state)
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .compress_when(DefaultPredicate::new().and(SizeAbove::new(COMPRESS_ABOVE))),
        )
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID.clone(),
            MakeRequestUuid,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_stop_growing_at_the_bound() {
        let labels = BoundedLabels::new(2);
        assert_eq!(labels.label("a", true), "a");
        assert_eq!(labels.label("b", true), "b");
        assert_eq!(labels.label("c", true), OTHER_MODEL, "the set is full");
        assert_eq!(
            labels.label("a", true),
            "a",
            "known values keep their label"
        );
        assert_eq!(labels.label("", true), "");
        let labels = BoundedLabels::new(10);
        assert_eq!(
            labels.label(&"x".repeat(129), true),
            OTHER_MODEL,
            "too long"
        );
        assert_eq!(labels.label(&"x".repeat(128), true), "x".repeat(128));
    }

    #[test]
    fn only_answered_names_take_a_label() {
        let labels = BoundedLabels::new(2);
        for i in 0..10 {
            let junk = format!("m/junk-{i}");
            assert_eq!(labels.label(&junk, false), OTHER_MODEL);
        }
        // The refused names took no place: two answered models still do.
        assert_eq!(labels.label("a", true), "a");
        assert_eq!(labels.label("b", true), "b");
        // A known name keeps its label when a later request fails.
        assert_eq!(labels.label("a", false), "a");
    }

    #[test]
    fn status_classes() {
        for (code, class) in [
            (200, "2xx"),
            (204, "2xx"),
            (304, "3xx"),
            (401, "4xx"),
            (429, "4xx"),
            (503, "5xx"),
            (101, "1xx"),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_class(status), class, "{code}");
        }
    }
}
