//! LLM routing: `POST /v1/chat/completions` and the legacy text
//! completions of `POST /v1/completions` (streamed or not), and
//! `GET /v1/models` (issue: gateway core). `POST /v1/responses` is
//! registered here too, its translation in [`crate::responses`].
//!
//! One handler serves both generation routes: it parses and validates the
//! body ([`Call`]), resolves the model (alias, model or `provider/model`),
//! then asks the cache ([`crate::cache::around`]) and, on a miss, the
//! router. Every response of theirs carries `x-uat-provider` and
//! `x-uat-attempts`.

use crate::StartupError;
use crate::auth::{Caller, TokenMeter};
use crate::cache;
use crate::error::ApiError;
use crate::middleware::RouteLabels;
use crate::state::{AppState, ReadyCheck, ReadyStatus};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::Value;
use std::convert::Infallible;
use uat_config::Config;
use uat_router::{BreakerState, FailureKind, Reply, Routed, RoutedStream, RouterError};
use uat_types::{ChatRequest, CompletionRequest, ModelList};

/// Header naming the provider that served (or last failed) the request.
pub static X_UAT_PROVIDER: HeaderName = HeaderName::from_static("x-uat-provider");
/// Header with the number of upstream attempts.
pub static X_UAT_ATTEMPTS: HeaderName = HeaderName::from_static("x-uat-attempts");

/// Handle to the subsystem, held in [`AppState`].
pub struct Gateway {
    router: uat_router::Router,
}

impl Gateway {
    /// Builds the router (provider clients, first model discovery, periodic
    /// refresh; local probing when no provider is configured).
    pub async fn init(config: &Config) -> Result<Self, StartupError> {
        let router = uat_router::Router::new(config)
            .await
            .map_err(|e| StartupError::subsystem("gateway", e))?;
        Ok(Gateway { router })
    }

    /// The router, for other routes that forward to remote providers
    /// (e.g. `/v1/embeddings` for a remote model).
    pub fn router(&self) -> &uat_router::Router {
        &self.router
    }

    /// Readiness lines for `GET /ready`: one per provider, never critical
    /// (a provider being down does not make the replica unready).
    pub async fn ready(&self) -> Vec<ReadyCheck> {
        self.router
            .providers()
            .into_iter()
            .map(|p| {
                let status = match (p.up, p.breaker) {
                    (true, BreakerState::Closed) => ReadyStatus::Ok,
                    (true, _) => ReadyStatus::Degraded,
                    (false, _) => ReadyStatus::Down,
                };
                ReadyCheck {
                    name: format!("provider:{}", p.name),
                    status,
                    critical: false,
                    detail: Some(format!(
                        "{} models, breaker {:?}, {} in flight, error rate {:.2}",
                        p.models, p.breaker, p.in_flight, p.error_rate
                    )),
                }
            })
            .collect()
    }
}

/// The subsystem's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        // Ids may hold slashes (`org/model`): the rest of the path is the id.
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(crate::responses::create))
}

async fn list_models(
    State(state): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
) -> Response {
    let mut data = state.gateway.router.list_models();
    // Local embedding models are models too; duplicates are removed below.
    data.extend(state.embed.models());
    let mut seen = std::collections::HashSet::with_capacity(data.len());
    let caller = caller.as_ref().map(|axum::Extension(c)| c);
    // A key limited to some models sees only those.
    data.retain(|m| Caller::lists_model(caller, &m.id) && seen.insert(m.id.clone()));
    axum::Json(ModelList::new(data)).into_response()
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`): the model as listed,
/// or 404 `model_not_found`.
async fn get_model(
    State(state): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    crate::extract::ApiPath(id): crate::extract::ApiPath<String>,
) -> Response {
    let caller = caller.as_ref().map(|axum::Extension(c)| c);
    let found = state
        .gateway
        .router
        .list_models()
        .into_iter()
        .chain(state.embed.models())
        .find(|m| m.id == id && Caller::lists_model(caller, &m.id));
    match found {
        Some(m) => axum::Json(m).into_response(),
        None => ApiError::model_not_found(&id).into_response(),
    }
}

/// Maps a router error to the API error (status, OpenAI shape, per-provider reasons).
pub fn router_error(e: &RouterError) -> ApiError {
    match e {
        RouterError::UnknownModel { model } => ApiError::model_not_found(model),
        RouterError::AllFailed {
            attempts, reasons, ..
        } => {
            // Every provider that answered said 429: the client is told to
            // slow down (429 + Retry-After, which the SDKs back off on),
            // not that the upstream failed.
            let reached = || reasons.iter().filter(|r| r.failure.kind.reached());
            if reached().count() > 0
                && reached().all(|r| r.failure.kind == FailureKind::RateLimited)
            {
                let wait = reasons
                    .iter()
                    .filter_map(|r| r.failure.retry_after)
                    .max()
                    .map_or(1, |d| d.as_secs_f64().ceil().clamp(1.0, 3600.0) as u64);
                let mut err =
                    ApiError::rate_limited(e.to_string()).with_details(details(*attempts, reasons));
                err.retry_after = Some(wait);
                return err;
            }
            ApiError::bad_gateway(e.to_string()).with_details(details(*attempts, reasons))
        }
        RouterError::NoneReachable {
            attempts, reasons, ..
        } => {
            let mut err =
                ApiError::unavailable(e.to_string()).with_details(details(*attempts, reasons));
            err.code = Some("no_provider_reachable");
            err.retry_after = Some(1);
            err
        }
        RouterError::Rejected {
            status,
            message,
            upstream,
            ..
        } => {
            let mut err =
                ApiError::bad_request(format!("upstream rejected the request: {message}"));
            err.status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
            err.code = Some("upstream_rejected");
            // The upstream's own code, type and param win over ours: clients
            // act on them (OpenAI's `context_length_exceeded`, say).
            if let Some(u) = upstream {
                let mut own = serde_json::Map::new();
                for (name, v) in [("code", &u.code), ("type", &u.kind), ("param", &u.param)] {
                    if let Some(v) = v {
                        own.insert(name.into(), Value::String(v.clone()));
                    }
                }
                err = err.with_details(Value::Object(own));
            }
            err
        }
        RouterError::Config { .. } => ApiError::internal(e),
    }
}

fn details(attempts: u32, reasons: &[uat_router::ProviderFailure]) -> Value {
    let providers: Vec<Value> = reasons
        .iter()
        .map(|r| {
            serde_json::json!({
                "provider": &*r.provider,
                "kind": r.failure.kind.as_str(),
                "status": r.failure.status,
                "message": r.failure.message,
            })
        })
        .collect();
    serde_json::json!({ "attempts": attempts, "providers": providers })
}

/// Tags a response with the provider that served it (or last failed), the
/// attempts made and the route labels of the metrics.
pub(crate) fn tag(resp: &mut Response, provider: &str, attempts: u32, model: &str) {
    let h = resp.headers_mut();
    h.insert(
        X_UAT_PROVIDER.clone(),
        HeaderValue::from_str(provider).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
    );
    h.insert(X_UAT_ATTEMPTS.clone(), HeaderValue::from(attempts));
    resp.extensions_mut().insert(RouteLabels {
        model: model.to_owned(),
        provider: provider.to_owned(),
    });
}

fn error_response(err: ApiError, provider: Option<&str>, attempts: u32, model: &str) -> Response {
    let mut resp = err.into_response();
    tag(&mut resp, provider.unwrap_or("none"), attempts, model);
    resp
}

/// A request refused before the cache is consulted (body too large, slow
/// or of an unknown encoding, malformed JSON, a bad field, an unknown model):
/// no provider, no attempt, and `x-uat-cache: bypass`, like every response
/// of this cached route.
pub(crate) fn refused(err: ApiError) -> Response {
    let mut resp = error_response(err, None, 0, "");
    cache::mark_bypass(&mut resp);
    resp
}

/// The response for a failed chat routing, logged once here (the edge).
pub(crate) fn routing_failed(e: &RouterError, model: &str) -> Response {
    failed(e, model, "chat completion")
}

/// The response for a failed routing of `what`, logged once here.
pub(crate) fn failed(e: &RouterError, model: &str, what: &str) -> Response {
    if e.status() >= 500 {
        tracing::warn!(model, attempts = e.attempts(), error = %e, "{what} failed upstream");
    }
    error_response(router_error(e), e.last_provider(), e.attempts(), model)
}

/// Reads the body within the route's limit (413 beyond it), decoded when
/// it was sent compressed.
pub(crate) async fn read_body(req: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = crate::extract::read_body(&parts, body).await?;
    Ok((parts.headers, bytes))
}

/// The body as JSON: a 400 when it is empty or malformed.
#[allow(
    clippy::result_large_err,
    reason = "ApiError is the server-wide error type; cold path"
)]
pub(crate) fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(_) if bytes.is_empty() => Err(ApiError::bad_request(
            "request body is empty; expected a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    }
}

/// A generation request: a chat or a legacy text completion, parsed and
/// validated.
#[derive(Clone)]
enum Call {
    Chat(ChatRequest),
    Completion(CompletionRequest),
}

/// A 400 for a body that is not a JSON object.
#[allow(
    clippy::result_large_err,
    reason = "ApiError is the server-wide error type; cold path"
)]
fn object(body: &Value) -> Result<(), ApiError> {
    if body.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_request("request body must be a JSON object"))
    }
}

fn empty_model() -> ApiError {
    ApiError::invalid_field("model", "`model` must not be empty")
}

impl Call {
    /// Deserializes and validates a text completion request, naming the
    /// bad field.
    #[allow(
        clippy::result_large_err,
        reason = "ApiError is the server-wide error type; cold path"
    )]
    fn completion(body: &Value) -> Result<Call, ApiError> {
        object(body)?;
        let req: CompletionRequest =
            serde_path_to_error::deserialize(body).map_err(crate::extract::path_error)?;
        if req.model.is_empty() {
            return Err(empty_model());
        }
        check_prompt(&req.prompt)?;
        Ok(Call::Completion(req))
    }

    /// Deserializes and validates a chat request, naming the bad field.
    #[allow(
        clippy::result_large_err,
        reason = "ApiError is the server-wide error type; cold path"
    )]
    fn chat(body: &Value) -> Result<Call, ApiError> {
        object(body)?;
        let req: ChatRequest =
            serde_path_to_error::deserialize(body).map_err(crate::extract::path_error)?;
        if req.model.is_empty() {
            return Err(empty_model());
        }
        if req.messages.is_empty() {
            return Err(ApiError::invalid_field(
                "messages",
                "`messages` must contain at least one message",
            ));
        }
        Ok(Call::Chat(req))
    }

    fn model(&self) -> &str {
        match self {
            Call::Chat(r) => &r.model,
            Call::Completion(r) => &r.model,
        }
    }

    /// What the cache keeps its answers as.
    fn kind(&self) -> cache::Kind {
        match self {
            Call::Chat(_) => cache::Kind::Chat,
            Call::Completion(_) => cache::Kind::Completion,
        }
    }

    /// The response for its failed routing, logged once.
    fn failed(&self, e: &RouterError) -> Response {
        match self {
            Call::Chat(r) => routing_failed(e, &r.model),
            Call::Completion(r) => failed(e, &r.model, "text completion"),
        }
    }

    fn is_stream(&self) -> bool {
        match self {
            Call::Chat(r) => r.is_stream(),
            Call::Completion(r) => r.is_stream(),
        }
    }

    fn include_usage(&self) -> bool {
        match self {
            Call::Chat(r) => r.include_usage(),
            Call::Completion(r) => r.include_usage(),
        }
    }

    /// Leaves out a field the gateway reads itself.
    fn remove(&mut self, field: &str) {
        match self {
            Call::Chat(r) => r.extra.shift_remove(field),
            Call::Completion(r) => r.extra.shift_remove(field),
        };
    }

    /// The same request with `stream_options.include_usage` set.
    fn asking_usage(&self) -> Call {
        let mut asking = self.clone();
        asking.ask_usage();
        asking
    }

    /// Sets `stream_options.include_usage`.
    fn ask_usage(&mut self) {
        let options = match self {
            Call::Chat(r) => &mut r.stream_options,
            Call::Completion(r) => &mut r.stream_options,
        };
        options.get_or_insert_with(Default::default).include_usage = Some(true);
    }

    async fn reply(
        &self,
        router: &uat_router::Router,
        resolved: &uat_router::Resolved,
    ) -> Result<Routed<Reply>, RouterError> {
        match self {
            Call::Chat(r) => router.chat(resolved, r).await,
            Call::Completion(r) => router.completion(resolved, r).await,
        }
    }

    async fn stream(
        &self,
        router: &uat_router::Router,
        resolved: &uat_router::Resolved,
    ) -> Result<Routed<RoutedStream>, RouterError> {
        match self {
            Call::Chat(r) => router.chat_stream(resolved, r).await,
            Call::Completion(r) => router.completion_stream(resolved, r).await,
        }
    }
}

/// A completion's `prompt`: a string, an array of strings, an array of
/// token ids, or an array of such arrays (OpenAI's four forms), not empty.
#[allow(
    clippy::result_large_err,
    reason = "ApiError is the server-wide error type; cold path"
)]
fn check_prompt(prompt: &Value) -> Result<(), ApiError> {
    fn tokens(v: &Value) -> bool {
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|t| t.as_u64().is_some()))
    }
    let ok = match prompt {
        Value::Null => {
            return Err(ApiError::invalid_field(
                "prompt",
                "`prompt` is required: a string, an array of strings, an array of token ids or an array of token id arrays",
            ));
        }
        Value::String(_) => true,
        Value::Array(a) if a.is_empty() => false,
        Value::Array(a) => a.iter().all(Value::is_string) || tokens(prompt) || a.iter().all(tokens),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "prompt",
            "`prompt` must be a string, a non-empty array of strings, of token ids (whole numbers from 0) or of non-empty token id arrays",
        ))
    }
}

async fn chat(State(state): State<AppState>, request: Request) -> Response {
    generate(state, request, Call::chat).await
}

/// `POST /v1/completions`: OpenAI's legacy text completions, routed,
/// retried, failed over, streamed and cached as chat is.
async fn completions(State(state): State<AppState>, request: Request) -> Response {
    generate(state, request, Call::completion).await
}

/// Serves a generation route whose body `parse` reads.
async fn generate(
    state: AppState,
    request: Request,
    parse: fn(&Value) -> Result<Call, ApiError>,
) -> Response {
    let tenant = crate::auth::Tenant::of(request.extensions());
    let meter = TokenMeter::of(request.extensions());
    let caller = request.extensions().get::<Caller>().cloned();
    let charge = crate::spend::Charge::for_caller(caller.as_ref(), &state);
    let (headers, bytes) = match read_body(request).await {
        Ok(b) => b,
        Err(e) => return refused(e),
    };
    let body = match json_body(&bytes) {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    let mut req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    // The cache's controls (LiteLLM's `cache` object) are the gateway's:
    // `cache::around` reads them from `body`, the upstream never sees them.
    req.remove(cache::BODY_CONTROLS);
    // A key with a token limit needs a stream's usage to count its tokens,
    // and pricing needs it too: asked for on the request itself (the
    // client did not ask: the usage chunk is dropped before it).
    let metered = meter.is_some() || charge.is_some();
    let client_usage = req.include_usage();
    if metered && req.is_stream() && !client_usage {
        req.ask_usage();
    }
    let model = req.model();
    if let Err(e) = Caller::check_model(caller.as_ref(), model)
        .and_then(|()| Caller::check_other_models(caller.as_ref(), &body))
    {
        return refused(e);
    }
    let router = &state.gateway.router;
    let resolved = match router.resolve(model) {
        Ok(r) => r,
        Err(e) => return refused(router_error(&e)),
    };
    if let Some(c) = &charge
        && let Err(e) = c.check_priced(router, &resolved, model)
    {
        return refused(e);
    }
    let cached = resolved.cache_name();
    let names = cache::ModelNames {
        public: model,
        cached: &cached,
    };
    // What a stream that reports no usage is taken to have spent of its
    // prompt: a token per four bytes of the request.
    let prompt_estimate = bytes.len() as u64 / 4;
    let (req, resolved) = (&req, &resolved);
    let upstream = |ask: cache::Ask| async move {
        // The cache asks for the usage of a stream it records (and drops it
        // before the client sees it; else the meter drops it).
        if req.is_stream() && (ask.usage || metered) && !client_usage {
            let metering =
                StreamMeter::plan(meter, charge, req.model(), prompt_estimate, !ask.usage);
            if metered {
                stream_upstream(router, resolved, req, metering).await
            } else {
                stream_upstream(router, resolved, &req.asking_usage(), metering).await
            }
        } else if req.is_stream() {
            let metering = StreamMeter::plan(meter, charge, req.model(), prompt_estimate, false);
            stream_upstream(router, resolved, req, metering).await
        } else {
            match req.reply(router, resolved).await {
                Ok(r) => {
                    let cost = settle(
                        &r,
                        meter.as_ref(),
                        charge.as_ref(),
                        req.model(),
                        prompt_estimate,
                    );
                    let mut resp = Response::new(Body::from(r.value.body));
                    if let Some(nanos) = cost {
                        crate::spend::set_cost(&mut resp, nanos);
                    }
                    resp.extensions_mut().insert(r.value.shape);
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    tag(&mut resp, &r.provider, r.attempts, req.model());
                    resp
                }
                Err(e) => req.failed(&e),
            }
        }
    };
    let kind = req.kind();
    cache::around(&state, &tenant, &headers, kind, names, &body, upstream).await
}

async fn stream_upstream(
    router: &uat_router::Router,
    resolved: &uat_router::Resolved,
    req: &Call,
    mut metering: Option<StreamMeter>,
) -> Response {
    match req.stream(router, resolved).await {
        Ok(r) => {
            if let Some(m) = &mut metering {
                m.served(&r.provider, &r.model);
            }
            let provider = r.provider.clone();
            let mut resp =
                event_stream(Body::from_stream(sse(r.value, provider.clone(), metering)));
            tag(&mut resp, &provider, r.attempts, req.model());
            resp
        }
        Err(e) => req.failed(&e),
    }
}

/// Settles a whole answer from upstream: its tokens taken from the key's
/// limit and its cost charged (`requested`: the model the client asked
/// for). An answer without usage is taken to have spent a token per four
/// bytes of the request (`prompt_estimate`) and of the answer. Returns the
/// cost in nano-USD, for `x-uat-cost`, when it was priced.
pub(crate) fn settle(
    r: &Routed<Reply>,
    meter: Option<&TokenMeter>,
    charge: Option<&crate::spend::Charge>,
    requested: &str,
    prompt_estimate: u64,
) -> Option<u64> {
    let usage = r.value.usage.as_ref();
    let estimate = || uat_types::Usage::new(prompt_estimate, r.value.body.len() as u64 / 4);
    if let Some(m) = meter {
        m.spend(usage.map_or_else(|| estimate().total_tokens, TokenMeter::total));
    }
    charge.and_then(|c| c.answer(requested, &r.provider, &r.model, usage, estimate))
}

/// A `text/event-stream` response of this body, neither cached nor
/// buffered by proxies on the way (`x-accel-buffering: no`).
pub(crate) fn event_stream(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    resp
}

/// The token count of a stream for its key's `tokens_per_minute`, charged
/// once, when the stream ends or is dropped: the usage the upstream
/// reports (asked for; the largest seen, as an upstream sending running
/// totals on every chunk, vLLM's `continuous_usage_stats`, ends with the
/// whole), else an estimate (an upstream that ignores `stream_options`):
/// the prompt at a token per four bytes, a token per chunk. A stream that
/// never opened (the upstream refused it) costs nothing.
///
/// With a [`crate::spend::Charge`] it also prices the stream's usage (the
/// one with the largest total) when it ends, for the key's spend; a stream
/// that reported no usage is counted unpriced.
pub(crate) struct StreamMeter {
    meter: Option<TokenMeter>,
    prompt_estimate: u64,
    chunks: u64,
    usage: Option<u64>,
    opened: bool,
    /// Drop the usage chunk: the gateway asked for it, the client did not.
    strip_usage: bool,
    /// The charge, when spend is tracked.
    bill: Option<Bill>,
}

/// A stream's charge: to whom, for which model, and the usage to price.
struct Bill {
    charge: crate::spend::Charge,
    /// The model the client asked for.
    requested: Box<str>,
    /// The provider and its model that served it.
    served: Option<(std::sync::Arc<str>, std::sync::Arc<str>)>,
    usage: Option<uat_types::Usage>,
}

impl StreamMeter {
    /// A meter charging `meter` only (the tests'); `strip_usage` drops the
    /// usage-only chunk (the gateway asked for it, the client did not).
    #[cfg(test)]
    fn new(meter: TokenMeter, prompt_estimate: u64, strip_usage: bool) -> Self {
        StreamMeter {
            meter: Some(meter),
            prompt_estimate,
            chunks: 0,
            usage: None,
            opened: false,
            strip_usage,
            bill: None,
        }
    }

    /// A meter for a stream of `requested` when there is something to
    /// count: a token limit, a charge, or both.
    pub(crate) fn plan(
        meter: Option<TokenMeter>,
        charge: Option<crate::spend::Charge>,
        requested: &str,
        prompt_estimate: u64,
        strip_usage: bool,
    ) -> Option<Self> {
        if meter.is_none() && charge.is_none() {
            return None;
        }
        Some(StreamMeter {
            meter,
            prompt_estimate,
            chunks: 0,
            usage: None,
            opened: false,
            strip_usage,
            bill: charge.map(|charge| Bill {
                charge,
                requested: requested.into(),
                served: None,
                usage: None,
            }),
        })
    }

    /// Notes the provider and model that serve the stream (its price).
    pub(crate) fn served(&mut self, provider: &std::sync::Arc<str>, model: &std::sync::Arc<str>) {
        if let Some(b) = &mut self.bill {
            b.served = Some((provider.clone(), model.clone()));
        }
    }

    /// Counts a chunk; false when it is not to be forwarded.
    pub(crate) fn chunk(&mut self, chunk: &uat_router::StreamChunk) -> bool {
        self.opened = true;
        match &chunk.usage {
            Some(u) => {
                let total = TokenMeter::total(u);
                if let Some(b) = &mut self.bill
                    && self.usage.is_none_or(|t| total >= t)
                {
                    b.usage = Some(*u);
                }
                self.usage = Some(self.usage.map_or(total, |t| t.max(total)));
                !(self.strip_usage && cache::is_usage_only_chunk(&chunk.json))
            }
            None => {
                self.chunks += 1;
                true
            }
        }
    }
}

impl Drop for StreamMeter {
    fn drop(&mut self) {
        if !self.opened {
            return;
        }
        let spent = self
            .usage
            .unwrap_or_else(|| self.prompt_estimate.saturating_add(self.chunks));
        if let Some(m) = &self.meter {
            m.spend(spent);
        }
        if let Some(b) = &self.bill
            && let Some((provider, model)) = &b.served
        {
            b.charge
                .answer(&b.requested, provider, model, b.usage.as_ref(), || {
                    uat_types::Usage::new(self.prompt_estimate, self.chunks)
                });
        }
    }
}

fn frame(json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(json.len() + 8);
    b.put_slice(b"data: ");
    b.put_slice(json);
    b.put_slice(b"\n\n");
    b.freeze()
}

/// The SSE body: one `data:` event per chunk, flushed as it comes, then
/// `data: [DONE]`; an upstream failure after the first byte ends the stream
/// with an OpenAI-shaped error event instead. Dropping the body (client
/// gone) drops the upstream request. With a [`StreamMeter`], the stream's
/// tokens are counted for its key.
fn sse(
    stream: RoutedStream,
    provider: std::sync::Arc<str>,
    metering: Option<StreamMeter>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    futures::stream::unfold(Some((stream, provider, metering)), |state| async move {
        let (mut s, provider, mut metering) = state?;
        loop {
            return match s.next().await {
                Some(Ok(chunk)) => {
                    if let Some(m) = &mut metering
                        && !m.chunk(&chunk)
                    {
                        continue;
                    }
                    Some((Ok(frame(&chunk.json)), Some((s, provider, metering))))
                }
                Some(Err(f)) => {
                    let err = serde_json::json!({ "error": {
                        "message": format!("upstream `{provider}` failed mid-stream: {}", f.message),
                        "type": "upstream_error",
                        "param": null,
                        "code": "upstream_interrupted",
                    }});
                    let json = serde_json::to_vec(&err).unwrap_or_default();
                    Some((Ok(frame(&json)), None))
                }
                None => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), None)),
            };
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uat_router::StreamChunk;

    fn chunk(json: &str, usage: Option<uat_types::Usage>) -> StreamChunk {
        StreamChunk {
            json: Bytes::from(json.to_owned()),
            usage,
        }
    }

    #[test]
    fn a_stream_spends_its_usage_and_drops_the_usage_chunk_it_asked_for() {
        let meter = TokenMeter::for_test(100);
        let mut m = StreamMeter::new(meter.clone(), 400, true);
        assert!(m.chunk(&chunk(r#"{"choices":[{"delta":{"content":"hi"}}]}"#, None)));
        let usage = uat_types::Usage::new(12, 30);
        let last = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert!(
            !m.chunk(&chunk(last, Some(usage))),
            "asked for by the gateway"
        );
        drop(m);
        assert_eq!(meter.remaining(), 100 - 42, "the usage, not the estimate");
        // Asked for by the client: forwarded.
        let mut m = StreamMeter::new(meter.clone(), 400, false);
        assert!(m.chunk(&chunk(last, Some(usage))));
        drop(m);
        assert_eq!(meter.remaining(), 100 - 84);
    }

    #[test]
    fn a_stream_without_usage_spends_an_estimate_even_when_cut_short() {
        let meter = TokenMeter::for_test(100);
        let mut m = StreamMeter::new(meter.clone(), 40, true);
        for _ in 0..5 {
            assert!(m.chunk(&chunk(r#"{"choices":[{"delta":{"content":"a"}}]}"#, None)));
        }
        // Dropped before its end (the client went away, or no usage came).
        drop(m);
        assert_eq!(meter.remaining(), 100 - 45);
    }

    #[test]
    fn a_stream_that_never_opened_costs_nothing() {
        let meter = TokenMeter::for_test(100);
        drop(StreamMeter::new(meter.clone(), 4_000_000, true));
        assert_eq!(meter.remaining(), 100, "the upstream refused it");
    }

    #[test]
    fn running_usage_totals_are_charged_once_at_their_largest() {
        // vLLM's continuous_usage_stats: a usage on every chunk, growing.
        let meter = TokenMeter::for_test(100);
        let mut m = StreamMeter::new(meter.clone(), 40, true);
        for done in 1..=5 {
            let u = uat_types::Usage::new(10, done);
            let json = r#"{"choices":[{"delta":{"content":"a"}}],"usage":{}}"#;
            assert!(
                m.chunk(&chunk(json, Some(u))),
                "a chunk with choices is forwarded"
            );
        }
        drop(m);
        assert_eq!(meter.remaining(), 100 - 15);
    }
}
