//! Ollama's native API: `/api/chat` (its NDJSON stream translated to OpenAI
//! chunks, logprobs included), `/api/generate` for text completions
//! ([`generate`]), `/api/tags` for discovery and `/api/embed` for
//! embeddings. What it cannot do (`n` > 1, images by http(s) URL, content
//! parts other than text and images, a forced tool call; several prompts,
//! `echo` and a `logprobs` above 20 of a text completion) is refused as
//! [`FailureKind::Unsupported`] before any call, never dropped. A text
//! completion's `logprobs` come back in OpenAI's legacy shape.

mod generate;

use super::completion::TextCompletion;
use super::content::{ImageUrl, image_url, image_url_param, unsupported_part};
use super::http::{self, lines, read_json, send};
use super::{BoxFuture, ChunkStream, Provider, Reply, StreamChunk, one_call_at_most, one_choice};
use crate::error::{Failure, FailureKind, RouterError};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use uat_config::{ProviderConfig, ProviderKind};
use uat_types::{
    ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Choice, CompletionRequest, Delta, Usage,
};

/// An Ollama server. `base_url` is the server root (`http://127.0.0.1:11434`).
pub struct Ollama {
    client: reqwest::Client,
    chat_url: reqwest::Url,
    generate_url: reqwest::Url,
    tags_url: reqwest::Url,
    embed_url: reqwest::Url,
    auth: Option<String>,
    /// Until the response head of a stream (`first_byte_timeout`).
    first_byte: Duration,
    /// Of a whole non-streamed exchange (`timeout`): such an answer's head
    /// comes only once it is generated, so the first-byte bound is not its.
    total: Duration,
}

#[derive(Deserialize, Default)]
struct OllamaMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
}

/// One generated token's log probability (Ollama 0.12.11 and later, when
/// the request sets `logprobs`), and the likeliest tokens at its place.
#[derive(Deserialize, Default)]
struct OllamaLogprob {
    #[serde(default)]
    token: String,
    #[serde(default)]
    logprob: f64,
    #[serde(default)]
    bytes: Option<Vec<u32>>,
    #[serde(default)]
    top_logprobs: Vec<OllamaLogprob>,
}

impl OllamaLogprob {
    /// OpenAI's shape: `bytes` always (the token's UTF-8 when Ollama gave
    /// none), `top_logprobs` on the generated token only.
    fn openai(&self, top: bool) -> Value {
        let bytes = match &self.bytes {
            Some(b) => json!(b),
            None => json!(self.token.as_bytes()),
        };
        let mut v = json!({"token": self.token, "logprob": self.logprob, "bytes": bytes});
        if top && let Some(o) = v.as_object_mut() {
            let alts: Vec<Value> = self.top_logprobs.iter().map(|t| t.openai(false)).collect();
            o.insert("top_logprobs".into(), Value::Array(alts));
        }
        v
    }
}

/// A choice's `logprobs` in OpenAI's shape, from Ollama's list.
fn choice_logprobs(list: &[OllamaLogprob]) -> Value {
    let content: Vec<Value> = list.iter().map(|l| l.openai(true)).collect();
    json!({"content": content, "refusal": null})
}

#[derive(Deserialize)]
struct OllamaChat {
    #[serde(default)]
    message: Option<OllamaMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    logprobs: Option<Vec<OllamaLogprob>>,
}

impl OllamaChat {
    fn usage(&self) -> Usage {
        Usage::new(
            self.prompt_eval_count.unwrap_or(0),
            self.eval_count.unwrap_or(0),
        )
    }
}

impl Ollama {
    /// Builds the provider and its pooled client.
    pub fn new(cfg: &ProviderConfig) -> Result<Self, RouterError> {
        let base = cfg.base_url.as_deref().unwrap_or("http://127.0.0.1:11434");
        Ok(Ollama {
            client: http::client(cfg)?,
            chat_url: http::join(cfg, base, "/api/chat")?,
            generate_url: http::join(cfg, base, "/api/generate")?,
            tags_url: http::join(cfg, base, "/api/tags")?,
            embed_url: http::join(cfg, base, "/api/embed")?,
            auth: http::api_key(cfg).map(|k| format!("Bearer {k}")),
            first_byte: cfg.first_byte_timeout,
            total: cfg.timeout,
        })
    }

    fn request(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(a) => rb.header(reqwest::header::AUTHORIZATION, a),
            None => rb,
        }
    }

    async fn post(
        &self,
        url: reqwest::Url,
        body: &Value,
        stream: bool,
    ) -> Result<reqwest::Response, Failure> {
        let body = serde_json::to_vec(body).map_err(|e| {
            Failure::new(
                FailureKind::Malformed,
                format!("cannot encode request: {e}"),
            )
        })?;
        let rb = self
            .request(self.client.post(url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        send(rb, if stream { self.first_byte } else { self.total }).await
    }
}

/// What Ollama cannot do: `n` > 1, an image by http(s) URL, a content
/// part other than text and images (audio, a file), the `tool_choice`s
/// [`tools`] refuses.
fn refusal(req: &ChatRequest) -> Result<(), Failure> {
    one_choice(req, "ollama")?;
    tools(req)?;
    for (at, m) in req.messages.iter().enumerate() {
        if let Value::Array(parts) = &m.content {
            for (j, p) in parts.iter().enumerate() {
                part(p, &m.role, at, j)?;
            }
        }
    }
    Ok(())
}

/// Part `j` of message `at`: its base64 image for an `image_url` part,
/// `None` for text (which [`ChatMessage::text_content`] gathers), or why
/// Ollama cannot take it.
fn part<'a>(p: &'a Value, role: &str, at: usize, j: usize) -> Result<Option<&'a str>, Failure> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        // An assistant turn replayed with its refusal: sent as its text.
        Some("refusal") if role == "assistant" => Ok(None),
        Some("image_url") => image_data(p, at, j).map(Some),
        _ => Err(unsupported_part(p, role, at, j, "ollama")),
    }
}

/// The `/api/chat` body for an OpenAI request (what Ollama cannot do is
/// refused by [`Provider::check`] first).
pub(crate) fn chat_body(model: &str, req: &ChatRequest, stream: bool) -> Result<Value, Failure> {
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(m, i, &req.messages))
        .collect::<Result<Vec<Value>, Failure>>()?;
    let options = options(Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_output_tokens(),
        stop: req.stop_sequences(),
        extra: &req.extra,
    });
    let mut body = json!({ "model": model, "messages": messages, "stream": stream });
    if let Some(o) = body.as_object_mut() {
        if !options.is_empty() {
            o.insert("options".into(), Value::Object(options));
        }
        if let Some(tools) = tools(req)? {
            o.insert("tools".into(), tools);
        }
        // Ollama's own names and meaning (since 0.12.11).
        for key in ["logprobs", "top_logprobs"] {
            if let Some(v) = req.extra.get(key).filter(|v| !v.is_null()) {
                o.insert(key.into(), v.clone());
            }
        }
        match req.extra.get("response_format") {
            Some(rf) if rf.get("type").and_then(Value::as_str) == Some("json_object") => {
                o.insert("format".into(), json!("json"));
            }
            Some(rf) => {
                if let Some(schema) = rf.pointer("/json_schema/schema") {
                    o.insert("format".into(), schema.clone());
                }
            }
            None => {}
        }
    }
    Ok(body)
}

/// The sampling fields chat and text completions share.
struct Sampling<'a> {
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    stop: Vec<String>,
    /// The request's other fields (`seed` and the penalties are read).
    extra: &'a Map<String, Value>,
}

/// Ollama's `options` for `s`: only what was given (Ollama's defaults
/// otherwise), `max_tokens` as `num_predict`, `stop` as a list.
fn options(s: Sampling<'_>) -> Map<String, Value> {
    let mut options = Map::new();
    if let Some(t) = s.temperature {
        options.insert("temperature".into(), json!(t));
    }
    if let Some(p) = s.top_p {
        options.insert("top_p".into(), json!(p));
    }
    if let Some(n) = s.max_tokens {
        options.insert("num_predict".into(), json!(n));
    }
    if !s.stop.is_empty() {
        options.insert("stop".into(), json!(s.stop));
    }
    for key in ["seed", "frequency_penalty", "presence_penalty"] {
        if let Some(v) = s.extra.get(key) {
            options.insert(key.into(), v.clone());
        }
    }
    options
}

/// How many of Ollama's tool calls are passed on: all of them, or the first
/// alone for `parallel_tool_calls: false`. Ollama has no such switch and may
/// make several; a client that asked for one at most (LangChain's
/// structured output does) gets the first, as OpenAI would have made it.
fn max_calls(req: &ChatRequest) -> usize {
    if one_call_at_most(req) { 1 } else { usize::MAX }
}

/// The tools to send for the request's `tool_choice`, which Ollama has no
/// field for: `none` sends none, `auto` (or none given) all of them, a
/// named function only that one (no other can be called; Ollama has no way
/// to force the call, so the model may still answer in text). `required`,
/// whose whole point is the forced call, is refused, as is a choice naming
/// a function the request does not offer or a shape Ollama has nothing
/// for (`allowed_tools`, `custom`).
fn tools(req: &ChatRequest) -> Result<Option<Value>, Failure> {
    let all = req.extra.get("tools");
    let choice = match req.extra.get("tool_choice") {
        None | Some(Value::Null) => return Ok(all.cloned()),
        Some(c) => c,
    };
    let refused =
        |message: String, code: &str| Err(Failure::unsupported(message, "tool_choice", code));
    let is_function = choice.get("type").and_then(Value::as_str) == Some("function");
    match choice {
        Value::String(s) if s == "auto" => Ok(all.cloned()),
        Value::String(s) if s == "none" => Ok(None),
        Value::String(s) if s == "required" => refused(
            format!("tool_choice `{s}` is not supported by ollama providers (no forced calls)"),
            "unsupported_value",
        ),
        Value::Object(_) if is_function => {
            let Some(name) = choice.pointer("/function/name").and_then(Value::as_str) else {
                return refused(
                    "a function tool_choice needs a function.name".into(),
                    "invalid_value",
                );
            };
            let named: Vec<Value> = all
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
                .cloned()
                .collect();
            if named.is_empty() {
                return refused(
                    format!("tool_choice names `{name}`, which is not among the tools"),
                    "invalid_value",
                );
            }
            Ok(Some(Value::Array(named)))
        }
        other => refused(
            format!("tool_choice {other} is not supported by ollama providers"),
            "unsupported_value",
        ),
    }
}

/// One message in Ollama's shape (`at` is its position). A tool result
/// names its tool (`tool_name`): OpenAI's tool messages carry only
/// `tool_call_id`, so the name is found in the assistant call it answers
/// (`all` is the whole conversation), unless the message gives a `name`
/// itself.
fn message(m: &ChatMessage, at: usize, all: &[ChatMessage]) -> Result<Value, Failure> {
    let role = if m.role == "developer" {
        "system"
    } else {
        m.role.as_str()
    };
    let mut out = json!({ "role": role, "content": m.text_content() });
    let Some(o) = out.as_object_mut() else {
        return Ok(out);
    };
    if let Value::Array(parts) = &m.content {
        let mut images = Vec::new();
        for (j, p) in parts.iter().enumerate() {
            if let Some(data) = part(p, &m.role, at, j)? {
                images.push(json!(data));
            }
        }
        if !images.is_empty() {
            o.insert("images".into(), Value::Array(images));
        }
    }
    if let Some(Value::Array(calls)) = m.extra.get("tool_calls") {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let args = c
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .unwrap_or_else(|| json!({}));
                json!({ "function": { "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null), "arguments": args } })
            })
            .collect();
        o.insert("tool_calls".into(), Value::Array(calls));
    }
    // `tool_name` is Ollama's for tool results only; another role's `name`
    // (a user's, say) is not a tool's.
    if m.role == "tool"
        && let Some(name) = m.extra.get("name").or_else(|| {
            m.extra
                .get("tool_call_id")
                .and_then(|id| tool_name_of(id, all))
        })
    {
        o.insert("tool_name".into(), name.clone());
    }
    Ok(out)
}

/// The base64 data of an `image_url` part, or why Ollama cannot take it.
/// Ollama takes the image's bytes only: an http(s) URL is refused (an
/// alias fails over to a target that fetches URLs), never dropped.
fn image_data(part: &Value, at: usize, j: usize) -> Result<&str, Failure> {
    match image_url(part) {
        ImageUrl::Base64 { data, .. } => Ok(data),
        ImageUrl::DataNotBase64 | ImageUrl::Url(_) | ImageUrl::Missing => {
            Err(Failure::unsupported(
                "Ollama providers accept images as data: URLs only (data:<type>;base64,<data>)",
                image_url_param(at, j),
                "unsupported_value",
            ))
        }
    }
}

/// The function name of the assistant tool call with this id.
fn tool_name_of<'a>(id: &Value, all: &'a [ChatMessage]) -> Option<&'a Value> {
    all.iter()
        .filter_map(|m| m.extra.get("tool_calls").and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("id") == Some(id))
        .and_then(|c| c.pointer("/function/name"))
}

/// Ollama tool calls (arguments as objects) in the OpenAI shape (arguments
/// as strings). Each call gets an id of its own (a conversation that comes
/// back with several turns of calls must not repeat one); streamed, the
/// calls are numbered from `first`, the number of calls sent before them in
/// the stream (Ollama may send each call on a line of its own, and clients
/// merge streamed calls by index).
fn tool_calls(calls: &[Value], first: Option<usize>) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let args = match c.pointer("/function/arguments") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => "{}".into(),
                };
                let mut v = json!({
                    "id": format!("call_{:016x}", rand::random::<u64>()),
                    "type": "function",
                    "function": { "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null), "arguments": args },
                });
                if let Some(first) = first
                    && let Some(o) = v.as_object_mut()
                {
                    o.insert("index".into(), json!(first + i));
                }
                v
            })
            .collect(),
    )
}

fn finish_reason(r: &OllamaChat, had_tools: bool) -> String {
    if had_tools {
        return "tool_calls".into();
    }
    stop_or_length(r.done_reason.as_deref()).into()
}

/// OpenAI's `finish_reason` for Ollama's `done_reason`: `length` when the
/// token limit cut the answer, else `stop`.
fn stop_or_length(done_reason: Option<&str>) -> &'static str {
    match done_reason {
        Some("length") => "length",
        _ => "stop",
    }
}

fn completion_id() -> String {
    format!("chatcmpl-{:x}", rand::random::<u64>())
}

impl Provider for Ollama {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ollama
    }

    fn check(&self, req: &ChatRequest) -> Result<(), Failure> {
        refusal(req)
    }

    fn chat<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            let body = chat_body(model, req, false)?;
            let resp = self.post(self.chat_url.clone(), &body, false).await?;
            let (_, r): (_, OllamaChat) = read_json(resp).await?;
            if let Some(e) = r.error {
                return Err(Failure::new(FailureKind::ServerError, e));
            }
            let usage = r.usage();
            let msg = r.message.as_ref();
            let calls = msg
                .and_then(|m| m.tool_calls.as_deref())
                .map(|c| &c[..c.len().min(max_calls(req))])
                .filter(|c| !c.is_empty());
            let mut message = ChatMessage::text(
                "assistant",
                msg.map(|m| m.content.clone()).unwrap_or_default(),
            );
            if let Some(c) = calls {
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
                    .insert("tool_calls".into(), tool_calls(c, None));
            }
            let mut extra = Map::new();
            if let Some(lp) = &r.logprobs {
                extra.insert("logprobs".into(), choice_logprobs(lp));
            }
            let completion = ChatCompletion {
                id: completion_id(),
                object: "chat.completion".into(),
                created: uat_types::unix_now(),
                model: model.to_owned(),
                choices: vec![Choice {
                    index: 0,
                    message,
                    finish_reason: Some(finish_reason(&r, calls.is_some())),
                    extra,
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
            let body = chat_body(model, req, true)?;
            let resp = self.post(self.chat_url.clone(), &body, true).await?;
            let state = StreamState {
                id: completion_id(),
                created: uat_types::unix_now(),
                model: model.to_owned(),
                include_usage: req.include_usage(),
                sent_role: false,
                tools_sent: 0,
                max_calls: max_calls(req),
                queue: Queue::default(),
            };
            Ok(translate(lines(resp), state))
        })
    }

    fn check_completion(&self, req: &CompletionRequest) -> Result<(), Failure> {
        generate::refusal(req)
    }

    fn completion<'a>(
        &'a self,
        model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            let body = generate::body(model, req, false)?;
            let resp = self
                .post(self.generate_url.clone(), &body, false)
                .await
                .map_err(generate::no_insert)?;
            let (_, r) = read_json(resp).await?;
            generate::answer(model, req, r)
        })
    }

    fn completion_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(async move {
            let body = generate::body(model, req, true)?;
            let resp = self
                .post(self.generate_url.clone(), &body, true)
                .await
                .map_err(generate::no_insert)?;
            let state = generate::GenerateStream::new(TextCompletion::new(model), req);
            Ok(translate(lines(resp), state))
        })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, Failure>> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct Tags {
                models: Vec<Tag>,
            }
            #[derive(Deserialize)]
            struct Tag {
                name: String,
            }
            let resp = send(
                self.request(self.client.get(self.tags_url.clone())),
                self.first_byte,
            )
            .await?;
            let (_, tags): (_, Tags) = read_json(resp).await?;
            Ok(tags.models.into_iter().map(|t| t.name).collect())
        })
    }

    fn embeddings<'a>(
        &'a self,
        model: &'a str,
        body: &'a Value,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct Embed {
                embeddings: Vec<Value>,
                #[serde(default)]
                prompt_eval_count: Option<u64>,
            }
            let mut req = json!({ "model": model, "input": body.get("input").cloned().unwrap_or(Value::Null) });
            if let (Some(d), Some(o)) = (body.get("dimensions"), req.as_object_mut()) {
                o.insert("dimensions".into(), d.clone());
            }
            // Ollama answers floats only; OpenAI's base64 (what the
            // openai-node SDK asks for by default) is made here.
            let base64 = match body.get("encoding_format") {
                None | Some(Value::Null) => false,
                Some(Value::String(f)) if f == "float" => false,
                Some(Value::String(f)) if f == "base64" => true,
                Some(other) => {
                    // What OpenAI and the local models refuse too.
                    return Err(Failure::unsupported(
                        format!("`encoding_format` must be \"float\" or \"base64\", got {other}"),
                        "encoding_format",
                        "invalid_value",
                    ));
                }
            };
            let resp = self.post(self.embed_url.clone(), &req, false).await?;
            let (_, e): (_, Embed) = read_json(resp).await?;
            let tokens = e.prompt_eval_count.unwrap_or(0);
            let data = e
                .embeddings
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let embedding = if base64 { base64_f32(&v)? } else { v };
                    Ok(json!({ "object": "embedding", "index": i, "embedding": embedding }))
                })
                .collect::<Result<Vec<Value>, Failure>>()?;
            let out = json!({
                "object": "list",
                "data": data,
                "model": model,
                "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
            });
            let body = serde_json::to_vec(&out)
                .map_err(|e| Failure::new(FailureKind::Malformed, format!("cannot encode: {e}")))?;
            Ok(Reply::embeddings(body, Some(Usage::new(tokens, 0))))
        })
    }
}

struct StreamState {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    sent_role: bool,
    /// Tool calls sent so far (the next one's index).
    tools_sent: usize,
    /// Most tool calls passed on ([`max_calls`]).
    max_calls: usize,
    queue: Queue,
}

impl StreamState {
    fn push(&mut self, delta: Delta, finish: Option<String>) {
        let c = ChatChunk::delta(&self.id, self.created, &self.model, delta, finish);
        self.queue.pending.push_back(StreamChunk::from_chunk(&c));
    }

    /// A delta whose choice carries the logprobs of its tokens, as OpenAI
    /// streams them (`choices[0].logprobs`, beside `delta`).
    fn push_with_logprobs(&mut self, delta: Delta, logprobs: &[OllamaLogprob]) {
        let c = ChatChunk::delta(&self.id, self.created, &self.model, delta, None);
        let chunk = serde_json::to_value(&c)
            .and_then(|mut v| {
                if let Some(choice) = v.pointer_mut("/choices/0").and_then(Value::as_object_mut) {
                    choice.insert("logprobs".into(), choice_logprobs(logprobs));
                }
                serde_json::to_vec(&v)
            })
            .map(|json| StreamChunk {
                json: Bytes::from(json),
                usage: None,
            })
            .map_err(|e| Failure::new(FailureKind::Malformed, format!("cannot encode chunk: {e}")));
        self.queue.pending.push_back(chunk);
    }
}

impl Ndjson for StreamState {
    fn line(&mut self, line: &[u8]) {
        let Some(r) = self.queue.parse::<OllamaChat>(line) else {
            return;
        };
        if let Some(e) = r.error.clone() {
            self.queue.fail(Failure::new(FailureKind::Interrupted, e));
            return;
        }
        let msg = r.message.unwrap_or_default();
        let content = msg.content;
        let room = self.max_calls.saturating_sub(self.tools_sent);
        let calls = msg
            .tool_calls
            .map(|mut c| {
                c.truncate(room);
                c
            })
            .filter(|c| !c.is_empty());
        if !content.is_empty() || calls.is_some() || !self.sent_role {
            let mut delta = Delta {
                role: (!self.sent_role).then(|| "assistant".to_owned()),
                content: Some(content),
                extra: Map::new(),
            };
            if let Some(c) = &calls {
                delta
                    .extra
                    .insert("tool_calls".into(), tool_calls(c, Some(self.tools_sent)));
                self.tools_sent += c.len();
            }
            self.sent_role = true;
            // Logprobs go with the content they score (a line without
            // content, a thinking model's, say, has none to give).
            match r.logprobs.as_deref().filter(|l| !l.is_empty()) {
                Some(lp) => self.push_with_logprobs(delta, lp),
                None => self.push(delta, None),
            }
        }
        if r.done {
            let usage = Usage::new(r.prompt_eval_count.unwrap_or(0), r.eval_count.unwrap_or(0));
            let reason = finish_reason(
                &OllamaChat {
                    message: None,
                    done: true,
                    done_reason: r.done_reason,
                    prompt_eval_count: None,
                    eval_count: None,
                    error: None,
                    logprobs: None,
                },
                self.tools_sent > 0,
            );
            self.push(Delta::default(), Some(reason));
            if self.include_usage {
                let c = ChatChunk::usage(&self.id, self.created, &self.model, usage);
                self.queue.pending.push_back(StreamChunk::from_chunk(&c));
            }
            self.queue.done = true;
        }
    }

    fn queue(&mut self) -> &mut Queue {
        &mut self.queue
    }
}

/// What a translation of Ollama's NDJSON stream has made and not yet
/// handed on, and whether it is over (the `done: true` line, or a failure).
#[derive(Default)]
struct Queue {
    pending: VecDeque<Result<StreamChunk, Failure>>,
    done: bool,
}

impl Queue {
    /// Ends the stream with `f` (after what is queued).
    fn fail(&mut self, f: Failure) {
        self.pending.push_back(Err(f));
        self.done = true;
    }

    /// One NDJSON line parsed: `None` for a blank line, or when it is no
    /// JSON of `T` (the stream then fails).
    fn parse<T: serde::de::DeserializeOwned>(&mut self, line: &[u8]) -> Option<T> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        match serde_json::from_slice(line) {
            Ok(r) => Some(r),
            Err(e) => {
                self.fail(Failure::new(
                    FailureKind::Malformed,
                    format!("invalid NDJSON line from upstream: {e}"),
                ));
                None
            }
        }
    }
}

/// A translation of one of Ollama's NDJSON streams (`/api/chat`,
/// `/api/generate`) into OpenAI chunks, a line at a time.
trait Ndjson: Send + 'static {
    /// Queues the chunks of one line.
    fn line(&mut self, line: &[u8]);

    /// What is made and not yet handed on.
    fn queue(&mut self) -> &mut Queue;
}

/// Runs the NDJSON `lines` through `state`. A stream that ends before its
/// `done: true` line (or breaks off) ends in a failure.
fn translate(
    lines: impl futures::Stream<Item = Result<Bytes, Failure>> + Send + 'static,
    state: impl Ndjson,
) -> ChunkStream {
    Box::pin(futures::stream::unfold(
        (Box::pin(lines), state),
        |(mut lines, mut st)| async move {
            loop {
                let q = st.queue();
                if let Some(item) = q.pending.pop_front() {
                    return Some((item, (lines, st)));
                }
                if q.done {
                    return None;
                }
                match lines.next().await {
                    Some(Ok(line)) => st.line(&line),
                    Some(Err(f)) => st.queue().fail(f),
                    None => st.queue().fail(Failure::new(
                        FailureKind::Interrupted,
                        "stream ended before `done: true`",
                    )),
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests;

/// An embedding (a JSON array of numbers) as OpenAI's `encoding_format:
/// "base64"` gives it: base64 of its little-endian f32 bytes.
fn base64_f32(v: &Value) -> Result<Value, Failure> {
    use base64::Engine as _;
    let malformed = || {
        Failure::new(
            FailureKind::Malformed,
            "an embedding that is not a list of numbers",
        )
    };
    let nums = v.as_array().ok_or_else(malformed)?;
    let mut bytes = Vec::with_capacity(nums.len() * 4);
    for n in nums {
        let x = n.as_f64().ok_or_else(malformed)? as f32;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}
