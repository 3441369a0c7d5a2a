//! `POST /v1/responses`: OpenAI's Responses API (what Codex CLI and the
//! Agents SDK speak), bridged onto chat routing, stateless.
//!
//! The request is translated into a chat request ([`request`]), routed
//! like chat (the caller's models, the key's `tokens_per_minute`, retries,
//! failover, every provider kind), and the chat answer translated back: a
//! Response object ([`answer`]) or, streamed, Responses events ([`stream`]).
//! Nothing is kept: `previous_response_id`, `conversation` and background
//! responses are refused. OpenAI's built-in tools, which the gateway cannot
//! run, are left out with a warning, and named in `x-uat-dropped-tools`;
//! `custom` tools (freeform input) are function tools taking one string.
//! The answers are not cached (`x-uat-cache: bypass`).

mod answer;
mod request;
mod stream;

use crate::auth::{Caller, TokenMeter};
use crate::cache;
use crate::error::ApiError;
use crate::gateway::{self, StreamMeter};
use crate::state::AppState;
use answer::Envelope;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::sync::Arc;
use stream::Translator;
use uat_router::RoutedStream;
use uat_types::ChatRequest;

/// Header naming the built-in tools left out of the request (their types,
/// comma-separated): the gateway cannot run them.
pub(crate) static X_UAT_DROPPED_TOOLS: HeaderName = HeaderName::from_static("x-uat-dropped-tools");

/// The handler.
pub(crate) async fn create(State(state): State<AppState>, request: Request) -> Response {
    let meter = TokenMeter::of(request.extensions());
    let caller = request.extensions().get::<Caller>().cloned();
    let (_, bytes) = match gateway::read_body(request).await {
        Ok(b) => b,
        Err(e) => return gateway::refused(e),
    };
    let translated = match gateway::json_body(&bytes).and_then(|body| request::translate(&body)) {
        Ok(t) => t,
        Err(e) => return gateway::refused(e),
    };
    let request::Translated {
        chat,
        echo,
        custom_tools,
        dropped_tools,
        dropped_items,
    } = translated;
    if !dropped_tools.is_empty() || !dropped_items.is_empty() {
        tracing::warn!(
            model = %chat.model,
            tools = %dropped_tools.join(","),
            items = %dropped_items.join(","),
            "response: built-in tools the gateway cannot run left out"
        );
    }
    let mut env = Envelope::new(&chat.model, echo);
    env.custom_tools = custom_tools;
    let mut resp = route(&state, caller.as_ref(), meter, bytes.len(), &chat, env).await;
    if !dropped_tools.is_empty()
        && let Ok(v) = HeaderValue::from_str(&dropped_tools.join(","))
    {
        resp.headers_mut().insert(X_UAT_DROPPED_TOOLS.clone(), v);
    }
    cache::mark_bypass(&mut resp);
    resp
}

/// Routes the translated request and translates its answer back.
async fn route(
    state: &AppState,
    caller: Option<&Caller>,
    meter: Option<TokenMeter>,
    request_len: usize,
    chat: &ChatRequest,
    mut env: Envelope,
) -> Response {
    if let Err(e) = Caller::check_model(caller, &chat.model) {
        return gateway::refused(e);
    }
    let router = state.gateway.router();
    let resolved = match router.resolve(&chat.model) {
        Ok(r) => r,
        Err(e) => return gateway::refused(gateway::router_error(&e)),
    };
    // An answer that reports no usage is taken to have spent a token per
    // four bytes of the request (and of the answer), as chat's are.
    let prompt_estimate = request_len as u64 / 4;
    // The answer's cost, for the key's budget and the spend metrics.
    let charge = crate::spend::Charge::for_caller(caller, state);
    if let Some(c) = &charge
        && let Err(e) = c.check_priced(router, &resolved, &chat.model)
    {
        return gateway::refused(e);
    }
    if chat.is_stream() {
        return match router.chat_stream(&resolved, chat).await {
            Ok(r) => {
                let mut metering =
                    StreamMeter::plan(meter, charge, &chat.model, prompt_estimate, false);
                if let Some(m) = &mut metering {
                    m.served(&r.provider, &r.model);
                }
                let body = events(r.value, Translator::new(env), r.provider.clone(), metering);
                let mut resp = gateway::event_stream(Body::from_stream(body));
                gateway::tag(&mut resp, &r.provider, r.attempts, &chat.model);
                resp
            }
            Err(e) => gateway::failed(&e, &chat.model, "response"),
        };
    }
    match router.chat(&resolved, chat).await {
        Ok(r) => {
            let cost = gateway::settle(
                &r,
                meter.as_ref(),
                charge.as_ref(),
                &chat.model,
                prompt_estimate,
            );
            let mut resp = match answer::from_completion(&mut env, &r.value.body) {
                Ok(v) => {
                    let mut resp = Response::new(Body::from(v.to_string()));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                Err(why) => {
                    tracing::warn!(provider = %r.provider, error = %why, "chat answer not translatable to a response");
                    let e = ApiError::bad_gateway(format!(
                        "upstream `{}` gave an answer that is not a chat completion: {why}",
                        r.provider
                    ));
                    axum::response::IntoResponse::into_response(e)
                }
            };
            if let Some(nanos) = cost {
                crate::spend::set_cost(&mut resp, nanos);
            }
            gateway::tag(&mut resp, &r.provider, r.attempts, &chat.model);
            resp
        }
        Err(e) => gateway::failed(&e, &chat.model, "response"),
    }
}

/// The SSE body: the translator's events, flushed chunk by chunk, ending
/// with `response.completed` (or `response.incomplete`), or with
/// `response.failed` when the upstream fails mid-stream; no `[DONE]`.
/// Dropping the body (client gone) drops the upstream request. With a
/// [`StreamMeter`], the stream's tokens are counted for its key.
fn events(
    stream: RoutedStream,
    mut tr: Translator,
    provider: Arc<str>,
    metering: Option<StreamMeter>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let start = stream::frame(&tr.start());
    let rest = futures::stream::unfold(Some((stream, tr, metering)), move |state| {
        let provider = provider.clone();
        async move {
            let (mut s, mut tr, mut metering) = state?;
            loop {
                let (events, more) = match s.next().await {
                    Some(Ok(chunk)) => {
                        if let Some(m) = &mut metering {
                            m.chunk(&chunk);
                        }
                        match tr.chunk(&chunk.json) {
                            Ok(events) if events.is_empty() => continue,
                            Ok(events) => (events, true),
                            Err(why) => (tr.fail(format!("upstream `{provider}`: {why}")), false),
                        }
                    }
                    Some(Err(f)) => (
                        tr.fail(format!(
                            "upstream `{provider}` failed mid-stream: {}",
                            f.message
                        )),
                        false,
                    ),
                    None => (tr.finish(), false),
                };
                let next = more.then_some((s, tr, metering));
                return Some((Ok(stream::frame(&events)), next));
            }
        }
    });
    futures::stream::once(async move { Ok(start) }).chain(rest)
}
