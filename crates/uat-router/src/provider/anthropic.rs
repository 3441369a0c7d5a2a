//! Anthropic's Messages API, translated both ways: system prompt, roles,
//! tools, `max_tokens`, stop reasons, usage and errors; its SSE event stream
//! becomes OpenAI chunks. What it cannot do (`n` > 1, logprobs) is refused
//! as [`FailureKind::Unsupported`] by [`Provider::check`] before any
//! attempt, never dropped. A `max_tokens` the gateway chose that does not
//! fit the context window beside a long prompt is sent again smaller. Text
//! completions (`/v1/completions`) are refused the same way: Anthropic has
//! no such API for current models.

mod max_tokens;

pub use max_tokens::max_output_tokens;

use super::content::{ImageUrl, image_url, image_url_param, unsupported_part};
use super::http::{self, lines, read_json, send, send_within, sse_data};
use super::{
    BoxFuture, ChunkStream, Provider, Reply, StreamChunk, asks_for_logprobs, one_call_at_most,
    one_choice,
};
use crate::error::{Failure, FailureKind, RouterError};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uat_config::{ProviderConfig, ProviderKind};
use uat_types::{
    ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Choice, CompletionRequest, Delta, Usage,
};

/// The API version sent in `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the client gives none (Anthropic requires it) and the
/// model is not in the [`max_output_tokens`] table.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// An Anthropic endpoint. `base_url` is the API root (`https://api.anthropic.com`).
pub struct Anthropic {
    client: reqwest::Client,
    messages_url: reqwest::Url,
    models_url: reqwest::Url,
    key: Option<String>,
    /// `default_max_tokens` from the config: wins over the model table.
    default_max_tokens: Option<u32>,
    /// Until the response head of a stream (`first_byte_timeout`).
    first_byte: Duration,
    /// Of a whole non-streamed exchange (`timeout`): such an answer's head
    /// comes only once it is generated, so the first-byte bound is not its.
    total: Duration,
}

impl Anthropic {
    /// Builds the provider and its pooled client.
    pub fn new(cfg: &ProviderConfig) -> Result<Self, RouterError> {
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or("https://api.anthropic.com");
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Ok(Anthropic {
            client: http::client(cfg)?,
            messages_url: http::join(cfg, base, "/v1/messages")?,
            models_url: http::join(cfg, base, "/v1/models")?,
            key: http::api_key(cfg),
            default_max_tokens: cfg.default_max_tokens,
            first_byte: cfg.first_byte_timeout,
            total: cfg.timeout,
        })
    }

    fn request(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let rb = rb.header("anthropic-version", API_VERSION);
        match &self.key {
            Some(k) => rb.header("x-api-key", k),
            None => rb,
        }
    }

    /// Posts `body`; `since`, for a second send, is when the first began:
    /// the second gets what is left of the first's bounds, not bounds of
    /// its own (which let a request run to twice its `timeout`).
    async fn post(
        &self,
        body: &Value,
        stream: bool,
        since: Option<Instant>,
    ) -> Result<reqwest::Response, Failure> {
        let body = serde_json::to_vec(body).map_err(|e| {
            Failure::new(
                FailureKind::Malformed,
                format!("cannot encode request: {e}"),
            )
        })?;
        let mut rb = self
            .request(self.client.post(self.messages_url.clone()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if stream {
            rb = rb.header(reqwest::header::ACCEPT, "text/event-stream");
        }
        let bound = if stream { self.first_byte } else { self.total };
        let Some(since) = since else {
            return send(rb, bound).await;
        };
        let spent = since.elapsed();
        let left = bound.saturating_sub(spent);
        if left.is_zero() {
            return Err(Failure::new(
                FailureKind::Timeout,
                format!("no response within {bound:?}"),
            ));
        }
        // The whole exchange (a stream's body too) within the first's `timeout`.
        let rb = rb.timeout(self.total.saturating_sub(spent));
        send_within(rb, left, bound).await
    }

    /// The Messages API body (what Anthropic cannot do is refused by
    /// [`Provider::check`] first).
    fn body(&self, model: &str, req: &ChatRequest, stream: bool) -> Result<Value, Failure> {
        let default_max = self
            .default_max_tokens
            .or_else(|| max_output_tokens(model))
            .unwrap_or(DEFAULT_MAX_TOKENS);
        messages_body(model, req, stream, default_max)
    }

    /// Posts `body`. When the gateway chose `max_tokens` (the client set no
    /// limit) and Anthropic refuses it because input and `max_tokens`
    /// together exceed the context window (a model's whole output limit
    /// leaves little room for a long prompt), sends it once more with what
    /// the window leaves, within what is left of the first send's time.
    /// Any other answer, or a client's own limit, is returned as it is.
    async fn post_fitted(
        &self,
        body: &mut Value,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, Failure> {
        let start = Instant::now();
        match self.post(body, stream, None).await {
            Err(f) if req.max_output_tokens().is_none() => match fitted_max_tokens(&f) {
                Some(n) => {
                    tracing::debug!(
                        max_tokens = n,
                        "default max_tokens exceeds the context window; sending again"
                    );
                    body["max_tokens"] = json!(n);
                    self.post(body, stream, Some(start)).await
                }
                None => Err(f),
            },
            r => r,
        }
    }
}

/// The `max_tokens` that fits, from Anthropic's 400 `input length and
/// `max_tokens` exceed context limit: X + Y > Z, ...`: Z - X when that is
/// at least 1; `None` for any other failure or a message that does not parse.
pub(crate) fn fitted_max_tokens(f: &Failure) -> Option<u64> {
    if f.status != Some(400) || !f.message.contains("max_tokens") {
        return None;
    }
    let (_, rest) = f.message.split_once("exceed context limit:")?;
    let mut words = rest.split_whitespace();
    let input: u64 = words.next()?.parse().ok()?;
    if words.next()? != "+" {
        return None;
    }
    words.next()?.parse::<u64>().ok()?;
    if words.next()? != ">" {
        return None;
    }
    let limit: u64 = words
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    limit.checked_sub(input).filter(|n| *n >= 1)
}

/// What Anthropic cannot do: `n` > 1, logprobs, an image part without a
/// URL or with a data: URL that is not base64, a content part the adapter
/// does not translate (audio, a file; anything but text outside user turns).
fn refusal(req: &ChatRequest) -> Result<(), Failure> {
    one_choice(req, "anthropic")?;
    if let Some(param) = asks_for_logprobs(req) {
        return Err(Failure::unsupported(
            "logprobs are not supported by anthropic providers",
            param,
            "unsupported_parameter",
        ));
    }
    // Forms of `tool_choice` (`allowed_tools`, `custom`) and tools (not
    // `function`) that have no Anthropic equivalent: refused, where they
    // used to become no choice and no tool.
    let named = |c: &Value| {
        c.get("type").and_then(Value::as_str) == Some("function")
            && c.pointer("/function/name")
                .and_then(Value::as_str)
                .is_some()
    };
    match req.extra.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if matches!(s.as_str(), "none" | "auto" | "required") => {}
        Some(c) if named(c) => {}
        Some(c) => {
            return Err(Failure::unsupported(
                format!(
                    "tool_choice {c} is not supported by anthropic providers (none, auto, required or a named function)"
                ),
                "tool_choice",
                "unsupported_value",
            ));
        }
    }
    if let Some(Value::Array(tools)) = req.extra.get("tools")
        && let Some(i) = tools.iter().position(|t| t.get("function").is_none())
    {
        let message = match tools[i].get("type").and_then(Value::as_str) {
            Some("function") => {
                "a function tool needs its `function` object (name, parameters)".to_owned()
            }
            kind => format!(
                "{} tools are not supported by anthropic providers (function tools only)",
                kind.unwrap_or("untyped")
            ),
        };
        return Err(Failure::unsupported(
            message,
            format!("tools[{i}]"),
            "unsupported_value",
        ));
    }
    for (at, m) in req.messages.iter().enumerate() {
        if is_user_turn(&m.role) {
            if let Value::Array(parts) = &m.content {
                for (j, p) in parts.iter().enumerate() {
                    user_part(p, &m.role, at, j)?;
                }
            }
        } else {
            text_parts_only(m, at)?;
        }
    }
    Ok(())
}

/// Whether [`messages_body`] sends a message of this role as a user turn
/// of text and image blocks (the others are sent as their text).
fn is_user_turn(role: &str) -> bool {
    !matches!(role, "system" | "developer" | "assistant" | "tool")
}

/// Refuses a part other than text in a message sent as its text (system,
/// assistant, tool), which would otherwise be left out.
fn text_parts_only(m: &ChatMessage, at: usize) -> Result<(), Failure> {
    if let Value::Array(parts) = &m.content {
        for (j, p) in parts.iter().enumerate() {
            // An assistant turn replayed with its refusal: sent as its text.
            let text = match p.get("type").and_then(Value::as_str) {
                Some("text") => true,
                Some("refusal") => m.role == "assistant",
                _ => false,
            };
            if !text {
                return Err(unsupported_part(p, &m.role, at, j, "anthropic"));
            }
        }
    }
    Ok(())
}

/// A part of a user turn that Anthropic takes.
enum UserPart<'a> {
    /// A text part (the part itself).
    Text(&'a Value),
    /// An image.
    Image(Image<'a>),
}

/// Part `j` of user turn `at` (whose role is `role`): text or an image;
/// any other part is refused.
fn user_part<'a>(p: &'a Value, role: &str, at: usize, j: usize) -> Result<UserPart<'a>, Failure> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => Ok(UserPart::Text(p)),
        Some("image_url") => image(p, at, j).map(UserPart::Image),
        _ => Err(unsupported_part(p, role, at, j, "anthropic")),
    }
}

/// The Messages API body for an OpenAI request; `default_max_tokens` is
/// sent when the client sets no output limit (Anthropic requires one). A
/// client's own limit goes as it is, above the model's too: Anthropic's 400
/// says so better than a silent cut would.
pub(crate) fn messages_body(
    model: &str,
    req: &ChatRequest,
    stream: bool,
    default_max_tokens: u32,
) -> Result<Value, Failure> {
    let mut system = String::new();
    // The system prompt as text blocks, kept when a part marks a cache
    // breakpoint (Anthropic takes `cache_control` on blocks only).
    let mut system_blocks: Vec<Value> = Vec::new();
    let mut system_cached = false;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if !is_user_turn(&m.role) {
            text_parts_only(m, i)?;
        }
        match m.role.as_str() {
            "system" | "developer" => {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&m.text_content());
                match &m.content {
                    Value::Array(parts) => {
                        for p in parts {
                            let Some(t) = p.get("text").and_then(Value::as_str) else {
                                continue;
                            };
                            if t.trim().is_empty() {
                                continue;
                            }
                            let mut block = json!({"type": "text", "text": t});
                            system_cached |= p.get("cache_control").is_some();
                            with_cache_control(&mut block, p);
                            system_blocks.push(block);
                        }
                    }
                    Value::String(t) if !t.trim().is_empty() => {
                        system_blocks.push(json!({"type": "text", "text": t}));
                    }
                    _ => {}
                }
            }
            "assistant" => {
                let mut blocks = Vec::new();
                let text = m.text_content();
                // Blank text too: Anthropic refuses a whitespace-only block
                // (Claude answers "\n\n" before a call at times).
                if !text.trim().is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                if let Some(Value::Array(calls)) = m.extra.get("tool_calls") {
                    for c in calls {
                        let input = c
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .and_then(|s| serde_json::from_str::<Value>(s).ok())
                            .unwrap_or_else(|| json!({}));
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": c.get("id").cloned().unwrap_or(Value::Null),
                            "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
                            "input": input,
                        }));
                    }
                }
                // Anthropic refuses an empty message (an assistant turn with
                // no text and no calls, as some clients keep in history).
                if !blocks.is_empty() {
                    messages.push(json!({"role": "assistant", "content": blocks}));
                }
            }
            "tool" => {
                let result = json!({
                    "type": "tool_result",
                    "tool_use_id": m.extra.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": m.text_content(),
                });
                // The results of parallel calls go back in one user turn, as
                // Anthropic asks (one turn each teaches the model not to
                // call tools in parallel).
                match messages.last_mut().and_then(tool_results) {
                    Some(results) => results.push(result),
                    None => messages.push(json!({"role": "user", "content": [result]})),
                }
            }
            _ => {
                let content = user_content(m, i)?;
                let empty = match &content {
                    Value::String(s) => s.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    _ => true,
                };
                if !empty {
                    messages.push(json!({"role": "user", "content": content}));
                }
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_output_tokens().unwrap_or(default_max_tokens)),
    );
    body.insert("messages".into(), Value::Array(messages));
    if system_cached {
        body.insert("system".into(), Value::Array(system_blocks));
    } else if !system.is_empty() {
        body.insert("system".into(), json!(system));
    }
    // OpenAI's temperature runs to 2, Anthropic's to 1; current Claude
    // models refuse temperature and top_p together (OpenAI advises setting
    // one), so top_p goes only when temperature is unset.
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    } else if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    // Anthropic refuses a stop sequence of whitespace only (OpenAI clients
    // send "\n" freely): such sequences are left out.
    let stop: Vec<String> = req
        .stop_sequences()
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .collect();
    if !stop.is_empty() {
        body.insert("stop_sequences".into(), json!(stop));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    let mut sends_tools = false;
    if let Some(Value::Array(tools)) = req.extra.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|tool| tool.get("function").map(|f| (tool, f)))
            .map(|(tool, f)| {
                let mut t = json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                });
                if let (Some(d), Some(o)) = (f.get("description"), t.as_object_mut()) {
                    o.insert("description".into(), d.clone());
                }
                with_cache_control(&mut t, tool);
                t
            })
            .collect();
        sends_tools = !tools.is_empty();
        body.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = req.extra.get("tool_choice").and_then(|tc| match tc {
        Value::String(s) if s == "required" => Some(json!({"type": "any"})),
        Value::String(s) if s == "none" => Some(json!({"type": "none"})),
        Value::String(_) => Some(json!({"type": "auto"})),
        v => v
            .pointer("/function/name")
            .map(|n| json!({"type": "tool", "name": n})),
    });
    // OpenAI's `parallel_tool_calls: false` (at most one call per turn) is
    // Anthropic's `disable_parallel_tool_use`, a flag of the tool choice
    // (auto, any and tool have it; none, which calls nothing, has not):
    // left out, Claude makes parallel calls a client said it cannot take.
    if sends_tools && one_call_at_most(req) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(o) = c.as_object_mut()
            && o.get("type").and_then(Value::as_str) != Some("none")
        {
            o.insert("disable_parallel_tool_use".into(), json!(true));
        }
    }
    if let Some(c) = choice {
        body.insert("tool_choice".into(), c);
    }
    if let Some(tool) = json_tool(req) {
        let forced = json!({"type": "tool", "name": JSON_TOOL});
        let own = body
            .get("tools")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .cloned();
        let choice = body
            .get("tool_choice")
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (own, choice.as_deref()) {
            // No tools of its own, or none to be called: the answer is a
            // forced call of the answer tool.
            (None, _) | (Some(_), Some("none")) => {
                body.insert("tools".into(), json!([tool]));
                body.insert("tool_choice".into(), forced);
            }
            // With its own tools, the model calls one of them or gives
            // its answer through the answer tool: some call is required
            // (the client's `disable_parallel_tool_use` kept). A named
            // choice stays: that turn is a call of that tool.
            (Some(mut tools), choice) => {
                tools.push(tool);
                body.insert("tools".into(), Value::Array(tools));
                if choice != Some("tool") {
                    let mut any = json!({"type": "any"});
                    if let Some(flag) = body
                        .get("tool_choice")
                        .and_then(|c| c.get("disable_parallel_tool_use"))
                        .cloned()
                    {
                        any["disable_parallel_tool_use"] = flag;
                    }
                    body.insert("tool_choice".into(), any);
                }
            }
        }
    }
    if let Some(user) = req.extra.get("user") {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    Ok(Value::Object(body))
}

/// Pages of `GET /v1/models` read at most (of 1,000 models each): a bound
/// on a list that says it has more forever.
const MAX_MODEL_PAGES: usize = 20;

/// The tool a structured answer comes through. Anthropic has no
/// `response_format`; its way to JSON that follows a schema is a call,
/// forced, to a tool whose input schema is that schema: the call's input
/// is the answer, given back to the client as the message's content.
const JSON_TOOL: &str = "json_response";

/// The answer tool for a request's `response_format` (`json_schema` with
/// its schema, `json_object` with any object), when it asks for JSON: the
/// only tool, forced, or one beside the request's own (see
/// [`messages_body`]).
fn json_tool(req: &ChatRequest) -> Option<Value> {
    let rf = req.extra.get("response_format")?;
    let schema = match rf.get("type").and_then(Value::as_str)? {
        "json_schema" => rf
            .pointer("/json_schema/schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"})),
        "json_object" => json!({"type": "object"}),
        _ => return None,
    };
    let description = rf
        .pointer("/json_schema/description")
        .and_then(Value::as_str)
        .unwrap_or("Give the answer as this tool's input.");
    Some(json!({"name": JSON_TOOL, "description": description, "input_schema": schema}))
}

/// The blocks of a user turn made of tool results only.
fn tool_results(m: &mut Value) -> Option<&mut Vec<Value>> {
    if m.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let blocks = m.get_mut("content")?.as_array_mut()?;
    blocks
        .iter()
        .all(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .then_some(blocks)
}

/// A user turn's content: text parts, and images as base64 (a `data:` URL)
/// or URL sources (an http(s) URL, which Anthropic fetches itself); any
/// other part is refused. `at` is the message's position, for the `param`
/// of a refusal.
fn user_content(m: &ChatMessage, at: usize) -> Result<Value, Failure> {
    let parts = match &m.content {
        Value::Array(parts) => parts,
        Value::String(s) => return Ok(json!(s)),
        _ => return Ok(json!("")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let mut block = match user_part(p, &m.role, at, j)? {
            // Anthropic refuses an empty or blank text block ("text
            // content blocks must be non-empty"), which chat UIs send beside an image
            // uploaded without words; OpenAI takes it. Left out (a turn
            // left with nothing is left out whole, as an empty string is).
            UserPart::Text(p)
                if p.get("text")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.trim().is_empty()) =>
            {
                continue;
            }
            UserPart::Text(p) => {
                json!({"type": "text", "text": p.get("text").cloned().unwrap_or(Value::Null)})
            }
            UserPart::Image(image) => image_block(image),
        };
        with_cache_control(&mut block, p);
        out.push(block);
    }
    Ok(Value::Array(out))
}

/// Anthropic's prompt caching: a part's (or a tool's) `cache_control`
/// (`{"type": "ephemeral"}`, as LiteLLM's users put it on OpenAI-shaped
/// content) goes on the block made of it.
fn with_cache_control(block: &mut Value, from: &Value) {
    if let (Some(cc), Some(o)) = (from.get("cache_control"), block.as_object_mut()) {
        o.insert("cache_control".into(), cc.clone());
    }
}

/// An image as Anthropic takes it.
enum Image<'a> {
    Base64 { media: &'a str, data: &'a str },
    Url(&'a str),
}

/// An OpenAI `image_url` part ([`image_url`]), or why Anthropic cannot
/// take it.
fn image(part: &Value, at: usize, j: usize) -> Result<Image<'_>, Failure> {
    match image_url(part) {
        ImageUrl::Base64 { media, data } => Ok(Image::Base64 { media, data }),
        ImageUrl::Url(url) => Ok(Image::Url(url)),
        ImageUrl::Missing => Err(Failure::unsupported(
            "an image_url part needs a url",
            image_url_param(at, j),
            "invalid_value",
        )),
        ImageUrl::DataNotBase64 => Err(Failure::unsupported(
            "anthropic providers accept data: image URLs in base64 only (data:<type>;base64,<data>)",
            image_url_param(at, j),
            "unsupported_value",
        )),
    }
}

/// An image as an Anthropic image block.
fn image_block(image: Image<'_>) -> Value {
    match image {
        Image::Base64 { media, data } => json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media, "data": data},
        }),
        Image::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

/// A turn that called the answer tool and none of the request's own tools
/// is the answer's end, not a call.
fn answer_stop(stop_reason: Option<&str>, answered: bool, called: bool) -> Option<&str> {
    match stop_reason {
        Some("tool_use") if answered && !called => Some("end_turn"),
        r => r,
    }
}

/// Anthropic `stop_reason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
struct AUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    /// Prompt tokens written to, and read from, Anthropic's prompt cache:
    /// not in `input_tokens`, in OpenAI's `prompt_tokens`.
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    /// Of the tokens written, those written to the 1-hour cache
    /// (`cache_creation.ephemeral_1h_input_tokens`, billed higher than the
    /// 5-minute cache's), read leniently: another shape is unknown.
    #[serde(
        default,
        rename = "cache_creation",
        deserialize_with = "one_hour_writes"
    )]
    cache_creation_1h: Option<u64>,
}

/// `usage.cache_creation.ephemeral_1h_input_tokens` when it is a whole
/// number; `None` for anything else, never a failed usage.
fn one_hour_writes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(d)?
        .get("ephemeral_1h_input_tokens")
        .and_then(Value::as_u64))
}

impl AUsage {
    /// OpenAI's `prompt_tokens`: the whole prompt, cached parts included.
    fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
    }

    /// OpenAI's usage: the whole prompt, what of it was read from the
    /// prompt cache as `prompt_tokens_details.cached_tokens` and what was
    /// written to it as `cache_creation_input_tokens`, as LiteLLM reports
    /// them (each when Anthropic reported it).
    fn openai(&self) -> Usage {
        Usage::new(self.prompt_tokens(), self.output_tokens)
            .with_cached_tokens(self.cache_read_input_tokens)
            .with_cache_writes(self.cache_creation_input_tokens, self.cache_creation_1h)
    }
}

#[derive(Deserialize)]
struct AMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AUsage,
}

impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn check(&self, req: &ChatRequest) -> Result<(), Failure> {
        refusal(req)
    }

    fn check_completion(&self, _req: &CompletionRequest) -> Result<(), Failure> {
        Err(no_text_completions())
    }

    fn chat<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            let mut body = self.body(model, req, false)?;
            let resp = self.post_fitted(&mut body, req, false).await?;
            let (_, m): (_, AMessage) = read_json(resp).await?;
            let structured = json_tool(req).is_some();
            let mut answered = false;
            let mut text = String::new();
            let mut calls = Vec::new();
            for b in &m.content {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    // The structured answer is the content, not a call.
                    Some("tool_use")
                        if structured
                            && b.get("name").and_then(Value::as_str) == Some(JSON_TOOL) =>
                    {
                        answered = true;
                        text = b.get("input").map(Value::to_string).unwrap_or_default();
                    }
                    Some("tool_use") => calls.push(json!({
                        "id": b.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {
                            "name": b.get("name").cloned().unwrap_or(Value::Null),
                            "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                        },
                    })),
                    _ => {}
                }
            }
            let called = !calls.is_empty();
            let mut message = ChatMessage::text("assistant", text);
            if called {
                // Only calls: `content` is null, as OpenAI sends it.
                if message
                    .content
                    .as_str()
                    .is_some_and(|t| t.trim().is_empty())
                {
                    message.content = Value::Null;
                }
                message
                    .extra
                    .insert("tool_calls".into(), Value::Array(calls));
            }
            let usage = m.usage.openai();
            let completion = ChatCompletion {
                id: m.id,
                object: "chat.completion".into(),
                created: uat_types::unix_now(),
                model: model.to_owned(),
                choices: vec![Choice {
                    index: 0,
                    message,
                    finish_reason: Some(
                        finish_reason(answer_stop(m.stop_reason.as_deref(), answered, called))
                            .into(),
                    ),
                    extra: Map::new(),
                }],
                usage: Some(usage),
                extra: Map::new(),
            };
            let body = serde_json::to_vec(&completion)
                .map_err(|e| Failure::new(FailureKind::Malformed, format!("cannot encode: {e}")))?;
            Ok(Reply::chat(body, Some(usage)))
        })
    }

    fn chat_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(async move {
            let mut body = self.body(model, req, true)?;
            let resp = self.post_fitted(&mut body, req, true).await?;
            let mut state = StreamState::new(model, req.include_usage());
            state.structured = json_tool(req).is_some();
            Ok(translate(lines(resp), state))
        })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, Failure>> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct List {
                data: Vec<Entry>,
                #[serde(default)]
                has_more: bool,
                #[serde(default)]
                last_id: Option<String>,
            }
            #[derive(Deserialize)]
            struct Entry {
                id: String,
            }
            // Anthropic pages its list (20 by default): every page, at
            // its largest, so that no model past the first page is missing.
            let mut ids = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut after: Option<String> = None;
            for _ in 0..MAX_MODEL_PAGES {
                let mut url = self.models_url.clone();
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("limit", "1000");
                    if let Some(a) = &after {
                        q.append_pair("after_id", a);
                    }
                }
                let resp = send(self.request(self.client.get(url)), self.first_byte).await?;
                let (_, list): (_, List) = read_json(resp).await?;
                let before = ids.len();
                // A compatible server that ignores `after_id` answers the
                // same page again: nothing new ends the walk.
                ids.extend(
                    list.data
                        .into_iter()
                        .map(|e| e.id)
                        .filter(|id| seen.insert(id.clone())),
                );
                match (list.has_more, list.last_id) {
                    (true, Some(last)) if ids.len() > before => after = Some(last),
                    _ => return Ok(ids),
                }
            }
            tracing::warn!(
                pages = MAX_MODEL_PAGES,
                models = ids.len(),
                "anthropic model list still says it has more after the pages read; the rest are not discovered"
            );
            Ok(ids)
        })
    }

    fn embeddings<'a>(
        &'a self,
        _model: &'a str,
        _body: &'a Value,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            Err(Failure::new(
                FailureKind::Unsupported,
                "the Anthropic API has no embeddings endpoint",
            ))
        })
    }
}

/// Anthropic's legacy Text Completions API serves no current model: a text
/// completion is refused (an alias fails over, a direct request gets a
/// 400 naming `model`), pointing at the chat endpoint, which does serve it.
fn no_text_completions() -> Failure {
    Failure::unsupported(
        "anthropic providers have no text completion API for current models; \
         send the request to /v1/chat/completions instead",
        "model",
        "unsupported_endpoint",
    )
}

/// One of the client's tool calls in the stream: its position among the
/// calls (OpenAI's `index`), and whether any of its arguments' JSON was
/// sent yet (whitespace is not JSON).
struct ToolBlock {
    k: usize,
    has_arguments: bool,
}

struct StreamState {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    usage: AUsage,
    /// Whether the role chunk went out. It is held back from
    /// `message_start` to the first chunk with something in it: the router
    /// takes a stream's first chunk as the end of its retry window, and an
    /// `error` event (`overloaded_error`) often comes right after
    /// `message_start`, before any content, when a retry costs the client
    /// nothing.
    sent_role: bool,
    /// The client's tool calls by content block index.
    tools: HashMap<u64, ToolBlock>,
    /// The answer comes as the forced [`JSON_TOOL`] call ...
    structured: bool,
    /// ... in this content block, whose input is streamed as content.
    answer_block: Option<u64>,
    pending: VecDeque<Result<StreamChunk, Failure>>,
    done: bool,
}

impl StreamState {
    fn new(model: &str, include_usage: bool) -> Self {
        StreamState {
            id: String::new(),
            created: uat_types::unix_now(),
            model: model.to_owned(),
            include_usage,
            usage: AUsage::default(),
            sent_role: false,
            tools: HashMap::new(),
            structured: false,
            answer_block: None,
            pending: VecDeque::new(),
            done: false,
        }
    }

    fn push(&mut self, delta: Delta, finish: Option<String>) {
        self.role_first();
        let c = ChatChunk::delta(&self.id, self.created, &self.model, delta, finish);
        self.pending.push_back(StreamChunk::from_chunk(&c));
    }

    /// The role chunk OpenAI streams first (`role` and empty content),
    /// queued just before the first chunk with something in it, by the
    /// same event: the router sees it only once content (or the finish)
    /// has come (see [`StreamState::sent_role`]).
    fn role_first(&mut self) {
        if self.sent_role {
            return;
        }
        self.sent_role = true;
        let delta = Delta {
            role: Some("assistant".into()),
            content: Some(String::new()),
            extra: Map::new(),
        };
        let c = ChatChunk::delta(&self.id, self.created, &self.model, delta, None);
        self.pending.push_back(StreamChunk::from_chunk(&c));
    }

    /// A content delta of the text at `pointer` in `v` (empty when absent).
    fn text_delta(&mut self, v: &Value, pointer: &str) {
        let text = v.pointer(pointer).and_then(Value::as_str).unwrap_or("");
        self.push(
            Delta {
                content: Some(text.to_owned()),
                ..Delta::default()
            },
            None,
        );
    }

    fn tool_delta(&mut self, call: Value) {
        let mut extra = Map::new();
        extra.insert("tool_calls".into(), json!([call]));
        self.push(
            Delta {
                role: None,
                content: None,
                extra,
            },
            None,
        );
    }

    fn fail(&mut self, kind: FailureKind, message: String) {
        self.pending.push_back(Err(Failure::new(kind, message)));
        self.done = true;
    }

    /// Handles one SSE `data:` payload.
    fn event(&mut self, data: &[u8]) {
        let ev: Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) => {
                return self.fail(
                    FailureKind::Malformed,
                    format!("invalid event from upstream: {e}"),
                );
            }
        };
        match ev.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(id) = ev.pointer("/message/id").and_then(Value::as_str) {
                    self.id = id.to_owned();
                }
                if let Some(u) = ev.pointer("/message/usage") {
                    self.usage = serde_json::from_value(u.clone()).unwrap_or_default();
                }
            }
            Some("content_block_start") => {
                let block = ev.get("content_block");
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("tool_use")
                        if self.structured
                            && block.and_then(|b| b.get("name")).and_then(Value::as_str)
                                == Some(JSON_TOOL) =>
                    {
                        self.answer_block = ev.get("index").and_then(Value::as_u64).or(Some(0));
                    }
                    Some("tool_use") => {
                        let k = self.tools.len();
                        let idx = ev.get("index").and_then(Value::as_u64).unwrap_or(0);
                        self.tools.insert(
                            idx,
                            ToolBlock {
                                k,
                                has_arguments: false,
                            },
                        );
                        let b = block.cloned().unwrap_or(Value::Null);
                        self.tool_delta(json!({
                            "index": k, "id": b.get("id"), "type": "function",
                            "function": {"name": b.get("name"), "arguments": ""},
                        }));
                    }
                    Some("text")
                        if ev
                            .pointer("/content_block/text")
                            .and_then(Value::as_str)
                            .is_some_and(|t| !t.is_empty()) =>
                    {
                        self.text_delta(&ev, "/content_block/text");
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                match ev.pointer("/delta/type").and_then(Value::as_str) {
                    Some("text_delta") => self.text_delta(&ev, "/delta/text"),
                    // The structured answer's JSON is the message's content.
                    Some("input_json_delta")
                        if self.answer_block.is_some()
                            && ev.get("index").and_then(Value::as_u64).or(Some(0))
                                == self.answer_block =>
                    {
                        self.text_delta(&ev, "/delta/partial_json");
                    }
                    Some("input_json_delta") => {
                        let idx = ev.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let part = ev
                            .pointer("/delta/partial_json")
                            .cloned()
                            .unwrap_or(json!(""));
                        let has_json = part.as_str().is_some_and(|p| !p.trim().is_empty());
                        let k = match self.tools.get_mut(&idx) {
                            Some(t) => {
                                t.has_arguments |= has_json;
                                t.k
                            }
                            None => 0,
                        };
                        self.tool_delta(json!({"index": k, "function": {"arguments": part}}));
                    }
                    _ => {}
                }
            }
            // A call without parameters streams no JSON (or only an empty
            // piece): its arguments would reach the client as "", which is
            // not JSON, where the non-streamed answer gives "{}".
            Some("content_block_stop") => {
                let idx = ev.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(t) = self.tools.get_mut(&idx)
                    && !t.has_arguments
                {
                    t.has_arguments = true;
                    let k = t.k;
                    self.tool_delta(json!({"index": k, "function": {"arguments": "{}"}}));
                }
            }
            Some("message_delta") => {
                if let Some(n) = ev.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.output_tokens = n;
                }
                if let Some(n) = ev.pointer("/usage/input_tokens").and_then(Value::as_u64) {
                    self.usage.input_tokens = n;
                }
                for (field, slot) in [
                    (
                        "/usage/cache_creation_input_tokens",
                        &mut self.usage.cache_creation_input_tokens,
                    ),
                    (
                        "/usage/cache_read_input_tokens",
                        &mut self.usage.cache_read_input_tokens,
                    ),
                    (
                        "/usage/cache_creation/ephemeral_1h_input_tokens",
                        &mut self.usage.cache_creation_1h,
                    ),
                ] {
                    if let Some(n) = ev.pointer(field).and_then(Value::as_u64) {
                        *slot = Some(n);
                    }
                }
                let reason = finish_reason(answer_stop(
                    ev.pointer("/delta/stop_reason").and_then(Value::as_str),
                    self.answer_block.is_some(),
                    !self.tools.is_empty(),
                ));
                self.push(Delta::default(), Some(reason.into()));
            }
            Some("message_stop") => {
                if self.include_usage {
                    self.role_first();
                    let u = self.usage.openai();
                    let c = ChatChunk::usage(&self.id, self.created, &self.model, u);
                    self.pending.push_back(StreamChunk::from_chunk(&c));
                }
                self.done = true;
            }
            Some("error") => {
                let msg = ev
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error event")
                    .to_owned();
                self.fail(FailureKind::Interrupted, msg);
            }
            _ => {}
        }
    }
}

fn translate(
    lines: impl futures::Stream<Item = Result<Bytes, Failure>> + Send + 'static,
    state: StreamState,
) -> ChunkStream {
    Box::pin(futures::stream::unfold(
        (Box::pin(lines), state, false),
        |(mut lines, mut st, mut ended)| async move {
            loop {
                if let Some(item) = st.pending.pop_front() {
                    return Some((item, (lines, st, ended)));
                }
                if st.done || ended {
                    return None;
                }
                match lines.next().await {
                    Some(Ok(line)) => {
                        if let Some(data) = sse_data(&line) {
                            st.event(&data);
                        }
                    }
                    Some(Err(f)) => {
                        st.pending.push_back(Err(f));
                        st.done = true;
                    }
                    None => {
                        ended = true;
                        st.pending.push_back(Err(Failure::new(
                            FailureKind::Interrupted,
                            "stream ended before message_stop",
                        )));
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests;
